"""`dnafm prepare`: FASTA / MAF inputs -> shards + manifest (Ray), and `--verify`."""

from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path
from typing import Any

from datapipe.common.cliargs import command_parser, flag_overrides
from datapipe.common.errors import UsageError
from datapipe.tokenizers import TOKENIZER_NAMES

# Flags that set prepare config fields (the rest name inputs and outputs).
FLAG_FIELDS = {
    "tokenizer": "tokenizer",
    "window_tokens": "window_tokens",
    "num_workers": "num_workers",
    "ray_address": "ray_address",
    "reverse_complement": "reverse_complement=true",
}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = command_parser(
        sub,
        "prepare",
        set_example="shard_max_samples=512 --set soft_mask=mask",
        dry_run="print the resolved config and inputs, then exit",
        help="turn FASTA genomes and MAF alignments into tokenized WebDataset shards (Ray)",
        description="Window, filter, tokenize and shard genomes with Ray tasks, on this machine or on a "
        "Ray cluster (--ray-address). Inputs and --out may be local paths or fsspec URLs (file://, "
        "s3://, gs:// with the matching fsspec backend). Re-running the same command into the same "
        "--out finishes only what is missing.",
    )
    p.add_argument(
        "inputs", nargs="*", metavar="INPUT", help="FASTA (plain, gzip, bgzip) or MAF files, paths or URLs"
    )
    p.add_argument("--out", help="output folder or URL (shards/, manifest.json, ...)")
    p.add_argument("--tokenizer", choices=TOKENIZER_NAMES, help="tokenizer (default dnagpt-6mer)")
    p.add_argument(
        "--species",
        action="append",
        default=[],
        help="species of the FASTA inputs (human, mouse, ecoli, ... or a token like '<W>'): once for all "
        "inputs, or once per input in the same order",
    )
    p.add_argument(
        "--species-table",
        metavar="FILE",
        help="lines 'NAME SPECIES [TOKEN]': NAME is an input (path, file name or assembly) or a MAF source "
        "prefix (hg19 of hg19.chr22); e.g. 'Ptro chimp <W>'",
    )
    p.add_argument("--window-tokens", type=int, help="tokens per window (prepare config window_tokens)")
    p.add_argument("--reverse-complement", action="store_true", help="also write reverse-complement copies")
    p.add_argument(
        "--num-workers",
        type=int,
        help="Ray tasks in flight (CPUs of a local Ray instance); with --verify: processes reading shards (default 1)",
    )
    p.add_argument(
        "--ray-address", help="address of an existing Ray cluster (default: start a local instance)"
    )
    p.add_argument("--verify", metavar="DIR", help="re-read the shards of DIR against its manifest and exit")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from datapipe.common.logs import setup_logging
    from datapipe.prepare import PrepareConfig

    setup_logging()
    if args.verify:
        if args.num_workers is not None and args.num_workers < 1:
            raise UsageError(f"--num-workers must be >= 1, got {args.num_workers}")
        return _verify(args.verify, workers=args.num_workers or 1)
    cfg = PrepareConfig().with_overrides(flag_overrides(args, FLAG_FIELDS))
    specs = input_specs(args.inputs, args.species, args.species_table, family=cfg.family)
    if args.dry_run:
        print(json.dumps({"config": cfg.to_dict(), "inputs": [vars(s) for s in specs]}, indent=2))
        return 0
    if args.out is None:
        raise UsageError("--out is required")
    # cluster.ray_connect.connect, handed down by the `dnafm` entry point (datapipe does not know clusters)
    connect = functools.partial(args.ray_connect, cfg.ray_address, num_cpus=cfg.num_workers)
    return _prepare(
        specs, args.out, cfg, track=not args.no_mlflow, experiment=args.experiment, connect=connect
    )


def input_specs(
    inputs: list[str], species: list[str], table_path: str | None, *, family: str = "dnagpt"
) -> list[Any]:
    """One InputSpec per input, from --species and/or --species-table (every error names the input).

    DNAGPT samples start with a species token, so a DNAGPT FASTA input needs a species. DNABERT samples
    carry none: there the species is metadata only, 'unspecified' unless given."""
    from datapipe.io import sniff
    from datapipe.prepare import InputSpec, assembly_name
    from datapipe.species import UNSPECIFIED, read_species_table

    if not inputs:
        raise UsageError("no INPUT given: name one or more FASTA or MAF files")
    if species and len(species) not in (1, len(inputs)):
        raise UsageError(
            f"--species given {len(species)} times for {len(inputs)} inputs: give it once (all inputs) "
            "or once per input"
        )
    table = read_species_table(table_path) if table_path else {}
    specs = []
    for i, path in enumerate(inputs):
        fmt = sniff(path).fmt  # also: missing file, empty file, unsupported compression
        if fmt == "maf":
            if not table:
                raise UsageError(
                    f"input {path} is a MAF alignment: map its sources to species with --species-table "
                    "(lines like 'hg19 human' or 'panTro4 chimp <W>')"
                )
            specs.append(InputSpec(path=path, sources=table))
            continue
        name = species[0] if len(species) == 1 else species[i] if species else None
        if name is not None:
            specs.append(InputSpec(path=path, species=name))
            continue
        for key in (path, path.rstrip("/").rsplit("/", 1)[-1], assembly_name(path)):
            if key in table:
                specs.append(InputSpec(path=path, species=table[key][0], token=f"<{table[key][1]}>"))
                break
        else:
            if family == "dnabert":
                specs.append(InputSpec(path=path, species=UNSPECIFIED))
                continue
            raise UsageError(
                f"--species is required (e.g. --species human) for input {path}: DNAGPT samples carry a "
                "species token; or add a line for it to --species-table"
            )
    return specs


def _prepare(
    specs: list[Any], out: str, cfg: Any, *, track: bool, experiment: str | None, connect: Any
) -> int:
    from datapipe.prepare import run_prepare

    manifest = run_prepare(specs, out, cfg, connect=connect)  # leaves nothing partial behind on error
    t = manifest["totals"]
    _track(out, cfg, manifest, enabled=track, experiment=experiment)
    print(
        f"prepared {t['samples']:,} samples, {t['tokens']:,} tokens in {t['shards']} shards "
        f"({t['bases'] / 1e6:.2f} Mb read, {t['windows_dropped_n']} windows dropped for N) -> {out}"
    )
    return 0


def _track(out: str, cfg: Any, manifest: dict[str, Any], *, enabled: bool, experiment: str | None) -> None:
    """The prepare run in MLflow (config as params, totals as prepare/* metrics, the manifest as an artifact),
    and ``OUT/mlflow_run.json`` naming it, which pretraining on these shards links to."""
    import logging
    import os

    from datapipe.common.tracking import (
        RUN_LINK,
        default_tracking_uri,
        experiment_name,
        run_link,
        start_tracker,
    )
    from datapipe.io import Storage
    from datapipe.shards.manifest import MANIFEST

    storage = Storage(out)
    if not storage.local and "MLFLOW_TRACKING_URI" not in os.environ:
        logging.getLogger(__name__).info(
            "--out is not a local folder and MLFLOW_TRACKING_URI is not set: this run is not tracked"
        )
        return
    out_path = Path(storage.root)
    experiment = experiment_name(experiment, "dnafm-prepare")
    tracker = start_tracker(
        experiment=experiment,
        run_name=f"prepare-{out_path.name}",
        tracking_uri=default_tracking_uri(out_path),
        enabled=enabled,
        stage="prepare",
    )
    tracker.log_params({**cfg.flat(), "inputs": ",".join(s["path"] for s in manifest["inputs"])})
    totals = {f"prepare/{k}": float(v) for k, v in manifest["totals"].items()}
    tracker.log_metrics({**totals, "prepare/n_fraction": manifest["n_fraction"]}, step=0)
    if storage.local:
        tracker.log_artifact(out_path / MANIFEST)
    tracker.set_tags({"output": storage.url})
    tracker.finish()
    link = run_link(tracker, experiment=experiment, stage="prepare")
    if link:
        storage.write_json(link, RUN_LINK)


def _verify(folder: str, *, workers: int) -> int:
    from datapipe.shards.manifest import verify

    problems = verify(folder, workers=workers)
    if problems:
        for p in problems:
            print(f"FAIL {p}")
        print(f"{folder}: {len(problems)} problem(s)")
        return 1
    print(f"{folder}: all shards match the manifest")
    return 0
