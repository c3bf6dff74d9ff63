"""The expected errors: what a user can cause and fix (bad input, a wrong value, a missing file).

Every one of them derives from :class:`UserError`; the ``dnafm`` command prints such an error as one line and
exits 1. Any other exception is a bug in dnafm and is shown with its traceback. Each class also derives
from the builtin a caller would naturally catch (``ValueError``, ``FileNotFoundError`` ...).

Constructor arguments stay in ``args`` so the errors pickle across Ray workers.
"""

from __future__ import annotations

import os


class UserError(Exception):
    """Base of every expected error: the message names the file, line or field and what to do."""


class UsageError(UserError, ValueError):
    """A wrong argument or value (a flag combination, a recipe name, a set that cannot be used)."""


class ConfigError(UsageError):
    """A config value is wrong. ``field`` is the dotted path (``optim.lr``) when known."""

    def __init__(self, field: str, message: str):
        super().__init__(field, message)
        self.field = field
        self.message = message

    def __str__(self) -> str:
        return f"config field '{self.field}': {self.message}"

    def prefixed(self, prefix: str) -> ConfigError:
        return ConfigError(f"{prefix}.{self.field}" if prefix else self.field, self.message)


class InputError(UserError, ValueError):
    """Unreadable or malformed input. ``str(err)`` is ``"{path}[:{line}]: {what}; {what to do}"``."""

    def __init__(self, path: str | os.PathLike[str], line: int | None, message: str) -> None:
        path = os.fspath(path)
        super().__init__(path, line, message)
        self.path, self.line, self.message = path, line, message

    def __str__(self) -> str:
        return f"{self.path if self.line is None else f'{self.path}:{self.line}'}: {self.message}"


class MissingError(UserError, FileNotFoundError):
    """A file or folder the user named (or that a named folder must hold) is not there."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "missing file"


class OutputExistsError(UserError, FileExistsError):
    """An output folder holds something this command must not overwrite."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "output exists"


class ShardError(UserError, RuntimeError):
    """A shard is missing, unreadable or does not match the manifest."""


class StorageFullError(UserError, OSError):
    """The device ran out of space while writing ``path``; completed work is kept for a re-run."""

    def __init__(self, path: str, hint: str = "") -> None:
        super().__init__(28, f"no space left on the device writing {path}{'; ' + hint if hint else ''}")
        self.path = path

    def __reduce__(self):  # OSError pickles as (errno, strerror): rebuild from the path instead
        return (type(self), (self.path, self.strerror.partition("; ")[2]))


class UnknownNameError(UsageError, KeyError):
    """A name looked up in a fixed table (a token, a parameter) is not there."""

    def __str__(self) -> str:  # KeyError's own str() would quote the message
        return str(self.args[0]) if self.args else "unknown name"
