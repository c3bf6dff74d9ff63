"""The pretraining losses of both families, as training modules (``forward(batch) -> dict of losses``):

- :class:`DNAGPTForPretraining`: next-token CE + sequence-order CE + lambda * GC-content MSE, lambda = 0.01
  (Zhang et al. 2023, DNAGPT, arXiv:2307.05628);
- :class:`DNABERTForPretraining`: masked-language-model CE over the span-masked k-mers (Ji et al. 2021,
  DNABERT, Bioinformatics btab083), with the MLM accuracy and the realised mask rate.

The model architectures are in ``trainer.models``; the batches come from ``trainer.samples`` (DNAGPT) and
``trainer.bert_samples`` (DNABERT).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from datapipe.tokenizers import get_tokenizer
from trainer.config import ObjectivesConfig
from trainer.fused import embed_bases
from trainer.models.gpt import DNAGPT
from trainer.samples import IGNORE, gpt_targets

GC_LOSS_WEIGHT = 0.01  # the published weight; ObjectivesConfig.gc_weight sets a run's
ORDER_ANSWERS = (0, 1)  # ids of <0> (forward) and <1> (reversed) in every DNAGPT vocabulary


def _token_inputs(
    batch: dict[str, torch.Tensor], embedding: str, weight: torch.Tensor, tokenizer: str | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """-> (input_ids (B, T), their embeddings (B, T, D) or None to let the model gather them)."""
    if embedding == "fused":
        if tokenizer is None:
            raise ValueError("model.embedding is 'fused': the training module needs the tokenizer name")
        embeds, ids = embed_bases(batch, weight, tokenizer)
        return ids, embeds
    if "input_ids" not in batch:
        raise ValueError(
            "the batch holds bases (a fused-path loader) but model.embedding is 'ids': use one config for both"
        )
    return batch["input_ids"], None


def dnagpt_pretrain_loss(
    model: DNAGPT,
    batch: dict[str, torch.Tensor],
    tokenizer: str | None = None,
    objectives: ObjectivesConfig | None = None,
) -> dict[str, torch.Tensor]:
    """Returns {'loss', 'loss_lm', 'loss_order', 'loss_gc', 'order_acc'}; 'loss' carries the gradient.
    ``tokenizer``: needed when ``model.cfg.embedding == 'fused'`` (the batch then holds bases).
    ``objectives``: the loss weights and the order softmax (default: the published 1, 1, 0.01, vocabulary)."""
    obj = objectives or ObjectivesConfig()
    ids, embeds = _token_inputs(batch, model.cfg.embedding, model.wte.weight, tokenizer)
    batch = {**batch, "input_ids": ids}
    batch = {**batch, **gpt_targets(batch)}  # the loader ships ids + lengths; targets are built here
    hidden = model(ids, token_embeds=embeds)  # (B, T, D)
    lm_mask = batch["lm_targets"] != IGNORE
    # Project only the positions that carry a target: the (B, T, V) logits tensor is the largest
    # activation of a small model (V = 15-20k), so skip it for template and padding positions.
    # With lm_weight 0 the next-token loss is still measured (logged), but without a graph: its (N_lm, V)
    # backward is most of a small model's step.
    with torch.set_grad_enabled(obj.lm_weight > 0 and torch.is_grad_enabled()):
        lm_logits = model.lm_logits(hidden[lm_mask])  # (N_lm, V)
        loss_lm = F.cross_entropy(lm_logits.float(), batch["lm_targets"][lm_mask])
    order_mask = batch["order_targets"] != IGNORE
    order_logits = model.lm_logits(hidden[order_mask]).float()  # (B, V)
    order_targets = batch["order_targets"][order_mask]
    if obj.order_softmax == "answers":  # 2-way: the answer tokens <0> (forward), <1> (reversed) only
        order_logits = order_logits[:, list(ORDER_ANSWERS)]  # (B, 2)
        order_targets = (order_targets == ORDER_ANSWERS[1]).long()
    loss_order = F.cross_entropy(order_logits, order_targets)
    gc_pred = model.regress(hidden[batch["gc_mask"]]).float()  # (B,)
    loss_gc = F.mse_loss(gc_pred, batch["gc_targets"][batch["gc_mask"]])
    loss = obj.lm_weight * loss_lm + obj.order_weight * loss_order + obj.gc_weight * loss_gc
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

    def __init__(self, gpt: DNAGPT, tokenizer: str | None = None, objectives: ObjectivesConfig | None = None):
        super().__init__()
        self.gpt = gpt
        self.tokenizer = tokenizer
        self.objectives = objectives

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return dnagpt_pretrain_loss(self.gpt, batch, self.tokenizer, self.objectives)


class DNABERTForPretraining(torch.nn.Module):
    """forward(batch) -> {'loss', 'mlm_acc', 'mask_rate'}: masked-LM cross-entropy over the masked positions."""

    def __init__(self, bert, tokenizer: str | None = None):
        super().__init__()
        self.bert = bert
        self.tokenizer = tokenizer

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        ids, embeds = _token_inputs(batch, self.bert.cfg.embedding, self.bert.word.weight, self.tokenizer)
        if embeds is None:
            keep = batch["attention_mask"]
        else:  # the fused batch ships no mask: rows hold no [PAD] before their end
            keep = ids != get_tokenizer(self.tokenizer).pad_id
        hidden = self.bert(ids, keep, token_embeds=embeds)  # (B, T, D)
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
