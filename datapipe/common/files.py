"""Atomic writes: data goes to a temporary name beside the target and is renamed when complete, so a reader (or
a run resumed after a crash) never sees half a file or half a folder. Temporary names contain ``.tmp-``
(``datapipe.io.Storage.remove_temporaries`` clears leftovers of killed writers)."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from datapipe.common.errors import StorageFullError

ENOSPC = 28


def temporary_name(path: str | os.PathLike[str]) -> Path:
    """A unique sibling of ``path`` (same folder, hence the same file system: the rename is atomic)."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def write_atomic(
    path: str | os.PathLike[str],
    data: str | bytes | Iterable[bytes],
    *,
    fsync: bool = False,
    full_hint: str = "",
) -> Path:
    """Write ``data`` (text as UTF-8, bytes, or byte pieces written without joining them) to ``path``.

    ``fsync``: flush to the device before the rename (for files whose presence marks other work done).
    A full disk raises :class:`StorageFullError` naming ``path`` (``full_hint`` says what to do)."""
    path = Path(path)
    tmp = temporary_name(path)
    pieces = [data.encode() if isinstance(data, str) else data] if isinstance(data, (str, bytes)) else data
    try:
        with open(tmp, "wb") as f:
            for piece in pieces:
                f.write(piece)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        if err.errno == ENOSPC:
            raise StorageFullError(str(path), full_hint) from err
        raise
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_json_atomic(path: str | os.PathLike[str], data: Any) -> Path:
    """``data`` as indented JSON with sorted keys and a final newline, atomically."""
    return write_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


@contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty temporary folder; when the block ends without error it replaces ``path`` (an
    existing folder there is removed first), otherwise it is deleted and ``path`` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    tmp.mkdir()
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
