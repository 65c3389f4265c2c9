"""The ranking stage's test slices: ``test_random/...`` holds the metrics of the
random-exposure test rows, the same as sklearn computes from the model's
predictions on those rows."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from sklearn.metrics import roc_auc_score

from ranking.data.datamodule import RecDataModule


def _auc(y: np.ndarray, p: np.ndarray) -> float:
    return roc_auc_score(y, p) if 0 < y.sum() < len(y) else float("nan")


def test_random_exposure_slice_metrics_match_sklearn(tiny_trained, tiny_dataset):
    _, _, ranking, _ = tiny_trained
    metrics = ranking.last_metrics
    dm = RecDataModule(tiny_dataset, batch_size=512, eval_batch_size=512, validate=False)
    dm.setup()
    probs, labels = [], []
    with torch.no_grad():
        for batch in dm.test_dataloader():  # every test row, in file order
            probs.append(ranking.task.probabilities(ranking.model(batch)).numpy())
            labels.append(np.stack([batch.labels[t].numpy() for t in ranking.task.tasks], 1))
    probs, labels = np.concatenate(probs), np.concatenate(labels)
    policy = np.concatenate(
        [
            pq.read_table(p, columns=["policy"]).column(0).to_numpy()
            for p in dm.schema.split_paths("test")
        ]
    )
    assert len(policy) == len(probs)
    random = policy == 1
    assert 0.05 < random.mean() < 0.5  # a slice, not the whole split
    for t, task in enumerate(ranking.task.tasks):
        y = labels[random, t]
        assert metrics[f"test_random/auc/{task}"] == pytest.approx(
            _auc(y, probs[random, t]), abs=1e-6, nan_ok=True
        )
        assert metrics[f"test/auc/{task}"] == pytest.approx(
            roc_auc_score(labels[:, t], probs[:, t]), abs=1e-6
        )
        assert metrics[f"test_random/calibration/{task}"] == pytest.approx(
            probs[random, t].mean() / y.mean() if y.any() else np.nan, rel=1e-4, nan_ok=True
        )
    assert np.isfinite(metrics["test_random/auc/click"])  # the slice holds clicks
    assert "test_random/oracle_auc/click" in metrics  # the synthetic world's truth, on the slice


def test_a_slice_without_rows_is_skipped(tiny_trained, tiny_dataset, caplog):
    _, _, ranking, _ = tiny_trained
    dm = RecDataModule(tiny_dataset, batch_size=512, eval_batch_size=512, validate=False)
    dm.setup()
    saved = ranking.slices
    try:
        ranking.slices = {**saved, "test_none": {"column": "policy", "value": 7}}
        with caplog.at_level("WARNING", logger="ranking"):
            got = ranking.slice_metrics(dm)
    finally:
        ranking.slices = saved
    assert sorted(got) == ["test_random"]
    want = {k: v for k, v in ranking.last_metrics.items() if k.startswith("test_random/")}
    assert sorted(got["test_random"]) == sorted(want)
    for k, v in want.items():  # the same model on the same rows as at the run's test
        assert got["test_random"][k] == pytest.approx(v, abs=1e-6, nan_ok=True), k
    assert "the slice test_none (policy == 7.0) holds no test row" in caplog.text
