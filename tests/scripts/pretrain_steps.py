"""Runs each build step of a pretraining run alone, in one process (world size 1), and prints what each gave
as JSON on the last line. Used by tests/test_build_steps.py (a subprocess: init_process_group sets RANK etc.
in the environment, which must not leak into the test session's other launches)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from cluster.launch import init_process_group
from datapipe.common.errors import UsageError
from trainer.config import PretrainConfig
from trainer.loop import StepLoop
from trainer.models.export import load_export
from trainer.pretrain import (
    StopRequested,
    build_loader,
    build_model_and_engine,
    check_data,
    checkpointer,
    export_final,
    find_resume_point,
    open_tracker,
    restore,
)
from trainer.recipes import get_recipe


def main(data: Path, out: Path) -> dict:
    cfg = get_recipe("tiny-dnagpt").with_overrides(
        ["train.steps=2", "train.log_every=1", "optim.warmup_steps=1", "loader.micro_batch_size=4",
         "loader.num_workers=0"]
    )  # fmt: skip
    got: dict = {}
    check_data(cfg, data)
    try:
        check_data(PretrainConfig.from_dict({**cfg.to_dict(), "tokenizer": "dnagpt-1to6mer",
                                             "model": {**cfg.model.to_dict(), "vocab_size": 19564}}), data)  # fmt: skip
    except UsageError as err:
        got["check_data_error"] = str(err)
    dist_info = init_process_group()
    ckpt = out / "checkpoints"
    got["fresh_step"] = find_resume_point(cfg, ckpt, resume=True, world_size=1).step
    engine, ds_cfg = build_model_and_engine(cfg, dist_info)
    got["ds_micro_batch"] = ds_cfg["train_micro_batch_size_per_gpu"]
    loader = build_loader(cfg, data, dist_info)
    got["restore_fresh"] = restore(
        engine, loader, ckpt, find_resume_point(cfg, ckpt, resume=False, world_size=1)
    )
    tracker = open_tracker(cfg, out, data_dir=data, point=find_resume_point(cfg, ckpt, resume=False, world_size=1),
                           ds_config=ds_cfg)  # fmt: skip
    got["run_id"] = tracker.run_id
    saved: list = []
    save = checkpointer(engine, loader, cfg, ckpt, tracker, on_saved=lambda folder, step: saved.append(step))
    loop = StepLoop(cfg=cfg, metric_keys=("loss", "loss_lm", "loss_order", "loss_gc", "order_acc"), engine=engine,
                    loader=loader, tracker=tracker, device=dist_info.device, jsonl=out / "metrics.jsonl",
                    n_params=1, stop=StopRequested(), checkpoint=save)  # fmt: skip
    got["outcome"] = loop.run(0)
    got["saved_steps"] = saved
    got["loader_state"] = loader.state_dict()
    point = find_resume_point(cfg, ckpt, resume=True, world_size=1)
    got["resume_tag"], got["resume_step"] = point.tag, point.step
    engine2, _ = build_model_and_engine(cfg, dist_info)
    loader2 = build_loader(cfg, data, dist_info)
    got["restored_step"] = restore(engine2, loader2, ckpt, point)
    got["restored_loader_state"] = loader2.state_dict()
    got["same_weights_after_restore"] = all(
        torch.equal(a, b)
        for a, b in zip(engine.module.parameters(), engine2.module.parameters(), strict=True)
    )
    final = export_final(engine, cfg, out, tracker)
    model, _, _ = load_export(final)
    got["export_equals_engine"] = all(
        torch.equal(v, engine.module.gpt.state_dict()[k]) for k, v in model.state_dict().items()
    )
    tracker.finish()
    return got


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]), Path(sys.argv[2]))))
