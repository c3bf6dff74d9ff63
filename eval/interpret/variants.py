"""Variant effects: the model's output on a window of the reference genome centred on each variant, with
the reference and with the alternative base.

- a fine-tuned classifier (``dnafm eval --save-model``): the positive class's probability and log-odds on
  each window, and alt - ref of both;
- a pretrained DNAGPT: the log-likelihood of the window's k-mer tokens (``<sp> + k-mers``, each token
  predicted from the ones before it), alt - ref;
- a pretrained DNABERT: the k k-mer tokens that cover the variant are masked (as in pretraining, so the
  input is the same for both alleles) and the masked-token log-odds are summed over them:
  sum_j log P_j(alt k-mer_j) - log P_j(ref k-mer_j).

VCFs are read with pysam (htslib). Only single-base substitutions are scored; every other record is a
counted skip with its reason in the output: ``indel`` (REF and ALT lengths differ), ``mnp`` (several bases
substituted), ``symbolic`` (``<DEL>``, ``*``, ``.``), ``missing_contig`` (not in the genome FASTA),
``near_chrom_end`` (the window leaves the chromosome), ``n_in_window`` (the window holds N), and
``ref_mismatch`` (REF is not the genome's base; ``--set on_ref_mismatch=error`` stops instead: the usual
cause is a VCF on another assembly).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from datapipe.common.config import Config, check
from datapipe.common.errors import InputError, MissingError, UsageError

log = logging.getLogger(__name__)

SKIPS = ("indel", "mnp", "symbolic", "missing_contig", "near_chrom_end", "n_in_window", "ref_mismatch")


@dataclass(kw_only=True)
class VariantConfig(Config):
    window_bp: int = 0
    """Window length (bp) centred on each variant; 0: the fine-tuned classifier's training length, else the
    model's whole context."""
    positive_class: int = 1
    """Classifier output whose probability and log-odds are reported."""
    on_ref_mismatch: Literal["skip", "error"] = "skip"
    batch_size: int = 32
    experiment: str | None = None
    """MLflow experiment; None: $MLFLOW_EXPERIMENT_NAME, else 'dnafm-variants'."""
    tracking: bool = True

    def __post_init__(self) -> None:
        check(self.window_bp >= 0, "window_bp", "must be >= 0 (0: automatic)")
        check(self.batch_size >= 1, "batch_size", "must be >= 1")
        check(self.positive_class >= 0, "positive_class", "must be a class id >= 0")


@dataclass
class Variant:
    chrom: str
    pos: int
    """1-based, as in the VCF."""
    id: str
    ref: str
    alt: str
    status: str = "scored"
    window: tuple[str, str] | None = None
    """(ref window, alt window) when scored."""


def read_vcf(path: Path) -> list[Variant]:
    """One Variant per ALT allele of every record; malformed input is an InputError naming the file."""
    import pysam

    if not path.is_file():
        raise MissingError(f"{path}: no such VCF file")
    pysam.set_verbosity(0)  # htslib's own warnings on stderr; our errors say what went wrong
    out: list[Variant] = []
    try:
        vcf = pysam.VariantFile(str(path))
    except (ValueError, OSError) as err:
        raise InputError(path, None, f"not a readable VCF/BCF file ({err})") from None
    records = 0
    try:
        with vcf:
            for rec in vcf:
                records += 1
                for alt in rec.alts or (".",):
                    out.append(Variant(rec.chrom, rec.pos, rec.id or ".", rec.ref.upper(), alt.upper()))
    except (ValueError, OSError) as err:
        head = _header_lines(path)
        where = f"record {records + 1}" if head is None else None
        line = None if head is None else head + records + 1  # the header, the records read, then this one
        raise InputError(
            path, line, f"malformed VCF {where or 'record'} (htslib: {err}); fix or remove it"
        ) from None
    if not out:
        raise InputError(path, None, "no variant records")
    return out


def _header_lines(path: Path) -> int | None:
    """Lines of a text VCF's header (plain or (b)gzip); None for BCF, which has no lines."""
    import gzip

    with open(path, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    with gzip.open(path, "rb") if gz else open(path, "rb") as f:
        if f.read(3) == b"BCF":
            return None
        f.seek(0)
        n = 0
        for line in f:
            if not line.startswith(b"#"):
                break
            n += 1
        return n


def default_window(loaded, cfg: VariantConfig) -> int:
    """cfg.window_bp, else the classifier's training length, else the bases the context holds."""
    k, max_len = loaded.tokenizer.k, loaded.model.cfg.max_seq_len
    fits = (max_len - 2) * k if loaded.family == "dnagpt" else max_len - 2 + k - 1
    window = cfg.window_bp or (loaded.sequence_bp if loaded.classifier is not None else 0) or fits
    if window > fits:
        raise UsageError(f"window_bp {window}: the model's context holds at most {fits} bp")
    if window < 2 * k:
        raise UsageError(
            f"window_bp {window}: needs at least {2 * k} bp (the k-mers on both sides of a variant)"
        )
    return window


def prepare(variants: list[Variant], genome, window: int, cfg: VariantConfig, vcf: Path) -> None:
    """Set each variant's status and, for the scorable ones, its (ref, alt) windows."""
    lead = window // 2  # the variant's index inside its window
    for v in variants:
        if v.alt in (".", "*") or v.alt.startswith("<") or not set(v.alt) <= set("ACGTN"):
            v.status = "symbolic"
        elif len(v.ref) != len(v.alt):
            v.status = "indel"
        elif len(v.ref) > 1:
            v.status = "mnp"
        elif (name := genome.resolve(v.chrom)) is None:
            v.status = "missing_contig"
        else:
            seq = genome.records[name]
            start = v.pos - 1 - lead
            if start < 0 or start + window > len(seq):
                v.status = "near_chrom_end"
                continue
            ref_window = seq[start : start + window].tobytes().decode("ascii")
            if ref_window[lead] != v.ref:
                if cfg.on_ref_mismatch == "error":
                    raise InputError(
                        vcf,
                        None,
                        f"{v.chrom}:{v.pos} REF {v.ref} but the genome has {ref_window[lead]} there; is the VCF "
                        "on the genome's assembly? (--set on_ref_mismatch=skip counts such records instead)",
                    )
                v.status = "ref_mismatch"
            elif "N" in ref_window:
                v.status = "n_in_window"
            else:
                v.window = (ref_window, ref_window[:lead] + v.alt + ref_window[lead + 1 :])


@torch.no_grad()
def score_classifier(loaded, windows: list[str], cfg: VariantConfig) -> tuple[np.ndarray, np.ndarray]:
    """(N,) probability and (N,) log-odds of the positive class on each window."""
    from eval.heads import encode_inputs

    c = cfg.positive_class
    n_classes = loaded.info["num_classes"]
    if c >= n_classes:
        raise UsageError(f"positive_class {c}: the classifier has {n_classes} classes")
    prob, logodds = [], []
    for lo in range(0, len(windows), cfg.batch_size):
        ids, ask = encode_inputs(
            loaded.family,
            loaded.tokenizer,
            windows[lo : lo + cfg.batch_size],
            species_token=loaded.species_token,
            max_len=loaded.model.cfg.max_seq_len,
        )
        lsm = torch.log_softmax(loaded.classifier(torch.from_numpy(ids), torch.from_numpy(ask)).double(), -1)
        others = torch.cat([lsm[:, :c], lsm[:, c + 1 :]], dim=1)
        prob.append(lsm[:, c].exp().numpy())
        logodds.append((lsm[:, c] - torch.logsumexp(others, dim=1)).numpy())
    return np.concatenate(prob), np.concatenate(logodds)


@torch.no_grad()
def gpt_loglik(loaded, windows: list[str], cfg: VariantConfig, species_token: str) -> np.ndarray:
    """(N,) sum of log P(token_t | tokens before it) over each window's k-mer tokens, in nats."""
    tok, model = loaded.tokenizer, loaded.model
    head = tok.token_to_id(f"<{species_token}>")
    out = []
    for lo in range(0, len(windows), cfg.batch_size):
        rows = [np.concatenate([[head], tok.encode(w)]) for w in windows[lo : lo + cfg.batch_size]]
        ids = torch.from_numpy(np.stack(rows).astype(np.int64))  # equal lengths: one window size
        logp = torch.log_softmax(model.lm_logits(model(ids)[:, :-1]).double(), -1)  # (B, T-1, V)
        out.append(logp.gather(-1, ids[:, 1:, None]).squeeze(-1).sum(1).numpy())
    return np.concatenate(out)


@torch.no_grad()
def bert_masked_logodds(loaded, pairs: list[tuple[str, str]], lead: int, cfg: VariantConfig) -> np.ndarray:
    """(N,) sum over the k masked k-mers covering the variant of log P(alt k-mer) - log P(ref k-mer)."""
    tok, model = loaded.tokenizer, loaded.model
    k = tok.k
    cover = np.arange(lead - k + 1, lead + 1) + 1  # token positions (after [CLS]) of the k-mers covering it
    out = []
    for lo in range(0, len(pairs), cfg.batch_size):
        batch = pairs[lo : lo + cfg.batch_size]
        ref = np.stack([np.concatenate([[tok.cls_id], tok.encode(r), [tok.sep_id]]) for r, _ in batch])
        alt = np.stack([np.concatenate([[tok.cls_id], tok.encode(a), [tok.sep_id]]) for _, a in batch])
        masked = ref.copy()
        masked[:, cover] = tok.mask_id  # identical for both alleles: only the covering k-mers differ
        x = torch.from_numpy(masked.astype(np.int64))
        logp = torch.log_softmax(model.mlm_logits(model(x)[:, cover]).double(), -1)  # (B, k, V)
        alt_ids, ref_ids = (torch.from_numpy(a[:, cover].astype(np.int64))[..., None] for a in (alt, ref))
        out.append((logp.gather(-1, alt_ids) - logp.gather(-1, ref_ids)).squeeze(-1).sum(1).numpy())
    return np.concatenate(out)
