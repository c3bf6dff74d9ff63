"""Chromosome sequences in memory for the dataset builders, and cutting windows into a LabelledSet."""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from datapipe.common.errors import UsageError
from datapipe.fasta import read_fasta
from eval.annotations import chrom_key
from eval.datasets import LabelledSet

_N = ord("N")
_COMPLEMENT = np.arange(256, dtype=np.uint8)
for _a, _b in zip(b"ACGTN", b"TGCAN", strict=True):
    _COMPLEMENT[_a] = _b


@dataclass
class Genome:
    """Chromosome sequences in memory: record name -> (L,) uint8 upper-case ASCII A/C/G/T/N.

    chr20 of GRCh37 is 63 MB here; a whole human genome would be 3.1 GB, so pass ``chroms`` to keep only
    the records a task needs."""

    records: dict[str, np.ndarray]
    _n_runs: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict, repr=False)

    @classmethod
    def from_fasta(cls, path: str | os.PathLike[str], *, chroms: Collection[str] | None = None) -> Genome:
        """Read a (b)gzip or plain FASTA; ``chroms`` keeps only records matching by name ('chr20' == '20')."""
        keys = None if chroms is None else {chrom_key(c) for c in chroms}
        records = {r.name: r.seq for r in read_fasta(path) if keys is None or chrom_key(r.name) in keys}
        if not records:
            raise UsageError(f"{os.fspath(path)}: no FASTA record matches {sorted(chroms or [])}")
        return cls(records)

    @classmethod
    def from_sequences(cls, sequences: Mapping[str, str | bytes]) -> Genome:
        """Small in-memory genomes (tests, examples): upper-cased; anything but ACGT becomes N."""
        table = np.full(256, _N, dtype=np.uint8)
        for c in b"ACGT":
            table[c] = table[c | 0x20] = c
        out = {}
        for name, seq in sequences.items():
            raw = seq.encode("ascii") if isinstance(seq, str) else bytes(seq)
            out[name] = table[np.frombuffer(raw, dtype=np.uint8)]
        return cls(out)

    def resolve(self, chrom: str) -> str | None:
        """The record name for an annotation's chromosome name ('chr20' -> '20'), or None."""
        key = chrom_key(chrom)
        return next((name for name in self.records if chrom_key(name) == key), None)

    def n_runs(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """Sorted, disjoint runs of N as (starts, ends); computed once per record (~0.1 s for 63 Mb)."""
        if name not in self._n_runs:
            is_n = self.records[name] == _N
            # segments of constant N-ness; (np.diff with prepend= would upcast 63M bytes to int64: 10x slower)
            bounds = np.concatenate([[0], np.flatnonzero(is_n[1:] != is_n[:-1]) + 1, [len(is_n)]])
            runs = is_n[bounds[:-1]] if len(is_n) else np.zeros(0, dtype=bool)
            self._n_runs[name] = (bounds[:-1][runs], bounds[1:][runs])
        return self._n_runs[name]

    def windows_ok(self, name: str, starts: np.ndarray, length: int) -> np.ndarray:
        """(n,) bool: the window [start, start + length) lies inside the record and holds no N."""
        starts = np.asarray(starts, dtype=np.int64)
        inside = (starts >= 0) & (starts + length <= len(self.records[name]))
        run_starts, run_ends = self.n_runs(name)
        # The last N run that starts before the window's end is the only one that can reach into it,
        # because runs are disjoint and sorted.
        if len(run_starts) == 0:
            return inside
        i = np.searchsorted(run_starts, starts + length, side="left") - 1
        hits_n = (i >= 0) & (run_ends[np.maximum(i, 0)] > starts)
        return inside & ~hits_n

    def motif_at(self, name: str, pos: np.ndarray, motif: bytes) -> np.ndarray:
        """(n,) bool: the forward-strand bases at [pos, pos + len(motif)) equal ``motif``."""
        seq = self.records[name]
        pos = np.asarray(pos, dtype=np.int64)
        ok = (pos >= 0) & (pos + len(motif) <= len(seq))
        safe = np.where(ok, pos, 0)
        for j, base in enumerate(motif):
            ok &= seq[np.minimum(safe + j, len(seq) - 1)] == base
        return ok

    def cut(self, name: str, starts: np.ndarray, length: int, minus: np.ndarray) -> np.ndarray:
        """(n, length) uint8 windows; rows where ``minus`` is True are reverse-complemented."""
        view = np.lib.stride_tricks.sliding_window_view(self.records[name], length)
        out = view[np.asarray(starts, dtype=np.int64)]  # fancy indexing copies: n * length bytes
        out[minus] = _COMPLEMENT[out[minus, ::-1]]
        return out


def to_labelled_set(genome: Genome, windows: pd.DataFrame, *, name: str) -> LabelledSet:
    """Cut every row of a window table (in table order) into a LabelledSet."""
    seqs: list[str] = [""] * len(windows)
    lengths = (windows["end"] - windows["start"]).to_numpy()
    for (chrom, length), rows in windows.groupby(["chrom", lengths], sort=False).indices.items():
        sub = windows.iloc[rows]
        arr = genome.cut(chrom, sub["start"].to_numpy(), int(length), sub["strand"].to_numpy() == "-")
        for i, row in zip(rows, arr, strict=True):
            seqs[i] = row.tobytes().decode("ascii")
    return LabelledSet(name=name, sequences=seqs, labels=windows["label"].to_numpy(np.int64))


# ---------------------------------------------------------------------------------------- shared helpers
