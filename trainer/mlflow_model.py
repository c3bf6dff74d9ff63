"""An exported dnafm model as an MLflow pyfunc model: a DataFrame with a ``sequence`` column in, embeddings or
class probabilities out.

    model = mlflow.pyfunc.load_model("models:/dna-gpt/1")          # or runs:/<id>/model, or a folder
    model.predict(pd.DataFrame({"sequence": ["ACGTAC...", ...]}))   # emb_0 .. emb_{D-1}
    model.predict(df, params={"output": "probabilities", "num_classes": 2})   # prob_0 .. prob_{C-1}

The model folder holds the export (``model.safetensors`` + ``config.json`` + ``tokenizer/``) as an artifact and
dnafm's own code (``datapipe``, ``kernels``, ``trainer``) as code paths, so it loads where torch, numpy, pandas,
safetensors and mlflow are installed, without dnafm. It is logged as "models from code"
(``trainer/mlflow_entry.py``): MLflow unpickles nothing of ours when it loads it.

What ``predict`` computes, per sequence (each row's bases, upper or lower case):

- embeddings: the mean of the final hidden states over the sequence's k-mer tokens. DNAGPT reads
  ``<species> + k-mers + <=>``, DNABERT ``[CLS] + k-mers + [SEP]``; the template tokens are not averaged.
- probabilities: the model's classifier, as ``dnafm eval`` fine-tunes it: for DNAGPT the softmax over the
  logits of ``<0>`` .. ``<C-1>`` at ``<=>`` (at most 10 classes), for DNABERT the softmax of the [CLS]
  classifier. On a pretraining export these are the pretrained model's answers, not a trained classifier's.

A sequence longer than the model's context is an error naming its row, unless ``params={"crop": True}``
keeps its central bases (as ``dnafm eval --set finetune.crop=true`` does).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import torch

from datapipe.common.errors import UsageError

log = logging.getLogger(__name__)

ENTRY = Path(__file__).with_name("mlflow_entry.py")
CODE = ("datapipe", "kernels", "trainer")  # our packages the model needs, shipped as code paths
OUTPUTS = ("embeddings", "probabilities")
MAX_PROMPT_CLASSES = 10  # DNAGPT answers with <0>..<9>


class DnafmPyfunc(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from trainer.models.export import load_export

        self.model, self.cfg, self.tok = load_export(context.artifacts["export"])
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model.to(self.device)

    def predict(
        self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        p = {**DEFAULT_PARAMS, **(params or {})}
        if p["output"] not in OUTPUTS:
            raise UsageError(f"params output={p['output']!r}: must be one of {', '.join(OUTPUTS)}")
        if not isinstance(model_input, pd.DataFrame) or "sequence" not in model_input.columns:
            raise UsageError("predict takes a pandas DataFrame with a 'sequence' column")
        sequences = model_input["sequence"].tolist()
        bad = next((i for i, s in enumerate(sequences) if not isinstance(s, str)), None)
        if bad is not None:
            raise UsageError(f"row {bad}: sequence is {sequences[bad]!r}, not a string of bases")
        rows = []
        for lo in range(0, len(sequences), int(p["batch_size"])):
            rows.append(self._batch(sequences[lo : lo + int(p["batch_size"])], lo, p))
        values = np.concatenate(rows) if rows else np.zeros((0, 0), np.float32)
        prefix = "emb" if p["output"] == "embeddings" else "prob"
        return pd.DataFrame(values, columns=[f"{prefix}_{i}" for i in range(values.shape[1])])

    @torch.no_grad()
    def _batch(self, sequences: list[str], first_row: int, p: dict[str, Any]) -> np.ndarray:
        ids, kmer_mask, answer_at = encode(
            self.cfg.family,
            self.tok,
            sequences,
            species=p["species"],
            max_len=self.cfg.model.max_seq_len,
            crop=bool(p["crop"]),
            first_row=first_row,
        )
        ids, kmer_mask = torch.from_numpy(ids).to(self.device), torch.from_numpy(kmer_mask).to(self.device)
        if self.cfg.family == "dnagpt":
            hidden = self.model(ids)  # (B, T, D); right padding never reaches real tokens (causal)
        else:
            hidden = self.model(ids, ids != self.tok.pad_id)
        if p["output"] == "embeddings":
            w = kmer_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
            return ((hidden * w).sum(1) / w.sum(1).clamp(min=1)).float().cpu().numpy()
        return self._probabilities(hidden, torch.from_numpy(answer_at).to(self.device), int(p["num_classes"]))

    def _probabilities(self, hidden: torch.Tensor, answer_at: torch.Tensor, num_classes: int) -> np.ndarray:
        if self.cfg.family == "dnagpt":
            if not 2 <= num_classes <= MAX_PROMPT_CLASSES:
                raise UsageError(
                    f"num_classes={num_classes}: DNAGPT answers with <0>..<9>, so 2 to 10 classes"
                )
            answers = torch.tensor(
                [self.tok.token_to_id(f"<{c}>") for c in range(num_classes)], device=hidden.device
            )
            at = hidden[torch.arange(len(answer_at), device=hidden.device), answer_at]  # (B, D) at <=>
            logits = self.model.lm_logits(at)[:, answers]  # (B, C)
        else:
            if num_classes != self.model.classifier.out_features:
                raise UsageError(
                    f"num_classes={num_classes}: this DNABERT's classifier has "
                    f"{self.model.classifier.out_features} classes"
                )
            logits = self.model.classify(hidden)
        return torch.softmax(logits.float(), dim=-1).cpu().numpy()


DEFAULT_PARAMS: dict[str, Any] = {
    "output": "embeddings",
    "species": "R",
    "num_classes": 2,
    "batch_size": 32,
    "crop": False,
}


def encode(
    family: str, tok, sequences: list[str], *, species: str, max_len: int, crop: bool, first_row: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """-> ids (B, T) right-padded with the pad id, k-mer mask (B, T) bool, answer position (B,) (``<=>`` for
    DNAGPT, 0 = [CLS] for DNABERT). The templates are those of ``eval.heads.encode_inputs``."""
    fit = (max_len - 2) * tok.k if family == "dnagpt" else max_len - 2 + tok.k - 1  # bases that fit
    rows = []
    for i, seq in enumerate(sequences):
        if len(seq) > fit:
            if not crop:
                raise UsageError(
                    f"row {first_row + i}: {len(seq)} bases, more than the {fit} that fit the model's context "
                    f"of {max_len} tokens; pass params={{'crop': True}} to keep the central bases"
                )
            lo = (len(seq) - fit) // 2
            seq = seq[lo : lo + fit]
        rows.append(np.asarray(tok.encode(seq), dtype=np.int64))
    if family == "dnagpt":
        head, tail = tok.token_to_id(f"<{species.strip('<>')}>"), tok.token_to_id("<=>")
    else:
        head, tail = tok.cls_id, tok.sep_id
    longest = max((len(r) for r in rows), default=0) + 2
    ids = np.full((len(rows), longest), tok.pad_id, np.int64)
    kmers = np.zeros((len(rows), longest), bool)
    answer = np.zeros(len(rows), np.int64)
    for i, r in enumerate(rows):
        ids[i, : len(r) + 2] = np.concatenate([[head], r, [tail]])
        kmers[i, 1 : len(r) + 1] = True
        answer[i] = len(r) + 1 if family == "dnagpt" else 0
    return ids, kmers, answer


def _signature(output: str, num_classes: int):
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    defaults = {**DEFAULT_PARAMS, "output": output, "num_classes": num_classes}
    kinds = {
        "output": "string",
        "species": "string",
        "num_classes": "long",
        "batch_size": "long",
        "crop": "boolean",
    }
    params = ParamSchema([ParamSpec(k, kinds[k], defaults[k]) for k in kinds])
    return ModelSignature(inputs=Schema([ColSpec("string", "sequence")]), params=params)


def _model_kwargs(export_dir: Path, code_dir: Path, *, output: str, num_classes: int) -> dict[str, Any]:
    for name in CODE:  # the packages as they are, without caches
        src = Path(__file__).resolve().parents[1] / name
        shutil.copytree(src, code_dir / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return {
        "python_model": str(ENTRY),
        "artifacts": {"export": str(export_dir)},
        "code_paths": [str(code_dir / name) for name in CODE],
        "signature": _signature(output, num_classes),
        # given, not inferred: inference loads the model in a subprocess to watch its imports
        "pip_requirements": [
            f"torch=={torch.__version__.split('+')[0]}",
            f"mlflow=={mlflow.__version__}",
            "numpy",
            "pandas",
            "safetensors",
            "tqdm",
        ],
    }


def save_pyfunc(
    export_dir: str | Path, out_dir: str | Path, *, output: str = "embeddings", num_classes: int = 2
) -> Path:
    """Write an MLflow model folder (``mlflow.pyfunc.load_model(out_dir)``) for an export folder, atomically."""
    from datapipe.common.files import atomic_dir

    _check_output(output)
    with tempfile.TemporaryDirectory() as code, atomic_dir(out_dir) as tmp:
        kwargs = _model_kwargs(Path(export_dir), Path(code), output=output, num_classes=num_classes)
        tmp.rmdir()  # save_model wants to create the folder itself
        mlflow.pyfunc.save_model(path=str(tmp), **kwargs)
    return Path(out_dir)


def log_pyfunc(
    export_dir: str | Path,
    *,
    tracking_uri: str,
    run_id: str,
    registered_model: str | None = None,
    output: str = "embeddings",
    num_classes: int = 2,
) -> dict[str, Any]:
    """Log an export folder as a pyfunc model named 'model' into MLflow run ``run_id`` (and register it as
    ``registered_model``) -> {'model_uri', 'run_uri', 'version'}. The run keeps its status."""
    from mlflow.tracking import MlflowClient

    _check_output(output)
    client = MlflowClient(tracking_uri)
    status = client.get_run(run_id).info.status
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(tracking_uri)
    try:
        with tempfile.TemporaryDirectory() as code, mlflow.start_run(run_id=run_id):
            kwargs = _model_kwargs(Path(export_dir), Path(code), output=output, num_classes=num_classes)
            info = mlflow.pyfunc.log_model(name="model", registered_model_name=registered_model, **kwargs)
        client.update_run(run_id, status=status)  # leaving start_run marked it FINISHED
    finally:
        mlflow.set_tracking_uri(previous)
    version = info.registered_model_version
    result = {"model_uri": info.model_uri, "run_uri": f"runs:/{run_id}/model", "version": version}
    if registered_model:
        result["registered_uri"] = f"models:/{registered_model}/{version}"
    log.info("logged MLflow model %s", result.get("registered_uri", info.model_uri))
    return result


def _check_output(output: str) -> None:
    if output not in OUTPUTS:
        raise UsageError(f"output {output!r}: must be one of {', '.join(OUTPUTS)}")
