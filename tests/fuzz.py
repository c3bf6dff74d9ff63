"""Shared machinery of the fuzz tests (tests/test_fuzz_*.py): Hypothesis profiles, input mutators, and the one
property every reader must keep.

The property: a reader given any bytes either returns, or raises a :class:`datapipe.common.errors.UserError`
whose message names the file. Any other exception is a dnafm bug (the CLI would show a traceback); so is a
read that takes longer than ``TIME_LIMIT`` seconds (a hang) or one that leaves a file behind.

Budgets: the ``quick`` profile (the default, part of the test suite) runs ``QUICK`` examples per property and is
derandomised, so a CI failure reproduces; ``DNAFM_FUZZ=long`` (``./dev fuzz``) runs ``LONG`` examples per
property with fresh random seeds each time. Counts per reader land in ``DNAFM_FUZZ_COUNTS`` (a JSON lines
file) when that is set, which is how BENCHMARKS.md's table is made.
"""

from __future__ import annotations

import atexit
import contextlib
import gzip
import json
import os
import signal
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from datapipe.common.errors import UserError
from datapipe.io import bgzf_compress

REPO = Path(__file__).resolve().parents[1]
PROFILE = os.environ.get("DNAFM_FUZZ", "quick")
QUICK, LONG = 200, int(os.environ.get("DNAFM_FUZZ_EXAMPLES", "3000"))
TIME_LIMIT = 30  # seconds per example: inputs are at most a few MB, so a read this slow is a hang

_common = dict(
    deadline=None,
    database=None,  # no .hypothesis/ folder in the checkout; failures print their reproducer instead
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
settings.register_profile("quick", max_examples=QUICK, derandomize=True, print_blob=True, **_common)
settings.register_profile("long", max_examples=LONG, print_blob=True, **_common)
settings.load_profile(PROFILE)


def fuzz(scale: float = 1.0) -> settings:
    """Settings for one property: the profile's example count times ``scale`` (cheap readers get more)."""
    return settings(max_examples=max(10, int(settings.default.max_examples * scale)))


# ------------------------------------------------------------------------------------------ mutations

SPECIAL = [
    b"\0",
    b"\r\n",
    b"\r",
    b"\n",
    b"\n\n",
    b"\t",
    b" ",
    b"\xff\xfe",  # a UTF-16 byte-order mark: invalid UTF-8
    b"\xe9",  # latin-1 e-acute: invalid UTF-8
    b"\xc3",  # a cut UTF-8 sequence
    "\u00e9".encode(),  # valid UTF-8, non-ASCII
    b"\x1f\x8b",  # gzip magic in the middle of text
    b">",
    b"#",
    b",",
    b";",
    b"=",
    b'"',
    b"'",
    b"-",
    b"-1",
    b"0",
    b"nan",
    b"inf",
    b"1e999",
    b"99999999999999999999999",
    b"9" * 5000,  # more digits than Python converts to an int by default
    b"../",
    b"/",
    b"\\",
]


def _lines(data: bytes) -> list[bytes]:
    return data.split(b"\n")


@st.composite
def _op(draw: Any, data: bytes) -> bytes:
    """One mutation of ``data``."""
    kind = draw(
        st.sampled_from(
            ["flip", "insert", "special", "delete", "truncate", "line", "field", "huge", "crlf", "empty"]
        )
    )
    n = len(data)
    pos = draw(st.integers(0, n))
    if kind == "flip" and n:
        pos = min(pos, n - 1)
        return data[:pos] + bytes([draw(st.integers(0, 255))]) + data[pos + 1 :]
    if kind == "insert":
        return data[:pos] + draw(st.binary(min_size=1, max_size=16)) + data[pos:]
    if kind == "special":
        return data[:pos] + draw(st.sampled_from(SPECIAL)) + data[pos:]
    if kind == "delete":
        return data[:pos] + data[pos + draw(st.integers(1, 64)) :]
    if kind == "truncate":
        return data[:pos]
    if kind == "crlf":
        return data.replace(b"\n", b"\r\n")
    lines = _lines(data)
    i = draw(st.integers(0, len(lines) - 1))
    if kind == "line":  # delete, duplicate, blank or move a whole line
        how = draw(st.sampled_from(["delete", "duplicate", "blank", "move"]))
        if how == "delete":
            del lines[i]
        elif how == "duplicate":
            lines.insert(i, lines[i])
        elif how == "blank":
            lines[i] = b""
        else:
            lines.insert(draw(st.integers(0, len(lines))), lines.pop(i))
        return b"\n".join(lines)
    if kind == "field":  # one field of a line replaced: the "valid file with one broken field" case
        sep = b"\t" if b"\t" in lines[i] else b"," if b"," in lines[i] else b" "
        fields = lines[i].split(sep)
        j = draw(st.integers(0, len(fields) - 1))
        fields[j] = draw(st.sampled_from([*SPECIAL, b""]) | st.binary(max_size=12))
        lines[i] = sep.join(fields)
        return b"\n".join(lines)
    if kind == "huge":  # one line far longer than any real one (a binary file, a missing newline)
        size = draw(st.sampled_from([5_000, 100_000, 1_200_000]))
        unit = draw(st.sampled_from([b"A", b"ACGT", b"x", b"\t", b"0 ", lines[i][:50] or b"A"]))
        lines.insert(i, unit * (size // len(unit)))
        return b"\n".join(lines)
    if kind == "empty":
        return b""
    return data


@st.composite
def mutated(draw: Any, seeds: list[bytes], *, max_ops: int = 3) -> bytes:
    """Random bytes, or one of ``seeds`` with 1..max_ops mutations."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=2048))
    data = draw(st.sampled_from(seeds))
    for _ in range(draw(st.integers(1, max_ops))):
        data = draw(_op(data))
    return data


@st.composite
def packed(draw: Any, data: bytes, *, truncate: bool = True) -> bytes:
    """``data`` as it is, gzip, bgzip, or a compressed stream cut short or with a flipped byte."""
    how = draw(
        st.sampled_from(
            ["plain", "plain", "gzip", "bgzf", "cut", "flip"] if truncate else ["plain", "gzip", "bgzf"]
        )
    )
    if how == "plain":
        return data
    comp = gzip.compress(data, mtime=0) if draw(st.booleans()) or how == "gzip" else bgzf_compress(data)
    if how in ("gzip", "bgzf"):
        return comp
    pos = draw(st.integers(0, len(comp) - 1))
    if how == "cut":
        return comp[:pos]
    return comp[:pos] + bytes([comp[pos] ^ draw(st.integers(1, 255))]) + comp[pos + 1 :]


def gzip_bomb(size: int, unit: bytes = b"A" * 60 + b"\n") -> bytes:
    """A small gzip member expanding to ``size`` bytes of ``unit`` (1 GB of text compresses to ~1 MB)."""
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = unit * ((1 << 20) // len(unit))
    out, left = [], size
    while left > 0:
        piece = block[:left]
        out.append(comp.compress(piece))
        left -= len(piece)
    out.append(comp.flush())
    return b"".join(out)


# ------------------------------------------------------------------------------------------- the property


class Hang(Exception):
    """A reader ran past TIME_LIMIT (raised from SIGALRM; never a UserError)."""


@contextlib.contextmanager
def time_limit(seconds: int) -> Iterator[None]:
    def alarm(signum, frame):  # noqa: ARG001
        raise Hang(f"no result after {seconds} s: a hang")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _tree(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


_COUNTS: dict[str, list[int]] = {}


def _count(reader: str, error: bool) -> None:
    c = _COUNTS.setdefault(reader, [0, 0])
    c[0] += 1
    c[1] += error


def flush_counts() -> None:
    """Append this process's per-reader counts (inputs tried, of them refused) to $DNAFM_FUZZ_COUNTS."""
    path = os.environ.get("DNAFM_FUZZ_COUNTS")
    if not path or not _COUNTS:
        return
    with open(path, "a") as f:
        for reader, (tried, refused) in sorted(_COUNTS.items()):
            f.write(
                json.dumps({"reader": reader, "tried": tried, "refused": refused, "profile": PROFILE}) + "\n"
            )
    _COUNTS.clear()


atexit.register(flush_counts)


def outcome(
    reader: str,
    fn: Callable[[Path], Any],
    path: Path,
    *,
    names: tuple[Path, ...] = (),
    watch: Path | None = None,
) -> Any:
    """``fn(path)``'s result, or None when it raised a UserError naming the file (the allowed failure).

    Anything else fails the example: another exception propagates (Hypothesis shrinks it to a minimal
    input), a hang raises :class:`Hang`, and a file appearing in ``path``'s folder fails an assert.
    ``names``: the message must name one of these files (default: ``path``); ``watch``: the folder that must
    not change (default: ``path``'s folder).
    """
    folder = watch or path.parent
    before = _tree(folder)
    t0 = time.perf_counter()
    try:
        with time_limit(TIME_LIMIT):
            result = fn(path)
    except UserError as err:
        _count(reader, True)
        want = [p.name for p in names or (path,)]
        assert any(w in str(err) for w in want), f"the error does not name {' or '.join(want)}: {err}"
        return None
    finally:
        assert _tree(folder) == before, f"{reader} left files behind: {_tree(folder) - before}"
        assert time.perf_counter() - t0 < TIME_LIMIT
    _count(reader, False)
    return result


def write(folder: Path, name: str, data: bytes) -> Path:
    path = folder / name
    path.write_bytes(data)
    return path


def seed_lines(path: Path, n: int) -> bytes:
    """The first ``n`` lines of a (gzip or plain) file of the repository or the data collection."""
    with open(path, "rb") as f:
        opener = gzip.open if f.read(2) == b"\x1f\x8b" else open
    with opener(path, "rb") as f:
        return b"".join(f.readline() for _ in range(n))


def summary(path: str) -> str:
    """A markdown table of a counts file: inputs tried and refused (with a clear error) per reader."""
    totals: dict[str, list[int]] = {}
    for line in Path(path).read_text().splitlines():
        row = json.loads(line)
        t = totals.setdefault(row["reader"], [0, 0])
        t[0] += row["tried"]
        t[1] += row["refused"]
    lines = ["| reader | inputs tried | refused with a UserError | read |", "|---|---:|---:|---:|"]
    lines += [f"| {r} | {t} | {f} | {t - f} |" for r, (t, f) in sorted(totals.items())]
    return "\n".join(lines)


if __name__ == "__main__":
    import sys

    print(summary(sys.argv[1]) if Path(sys.argv[1]).exists() else f"no counts in {sys.argv[1]}")
