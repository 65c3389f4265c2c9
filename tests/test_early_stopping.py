"""``<stage>.early_stopping``: the best epoch by a validation metric is the model a
stage tests, saves and reports; patience stops training (ranking/lit/best_epoch.py)."""

from __future__ import annotations

import copy

import pytest
import pytorch_lightning as pl
import torch

import ranking.pipeline as pipeline
from ranking.data.errors import ConfigError
from ranking.lit.best_epoch import check_early_stopping
from ranking.modules.fused_embedding import fused_optimizer
from ranking.tracking import Tracker
from tests.conftest import compose_train, tiny_overrides


class Record(pl.Callback):
    """Each epoch's validation metrics and model weights, at the end of the epoch."""

    def __init__(self, metric: str) -> None:
        self.metric = metric
        self.values: list[float] = []
        self.weights: list[dict[str, torch.Tensor]] = []
        self.accumulators: list[dict[str, torch.Tensor]] = []  # the fused optimiser's state

    def on_train_epoch_end(self, trainer, module) -> None:
        self.values.append(float(trainer.callback_metrics[self.metric]))
        self.weights.append(copy.deepcopy(module.model.state_dict()))
        state = fused_optimizer(module.model.sparse).state_dict()["state"]
        self.accumulators.append(_flat(copy.deepcopy(state)))


def _flat(state: dict) -> dict[str, torch.Tensor]:
    return {f"{t}/{k}": v for t, per in state.items() for k, v in per.items()}


def _train(stage, cfg, path, run_dir, monkeypatch=None, record=None):
    if record is not None:
        make_trainer = pipeline.make_trainer

        def recording(*args, **kwargs):
            trainer = make_trainer(*args, **kwargs)
            trainer.callbacks.insert(0, record)  # before the selection: the same metrics
            return trainer

        monkeypatch.setattr(pipeline, "make_trainer", recording)
    pl.seed_everything(cfg.seed)
    tracker = Tracker(cfg.mlflow.tracking_uri, cfg.mlflow.experiment, enabled=False)
    try:
        return pipeline.train_stage(stage, cfg, path, tracker, run_dir)
    finally:
        if record is not None:
            monkeypatch.setattr(pipeline, "make_trainer", make_trainer)


def _assert_same(want: dict[str, torch.Tensor], got: dict[str, torch.Tensor]) -> None:
    assert want.keys() == got.keys()
    for k in want:
        assert torch.equal(want[k], got[k]), k


@pytest.mark.parametrize(
    ("stage", "metric", "direction"),
    [("ranking", "valid/logloss/click", "maximize"), ("retrieval", "valid/recall@100", "minimize")],
)
def test_the_kept_model_is_the_selected_epochs(
    tiny_dataset, tmp_path, monkeypatch, stage, metric, direction
):
    """Every epoch trains (patience null); the module, the stage checkpoint and the
    reported validation metrics are those of the epoch the metric picks. The
    directions are the "wrong" ones (the worst loss, the worst recall), so that the
    kept epoch is not the last one and keeping it is visible."""
    overrides = [
        *tiny_overrides(tiny_dataset),
        "mlflow.enabled=false",
        f"{stage}.epochs=3",
        f"{stage}.early_stopping.metric={metric}",
        f"{stage}.early_stopping.direction={direction}",
    ]
    record = Record(metric)
    module, metrics = _train(
        stage, compose_train(overrides), tiny_dataset, tmp_path, monkeypatch, record
    )
    assert len(record.values) == 3  # no early stop without patience
    sign = 1 if direction == "maximize" else -1
    kept = max(range(3), key=lambda e: (sign * record.values[e], -e))  # the first of the best
    assert kept != 2, record.values  # else the test could not tell the last from the best
    assert module.last_metrics[metric] == pytest.approx(record.values[kept])
    _assert_same(record.weights[kept], module.model.state_dict())
    saved = torch.load(tmp_path / "checkpoints" / pipeline.CHECKPOINTS[stage], weights_only=False)
    (best_file,) = (tmp_path / "checkpoints" / stage).glob("best-step*.ckpt")  # older ones dropped
    best = torch.load(best_file, weights_only=False)
    assert best_file.name == f"best-step{best['global_step']}.ckpt"
    assert saved["epoch"] == best["epoch"] == kept
    _assert_same(best["state_dict"], saved["state_dict"])
    _assert_same(
        record.weights[kept],
        {k[len("model.") :]: v for k, v in saved["state_dict"].items() if k.startswith("model.")},
    )
    # the fused tables' optimiser state is the kept epoch's too (what a warm start carries)
    _assert_same(record.accumulators[kept], _flat(saved["sparse_optimizer"]["state"]))
    if stage == "ranking":  # row-wise Adagrad: the state moves every epoch
        assert not torch.equal(
            *(record.accumulators[e]["item_id.weight/item_id.weight.momentum_1"] for e in (kept, 2))
        )
    assert any(k.startswith("test/") for k in metrics)


class RecordChecks(pl.Callback):
    """(global step, value) of every validation during training."""

    def __init__(self, metric: str) -> None:
        self.metric, self.checks = metric, []

    def on_validation_end(self, trainer, module) -> None:
        if not trainer.sanity_checking:
            self.checks.append((trainer.global_step, float(trainer.callback_metrics[self.metric])))


def test_checks_within_an_epoch_keep_the_best_check(tiny_dataset, tmp_path, monkeypatch):
    """val_check_interval 0.25: four checks in the one epoch; the kept model is the
    one at the step of the best (here the "worst" AUC: not the last check)."""
    metric = "valid/auc/click"
    overrides = [
        *tiny_overrides(tiny_dataset),
        "mlflow.enabled=false",
        "+trainer.val_check_interval=0.25",
        f"ranking.early_stopping.metric={metric}",
        "ranking.early_stopping.direction=minimize",
    ]
    record = RecordChecks(metric)
    module, _ = _train(
        "ranking", compose_train(overrides), tiny_dataset, tmp_path, monkeypatch, record
    )
    assert len(record.checks) == 4
    step, value = min(record.checks, key=lambda c: c[1])
    assert step != record.checks[-1][0], record.checks
    saved = torch.load(tmp_path / "checkpoints" / "ranking.ckpt", weights_only=False)
    assert saved["global_step"] == step
    assert module.last_metrics[metric] == pytest.approx(value)


def test_patience_stops_training(tiny_dataset, tmp_path):
    """min_delta 1.0: no later epoch improves the AUC of the first by that much, so
    with patience 2 the stage stops after epoch 3 of 5 and keeps epoch 1; the stage's
    MLflow run says so."""
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = compose_train(
        [
            *tiny_overrides(tiny_dataset),
            f"mlflow.tracking_uri={uri}",
            "ranking.epochs=5",
            "ranking.early_stopping.metric=valid/auc/click",
            "ranking.early_stopping.patience=2",
            "ranking.early_stopping.min_delta=1.0",
        ]
    )
    pl.seed_everything(cfg.seed)
    tracker = Tracker(uri, cfg.mlflow.experiment)
    with tracker.parent(cfg, "tiny"):
        module, _ = pipeline.train_stage("ranking", cfg, tiny_dataset, tracker, tmp_path)
    trainer = module.trainer
    assert trainer.current_epoch == 3  # epochs 0, 1, 2 ran
    assert trainer.global_step == 3 * trainer.num_training_batches
    saved = torch.load(tmp_path / "checkpoints" / "ranking.ckpt", weights_only=False)
    assert saved["epoch"] == 0
    client = mlflow.MlflowClient(tracking_uri=uri)
    (stage,) = client.search_runs(
        [client.get_experiment_by_name(cfg.mlflow.experiment).experiment_id],
        "tags.stage = 'ranking'",
    )
    tag = stage.data.tags["early_stopping"]
    steps = trainer.num_training_batches
    assert tag.startswith(f"kept epoch 1 of 3 (step {steps} of {3 * steps}): valid/auc/click")
    assert "stopped early" in tag


def test_an_unknown_metric_names_what_the_stage_logs(tiny_dataset, tmp_path):
    cfg = compose_train(
        [
            *tiny_overrides(tiny_dataset),
            "mlflow.enabled=false",
            "ranking.early_stopping.metric=valid/auc/clik",
            "+trainer.limit_train_batches=2",
        ]
    )
    check_early_stopping(cfg)  # the form is right: the name is checked at validation
    with pytest.raises(ConfigError, match=r"metric='valid/auc/clik'.*valid/auc/click"):
        _train("ranking", cfg, tiny_dataset, tmp_path)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["ranking.early_stopping.metric=test/auc/click"], "never the test split"),
        (
            ["ranking.early_stopping.metric=valid/auc/click", "ranking.early_stopping.patience=0"],
            "patience=0",
        ),
        (
            [
                "retrieval.early_stopping.metric=valid/recall@100",
                "retrieval.early_stopping.direction=up",
            ],
            "direction='up'",
        ),
        (
            ["ranking.early_stopping.metric=valid/auc/click", "trainer.limit_val_batches=0"],
            "limit_val_batches=0",
        ),
        (
            [
                "ranking.early_stopping.metric=valid/auc/click",
                "ranking.early_stopping.min_delta=null",
            ],
            "min_delta=None",
        ),
        (
            ["ranking.early_stopping.metric=valid/auc/click", "+trainer.check_val_every_n_epoch=2"],
            "no validation would run",
        ),
    ],
)
def test_bad_options_are_refused_before_training(tiny_dataset, overrides, message):
    cfg = compose_train([*tiny_overrides(tiny_dataset), *overrides])
    with pytest.raises(ConfigError, match=message):
        check_early_stopping(cfg)


def test_off_by_default(tiny_dataset):
    cfg = compose_train(tiny_overrides(tiny_dataset))
    check_early_stopping(cfg)
    assert cfg.ranking.early_stopping.metric is None
    assert cfg.retrieval.early_stopping.metric is None
