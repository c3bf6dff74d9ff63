"""``dnafm prepare``: genomes (FASTA) -> tokenized WebDataset shards + manifest, with Ray.

The driver streams each input record by record, cuts it into regions (work units) whose
boundaries are multiples of the window length, and hands each region to a Ray task that
windows, tokenizes and writes that unit's shards. Unit ids and shard names depend only on the
inputs and the config, never on scheduling, so any number of workers gives the same bytes. A
unit is done when its ``units/uNNNNNN.json`` exists (written after its shards are renamed), so
re-running the same command finishes only the missing units.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from datapipe import __version__
from datapipe.config import Config, check
from datapipe.fasta import read_fasta
from datapipe.logs import progress
from datapipe.shards import FORMAT_VERSION, MANIFEST, Sample, write_json_atomic, write_shard
from datapipe.species import species_token
from datapipe.tokenizers import TOKENIZER_NAMES, get_tokenizer
from datapipe.windows import GC_BINS, cut_windows

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class PrepareConfig(Config):
    tokenizer: str = "dnagpt-6mer"
    """Tokenizer name from the registry (datapipe.tokenizers.TOKENIZER_NAMES)."""
    window_tokens: int = 508
    """k-mer tokens per window; DNAGPT adds 4 template tokens, so 508 fills a 512-token context."""
    min_window_tokens: int = 16
    """A record's last, shorter window is kept only if it has at least this many tokens."""
    max_n_frac: float = 0.05
    """Windows with a larger fraction of N are dropped (DNAGPT: 5%)."""
    soft_mask: Literal["upper", "mask"] = "upper"
    """'upper': lower-case (soft-masked) bases are upper-cased; 'mask': also store a per-base mask."""
    region_bp: int = 4_000_000
    """Bases per work unit (rounded down to whole windows): bounds the memory of a task."""
    shard_max_samples: int = 1024
    """Samples per shard at most."""
    seed: int = 0
    num_workers: int = 2
    """Ray tasks in parallel (and CPUs of the local Ray instance when no address is given)."""
    ray_address: str | None = None
    """Address of an existing Ray cluster; a local instance is started when None."""

    def __post_init__(self) -> None:
        check(self.tokenizer in TOKENIZER_NAMES, "tokenizer", f"must be one of {', '.join(TOKENIZER_NAMES)}")
        check(self.window_tokens >= 1, "window_tokens", "must be >= 1")
        check(
            1 <= self.min_window_tokens <= self.window_tokens,
            "min_window_tokens",
            "must be between 1 and window_tokens",
        )
        check(0.0 <= self.max_n_frac <= 1.0, "max_n_frac", "must be a fraction in [0, 1]")
        check(self.shard_max_samples >= 1, "shard_max_samples", "must be >= 1")
        check(self.num_workers >= 1, "num_workers", "must be >= 1")
        check(
            self.region_bp >= self.window_bp(),
            "region_bp",
            f"must hold at least one window ({self.window_bp()} bp)",
        )

    def window_bp(self) -> int:
        tok = get_tokenizer(self.tokenizer)
        if tok.family == "dnagpt":  # non-overlapping k-mers
            return self.window_tokens * tok.k
        return self.window_tokens + tok.k - 1  # overlapping, stride 1

    def min_window_bp(self) -> int:
        tok = get_tokenizer(self.tokenizer)
        return (
            self.min_window_tokens * tok.k if tok.family == "dnagpt" else self.min_window_tokens + tok.k - 1
        )


@dataclass(kw_only=True)
class InputSpec:
    path: str
    species: str
    token: str = field(default="")
    assembly: str = field(default="")

    def __post_init__(self) -> None:
        self.token = self.token or species_token(self.species)
        self.assembly = self.assembly or _assembly_name(self.path)


def _assembly_name(path: str) -> str:
    name = os.path.basename(path)
    for ext in (".gz", ".bgz", ".fa", ".fasta", ".fna"):
        name = name.removesuffix(ext)
    return name


def process_unit(
    unit: dict[str, Any], seq: np.ndarray, mask: np.ndarray | None, cfg: dict[str, Any], out_dir: str
) -> dict[str, Any]:
    """Window, tokenize and write one work unit. Runs inside a Ray task; pure function of its inputs."""
    config = PrepareConfig.from_dict(cfg)
    tok = get_tokenizer(config.tokenizer)
    windows, stats = cut_windows(
        seq,
        offset=unit["start"],
        window_bp=config.window_bp(),
        min_window_bp=config.min_window_bp(),
        max_n_frac=config.max_n_frac,
    )
    samples = []
    for i, w in enumerate(windows):
        lo, hi = w.start - unit["start"], w.end - unit["start"]
        ids = tok.encode(seq[lo:hi]).astype(np.uint16)  # vocabularies are < 65,536
        meta = {
            "species": unit["species"],
            "token": unit["token"],
            "assembly": unit["assembly"],
            "record": unit["record"],
            "start": w.start,
            "end": w.end,
            "strand": "+",
            "gc": round(w.gc, 6),
            "n_frac": round(w.n_frac, 6),
        }
        packed = np.packbits(mask[lo:hi]) if mask is not None else None
        samples.append(Sample(key=f"u{unit['id']:06d}-{i:06d}", ids=ids, meta=meta, mask=packed))
    shard_dir = Path(out_dir) / "shards"
    shards = []
    for part, lo in enumerate(range(0, len(samples), config.shard_max_samples)):
        chunk = samples[lo : lo + config.shard_max_samples]
        shards.append(write_shard(shard_dir / f"u{unit['id']:06d}-{part:03d}.tar", chunk))
    result = {
        "unit": unit,
        "shards": shards,
        "kept": stats.kept,
        "dropped_n": stats.dropped_n,
        "dropped_short": stats.dropped_short,
        "base_counts": stats.base_counts,
        "gc_hist": stats.gc_hist,
        "tokens": sum(s["tokens"] for s in shards),
    }
    write_json_atomic(Path(out_dir) / "units" / f"u{unit['id']:06d}.json", result)
    return result


def iter_units(inputs: list[InputSpec], config: PrepareConfig):
    """Yield (unit, seq, mask) in a deterministic order: input, record, region."""
    region = (config.region_bp // config.window_bp()) * config.window_bp()
    unit_id = 0
    for spec in inputs:
        for rec in read_fasta(spec.path, soft_mask=config.soft_mask):
            for start in range(0, len(rec.seq), region):
                end = min(start + region, len(rec.seq))
                unit = {
                    "id": unit_id,
                    "path": spec.path,
                    "species": spec.species,
                    "token": spec.token,
                    "assembly": spec.assembly,
                    "record": rec.name,
                    "start": start,
                    "end": end,
                }
                mask = rec.mask[start:end] if rec.mask is not None else None
                yield unit, rec.seq[start:end], mask
                unit_id += 1


def _init_ray(config: PrepareConfig) -> None:
    import ray

    if ray.is_initialized():
        return
    if config.ray_address:
        ray.init(address=config.ray_address, log_to_driver=False)
        return
    # A local instance on loopback with auth off (STACK.md: token auth and external listeners
    # otherwise appear on their own). The user's environment wins where it sets these.
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    ray.init(
        num_cpus=config.num_workers,
        include_dashboard=False,
        log_to_driver=False,
        _node_ip_address="127.0.0.1",
        configure_logging=False,
    )


def run_prepare(inputs: list[InputSpec], out_dir: str | Path, config: PrepareConfig) -> dict[str, Any]:
    """Prepare shards for ``inputs`` into ``out_dir``; return the manifest."""
    import ray

    out = Path(out_dir)
    _check_out_dir(out, inputs, config)
    (out / "shards").mkdir(parents=True, exist_ok=True)
    (out / "units").mkdir(exist_ok=True)
    config.save_json(out / "prepare_config.json")
    write_json_atomic(out / "inputs.json", {"inputs": [vars(s) for s in inputs]})
    get_tokenizer(config.tokenizer).save(out / "tokenizer")

    units = iter_units(inputs, config)
    first = next(units, None)  # reads the first record: most malformed inputs fail here, before Ray starts
    if first is None:
        raise ValueError("the inputs hold no sequence")
    _init_ray(config)
    task = ray.remote(num_cpus=1, max_retries=3)(process_unit)
    cfg = config.to_dict()
    t0 = time.perf_counter()
    pending: list[Any] = []
    submitted = skipped = 0
    bases = 0
    bar = progress(iter(int, 1), desc="prepare: units", unit="unit")  # open-ended counter bar
    for unit, seq, mask in itertools.chain([first], units):
        bases += len(seq)
        if (out / "units" / f"u{unit['id']:06d}.json").exists():
            skipped += 1
            continue
        # Bound the driver's memory: at most 2 regions per worker in flight.
        while len(pending) >= 2 * config.num_workers:
            done, pending = ray.wait(pending, num_returns=1)
            ray.get(done)
            next(bar)
        pending.append(task.remote(unit, seq, mask, cfg, str(out)))
        submitted += 1
    for ref in pending:
        ray.get(ref)
        next(bar)
    elapsed = time.perf_counter() - t0
    log.info(
        "prepare: %d units processed, %d already done, %.1f Mb in %.1f s (%.1f MB/s of bases)",
        submitted,
        skipped,
        bases / 1e6,
        elapsed,
        bases / 1e6 / max(elapsed, 1e-9),
    )
    manifest = build_manifest(out, inputs, config, num_units=submitted + skipped)
    write_json_atomic(out / MANIFEST, manifest)
    return manifest


def _check_out_dir(out: Path, inputs: list[InputSpec], config: PrepareConfig) -> None:
    """Refuse to mix runs: an output folder holding another configuration's shards is an error."""
    saved = out / "prepare_config.json"
    if not saved.exists():
        if out.exists() and (out / "shards").exists() and any((out / "shards").iterdir()):
            raise FileExistsError(
                f"{out} holds shards but no prepare_config.json; choose an empty --out folder"
            )
        return
    import json

    old = json.loads(saved.read_text())
    new = config.to_dict()
    runtime = {"num_workers", "ray_address"}  # may change between a run and its resume
    diff = sorted(k for k in set(old) | set(new) if k not in runtime and old.get(k) != new.get(k))
    old_inputs = (
        json.loads((out / "inputs.json").read_text())["inputs"] if (out / "inputs.json").exists() else None
    )
    if diff or (old_inputs is not None and old_inputs != [vars(s) for s in inputs]):
        what = f"config fields {', '.join(diff)}" if diff else "the inputs"
        raise FileExistsError(
            f"{out} holds shards of another prepare run ({what} differ); "
            "choose an empty --out folder, or delete that folder to start over"
        )


def build_manifest(
    out: Path, inputs: list[InputSpec], config: PrepareConfig, *, num_units: int
) -> dict[str, Any]:
    import json

    results = [json.loads((out / "units" / f"u{i:06d}.json").read_text()) for i in range(num_units)]
    shards = [s for r in results for s in r["shards"]]
    base_counts = {b: sum(r["base_counts"][b] for r in results) for b in "ACGTN"}
    total_bases = sum(base_counts.values())
    per_species: dict[str, int] = {}
    for r in results:
        per_species[r["unit"]["species"]] = per_species.get(r["unit"]["species"], 0) + r["tokens"]
    gc_hist = [sum(r["gc_hist"][i] for r in results) for i in range(GC_BINS)]
    return {
        "format_version": FORMAT_VERSION,
        "code_version": __version__,
        "tokenizer": config.tokenizer,
        "config": config.to_dict(),
        "inputs": [vars(s) for s in inputs],
        "shards": shards,
        "totals": {
            "samples": sum(s["samples"] for s in shards),
            "tokens": sum(s["tokens"] for s in shards),
            "shards": len(shards),
            "units": num_units,
            "bases": total_bases,
            "windows_dropped_n": sum(r["dropped_n"] for r in results),
            "windows_dropped_short": sum(r["dropped_short"] for r in results),
        },
        "tokens_per_species": per_species,
        "base_composition": base_counts,
        "n_fraction": base_counts["N"] / max(total_bases, 1),
        "gc_histogram": {"edges": [i / GC_BINS for i in range(GC_BINS + 1)], "counts": gc_hist},
    }
