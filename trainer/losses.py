"""DNAGPT pretraining loss: next-token CE + order CE + lambda * GC MSE (lambda = 0.01, SPEC.md)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from trainer.gpt import DNAGPT
from trainer.samples import IGNORE, gpt_targets

GC_LOSS_WEIGHT = 0.01


def dnagpt_pretrain_loss(model: DNAGPT, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Returns {'loss', 'loss_lm', 'loss_order', 'loss_gc', 'order_acc'}; 'loss' carries the gradient."""
    batch = {**batch, **gpt_targets(batch)}  # the loader ships ids + lengths; targets are built here
    hidden = model(batch["input_ids"])  # (B, T, D)
    lm_mask = batch["lm_targets"] != IGNORE
    # Project only the positions that carry a target: the (B, T, V) logits tensor is the largest
    # activation of a small model (V = 15-20k), so skip it for template and padding positions.
    lm_logits = model.lm_logits(hidden[lm_mask])  # (N_lm, V)
    loss_lm = F.cross_entropy(lm_logits.float(), batch["lm_targets"][lm_mask])
    order_mask = batch["order_targets"] != IGNORE
    order_logits = model.lm_logits(hidden[order_mask]).float()  # (B, V)
    order_targets = batch["order_targets"][order_mask]
    loss_order = F.cross_entropy(order_logits, order_targets)
    gc_pred = model.regress(hidden[batch["gc_mask"]]).float()  # (B,)
    loss_gc = F.mse_loss(gc_pred, batch["gc_targets"][batch["gc_mask"]])
    loss = loss_lm + loss_order + GC_LOSS_WEIGHT * loss_gc
    order_acc = (order_logits.argmax(-1) == order_targets).float().mean()
    return {
        "loss": loss,
        "loss_lm": loss_lm,
        "loss_order": loss_order,
        "loss_gc": loss_gc,
        "order_acc": order_acc,
    }


class DNAGPTForPretraining(torch.nn.Module):
    """What the DeepSpeed engine wraps: forward(batch) -> loss dict, so the whole loss runs inside
    the engine's forward (ZeRO-3 gathers parameters per forward call)."""

    def __init__(self, gpt: DNAGPT):
        super().__init__()
        self.gpt = gpt

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return dnagpt_pretrain_loss(self.gpt, batch)


class DNABERTForPretraining(torch.nn.Module):
    """forward(batch) -> {'loss', 'mlm_acc', 'mask_rate'}: masked-LM cross-entropy over the masked positions."""

    def __init__(self, bert):
        super().__init__()
        self.bert = bert

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        hidden = self.bert(batch["input_ids"], batch["attention_mask"])  # (B, T, D)
        target = batch["mlm_labels"] != IGNORE
        # Only masked positions reach the vocabulary projection (~15% of tokens).
        logits = self.bert.mlm_logits(hidden[target]).float()  # (N_masked, V)
        labels = batch["mlm_labels"][target]
        # Sum / count rather than mean: a batch without any masked token gives 0, not NaN.
        n = labels.numel()
        loss = F.cross_entropy(logits, labels, reduction="sum") / max(n, 1)
        acc = (logits.argmax(-1) == labels).float().sum() / max(n, 1)
        rate = batch["num_masked"].float() / batch["num_maskable"].clamp(min=1).float()
        return {"loss": loss, "mlm_acc": acc, "mask_rate": rate}
