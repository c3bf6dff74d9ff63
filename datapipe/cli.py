"""`dnafm prepare`: FASTA inputs -> shards + manifest (Ray), and `--verify`."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from datapipe.tokenizers import TOKENIZER_NAMES


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "prepare",
        help="turn FASTA genomes into tokenized WebDataset shards (Ray)",
        description="Window, filter, tokenize and shard genomes with Ray tasks. Re-running the same "
        "command into the same --out finishes only what is missing.",
    )
    p.add_argument("inputs", nargs="*", metavar="INPUT", help="FASTA files (plain, gzip or bgzip)")
    p.add_argument("--out", type=Path, help="output folder (shards/, manifest.json, ...)")
    p.add_argument("--tokenizer", default="dnagpt-6mer", choices=TOKENIZER_NAMES)
    p.add_argument(
        "--species",
        action="append",
        default=[],
        help="species of the inputs (human, mouse, ecoli, ... or a token like '<W>'): once for all "
        "inputs, or once per input in the same order",
    )
    p.add_argument("--window-tokens", type=int, help="k-mer tokens per window (prepare config window_tokens)")
    p.add_argument("--num-workers", type=int, help="parallel Ray tasks")
    p.add_argument(
        "--ray-address", help="address of an existing Ray cluster (default: start a local instance)"
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a prepare config field, e.g. --set shard_max_samples=512",
    )
    p.add_argument(
        "--verify", type=Path, metavar="DIR", help="re-read the shards of DIR against its manifest and exit"
    )
    p.add_argument("--no-mlflow", action="store_true", help="do not log the run to MLflow")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and inputs, then exit")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from datapipe.logs import setup_logging
    from datapipe.prepare import InputSpec, PrepareConfig

    setup_logging()
    if args.verify:
        return _verify(args.verify)
    overrides = [f"tokenizer={args.tokenizer}", *args.overrides]
    for flag, field in (
        ("window_tokens", "window_tokens"),
        ("num_workers", "num_workers"),
        ("ray_address", "ray_address"),
    ):
        if getattr(args, flag) is not None:
            overrides.append(f"{field}={getattr(args, flag)}")
    cfg = PrepareConfig().with_overrides(overrides)
    if not args.inputs:
        raise ValueError("no INPUT given: name one or more FASTA files")
    species = args.species or []
    if not species:
        raise ValueError("--species is required (e.g. --species human): DNAGPT samples carry a species token")
    if len(species) not in (1, len(args.inputs)):
        raise ValueError(
            f"--species given {len(species)} times for {len(args.inputs)} inputs: give it once "
            "(all inputs) or once per input"
        )
    specs = [
        InputSpec(path=str(p), species=species[0] if len(species) == 1 else species[i])
        for i, p in enumerate(args.inputs)
    ]
    for spec in specs:
        if not Path(spec.path).is_file():
            raise FileNotFoundError(f"input {spec.path} does not exist or is not a file")
    if args.dry_run:
        print(json.dumps({"config": cfg.to_dict(), "inputs": [vars(s) for s in specs]}, indent=2))
        return 0
    if args.out is None:
        raise ValueError("--out is required")
    return _prepare(specs, args.out, cfg, track=not args.no_mlflow)


def _prepare(specs, out: Path, cfg, *, track: bool) -> int:
    from datapipe.prepare import run_prepare

    fresh = not out.exists()
    try:
        manifest = run_prepare(specs, out, cfg)
    except BaseException:
        # Leave nothing partial: a new folder goes away; a resumed one keeps its completed units only.
        if fresh:
            shutil.rmtree(out, ignore_errors=True)
        else:
            for tmp in out.rglob("*.tmp"):
                tmp.unlink(missing_ok=True)
        raise
    t = manifest["totals"]
    _track(out, cfg, manifest, enabled=track)
    print(
        f"prepared {t['samples']:,} samples, {t['tokens']:,} tokens in {t['shards']} shards "
        f"({t['bases'] / 1e6:.2f} Mb read, {t['windows_dropped_n']} windows dropped for N) -> {out}"
    )
    return 0


def _track(out: Path, cfg, manifest: dict, *, enabled: bool) -> None:
    from datapipe.shards import MANIFEST
    from datapipe.tracking import default_tracking_uri, start_tracker

    tracker = start_tracker(
        experiment="dnafm-prepare",
        run_name=f"prepare-{out.name}",
        tracking_uri=default_tracking_uri(out),
        enabled=enabled,
    )
    tracker.log_params({**cfg.flat(), "inputs": ",".join(s["path"] for s in manifest["inputs"])})
    totals = {f"prepare/{k}": float(v) for k, v in manifest["totals"].items()}
    tracker.log_metrics({**totals, "prepare/n_fraction": manifest["n_fraction"]}, step=0)
    tracker.log_artifact(out / MANIFEST)
    tracker.set_tags({"output": str(out.resolve())})
    tracker.finish()


def _verify(folder: Path) -> int:
    from datapipe.shards import verify

    problems = verify(folder)
    if problems:
        for p in problems:
            print(f"FAIL {p}")
        print(f"{folder}: {len(problems)} problem(s)")
        return 1
    print(f"{folder}: all shards match the manifest")
    return 0
