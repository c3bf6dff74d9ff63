"""`dnafm demo`'s stage commands, without running them (no Ray, DeepSpeed or MLflow)."""

from __future__ import annotations


def test_demo_pretrains_at_the_lr_that_does_no_harm(tmp_path):
    """The full demo passes lr 3e-4 to pretraining (issue #23: the recipe's 2e-3 costs 0.26 pas MCC at this
    budget); --quick keeps the recipe's lr so its 20 steps still move the loss."""
    from cluster.demo import stage_commands

    def pretrain_args(quick: bool) -> list[str]:
        return dict(stage_commands(tmp_path, steps=20, quick=quick))["pretrain"]

    full = pretrain_args(False)
    assert full[full.index("optim.lr=3e-4") - 1] == "--set"
    assert not any(a.startswith("optim.lr=") for a in pretrain_args(True))
