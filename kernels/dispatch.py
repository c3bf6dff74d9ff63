"""Which implementation an op runs, chosen per call from the tensors' device, and logged once per choice."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from types import ModuleType

log = logging.getLogger("kernels")
_announced: set[tuple[str, str]] = set()


def triton_interpreting() -> bool:
    """True when Triton runs kernels through its CPU interpreter (TRITON_INTERPRET=1), as tests do."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_refusal(device_type: str, load_kernels: Callable[[], ModuleType | None]) -> str | None:
    """Why the Triton kernels cannot run on tensors of ``device_type`` (None: they can). ``load_kernels``
    imports the op's kernels module (None when Triton is not installed); it is called only when the device
    could run them, so plain CPU runs never import Triton. Op-specific limits are checked after this."""
    if device_type != "cuda" and not triton_interpreting():
        return f"{device_type} tensors and TRITON_INTERPRET is not set"
    ops = load_kernels()
    if ops is None:
        return "Triton is not installed"
    if device_type != "cuda" and not ops.INTERPRETED:
        return "TRITON_INTERPRET=1 was set after the Triton kernels were defined for the GPU; set it before start-up"
    return None


def announce(op: str, path: str, why: str) -> None:
    """Log the path an op takes the first time it takes it, so runs show which code did the work."""
    if (op, path) not in _announced:
        _announced.add((op, path))
        log.info("kernels.%s -> %s (%s)", op, path, why)


def chosen_paths() -> dict[str, str]:
    """{op: paths} of the choices made so far in this process (for logs and MLflow tags); an op that took
    several paths (e.g. Triton for some shapes, torch for others) lists them all."""
    out: dict[str, list[str]] = {}
    for op, path in sorted(_announced):
        out.setdefault(op, []).append(path)
    return {op: "; ".join(paths) for op, paths in out.items()}


def forget_choices() -> None:
    """Forget what was announced, so the next choice of every op is logged again (tests)."""
    _announced.clear()
