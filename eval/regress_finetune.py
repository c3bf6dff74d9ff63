"""Fine-tune (or linearly probe) a pretrained DNAGPT or DNABERT on a regression set, on the DeepSpeed engine of
pretraining, as ``eval.finetune`` does for classification. MSE on the standardised target (train mean and
standard deviation; the numeric features are standardised the same way); early stopping keeps the weights of
the best validation epoch by r^2 (squared Pearson, eval/regression.py). Heads: eval/regress_heads.py;
prompts and long inputs: eval/long_inputs.py."""

from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F

from datapipe.common.logs import progress
from datapipe.common.tracking import Tracker
from datapipe.tokenizers import Tokenizer
from eval.finetune import EarlyStop, FinetuneConfig
from eval.long_inputs import Inputs, encode
from eval.regress_heads import build_regressor
from eval.regression import RegressionSet, regression_metrics
from trainer.config import OptimConfig, TrainConfig
from trainer.engine import DistInfo, build_engine

log = logging.getLogger(__name__)


def standardise(
    x: np.ndarray, train: np.ndarray
) -> tuple[np.ndarray, float | np.ndarray, float | np.ndarray]:
    """(x - mean) / sd with the mean and sd of x[train] (sd 0 -> 1, a constant column stays 0)."""
    mu, sd = x[train].mean(axis=0), x[train].std(axis=0)
    sd = np.where(sd > 0, sd, 1.0)
    return (x - mu) / sd, mu, sd


@torch.no_grad()
def predict_values(
    model: torch.nn.Module, inputs: Inputs, examples: np.ndarray, *, device, batch_size: int = 32
):
    """(len(examples),) standardised predictions, in batches of examples (each with all its windows)."""
    model.eval()
    out = [
        model(**inputs.batch(examples[lo : lo + batch_size], device)).cpu().numpy()
        for lo in range(0, len(examples), batch_size)
    ]
    return np.concatenate(out).astype(np.float64)


def finetune_regression(
    model,
    family: str,
    tok: Tokenizer,
    cfg: FinetuneConfig,
    *,
    data: RegressionSet,
    parts,
    species_token: str,
    dist_info: DistInfo,
    tracker: Tracker,
    prefix: str = "",
) -> tuple[np.ndarray, dict]:
    """Train on parts.train, early-stop on parts.val (r^2); return ((N_test,) predictions on parts.test in the
    target's units, {history, best_val_r2, windows_per_example, pool}). Curves go to ``tracker`` as
    ``<prefix>finetune_loss`` and ``<prefix>val_<metric>``."""
    torch.manual_seed(cfg.seed)
    z, mu, sd = standardise(data.values, parts.train)
    feats = None if data.features is None else standardise(data.features, parts.train)[0]
    pool = cfg.pool(regression=True)
    inputs = encode(family, tok, data.sequences, species_token=species_token, max_len=model.cfg.max_seq_len,
                    pool=pool, overlap=cfg.window_overlap, crop=cfg.crop, prompt="regress",
                    features=feats)  # fmt: skip
    train_idx = parts.train
    if cfg.max_train_samples:
        train_idx = np.random.default_rng(cfg.seed).permutation(train_idx)[: cfg.max_train_samples]
    steps_per_epoch = -(-len(train_idx) // cfg.micro_batch_size)
    model = build_regressor(
        family, model, tok, n_features=data.num_features, probe=cfg.mode == "probe", pool=pool
    )
    lr = cfg.probe_lr if cfg.mode == "probe" else cfg.lr
    optim = OptimConfig(lr=lr, warmup_steps=max(steps_per_epoch // 10, 1), min_lr_ratio=0.0)
    train = TrainConfig(steps=steps_per_epoch * cfg.epochs, zero_stage=0, seed=cfg.seed)
    engine, _ = build_engine(model, train, optim, micro_batch_size=cfg.micro_batch_size, dist_info=dist_info)
    device = dist_info.device
    target = torch.from_numpy(z.astype(np.float32))
    stop, history, step = EarlyStop(cfg.patience, "r^2", -np.inf), [], 0
    for epoch in range(cfg.epochs):
        engine.train()
        order = np.random.default_rng([cfg.seed, epoch]).permutation(train_idx)
        batches = range(0, len(order), cfg.micro_batch_size)
        for lo in progress(batches, total=steps_per_epoch, desc=f"fine-tune epoch {epoch + 1}"):
            b = order[lo : lo + cfg.micro_batch_size]
            loss = F.mse_loss(engine(**inputs.batch(b, device)), target[b].to(device))
            engine.backward(loss)
            engine.step()
            step += 1
            if step % 20 == 0:
                tracker.log_metrics({f"{prefix}finetune_loss": float(loss.detach())}, step=step)
        val_pred = predict_values(engine.module, inputs, parts.val, device=device)
        val = regression_metrics(z[parts.val], val_pred, n_boot=0)
        history.append({"epoch": epoch + 1, **{k: v["value"] for k, v in val.items()}})
        tracker.log_metrics({f"{prefix}val_{k}": v["value"] for k, v in val.items()}, step=step)
        r2 = val["r2"]["value"] if np.isfinite(val["r2"]["value"]) else -1.0  # constant predictions: worst
        log.info("epoch %d: val r^2 %.4f, MSE (standardised) %.4f", epoch + 1, r2, val["mse"]["value"])
        if stop.update(r2, engine.module, epoch + 1):
            break
    stop.restore(engine.module)
    pred = predict_values(engine.module, inputs, parts.test, device=device) * sd + mu
    windows = inputs.windows_per_example
    info = {
        "history": history,
        "best_val_r2": stop.best,
        "pool": pool,
        "windows_per_example": float(windows.mean()),
    }
    return pred, info
