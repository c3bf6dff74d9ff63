"""Logging set-up shared by all layers: one format, a rank-0 filter, quiet progress bars off a terminal."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def current_rank() -> int:
    """Global rank from the launcher's environment (0 when not launched distributed)."""
    return int(os.environ.get("RANK", "0"))


class RankZeroFilter(logging.Filter):
    """Keep INFO and below from rank 0 only; warnings and errors pass from every rank."""

    def __init__(self, rank: int):
        super().__init__()
        self.rank = rank

    def filter(self, record: logging.LogRecord) -> bool:
        return self.rank == 0 or record.levelno >= logging.WARNING


def setup_logging(level: int | str = logging.INFO, *, rank: int | None = None, only: bool = False) -> None:
    """Configure the root logger once per process (idempotent: replaces our own handler). ``only``: also drop
    handlers others put on the root logger (a Ray Train worker's own, which would print every line twice)."""
    rank = current_rank() if rank is None else rank
    root = logging.getLogger()
    for handler in list(root.handlers):
        if only or getattr(handler, "_dnafm", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler._dnafm = True  # type: ignore[attr-defined]
    prefix = f"[rank {rank}] " if int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""
    handler.setFormatter(
        logging.Formatter(f"%(asctime)s {prefix}%(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    )
    handler.addFilter(RankZeroFilter(rank))
    root.addHandler(handler)
    root.setLevel(level)
    # Third-party chatter that drowns our progress lines at INFO.
    for noisy in ("urllib3", "filelock", "alembic", "sqlalchemy", "git", "mlflow.store", "DeepSpeed"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def progress(
    iterable: Iterable[T], *, total: int | None = None, desc: str = "", unit: str = "it"
) -> Iterator[T]:
    """A tqdm bar on a terminal; silent otherwise (callers log milestones themselves)."""
    from tqdm.auto import tqdm

    return iter(
        tqdm(iterable, total=total, desc=desc, unit=unit, disable=None, file=sys.stderr, dynamic_ncols=True)
    )
