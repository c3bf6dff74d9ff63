"""Writing shards: a work unit's samples into ``<unit>-<part>.tar`` files and their ``.idx.npy`` indexes."""

from __future__ import annotations

import functools
import hashlib
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from datapipe.shards.format import BLOCK, KEY, SHARDS, Sample, add_member, npy_header
from datapipe.windows import Rows

if TYPE_CHECKING:
    from datapipe.io import Storage

_FINITE = float("inf")


class _JsonFloat(float):
    """A float whose %r is JSON's (NaN, Infinity): float's own repr ('nan', 'inf') is not JSON."""

    def __repr__(self) -> str:
        return json.dumps(float(self))


class UnitWriter:
    """Writes one work unit's samples into shards ``<unit>-<part>.tar`` of at most ``max_samples``.

    A full shard is written as soon as it is complete, so memory is one shard whatever the unit.
    The per-sample loop is the hot path of ``prepare`` (~330 windows per Mb): headers are spliced
    from cached pieces and the JSON from a per-record template, ~3-4 us per sample.
    """

    def __init__(
        self, storage: Storage, unit: str, *, max_samples: int, fsync: bool, folder: str = SHARDS
    ) -> None:
        self.storage, self.unit, self.max_samples, self.fsync = storage, unit, max_samples, fsync
        self.folder = folder
        self.entries: list[dict[str, Any]] = []
        self.count = 0  # samples of the unit so far (the index in the sample key)
        self._parts: list[bytes | memoryview] = []
        self._offsets: list[int] = []
        self._pos = 0
        self._tokens = 0
        self._pool: Any = None
        self._pending: Any = None

    def add_rows(
        self, rows: Rows, contexts: list[tuple[str, str, str, str]], keys: list[str] | None = None
    ) -> None:
        """Append samples; ``contexts`` are (species, token, assembly, record), indexed by
        ``rows.ctx`` (all rows use ``contexts[0]`` when it is None); ``keys`` override sample keys."""
        templates = [self._meta_template(*c) for c in contexts]
        prefix = self.unit.encode() + b"-"
        ids_sum, meta_sum, mask_sum = (sum(prefix + s) for s in (b".ids.npy", b".meta.json", b".mask.npy"))
        masks, ctx = rows.masks, rows.ctx
        parts, offsets = self._parts, self._offsets
        for j in range(len(rows.starts)):
            if keys is not None:
                name = keys[j].encode()
                digits_sum = sum(name) - sum(prefix)
            else:
                digits = b"%06d" % self.count
                name = prefix + digits
                digits_sum = sum(digits)
            offsets.append(self._pos)
            n_tok = rows.n_tokens[j]
            hdr = npy_header("<u2", n_tok)
            pos = self._pos + add_member(
                parts,
                name + b".ids.npy",
                ids_sum + digits_sum,
                (hdr, rows.ids[j]),
                len(hdr) + len(rows.ids[j]),
            )
            template = templates[ctx[j] if ctx is not None else 0]
            gc, n_frac = rows.gc[j], rows.n_frac[j]
            if not (_FINITE > gc > -_FINITE and _FINITE > n_frac > -_FINITE):  # NaN/inf: JSON's spelling
                gc, n_frac = _JsonFloat(gc), _JsonFloat(n_frac)
            meta = template % (rows.ends[j], gc, n_frac, rows.starts[j], rows.strands[j].encode())
            pos += add_member(parts, name + b".meta.json", meta_sum + digits_sum, (meta,), len(meta))
            if masks is not None:
                mhdr = npy_header("|u1", len(masks[j]))
                pos += add_member(
                    parts,
                    name + b".mask.npy",
                    mask_sum + digits_sum,
                    (mhdr, masks[j]),
                    len(mhdr) + len(masks[j]),
                )
            self._pos = pos
            self.count += 1
            self._tokens += n_tok
            if len(offsets) == self.max_samples:
                self.flush()
                parts, offsets = self._parts, self._offsets

    @staticmethod
    @functools.cache
    def _meta_template(species: str, token: str, assembly: str, record: str) -> bytes:
        """The meta JSON around the per-window numbers, keys sorted as json.dumps(sort_keys=True) writes them."""

        def lit(value: str) -> bytes:
            return json.dumps(value).encode().replace(b"%", b"%%")

        return (
            b'{"assembly": '
            + lit(assembly)
            + b', "end": %d, "gc": %r, "n_frac": %r, "record": '
            + lit(record)
            + b', "species": '
            + lit(species)
            + b', "start": %d, "strand": "%s", "token": '
            + lit(token)
            + b"}"
        )

    def flush(self, name: str | None = None) -> None:
        """Write the samples collected so far as the next shard (nothing when there are none).

        Hashing, writing and fsync run on a background thread (they release the GIL), overlapping
        the next shard's tokenization; :meth:`wait` must be called before the unit is marked done.
        """
        if not self._offsets:
            return
        name = name or f"{self.unit}-{len(self.entries):03d}"
        self._offsets.append(self._pos)
        self._parts.append(b"\0" * (2 * BLOCK))  # end-of-archive
        blob = b"".join(self._parts)
        index = npy_header("<u8", len(self._offsets)) + np.asarray(self._offsets, "<u8").tobytes()
        entry = {
            "name": f"{name}.tar",
            "samples": len(self._offsets) - 1,
            "tokens": self._tokens,
            "bytes": len(blob),
            "index": f"{name}.idx.npy",
        }
        self.entries.append(entry)
        self._parts, self._offsets, self._pos, self._tokens = [], [], 0, 0
        if self._pending is not None:
            self._pending.result()  # at most one shard in flight: memory stays one or two shards
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shard-writer")
        self._pending = self._pool.submit(self._write, entry, blob, index)

    def _write(self, entry: dict[str, Any], blob: bytes, index: bytes) -> None:
        entry["sha256"] = hashlib.sha256(blob).hexdigest()
        entry["index_sha256"] = hashlib.sha256(index).hexdigest()
        self.storage.write_bytes(blob, self.folder, entry["name"], fsync=self.fsync)
        self.storage.write_bytes(index, self.folder, entry["index"], fsync=self.fsync)

    def wait(self) -> list[dict[str, Any]]:
        """Flush, wait for every shard to be on storage (raising its error), return the entries."""
        self.flush()
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
        return self.entries


def write_shard(path: str | Path, samples: list[Sample]) -> dict[str, Any]:
    """Write ``samples`` as one shard ``path`` (+ its index beside it); return its manifest entry.

    Keys must have the form ``f0000-u000000-000000``; meta needs the keys ``prepare`` writes.
    ``prepare`` itself writes through :class:`UnitWriter`.
    """
    from datapipe.io import Storage

    path = Path(path)
    stem = path.name.removesuffix(".tar")
    writer = UnitWriter(Storage(path.parent), stem, max_samples=len(samples) + 1, fsync=False, folder="")
    for s in samples:
        if not re.fullmatch(KEY, s.key):
            raise ValueError(f"sample key {s.key!r} is not of the form f0000-u000000-000000")
        m = s.meta
        ids = np.ascontiguousarray(s.ids, "<u2").tobytes()
        rows = Rows(
            [int(m.get("start", 0))],
            [int(m.get("end", 0))],
            [str(m.get("strand", "+"))],
            [float(m.get("gc", 0.0))],
            [float(m.get("n_frac", 0.0))],
            [ids],
            [len(s.ids)],
            None if s.mask is None else [bytes(s.mask)],
        )
        writer.unit = s.key.rsplit("-", 1)[0]
        ctx = (m.get("species", ""), m.get("token", ""), m.get("assembly", ""), m.get("record", ""))
        writer.add_rows(rows, [ctx], keys=[s.key])
    writer.flush(stem)
    return writer.wait()[0]
