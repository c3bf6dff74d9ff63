"""The manifest of a prepared folder: written from the units' markers, read by the trainer, checked by verify."""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from datapipe.common.errors import ShardError
from datapipe.shards.format import SHARDS, load_npy
from datapipe.shards.reader import decode_sample, scan_offsets, sha256_file

if TYPE_CHECKING:
    from datapipe.io import Storage
    from datapipe.prepare_config import PrepareConfig

MANIFEST = "manifest.json"
FORMAT_VERSION = 2


def read_manifest(data_dir: str | Path) -> dict[str, Any]:
    path = local_dir(data_dir) / MANIFEST
    if not path.exists():
        raise ShardError(f"{path} not found: point --data at a folder written by `dnafm prepare`")
    try:
        manifest = json.loads(path.read_bytes())
    except (ValueError, RecursionError) as err:  # JSONDecodeError, UnicodeDecodeError, nesting too deep
        raise ShardError(f"{path} is not valid JSON ({err}); re-run `dnafm prepare`") from err
    if not isinstance(manifest, dict):
        raise ShardError(f"{path} is not a JSON object; re-run `dnafm prepare`")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ShardError(
            f"{path}: format_version {manifest.get('format_version')!r}, "
            f"this dnafm reads {FORMAT_VERSION}; re-run `dnafm prepare`"
        )
    _check_entries(manifest, path)
    return manifest


def _check_entries(manifest: dict[str, Any], path: Path) -> None:
    """The fields the loader and verify use, with their types; shard and index names must be plain file
    names (a name like '../x' or '/x' would make the reader open a file outside the folder)."""
    shards, totals, config = manifest.get("shards"), manifest.get("totals"), manifest.get("config", {})
    problem = None
    if not isinstance(shards, list) or not isinstance(totals, dict) or not isinstance(config, dict):
        problem = "'shards' must be a list, 'totals' and 'config' objects"
    elif not isinstance(manifest.get("tokenizer", ""), str) or not _count(config.get("window_tokens", 0)):
        problem = "'tokenizer' must be a name and config.window_tokens a count"
    for i, entry in enumerate(shards if problem is None else []):
        if not isinstance(entry, dict):
            problem = f"shards[{i}] is not an object"
        elif not all(_plain_name(entry.get(k)) for k in ("name", "index")):
            problem = f"shards[{i}]: name and index must be plain file names, got {entry.get('name')!r}"
        elif not all(_count(entry.get(k)) for k in ("samples", "tokens", "bytes")):
            problem = f"shards[{i}]: samples, tokens and bytes must be counts"
        elif not all(isinstance(entry.get(k), str) for k in ("sha256", "index_sha256")):
            problem = f"shards[{i}]: sha256 and index_sha256 must be strings"
        if problem:
            break
    if problem:
        raise ShardError(f"{path}: {problem}; the manifest is damaged, re-run `dnafm prepare`")


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _plain_name(value: Any) -> bool:
    return (
        isinstance(value, str)
        and value not in ("", ".", "..")
        and "/" not in value
        and "\\" not in value
        and "\0" not in value
        and _fits_a_file_name(value)
    )


def _fits_a_file_name(value: str) -> bool:
    """At most 255 bytes of UTF-8 (NAME_MAX of Linux file systems): longer, or not encodable (a lone surrogate
    from JSON), and opening it fails with OSError / UnicodeEncodeError instead of naming the manifest."""
    try:
        return len(value.encode("utf-8")) <= 255
    except UnicodeEncodeError:
        return False


def local_dir(data_dir: str | Path) -> Path:
    """A data folder as a local path (``file://`` URLs accepted); training and verify read local files."""
    text = str(data_dir)
    if "://" in text:
        if not text.startswith("file://"):
            raise ShardError(
                f"{text}: only local folders (or file:// URLs) can be read here; copy the data locally"
            )
        text = text.removeprefix("file://")
    return Path(text)


def verify(data_dir: str | Path, *, workers: int = 1) -> list[str]:
    """Re-read every shard and its index and compare with the manifest. Problems found (empty = OK).

    One process reads ~120 MB of shards per second on a 2-core VM (sha256, every tar header, every sample
    decoded; 10 Gbp of shards in 82 s, BENCHMARKS.md); ``workers`` > 1 spreads the shards over that many
    processes (2: 40.5 s), problems still in manifest order."""
    data_dir = local_dir(data_dir)
    manifest = read_manifest(data_dir)
    entries = manifest["shards"]
    check = functools.partial(_verify_shard, data_dir)
    problems: list[str] = []
    samples = tokens = 0
    if workers > 1 and len(entries) > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        # spawn: the caller may hold threads (torch, Ray) that a forked child would inherit half-copied.
        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
            results = list(pool.map(check, entries, chunksize=max(1, min(64, len(entries) // (4 * workers)))))
    else:
        results = map(check, entries)
    for found, n_samples, n_tokens in results:
        problems += found
        samples += n_samples
        tokens += n_tokens
    totals = manifest.get("totals", {})
    if not problems and (samples, tokens) != (totals.get("samples"), totals.get("tokens")):
        problems.append(
            f"totals: shards hold {samples} samples / {tokens} tokens, manifest totals say "
            f"{totals.get('samples')} / {totals.get('tokens')}"
        )
    return problems


def _verify_shard(data_dir: Path, entry: dict[str, Any]) -> tuple[list[str], int, int]:
    """(problems, samples, tokens) of one shard checked against its manifest entry."""
    path = data_dir / SHARDS / entry["name"]
    if not path.exists():
        return [f"{entry['name']}: missing"], 0, 0
    problems = []
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != entry["sha256"]:
        problems.append(f"{entry['name']}: sha256 differs from the manifest")
    index_path = data_dir / SHARDS / entry["index"]
    if not index_path.exists() or sha256_file(index_path) != entry["index_sha256"]:
        problems.append(f"{entry['index']}: missing, or sha256 differs from the manifest")
    try:
        offsets = scan_offsets(data, str(path))
        if index_path.exists() and load_npy(index_path.read_bytes()).tolist() != offsets:
            problems.append(f"{entry['index']}: offsets differ from the shard's members")
        n_tok = 0
        for i in range(len(offsets) - 1):
            n_tok += len(
                decode_sample(memoryview(data)[offsets[i] : offsets[i + 1]], str(path), offsets[i]).ids
            )
    except ShardError as err:
        return [*problems, str(err)], 0, 0
    if len(offsets) - 1 != entry["samples"] or n_tok != entry["tokens"]:
        problems.append(
            f"{entry['name']}: {len(offsets) - 1} samples / {n_tok} tokens, "
            f"manifest says {entry['samples']} / {entry['tokens']}"
        )
    return problems, len(offsets) - 1, n_tok


def build_manifest(
    storage: Storage,
    inputs: list[dict[str, Any]],
    units_per_input: list[int],
    records_per_input: dict[int, int],
    config: PrepareConfig,
) -> dict[str, Any]:
    """The manifest from the unit markers (``units/<unit>.json``), in unit order: every shard, the totals,
    tokens per species, base composition, GC histogram, per input its record; the config and, in words,
    the recipe. ``inputs`` are the inputs' records (path, species, size, format, compression)."""
    from datapipe.common import __version__
    from datapipe.tokenizers import get_tokenizer
    from datapipe.units import UNITS, unit_name
    from datapipe.windows import GC_BINS

    shards: list[dict[str, Any]] = []
    base_counts = dict.fromkeys("ACGTN", 0)
    gc_hist = [0] * GC_BINS
    per_species: dict[str, int] = {}
    kept = dropped_n = dropped_short = units = 0
    per_input = []
    for i, n in enumerate(units_per_input):
        bases = 0
        for c in range(n):
            r = storage.read_json(UNITS, f"{unit_name(i, c)}.json")
            shards += r["shards"]
            for b in "ACGTN":
                base_counts[b] += r["base_counts"][b]
            bases += sum(r["base_counts"].values())
            gc_hist = [a + b for a, b in zip(gc_hist, r["gc_hist"], strict=True)]
            for sp, t in r["tokens_per_species"].items():
                per_species[sp] = per_species.get(sp, 0) + t
            kept += r["kept"]
            dropped_n += r["dropped_n"]
            dropped_short += r["dropped_short"]
        units += n
        entry = {**inputs[i], "units": n, "bases": bases}
        if i in records_per_input:
            entry["records"] = records_per_input[i]
        per_input.append(entry)
    total_bases = sum(base_counts.values())
    tok = get_tokenizer(config.tokenizer)
    return {
        "format_version": FORMAT_VERSION,
        "code_version": __version__,
        "tokenizer": config.tokenizer,
        "config": config.output_dict(),
        "recipe": _recipe(config, tok.family, tok.k),
        "inputs": per_input,
        "shards": shards,
        "totals": {
            "samples": sum(s["samples"] for s in shards),
            "tokens": sum(s["tokens"] for s in shards),
            "shards": len(shards),
            "units": units,
            "bases": total_bases,
            "windows_kept": kept,
            "windows_dropped_n": dropped_n,
            "windows_dropped_short": dropped_short,
        },
        "tokens_per_species": dict(sorted(per_species.items())),
        "base_composition": base_counts,
        "n_fraction": base_counts["N"] / max(total_bases, 1),
        "gc_histogram": {"edges": [i / GC_BINS for i in range(GC_BINS + 1)], "counts": gc_hist},
    }


def _recipe(config: PrepareConfig, family: str, k: int) -> dict[str, Any]:
    """Every sampling choice, in words as well as fields, so a reader of the manifest needs no code."""
    from datapipe.windows import ANCHOR_WINDOWS

    if family == "dnagpt":
        layout = (
            f"non-overlapping windows of {config.window_tokens} {k}-mer tokens ({config.window_bp()} bp) "
            f"from each record start; a record's last window is kept with >= {config.min_window_tokens} tokens"
        )
    else:
        layout = (
            f"consecutive pieces, {config.full_length_frac:.0%} of {config.window_tokens} tokens, the others "
            f"uniform in [{config.min_window_tokens}, {config.window_tokens}] tokens (overlapping {k}-mers), "
            f"drawn per anchor of {ANCHOR_WINDOWS} x {config.window_bp()} bp from (seed, record, anchor)"
        )
    return {
        "family": family,
        "k": k,
        "layout": layout,
        "window_bp": config.window_bp(),
        "n_filter": f"windows with N fraction > {config.max_n_frac} dropped",
        "gc": "(G + C) / (A + C + G + T) of each window, computed at preparation time",
        "soft_mask": "upper-cased"
        if config.soft_mask == "upper"
        else "upper-cased, per-base mask stored (mask.npy)",
        "reverse_complement": config.reverse_complement,
        "maf": "each aligned row is a sequence of its own, gaps removed; windows never span blocks",
    }
