"""Ranking metrics and losses against sklearn and hand-computed values."""

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import log_loss, roc_auc_score
from torchmetrics.classification import BinaryAUROC

from ranking.metrics.ranking import RankingMetrics, binary_auc, grouped_auc
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
    ratio = (roc_auc_score(y, p) - 0.5) / (roc_auc_score(y, q) - 0.5)
    assert out["auc_oracle_ratio/click"] == pytest.approx(ratio, abs=1e-6)
    assert out["logloss/click"] == pytest.approx(log_loss(y, p), abs=1e-5)


def test_auc_and_gauc_against_brute_force_with_ties():
    rng = np.random.default_rng(1)
    n = 3000
    users = rng.integers(0, 60, n)
    y = (rng.random(n) < 0.2 + 0.01 * (users % 10)).astype(np.int8)
    p = np.round(rng.random(n) * 0.3 + 0.3 * y, 2).astype(np.float32)  # many ties
    m = RankingMetrics(["click"])
    for s in range(0, n, 700):
        sl = slice(s, s + 700)
        m.update(
            torch.from_numpy(p[sl, None]),
            {"click": torch.from_numpy(y[sl].astype(np.float32))},
            user_ids=torch.from_numpy(users[sl]),
        )
    out = m.compute()
    assert out["auc/click"] == pytest.approx(roc_auc_score(y, p), abs=1e-9)
    num = den = 0.0
    for u in np.unique(users):  # GAUC: impression-weighted, users with both classes only
        mask = users == u
        if 0 < y[mask].sum() < mask.sum():
            num += mask.sum() * roc_auc_score(y[mask], p[mask])
            den += mask.sum()
    assert out["gauc/click"] == pytest.approx(num / den, abs=1e-9)
    auroc = BinaryAUROC()
    auroc.update(torch.from_numpy(p), torch.from_numpy(y.astype(np.int64)))
    assert out["auc/click"] == pytest.approx(float(auroc.compute()), abs=1e-6)


def test_gauc_skips_one_class_users_and_ne_calibration_by_hand():
    p = np.array([0.9, 0.1, 0.8, 0.7, 0.3, 0.6], dtype=np.float32)
    y = np.array([1, 0, 0, 1, 1, 1], dtype=np.int8)
    g = np.array([7, 7, 5, 5, 5, 9])  # user 9 has one class
    value, users = grouped_auc(p, y, g)
    # user 7: AUC 1 (2 rows); user 5: positives 0.7, 0.3 vs negative 0.8 -> 0 (3 rows)
    assert users == 2
    assert value == pytest.approx((2 * 1.0 + 3 * 0.0) / 5)
    assert binary_auc(np.array([0.5, 0.5]), np.array([1, 0])) == 0.5
    assert math.isnan(binary_auc(np.array([0.1, 0.2]), np.array([1, 1])))
    m = RankingMetrics(["click"])
    m.update(torch.from_numpy(p[:, None]), {"click": torch.from_numpy(y.astype(np.float32))})
    out = m.compute()
    rate = y.mean()
    entropy = -(rate * math.log(rate) + (1 - rate) * math.log(1 - rate))
    assert out["ne/click"] == pytest.approx(log_loss(y, p) / entropy, rel=1e-6)
    assert out["calibration/click"] == pytest.approx(p.mean() / rate, rel=1e-6)
    assert "gauc/click" not in out  # no user ids given


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
