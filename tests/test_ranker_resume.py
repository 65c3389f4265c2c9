"""A ranking run killed mid-epoch and resumed from its last checkpoint ends with
the metrics (and weights) of an uninterrupted run of the same seed."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch

import ranking.pipeline as pipeline
from ranking.lit.fused_tables import SPARSE_STATE_KEY
from ranking.tracking import Tracker
from tests.conftest import compose_train, tiny_overrides


class Killed(Exception):
    """Stands in for the job being killed."""


class KillAt(pl.Callback):
    """Raise in the middle of epoch ``epoch`` (after ``batches`` of its batches)."""

    def __init__(self, epoch: int, batches: int) -> None:
        self.epoch, self.batches = epoch, batches

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == self.batches:
            raise Killed


def _train(cfg, path, run_dir):
    pl.seed_everything(cfg.seed)
    tracker = Tracker(cfg.mlflow.tracking_uri, cfg.mlflow.experiment, enabled=False)
    return pipeline.train_stage("ranking", cfg, path, tracker, run_dir)


@pytest.mark.parametrize("mode", ["from_scratch", "warm_started", "early_stopped"])
def test_killed_then_resumed_run_matches_uninterrupted(tiny_dataset, tmp_path, monkeypatch, mode):
    """Also for a warm-started run (optimiser state carried, rates continued): the
    resumed run restores its own checkpoint instead of warm-starting again; and for
    early stopping (no epoch improves the first's AUC by 1.0: patience 1 stops after
    epoch 2 of 3), which counts on from the killed run's state and keeps its best."""
    base = [
        *tiny_overrides(tiny_dataset),
        "mlflow.enabled=false",
        "ranking.epochs=2",
        "+trainer.num_sanity_val_steps=0",
    ]
    if mode == "early_stopped":
        base += [
            "ranking.epochs=3",
            "ranking.early_stopping.metric=valid/auc/click",
            "ranking.early_stopping.patience=1",
            "ranking.early_stopping.min_delta=1.0",
        ]
    if mode == "warm_started":
        earlier = compose_train([*base, "ranking.epochs=1"])
        _train(earlier, tiny_dataset, tmp_path / "earlier")
        base.append(f"warm_start.run={tmp_path / 'earlier'}")
    cfg = compose_train(base)
    full, full_metrics = _train(cfg, tiny_dataset, tmp_path / "full")

    make_trainer = pipeline.make_trainer

    def killing_trainer(*args, **kwargs):
        trainer = make_trainer(*args, **kwargs)
        trainer.callbacks.append(KillAt(epoch=1, batches=2))
        return trainer

    monkeypatch.setattr(pipeline, "make_trainer", killing_trainer)
    with pytest.raises(Killed):
        _train(cfg, tiny_dataset, tmp_path / "killed")
    monkeypatch.setattr(pipeline, "make_trainer", make_trainer)

    last = tmp_path / "killed" / "checkpoints" / "ranking" / "last.ckpt"
    state = torch.load(last, map_location="cpu", weights_only=False)
    assert state["epoch"] == 0  # the end of epoch 0: epoch 1 was cut short
    accumulators = state[SPARSE_STATE_KEY]["state"]["item_id.weight"]["item_id.weight.momentum_1"]
    assert accumulators.abs().sum() > 0  # the fused row-wise Adagrad state is in there

    resumed, resumed_metrics = _train(
        compose_train([*base, f"resume={tmp_path / 'killed'}"]), tiny_dataset, tmp_path / "resumed"
    )
    assert resumed.trainer.global_step == full.trainer.global_step
    keys = [k for k in full_metrics if k.startswith("test/auc/")]
    assert keys == ["test/auc/click", "test/auc/purchase"]
    for k in full_metrics:
        assert resumed_metrics[k] == pytest.approx(full_metrics[k], abs=1e-4, nan_ok=True), k
    want, got = full.model.state_dict(), resumed.model.state_dict()
    for k in want:
        assert torch.allclose(want[k], got[k], atol=1e-6), k
    if mode != "early_stopped":
        return
    assert full.trainer.current_epoch == 2  # stopped after epochs 0 and 1 of 3
    kept = torch.load(tmp_path / "resumed" / "checkpoints" / "ranking.ckpt", weights_only=False)
    assert kept["epoch"] == 0  # the kept epoch: the killed run's best, carried over
    (copied,) = (tmp_path / "resumed" / "checkpoints" / "ranking").glob("best-step*.ckpt")
    assert torch.load(copied, weights_only=False)["epoch"] == 0
    # resuming a run that had decided to stop trains nothing more
    again, again_metrics = _train(
        compose_train([*base, f"resume={tmp_path / 'full'}"]), tiny_dataset, tmp_path / "again"
    )
    assert again.trainer.global_step == full.trainer.global_step
    assert again_metrics == pytest.approx(full_metrics, nan_ok=True)


def test_resume_from_a_missing_run_is_an_error(tiny_dataset, tmp_path):
    cfg = compose_train([*tiny_overrides(tiny_dataset), f"resume={tmp_path / 'nope'}"])
    with pytest.raises(FileNotFoundError, match="no such run directory"):
        pipeline.resume_checkpoint(cfg, "ranking")
