"""Full-corpus retrieval metrics against hand-computed values and a brute-force loop."""

import math

import numpy as np
import pytest
import torch

from ranking.metrics.retrieval import FullCorpusEvaluator, topk_items, topk_metrics


def test_topk_metrics_by_hand():
    # user 0: positives {3, 9}; retrieved [3, 5, 9] -> hits at ranks 1 and 3
    # user 1: positives {7};    retrieved [1, 2, 4] -> no hit
    topk = np.array([[3, 5, 9], [1, 2, 4]])
    out = topk_metrics(topk, [np.array([3, 9]), np.array([7])], ks=(1, 3))
    assert out["recall@1"] == pytest.approx((1 / 2 + 0) / 2)
    assert out["recall@3"] == pytest.approx((2 / 2 + 0) / 2)
    assert out["hit@1"] == pytest.approx(0.5)
    assert out["hit@3"] == pytest.approx(0.5)
    ndcg_u0_at3 = (1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3))
    assert out["ndcg@3"] == pytest.approx(ndcg_u0_at3 / 2)
    assert out["ndcg@1"] == pytest.approx(0.5)


def test_topk_items_matches_argsort():
    g = torch.Generator().manual_seed(0)
    q, items = torch.randn(37, 8, generator=g), torch.randn(101, 8, generator=g)
    got = topk_items(q, items, 10, chunk=8)
    want = torch.argsort(q @ items.T, dim=1, descending=True)[:, :10]
    assert torch.equal(got, want)


def _brute_force(rows, item_emb, item_ids, ks):
    """Per user: query = embedding of the earliest row; positives = distinct clicked items."""
    users = sorted({r[0] for r in rows if r[4]})
    rec = {k: [] for k in ks}
    hit = {k: [] for k in ks}
    ndcg = {k: [] for k in ks}
    for u in users:
        mine = [r for r in rows if r[0] == u]
        first = min(mine, key=lambda r: r[1])
        pos = {r[3] for r in mine if r[4]}
        scores = [(float(np.dot(first[2], item_emb[i])), i) for i in range(len(item_ids))]
        ranked = [item_ids[i] for _, i in sorted(scores, key=lambda s: -s[0])]
        for k in ks:
            top = ranked[:k]
            h = [1.0 if t in pos else 0.0 for t in top]
            rec[k].append(sum(h) / len(pos))
            hit[k].append(float(sum(h) > 0))
            dcg = sum(x / math.log2(i + 2) for i, x in enumerate(h))
            idcg = sum(1 / math.log2(i + 2) for i in range(min(len(pos), k)))
            ndcg[k].append(dcg / idcg)
    out = {}
    for k in ks:
        out[f"recall@{k}"] = np.mean(rec[k])
        out[f"hit@{k}"] = np.mean(hit[k])
        out[f"ndcg@{k}"] = np.mean(ndcg[k])
    return out, len(users)


def test_full_corpus_evaluator_matches_brute_force():
    rng = np.random.default_rng(3)
    n_users, n_items, dim = 12, 40, 6
    item_emb = rng.normal(size=(n_items, dim)).astype(np.float32)
    item_ids = rng.permutation(1000)[:n_items]  # ids are not row numbers
    rows = []
    for _ in range(300):
        u = int(rng.integers(n_users))
        rows.append(
            (
                u,
                int(rng.integers(10_000)),
                rng.normal(size=dim).astype(np.float32),
                int(item_ids[rng.integers(n_items)]),
                bool(rng.random() < 0.3),
            )
        )
    ev = FullCorpusEvaluator(num_users=n_users, dim=dim)
    for start in range(0, len(rows), 64):  # several batches: earliest row must win across them
        chunk = rows[start : start + 64]
        ev.update(
            torch.tensor([r[0] for r in chunk]),
            torch.tensor([r[1] for r in chunk]),
            torch.tensor(np.stack([r[2] for r in chunk])),
            torch.tensor([r[3] for r in chunk]),
            torch.tensor([r[4] for r in chunk]),
        )
    got = ev.compute(torch.from_numpy(item_emb), torch.from_numpy(item_ids), ks=(1, 5, 20))
    want, n = _brute_force(rows, item_emb, item_ids, (1, 5, 20))
    assert got.pop("users") == n
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-9), key
