"""Full-corpus retrieval metrics against hand-computed values and a brute-force loop."""

import math

import numpy as np
import pytest
import torch

from ranking.data.availability import ItemWindows
from ranking.metrics.retrieval import (
    FullCorpusEvaluator,
    OracleLists,
    Reference,
    coverage,
    discovery,
    topk_items,
    topk_metrics,
)


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


@pytest.mark.parametrize("backend", ["faiss", "torch", "auto"])
def test_topk_items_matches_argsort(backend):
    g = torch.Generator().manual_seed(0)
    q, items = torch.randn(37, 8, generator=g), torch.randn(101, 8, generator=g)
    got = topk_items(q, items, 10, chunk=8, backend=backend)
    want = torch.argsort(q @ items.T, dim=1, descending=True)[:, :10]
    assert torch.equal(got, want)
    assert topk_items(q[:0], items, 10, backend=backend).shape == (0, 10)


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
    report = ev.compute(torch.from_numpy(item_emb), torch.from_numpy(item_ids), ks=(1, 5, 20))
    want, n = _brute_force(rows, item_emb, item_ids, (1, 5, 20))
    assert report.users == n
    for key, value in want.items():
        assert report.metrics[key] == pytest.approx(value, abs=1e-9), key


# ---- long tail, coverage, discovery, deciles, oracle: against brute force -----------------
def _random_log(rng, n_users, item_ids, dim, n_rows=400, p_pos=0.3):
    rows = []
    for _ in range(n_rows):
        rows.append(
            (
                int(rng.integers(n_users)),
                int(rng.integers(10_000)),
                rng.normal(size=dim).astype(np.float32),
                int(item_ids[rng.integers(len(item_ids))]),
                bool(rng.random() < p_pos),
            )
        )
    return rows


def _feed(ev, rows):
    for start in range(0, len(rows), 50):
        chunk = rows[start : start + 50]
        ev.update(
            torch.tensor([r[0] for r in chunk]),
            torch.tensor([r[1] for r in chunk]),
            torch.tensor(np.stack([r[2] for r in chunk])),
            torch.tensor([r[3] for r in chunk]),
            torch.tensor([r[4] for r in chunk]),
        )


def _brute_long_tail(rows, item_emb, item_ids, exposures, excluded, truth, group, todo, k):
    """Every long-tail metric with Python loops over users and items."""
    ids = [int(i) for i in item_ids]
    n = len(ids)
    by_pop = sorted(ids, key=lambda i: (exposures[i], i))
    tail = set(by_pop[: int(0.8 * n)])
    decile = {item: r * 10 // n for r, item in enumerate(by_pop)}
    # excluded pairs are neither ranked nor judged: users keep only their other positives
    users = sorted({r[0] for r in rows if r[4] and (r[0], r[3]) not in excluded})
    tail_rec, pos_dec, found_dec = [], [0] * 10, [0] * 10
    seen, disc, oracle_rec, oracle_disc, mass, best_mass = set(), [], [], [], [], []
    for u in users:
        mine = [r for r in rows if r[0] == u]
        query = min(mine, key=lambda r: r[1])[2]
        pos = {r[3] for r in mine if r[4] and (u, r[3]) not in excluded}
        scores = {ids[j]: float(np.dot(query, item_emb[j])) for j in range(n)}
        allowed = [i for i in ids if (u, i) not in excluded]
        ranked = sorted(allowed, key=lambda i: -scores[i])
        top = ranked[:k]
        seen |= set(top)
        tail_pos = pos & tail
        if tail_pos:
            tail_rec.append(len(set(top) & tail_pos) / len(tail_pos))
        for i in pos:
            pos_dec[decile[i]] += 1
            found_dec[decile[i]] += i in top
        best = sorted(allowed, key=lambda i: (-truth[u][i], ids.index(i)))[:k]
        oracle_rec.append(len(set(best) & pos) / len(pos))
        total = sum(truth[u][i] for i in allowed)
        mass.append(sum(truth[u][i] for i in top) / total)
        best_mass.append(sum(truth[u][i] for i in best) / total)
        if todo[u]:
            disc.append(any(group[i] in todo[u] for i in top))
            oracle_disc.append(any(group[i] in todo[u] for i in best))
    return {
        f"tail_recall@{k}": np.mean(tail_rec),
        f"coverage@{k}": len(seen) / n,
        f"discovery@{k}": np.mean(disc),
        f"oracle_discovery@{k}": np.mean(oracle_disc),
        f"oracle_recall@{k}": np.mean(oracle_rec),
        f"expected_recall@{k}": np.mean(mass),
        f"oracle_expected_recall@{k}": np.mean(best_mass),
    }, (pos_dec, found_dec)


@pytest.mark.parametrize("exclude", [False, True])
def test_long_tail_and_oracle_metrics_match_brute_force(exclude):
    rng = np.random.default_rng(7)
    n_users, n_items, dim, k, n_groups = 10, 30, 4, 5, 4
    item_ids = rng.permutation(60)[:n_items]
    item_emb = rng.normal(size=(n_items, dim)).astype(np.float32)
    exposures = rng.integers(0, 6, size=60)  # many ties: broken by item id
    rows = _random_log(rng, n_users, item_ids, dim)
    truth = rng.random((n_users, 60))  # the reference's true click probabilities
    group = rng.integers(0, n_groups, size=60)
    todo_mask = rng.random((n_users, n_groups)) < 0.3
    todo_mask[0] = False  # a user with nothing to discover is left out
    todo = {u: {g for g in range(n_groups) if todo_mask[u, g]} for u in range(n_users)}
    excluded = {(r[0], r[3]) for r in rows[:150]} if exclude else set()

    def rank(users, corpus_ids, kk, lists, exposure, excluded_rows):
        assert exposure is None  # no slice exposure given to compute()
        p = truth[users][:, corpus_ids]
        assert (excluded_rows is not None) == exclude
        if exclude:  # the model's exclusion, handed to the oracle: no mass there
            indptr, cols = excluded_rows
            p[np.repeat(np.arange(len(users)), np.diff(indptr)), cols] = 0.0
        order = np.lexsort((np.tile(np.arange(len(corpus_ids)), (len(users), 1)), -p), axis=1)
        best = corpus_ids[order[:, :kk]]
        total = p.sum(axis=1)
        got = np.array([truth[u][lists[j]].sum() for j, u in enumerate(users)])
        best_mass = np.take_along_axis(p, order[:, :kk], axis=1).sum(axis=1)
        return OracleLists(best, got / total, best_mass / total)

    reference = Reference(rank, item_group=group, user_groups=lambda users: todo_mask[users])
    ev = FullCorpusEvaluator(num_users=n_users, dim=dim)
    _feed(ev, rows)
    report = ev.compute(
        torch.from_numpy(item_emb),
        torch.from_numpy(item_ids),
        ks=(k,),
        exposures=exposures,
        exclude=np.array(sorted(excluded)) if exclude else None,
        reference=reference,
        long_tail_k=k,
    )
    want, (pos_dec, found_dec) = _brute_long_tail(
        rows, item_emb, item_ids, exposures, excluded, truth, group, todo, k
    )
    for key, value in want.items():
        assert report.metrics[key] == pytest.approx(value, abs=1e-9), key
    table = report.deciles
    assert table["positives"] == pos_dec
    assert table["found"] == found_dec
    assert table["items"] == [3] * 10
    for d in range(10):
        want_recall = found_dec[d] / pos_dec[d] if pos_dec[d] else float("nan")
        assert table[f"recall@{k}"][d] == pytest.approx(want_recall, nan_ok=True)
        members = sorted(item_ids, key=lambda i: (exposures[i], i))[3 * d : 3 * d + 3]
        assert table["exposures_min"][d] == min(exposures[i] for i in members)


def test_exclusion_removes_train_items_from_the_ranking():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    items = torch.tensor([[3.0, 1.0], [2.0, 0.5], [0.0, 3.0], [0.1, 2.0]])
    # scores: user 0 [3, 2, 0, .1]; user 1 [1, .5, 3, 2]
    indptr, rows = np.array([0, 1, 3]), np.array([0, 2, 3])  # user 0: row 0; user 1: rows 2, 3
    for backend in ("faiss", "torch"):
        assert topk_items(q, items, 2, backend=backend).tolist() == [[0, 1], [2, 3]]
        got = topk_items(q, items, 2, exclude=(indptr, rows), backend=backend)
        assert got.tolist() == [[1, 3], [0, 1]]
        # fewer rows left than k: the excluded ones come last
        few = (np.array([0, 3, 3]), np.array([0, 1, 3]))
        got = topk_items(q, items, 3, exclude=few, backend=backend)
        assert got[0, 0] == 2 and sorted(got[0, 1:].tolist()) in ([0, 1], [0, 3], [1, 3])
        assert got[1].tolist() == [2, 3, 0]


@pytest.mark.parametrize("max_excluded", [1024, 25])  # 25: heavy users go to torch
def test_faiss_and_torch_backends_agree_with_exclusions(monkeypatch, max_excluded):
    import faiss

    import ranking.metrics.retrieval as m

    monkeypatch.setattr(m, "FAISS_MAX_EXCLUDED", max_excluded)
    g = torch.Generator().manual_seed(3)
    q, items = torch.randn(50, 16, generator=g), torch.randn(300, 16, generator=g)
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 40, 50)
    indptr = np.concatenate([[0], np.cumsum(counts)])
    rows = np.concatenate([rng.choice(300, c, replace=False) for c in counts])
    threshold = faiss.cvar.distance_compute_blas_threshold
    got = topk_items(q, items, 20, chunk=7, exclude=(indptr, rows), backend="faiss")
    assert faiss.cvar.distance_compute_blas_threshold == threshold  # the global is restored
    want = topk_items(q, items, 20, exclude=(indptr, rows), backend="torch")
    assert torch.equal(got, want)
    for u in range(50):
        assert not set(got[u].tolist()) & set(rows[indptr[u] : indptr[u + 1]].tolist())


@pytest.mark.parametrize("backend", ["faiss", "torch"])
def test_non_finite_embeddings_are_refused(backend):
    q, items = torch.randn(4, 8), torch.randn(30, 8)
    items[7, 3] = float("nan")
    with pytest.raises(ValueError, match="item embedding row 7 is not finite"):
        topk_items(q, items, 5, backend=backend)
    q[2, 0] = float("inf")
    with pytest.raises(ValueError, match="query row 2 is not finite"):
        topk_items(q, items[:7], 5, backend=backend)


def test_topk_chunks_fit_the_score_budget(monkeypatch):
    import ranking.metrics.retrieval as m

    monkeypatch.setattr(m, "SCORE_BUDGET", 50)  # 50 scores at once: 5 queries of 10 items
    g = torch.Generator().manual_seed(1)
    q, items = torch.randn(23, 4, generator=g), torch.randn(10, 4, generator=g)
    calls = []
    real = torch.topk
    monkeypatch.setattr(
        torch, "topk", lambda x, *a, **kw: calls.append(x.shape) or real(x, *a, **kw)
    )
    got = topk_items(q, items, 3, backend="torch")
    assert torch.equal(got, torch.argsort(q @ items.T, dim=1, descending=True)[:, :3])
    assert max(shape[0] for shape in calls) == 5


def test_coverage_and_discovery_by_hand():
    topk = np.array([[1, 2], [2, 3], [2, 4]])
    assert coverage(topk, 2, corpus_size=8) == pytest.approx(4 / 8)
    assert coverage(topk, 1, corpus_size=8) == pytest.approx(2 / 8)
    group = np.array([0, 0, 1, 1, 2])  # items 0..4
    todo = np.array([[False, False, True], [False, True, False], [False, False, False]])
    # user 0 wants group 2 (item 4): not in [1, 2]; user 1 wants group 1: item 2 -> yes
    assert discovery(topk, 2, group, todo) == pytest.approx(1 / 2)


def test_world_oracle_ranks_by_true_click_probability(tiny_dataset):
    from ranking.data.synthetic import load_world, oracle_probabilities
    from ranking.metrics.retrieval_oracle import (
        latent_interests,
        oracle_lists,
        random_slice_exposure,
        world_reference,
    )

    world = load_world(tiny_dataset)
    users = np.array([0, 5, 17])
    corpus = np.arange(world.n_items)[::-1].copy()  # corpus order need not be id order
    lists = np.tile(corpus[:7], (3, 1))
    got = oracle_lists(world, users, corpus, 7, lists)
    p, _ = oracle_probabilities(world, users[:, None], corpus[None, :], 0)
    want = corpus[np.argsort(-p, axis=1, kind="stable")[:, :7]]
    assert np.array_equal(got.best, want)
    assert np.allclose(got.mass, p[:, :7].sum(axis=1) / p.sum(axis=1))
    assert np.allclose(got.best_mass, np.sort(p, axis=1)[:, ::-1][:, :7].sum(1) / p.sum(1))
    todo = latent_interests(world, users)
    for j, u in enumerate(users):
        cats = world.user_interest_cat[u]
        latent = {
            int(c)
            for c, e in zip(cats, world.user_interest_expressed[u], strict=True)
            if c >= 0 and not e
        }
        assert set(np.flatnonzero(todo[j]).tolist()) == latent and latent
    assert got.exposed_mass is None and got.best_exposed_mass is None
    # exposure-weighted shares: brute force over users and items
    exposure = np.random.default_rng(3).random(world.n_items)
    exposure[corpus[3]] = 0.0  # an item the slice never shows
    weighted = oracle_lists(world, users, corpus, 7, lists, exposure)
    assert np.array_equal(weighted.best, want)  # the oracle still ranks by P(click)
    for j in range(len(users)):
        w = [p[j, r] * exposure[corpus[r]] for r in range(len(corpus))]
        top = [list(corpus).index(i) for i in want[j]]
        assert weighted.exposed_mass[j] == pytest.approx(sum(w[:7]) / sum(w))
        assert weighted.best_exposed_mass[j] == pytest.approx(sum(w[r] for r in top) / sum(w))
    # excluded items: user 0 loses its best 3 corpus rows, user 5 nothing, user 17 row 0
    best_rows = np.argsort(-p, axis=1, kind="stable")
    gone = [list(best_rows[0, :3]), [], [0]]
    indptr = np.cumsum([0] + [len(g) for g in gone])
    cut = oracle_lists(
        world, users, corpus, 7, lists, exclude=(indptr, np.array(sum(gone, []), dtype=np.int64))
    )
    for j in range(len(users)):
        q = p[j].copy()
        q[gone[j]] = 0.0
        order = np.argsort(-q, kind="stable")[:7]
        assert np.array_equal(cut.best[j], corpus[order])
        assert cut.mass[j] == pytest.approx(q[:7].sum() / q.sum())
        assert cut.best_mass[j] == pytest.approx(q[order].sum() / q.sum())
    assert np.array_equal(cut.best[1], want[1])
    reference = world_reference(tiny_dataset)
    assert reference is not None
    assert reference.slice_exposure("policy", 0.0) is None  # the logged slice
    assert reference.slice_exposure("device", 1.0) is None
    assert np.array_equal(reference.slice_exposure("policy", 1.0), random_slice_exposure(world))
    assert world_reference(tiny_dataset / "train") is None


def test_tail_recall_by_hand_skips_users_without_tail_positives():
    from ranking.metrics.retrieval import tail_recall

    is_tail = np.array([True, True, True, False, False])  # items 3, 4 are the head
    topk = np.array([[0, 3], [4, 1], [3, 4]])
    # positives: user 0 {0, 1, 3}, user 1 {1, 4}, user 2 {3, 4} (head only: left out)
    pair_users = np.array([0, 0, 0, 1, 1, 2, 2])
    pair_items = np.array([0, 1, 3, 1, 4, 3, 4])
    hits = np.array([[True, True], [True, True], [True, True]])
    # user 0: tail positives {0, 1}, found {0} -> 1/2; user 1: {1}, found {1} -> 1
    got = tail_recall(hits, topk, pair_users, pair_items, is_tail, k=2)
    assert got == pytest.approx((1 / 2 + 1) / 2)
    assert tail_recall(hits, topk, pair_users, pair_items, is_tail, k=1) == pytest.approx(
        (1 / 2 + 0) / 2
    )


def test_availability_windows_restrict_the_corpus_for_model_and_oracle():
    """With windows, compute() ranks exactly the items whose window meets the rows'
    [earliest, latest] time (a brute-force loop over items), for the model and the
    reference; the result equals compute() on that sub-corpus without windows."""
    rng = np.random.default_rng(11)
    n_users, n_items, dim, k = 9, 40, 4, 5
    item_ids = rng.permutation(80)[:n_items]
    item_emb = rng.normal(size=(n_items, dim)).astype(np.float32)
    rows = _random_log(rng, n_users, item_ids, dim, n_rows=200)
    lo, hi = min(r[1] for r in rows), max(r[1] for r in rows)
    start = rng.integers(-5_000, 15_000, size=80)
    end = start + rng.integers(1, 8_000, size=80)
    start[item_ids[:3]], end[item_ids[:3]] = hi, hi + 1  # starts at the last row: kept
    start[item_ids[3:6]], end[item_ids[3:6]] = lo - 10, lo  # ends at the first row: dropped
    windows = ItemWindows(start, end)
    keep = np.array([start[i] <= hi and end[i] > lo for i in item_ids])
    assert keep[:3].all() and not keep[3:6].any() and 5 < keep.sum() < n_items - 5
    # validated data has no positive on an unavailable item: make those rows negatives
    available = dict(zip(item_ids.tolist(), keep.tolist(), strict=True))
    rows = [(*r[:4], r[4] and available[r[3]]) for r in rows]
    seen = []

    def rank(users, corpus_ids, kk, lists, exposure, excluded_rows):
        seen.append(np.sort(corpus_ids))
        p = np.ones((len(users), len(corpus_ids)))
        return OracleLists(np.tile(corpus_ids[:kk], (len(users), 1)), p[:, 0], p[:, 0])

    reference = Reference(rank)
    ev = FullCorpusEvaluator(num_users=n_users, dim=dim)
    _feed(ev, rows)
    assert ev.span == [lo, hi]
    assert ev.sharing_queries().span == ev.span
    emb, ids = torch.from_numpy(item_emb), torch.from_numpy(item_ids)
    got = ev.compute(emb, ids, ks=(k,), long_tail_k=k, reference=reference, windows=windows)
    want = ev.compute(emb[keep], ids[keep], ks=(k,), long_tail_k=k, reference=reference)
    assert got.metrics == want.metrics
    assert got.metrics["corpus_items"] == keep.sum()
    np.testing.assert_array_equal(seen[0], np.sort(item_ids[keep]))
    full = ev.compute(emb, ids, ks=(k,), long_tail_k=k)
    assert full.metrics["corpus_items"] == n_items


def test_decile_figure_draws_each_deciles_recall_and_marks_empty_ones():
    from ranking.metrics.decile_plot import decile_figure

    recall = [0.0, 0.1, float("nan"), 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.95]
    positives = [5, 10, 0, 10, 10, 10, 10, 10, 10, 20]
    table = {"decile": list(range(10)), "positives": positives, "recall@100": recall}
    fig = decile_figure(table, "test")
    (ax,) = fig.axes
    heights = [bar.get_height() for bar in ax.patches]
    assert heights == [0.0 if math.isnan(r) else r for r in recall]
    labels = [t.get_text() for t in ax.texts]
    assert labels == ["5", "10", "no positives", "10", "10", "10", "10", "10", "10", "20"]
    assert ax.get_ylabel() == "recall@100"
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png")  # renders without pyplot or a display
    assert buf.getvalue()[:8] == b"\x89PNG\r\n\x1a\n"
