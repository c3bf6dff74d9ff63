"""`dnafm generate`: sample DNA from a DNAGPT checkpoint after a prompt, written as FASTA."""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from datapipe.common.cliargs import command_parser, flag_overrides
from datapipe.common.config import Config, check
from datapipe.common.errors import UsageError
from trainer.generate import SamplingConfig

log = logging.getLogger(__name__)

FLAG_FIELDS = {
    "num": "num",
    "max_new_tokens": "sampling.max_new_tokens",
    "temperature": "sampling.temperature",
    "top_k": "sampling.top_k",
    "top_p": "sampling.top_p",
    "seed": "sampling.seed",
    "batch_size": "sampling.batch_size",
    "no_cache": "sampling.use_cache=false",
}
FASTA_WIDTH = 80


@dataclass(kw_only=True)
class GenerateConfig(Config):
    prompt: str = "<R>"
    """DNAGPT text: reserved tokens as markup, then bases (cut into 6-mers from the left of each stretch)."""
    num: int = 1
    """Sequences to sample."""
    stop: tuple[str, ...] = ()
    """Reserved tokens (e.g. '<=>') that end a sequence when drawn; they are not written."""
    sampling: SamplingConfig = field(default_factory=SamplingConfig)

    def __post_init__(self) -> None:
        check(self.num >= 1, "num", "must be >= 1")
        check(bool(self.prompt), "prompt", "must not be empty (e.g. '<R>' for a human sequence)")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = command_parser(
        sub,
        "generate",
        set_example="sampling.top_k=50",
        mlflow=False,
        help="sample DNA from a DNAGPT checkpoint",
        description="Sample sequences after a prompt from a DNAGPT checkpoint (KV-cached decoding) and write "
        "them as FASTA. Only k-mer tokens (and the --stop tokens) are drawn, so every sample is DNA.",
    )
    p.add_argument("--checkpoint", type=Path, help="`dnafm pretrain` --out folder or an export folder")
    p.add_argument("--prompt", help="e.g. '<R>ACGTACGGATTA' (species token, then bases); default '<R>'")
    p.add_argument("-n", "--num", type=int, help="number of sequences (default 1)")
    p.add_argument("--max-new-tokens", type=int, help="tokens (6-mers) to sample per sequence (default 128)")
    p.add_argument("--temperature", type=float, help="softmax temperature; 0 = greedy (default 1)")
    p.add_argument("--top-k", type=int, help="sample among the k most likely tokens (default 0 = all)")
    p.add_argument("--top-p", type=float, help="nucleus sampling threshold (default 1 = off)")
    p.add_argument("--seed", type=int, help="sampler seed (default 0)")
    p.add_argument("--batch-size", type=int, help="sequences decoded together (default 64)")
    p.add_argument("--stop", action="append", metavar="TOKEN", help="reserved token that ends a sequence")
    p.add_argument("--no-cache", action="store_true", help="recompute every position each step (slow)")
    p.add_argument("--out", type=Path, help="output FASTA file")
    p.set_defaults(func=run)


def resolve_config(args: argparse.Namespace) -> GenerateConfig:
    data = GenerateConfig().with_overrides(flag_overrides(args, FLAG_FIELDS)).to_dict()
    if args.prompt is not None:
        data["prompt"] = args.prompt  # not through an override: '<=>' holds the '=' of FIELD=VALUE
    if args.stop:
        data["stop"] = list(args.stop)
    return GenerateConfig.from_dict(data)


def fasta_records(tok, prompt_ids, rows, stopped, cfg: GenerateConfig) -> str:
    """One record per sample: the prompt's bases then the sampled ones (reserved tokens are not bases: the
    prompt's are in the header)."""
    import numpy as np

    n_reserved = len(tok.RESERVED_SYMBOLS)
    head = tok.to_bases(prompt_ids[prompt_ids >= n_reserved]).tobytes().decode()
    out = []
    for i, (row, stop) in enumerate(zip(rows, stopped, strict=True), start=1):
        kmers = row[row >= n_reserved]
        seq = head + tok.to_bases(np.asarray(kmers)).tobytes().decode()
        end = f"stop={tok.vocab[int(row[-1])]}" if stop else "end=max_new_tokens"
        out.append(f">gen{i} prompt={cfg.prompt} new_tokens={len(kmers)} {end}\n")
        out.extend(seq[j : j + FASTA_WIDTH] + "\n" for j in range(0, len(seq), FASTA_WIDTH))
    return "".join(out)


def run(args: argparse.Namespace) -> int:
    from datapipe.common.logs import setup_logging

    setup_logging()
    cfg = resolve_config(args)
    if args.dry_run:
        print(json.dumps(cfg.to_dict(), indent=2, sort_keys=True))
        return 0
    if args.checkpoint is None or args.out is None:
        raise UsageError("--checkpoint and --out are required (or use --dry-run)")
    text, n = sample_fasta(cfg, args.checkpoint)
    from datapipe.common.files import write_atomic

    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(args.out, text)
    log.info("wrote %d sequences to %s", n, args.out)
    return 0


def sample_fasta(cfg: GenerateConfig, checkpoint: Path) -> tuple[str, int]:
    """Load the checkpoint, sample ``cfg.num`` sequences in batches; -> (FASTA text, count)."""
    import torch

    from trainer.generate import generate
    from trainer.models.export import load_export

    model, pcfg, tok = load_export(checkpoint)
    if pcfg.family != "dnagpt":
        raise UsageError(f"{checkpoint}: a {pcfg.family} checkpoint cannot generate; pass a DNAGPT one")
    prompt_ids = tok.encode(cfg.prompt)  # bad markup: a UsageError naming the position
    stop_ids = [tok.reserved_id(s) for s in cfg.stop]
    if len(prompt_ids) + cfg.sampling.max_new_tokens > model.cfg.max_seq_len:
        raise UsageError(
            f"the prompt ({len(prompt_ids)} tokens) + --max-new-tokens {cfg.sampling.max_new_tokens} exceed "
            f"the model's context of {model.cfg.max_seq_len} tokens; ask for fewer new tokens"
        )
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = model.to(device)
    kmer_ids = range(len(tok.RESERVED_SYMBOLS), tok.vocab_size)
    gen = torch.Generator(device=device).manual_seed(cfg.sampling.seed)
    rows, stopped = [], []
    for lo in range(0, cfg.num, cfg.sampling.batch_size):
        b = min(cfg.sampling.batch_size, cfg.num - lo)
        prompt = torch.from_numpy(prompt_ids).long().expand(b, -1)
        out = generate(model, prompt, cfg.sampling, generator=gen, allowed_ids=kmer_ids, stop_ids=stop_ids)
        for r in range(b):
            rows.append(out.ids[r, len(prompt_ids) : int(out.lengths[r])].cpu().numpy())
            stopped.append(bool(out.stopped[r]))
    return fasta_records(tok, prompt_ids, rows, stopped, cfg), len(rows)
