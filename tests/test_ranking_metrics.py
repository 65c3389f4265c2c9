"""Ranking metrics and losses against sklearn and hand-computed values."""

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import log_loss, roc_auc_score

from ranking.metrics.ranking import RankingMetrics
from ranking.tasks.ranking import RankingTask
from ranking.tasks.retrieval import RetrievalTask


def test_ranking_metrics_match_sklearn_over_batches():
    rng = np.random.default_rng(0)
    n = 1000
    y = (rng.random(n) < 0.3).astype(np.float32)
    p = np.clip(0.3 + 0.3 * (y - 0.3) + rng.normal(0, 0.2, n), 0.01, 0.99).astype(np.float32)
    q = np.clip(p + rng.normal(0, 0.05, n), 0.01, 0.99).astype(np.float32)
    m = RankingMetrics(["click"])
    for s in range(0, n, 300):
        m.update(
            torch.from_numpy(p[s : s + 300, None]),
            {"click": torch.from_numpy(y[s : s + 300])},
            {"click": torch.from_numpy(q[s : s + 300])},
        )
    out = m.compute()
    assert out["auc/click"] == pytest.approx(roc_auc_score(y, p), abs=1e-6)
    assert out["oracle_auc/click"] == pytest.approx(roc_auc_score(y, q), abs=1e-6)
    assert out["logloss/click"] == pytest.approx(log_loss(y, p), abs=1e-5)


def test_ranking_task_loss_by_hand():
    logits = torch.tensor([[0.0, 2.0], [1.0, -1.0]])
    labels = {"click": torch.tensor([1.0, 0.0]), "purchase": torch.tensor([0.0, 0.0])}
    total, per = RankingTask(["click", "purchase"], {"purchase": 2.0}).loss(logits, labels)
    click = (math.log(2) + math.log(1 + math.e)) / 2
    purchase = (math.log(1 + math.exp(2.0)) + math.log(1 + math.exp(-1.0))) / 2
    assert per["click"].item() == pytest.approx(click, rel=1e-6)
    assert total.item() == pytest.approx(click + 2 * purchase, rel=1e-6)


def test_in_batch_softmax_by_hand_with_accidental_hit():
    # 3 rows; rows 0 and 2 share item 7, so row 0's negative "item of row 2" is masked.
    user = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    item = torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.5, 0.5]])
    ids = torch.tensor([7, 8, 7])
    task = RetrievalTask(temperature=1.0, mask_accidental_hits=True)
    logits = user @ item.T  # [[1,0,.5],[0,2,.5],[1,2,1]]
    row0 = -1 + math.log(math.exp(1) + math.exp(0))  # item of row 2 masked
    row1 = -2 + math.log(math.exp(0) + math.exp(2) + math.exp(0.5))
    row2 = -1 + math.log(math.exp(2) + math.exp(1))  # item of row 0 masked
    assert logits[1, 1] == 2
    assert task.loss(user, item, ids).item() == pytest.approx((row0 + row1 + row2) / 3, rel=1e-6)
    unmasked = RetrievalTask(temperature=1.0, mask_accidental_hits=False).loss(user, item, ids)
    assert unmasked.item() > task.loss(user, item, ids).item()
