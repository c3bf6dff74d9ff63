"""The one error type for bad input files, shared by every reader (FASTA, MAF, annotations, task files).

Its own module so that readers which need nothing else of ``datapipe.io`` do not import fsspec for it.
"""

from __future__ import annotations

import os


class InputError(ValueError):
    """Unreadable or malformed input. ``str(err)`` is ``"{path}[:{line}]: {what}; {what to do}"``.

    The constructor arguments stay in ``args`` so the error pickles across Ray workers.
    """

    def __init__(self, path: str | os.PathLike[str], line: int | None, message: str) -> None:
        path = os.fspath(path)
        super().__init__(path, line, message)
        self.path, self.line, self.message = path, line, message

    def __str__(self) -> str:
        return f"{self.path if self.line is None else f'{self.path}:{self.line}'}: {self.message}"
