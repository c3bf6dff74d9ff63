"""Fine-tune (or linearly probe) a pretrained DNAGPT or DNABERT on a C-class classification set (C >= 2), on
the DeepSpeed engine of pretraining. The heads are in ``eval/heads.py``. Early stopping keeps the weights of the
best validation epoch (by MCC)."""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from datapipe.common.config import Config, check
from datapipe.common.logs import progress
from datapipe.common.tracking import Tracker
from datapipe.tokenizers import Tokenizer
from eval.heads import build_classifier, encode_inputs
from eval.long_inputs import Inputs, encode
from eval.metrics import classification_metrics
from trainer.config import OptimConfig, TrainConfig
from trainer.engine import DistInfo, build_engine

log = logging.getLogger(__name__)


class EarlyStop:
    """The best validation epoch so far and its weights; ``update`` says when ``patience`` epochs in a row
    have not improved on it. Shared by classification (MCC) and regression (r^2) fine-tuning."""

    def __init__(self, patience: int, metric: str, start: float):
        self.patience, self.metric = patience, metric
        self.best, self.state, self.bad_epochs = start, None, 0

    def update(self, score: float, module: torch.nn.Module, epoch: int) -> bool:
        """Record epoch ``epoch`` (1-based); True when training should stop."""
        if score > self.best:
            self.best, self.bad_epochs = score, 0
            self.state = copy.deepcopy(module.state_dict())
            return False
        self.bad_epochs += 1
        if self.bad_epochs > self.patience:
            log.info("early stop after epoch %d (no validation %s gain for %d epochs)", epoch, self.metric,
                     self.bad_epochs)  # fmt: skip
            return True
        return False

    def restore(self, module: torch.nn.Module) -> None:
        module.load_state_dict(self.state)


@dataclass(kw_only=True)
class FinetuneConfig(Config):
    epochs: int = 3
    lr: float = 5e-4
    """Peak learning rate of full fine-tuning (mode=finetune)."""
    probe_lr: float = 2e-2
    """Peak learning rate of the linear head in mode=probe: a single linear layer on standardised frozen
    features needs a far larger step than the whole network (on splice-human with a random tiny DNAGPT, 3
    epochs: test MCC 0.020 at 5e-4, 0.075 at 5e-3, 0.086 at 2e-2)."""
    micro_batch_size: int = 32
    """Examples per optimizer step; with windowed long inputs each brings all its windows (eval/long_inputs.py)."""
    patience: int = 1
    """Epochs without validation improvement (MCC) before stopping."""
    seed: int = 0
    max_train_samples: int = 0
    """Use at most this many training examples (0 = all); for quick runs."""
    mode: Literal["finetune", "probe"] = "finetune"
    """finetune: all weights train; probe: the encoder is frozen and only a linear head trains."""
    crop: bool = True
    """Centre-crop sequences longer than the model's context (e.g. 606-bp PAS windows for 512-token DNABERT)
    when ``window_pool`` resolves to off."""
    window_pool: Literal["auto", "off", "mean", "max"] = "auto"
    """Sequences longer than the context: 'mean' / 'max' read them as overlapping windows whose read-out
    vectors are pooled (eval/long_inputs.py); 'off': ``crop`` decides; 'auto': mean for regression tasks,
    off for classification (the behaviour before windows existed)."""
    window_overlap: float = 0.25
    """Fraction of a window's tokens shared with the next window."""

    def __post_init__(self) -> None:
        check(self.epochs >= 1, "epochs", "must be >= 1")
        check(self.lr > 0, "lr", "must be > 0")
        check(self.probe_lr > 0, "probe_lr", "must be > 0")
        check(self.micro_batch_size >= 1, "micro_batch_size", "must be >= 1")
        check(self.patience >= 0, "patience", "must be >= 0")
        check(0 <= self.window_overlap < 1, "window_overlap", "a fraction of a window in [0, 1)")

    def pool(self, *, regression: bool) -> str:
        """The window pooling in force: 'off', 'mean' or 'max' ('auto' resolved by task type)."""
        if self.window_pool == "auto":
            return "mean" if regression else "off"
        return self.window_pool


@torch.no_grad()
def predict(
    model: torch.nn.Module, ids: np.ndarray, ask: np.ndarray, *, batch_size: int, device: torch.device
) -> np.ndarray:
    """(N, C) class probabilities (softmax of the head's logits) for every row, in batches."""
    model.eval()
    out = []
    for lo in range(0, len(ids), batch_size):
        logits = model(
            torch.from_numpy(ids[lo : lo + batch_size]).to(device),
            torch.from_numpy(ask[lo : lo + batch_size]).to(device),
        )
        out.append(torch.softmax(logits, -1).cpu().numpy())  # (B, C)
    return np.concatenate(out)


@torch.no_grad()
def predict_inputs(
    model: torch.nn.Module,
    inputs: Inputs,
    examples: np.ndarray,
    *,
    device: torch.device,
    batch_size: int = 64,
) -> np.ndarray:
    """(len(examples), C) class probabilities, in batches of examples (each with all its windows)."""
    model.eval()
    out = []
    for lo in range(0, len(examples), batch_size):
        logits = model(**inputs.batch(examples[lo : lo + batch_size], device))
        out.append(torch.softmax(logits, -1).cpu().numpy())  # (B, C)
    return np.concatenate(out)


def finetune(
    model,
    family: str,
    tok: Tokenizer,
    cfg: FinetuneConfig,
    *,
    data,
    parts,
    species_token: str,
    dist_info: DistInfo,
    tracker: Tracker,
    prefix: str = "",
) -> tuple[np.ndarray, dict]:
    """Train on parts.train, early-stop on parts.val (MCC, multi-class when C > 2); return ((N_test, C)
    class probabilities on parts.test, {history, best_val_mcc, classifier (the best epoch's weights)}).
    Curves go to ``tracker`` as ``<prefix>finetune_loss`` and ``<prefix>val_<metric>``."""
    torch.manual_seed(cfg.seed)
    pool = cfg.pool(regression=False)
    if pool == "off":  # one window each, centre-cropped as before windows existed
        ids, ask = encode_inputs(
            family,
            tok,
            data.sequences,
            species_token=species_token,
            max_len=model.cfg.max_seq_len,
            crop=cfg.crop,
        )
        inputs = Inputs(ids=ids, read=ask, starts=np.arange(len(ids) + 1))
    else:
        inputs = encode(family, tok, data.sequences, species_token=species_token, max_len=model.cfg.max_seq_len,
                        pool=pool, overlap=cfg.window_overlap, crop=cfg.crop)  # fmt: skip
    device = dist_info.device
    train_idx = parts.train
    if cfg.max_train_samples:
        train_idx = np.random.default_rng(cfg.seed).permutation(train_idx)[: cfg.max_train_samples]
    steps_per_epoch = -(-len(train_idx) // cfg.micro_batch_size)
    model = build_classifier(
        family,
        model,
        tok,
        num_classes=data.num_classes,
        probe=cfg.mode == "probe",
        pool=pool if pool != "off" else "mean",
    )
    lr = cfg.probe_lr if cfg.mode == "probe" else cfg.lr
    optim = OptimConfig(lr=lr, warmup_steps=max(steps_per_epoch // 10, 1), min_lr_ratio=0.0)
    train = TrainConfig(steps=steps_per_epoch * cfg.epochs, zero_stage=0, seed=cfg.seed)
    engine, _ = build_engine(model, train, optim, micro_batch_size=cfg.micro_batch_size, dist_info=dist_info)
    y = data.labels
    stop, history = EarlyStop(cfg.patience, "MCC", -2.0), []
    step = 0
    for epoch in range(cfg.epochs):
        engine.train()
        order = np.random.default_rng([cfg.seed, epoch]).permutation(train_idx)
        for lo in progress(
            range(0, len(order), cfg.micro_batch_size),
            total=steps_per_epoch,
            desc=f"fine-tune epoch {epoch + 1}",
        ):
            b = order[lo : lo + cfg.micro_batch_size]
            logits = engine(**inputs.batch(b, device))
            loss = F.cross_entropy(logits, torch.from_numpy(y[b]).to(dist_info.device))
            engine.backward(loss)
            engine.step()
            step += 1
            if step % 20 == 0:
                tracker.log_metrics({f"{prefix}finetune_loss": float(loss.detach())}, step=step)
        val = classification_metrics(
            y[parts.val], predict_inputs(engine.module, inputs, parts.val, device=device), n_boot=0
        )
        history.append({"epoch": epoch + 1, **{k: v["value"] for k, v in val.items()}})
        tracker.log_metrics({f"{prefix}val_{k}": v["value"] for k, v in val.items()}, step=step)
        log.info(
            "epoch %d: val accuracy %.4f, MCC %.4f", epoch + 1, val["accuracy"]["value"], val["mcc"]["value"]
        )
        if stop.update(val["mcc"]["value"], engine.module, epoch + 1):
            break
    stop.restore(engine.module)
    prob = predict_inputs(engine.module, inputs, parts.test, device=device)
    # the classifier itself goes back too, for `dnafm eval --set save_model=true` (eval.saved_model)
    windows = float(inputs.windows_per_example.mean())
    info = {"history": history, "best_val_mcc": stop.best, "classifier": engine.module, "pool": pool}
    return prob, {**info, "windows_per_example": windows}
