"""Full-corpus retrieval metrics: exact top-K over every item, per user.

Protocol: each evaluated user is queried once, with the user features of the
user's earliest row in the evaluated rows (the state before the period
started); the user's positives are the distinct items with a positive label in
those rows. Users without a positive are not evaluated. Every user is scored
against every corpus item (exact search, :func:`topk_items`: FAISS's tiled
search on the CPU, chunked matrix products on a GPU); when
the dataset declares availability windows
(:class:`~ranking.data.availability.ItemWindows`), the corpus is the items
available at some time between the earliest and the latest evaluated row, for
the model and the oracle alike (``corpus_items`` is its size);
optionally the items the user was positive on in train are excluded first,
from the ranking, from the user's positives (an item that cannot be returned
is not judged) and from the oracle's ranking alike: the "new items only"
protocol (off by default: in the synthetic log, as on shopping feeds, a user
clicks the same item again, and those re-clicks are legitimate positives). Metrics are
averaged over users:

- ``recall@k`` = |top-k ∩ positives| / |positives|
- ``hit@k``    = 1 if top-k holds any positive
- ``ndcg@k``   = DCG@k / IDCG@k with binary gains, IDCG over min(|positives|, k)
- ``tail_recall@k``: recall counting only positives in the *tail*, the
  ``tail_share`` (80%) least-exposed corpus items by train exposure count (ties
  by item id), averaged over users with at least one tail positive
- ``coverage@k``: share of the corpus in at least one evaluated user's top k
- ``discovery@k`` (with a :class:`Reference` that knows interests): share of
  users (among those with an interest to discover) whose top k holds an item of
  a group (e.g. category) they have not expressed
- ``oracle_recall@k``, ``oracle_discovery@k``: the same for the reference's own
  top-k lists (the best possible ranking, on synthetic data)
- ``expected_recall@k`` (with a reference that knows true click
  probabilities): the share of the user's true click probability, summed over
  the corpus, that the top k holds, i.e. the recall@k to expect if the user
  were shown the whole corpus uniformly. It needs no logged positive, so it has
  none of their sampling noise (the random-exposure slice of a log is small);
  ``oracle_expected_recall@k`` is its ceiling
- ``slice_expected_recall@k`` (a slice of the split whose exposure the
  reference knows, e.g. the synthetic random-exposure slice): the same share
  with each item's click probability weighted by its exposure probability in
  the slice, i.e. the expected value of the slice's ``recall@k`` without its
  sampling noise; ``oracle_slice_expected_recall@k`` is the same for the
  reference's top k (which ranks by click probability alone, so it can be beaten
  by a ranking that knows which items the slice cannot show)

Recall by popularity decile (a table): corpus items sorted by train exposures
(ascending, ties by id) and cut into ten equal deciles (0 = least exposed); per
decile, the positive (user, item) pairs whose item falls in it and the share of
them found in the user's top k (pooled over users).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ranking.data.availability import ItemWindows

#: Scores held at once by :func:`topk_items` (floats): 32M = 128 MB, any corpus size.
SCORE_BUDGET = 1 << 25


#: The FAISS path searches k + a query's exclusions and drops them; a query that
#: excludes more rows than this is ranked by the torch path instead (memory and
#: time stay bounded whatever one user's train history).
FAISS_MAX_EXCLUDED = 1024


def topk_items(
    queries: torch.Tensor,
    items: torch.Tensor,
    k: int,
    chunk: int | None = None,
    exclude: tuple[np.ndarray, np.ndarray] | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Exact inner-product top-k. [U, D] x [N, D] -> row indices [U, k], best first
    (on the CPU).

    Backends:

    - ``faiss``: FAISS's exact search without an index (``faiss.knn``, BLAS
      products in tiles of 4096 queries x 1024 items, then a heap or, for
      k >= 100, a reservoir per query), so memory stays at the tiles plus the
      [U, k + exclusions] result; about 4 times faster than ``torch`` at 1M items on
      2 cores (``scripts/bench/full_corpus_eval.py``). ``chunk`` queries per
      call (default 4096). CPU tensors only.
    - ``torch``: chunked matrix products on ``items``' device (a GPU's too), in
      chunks of ``chunk`` queries (default: as many as fit :data:`SCORE_BUDGET`
      scores, at most 1024; a 1M-item corpus: 32 queries at a time, 128 MB).
    - ``auto`` (default): ``faiss`` for CPU tensors, ``torch`` otherwise.

    Args:
        exclude: optional CSR ``(indptr [U + 1], rows)``: item rows to drop for
            each query; they rank after every other row (torch gives them the
            score -inf; FAISS searches k + the chunk's most exclusions and drops
            them, and leaves a query with more than :data:`FAISS_MAX_EXCLUDED`
            to torch).

    Raises:
        ValueError: a query or item embedding that is not finite (NaN or inf:
            no ranking of it is meaningful), or an unknown backend.
    """
    n = items.shape[0]
    k = min(k, n)
    _check_finite(queries, "query")
    _check_finite(items, "item embedding")
    if backend == "auto":
        backend = "faiss" if items.device.type == "cpu" else "torch"
    if backend == "torch":
        return _topk_torch(queries, items, k, chunk, exclude)
    if backend != "faiss":
        raise ValueError(f"backend must be auto, faiss or torch, got {backend!r}")
    if items.device.type != "cpu":
        raise ValueError(f"backend='faiss' needs CPU tensors, the items are on {items.device}")
    heavy = np.zeros(queries.shape[0], dtype=bool)
    if exclude is not None:
        heavy = np.diff(exclude[0]) > FAISS_MAX_EXCLUDED
    if not heavy.any():
        return _topk_faiss(queries, items, k, chunk, exclude)
    out = torch.empty(queries.shape[0], k, dtype=torch.long)
    light = np.flatnonzero(~heavy)
    many = np.flatnonzero(heavy)
    if len(light):
        out[light] = _topk_faiss(queries[light], items, k, chunk, _csr_rows(exclude, light))
    out[many] = _topk_torch(queries[many], items, k, None, _csr_rows(exclude, many))
    return out


def _check_finite(x: torch.Tensor, what: str, block: int = 1 << 16) -> None:
    """Raise naming the first row of ``x`` [R, D] that holds a NaN or an inf
    (checked ``block`` rows at a time: the masks stay small at 1M rows)."""
    for start in range(0, x.shape[0], block):
        bad = ~torch.isfinite(x[start : start + block]).all(dim=-1)
        if bool(bad.any()):
            row = start + int(torch.nonzero(bad)[0, 0])
            raise ValueError(
                f"{what} row {row} is not finite (NaN or inf): the exact search cannot rank it"
            )


def csr_chunk(
    exclude: tuple[np.ndarray, np.ndarray], start: int, stop: int
) -> tuple[np.ndarray, np.ndarray]:
    """The entries of queries ``start..stop-1`` of a CSR ``(indptr [U + 1], rows)``,
    as (query offset from ``start`` [E], row [E]): the coordinates to mask in a
    [stop - start, N] score block."""
    indptr, rows = exclude
    counts = np.diff(indptr[start : stop + 1])
    return np.repeat(np.arange(stop - start), counts), rows[indptr[start] : indptr[stop]]


def _csr_rows(
    exclude: tuple[np.ndarray, np.ndarray], which: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The CSR ``(indptr, rows)`` of the queries ``which`` (ascending) alone."""
    indptr, rows = exclude
    counts = np.diff(indptr)[which]
    sub = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    at = np.repeat(indptr[which] - sub[:-1], counts) + np.arange(int(sub[-1]))
    return sub, rows[at]


def _topk_torch(
    queries: torch.Tensor,
    items: torch.Tensor,
    k: int,
    chunk: int | None,
    exclude: tuple[np.ndarray, np.ndarray] | None,
) -> torch.Tensor:
    """:func:`topk_items` with chunked matrix products on ``items``' device."""
    n = items.shape[0]
    if chunk is None:
        chunk = max(1, min(1024, SCORE_BUDGET // max(n, 1)))
    out = []
    for start in range(0, queries.shape[0], chunk):
        scores = queries[start : start + chunk] @ items.T
        if exclude is not None:
            which, rows = csr_chunk(exclude, start, start + scores.shape[0])
            if len(rows):
                at = (torch.from_numpy(which), torch.from_numpy(rows))
                scores[at[0].to(scores.device), at[1].to(scores.device)] = -torch.inf
        out.append(torch.topk(scores, k, dim=1).indices.cpu())
    if not out:
        return torch.empty(0, k, dtype=torch.long)
    return torch.cat(out)


@contextmanager
def _faiss_blas_always(faiss: Any) -> Iterator[None]:
    """FAISS scores a call of fewer than ``distance_compute_blas_threshold``
    query-dims (128k in faiss 1.15: 2000 queries at D=64) one query at a time
    without BLAS, 3.7 times slower at 100k items; use BLAS for every call, then
    restore the global."""
    old = faiss.cvar.distance_compute_blas_threshold
    faiss.cvar.distance_compute_blas_threshold = 0
    try:
        yield
    finally:
        faiss.cvar.distance_compute_blas_threshold = old


def _topk_faiss(
    queries: torch.Tensor,
    items: torch.Tensor,
    k: int,
    chunk: int | None,
    exclude: tuple[np.ndarray, np.ndarray] | None,
) -> torch.Tensor:
    """:func:`topk_items` with ``faiss.knn`` (CPU, float32)."""
    import faiss

    n = items.shape[0]
    xb = np.ascontiguousarray(items.detach().cpu().float().numpy())
    xq_all = np.ascontiguousarray(queries.detach().cpu().float().numpy())
    step = chunk or 4096
    out = []
    with _faiss_blas_always(faiss):
        for start in range(0, len(xq_all), step):
            xq = xq_all[start : start + step]
            c = len(xq)
            counts = np.zeros(c, dtype=np.int64)
            if exclude is not None:
                counts = np.diff(exclude[0][start : start + c + 1])
            extra = int(counts.max(initial=0))
            _, idx = faiss.knn(xq, xb, min(n, k + extra), metric=faiss.METRIC_INNER_PRODUCT)
            if (idx < 0).any():  # FAISS leaves -1 where it found no row (never for finite inputs)
                raise RuntimeError(
                    f"faiss.knn returned no row for query {start + np.argwhere(idx < 0)[0, 0]}"
                )
            if extra:
                which, dropped = csr_chunk(exclude, start, start + c)
                drop = np.isin(np.arange(c)[:, None] * n + idx, which * n + dropped)
                idx = np.take_along_axis(idx, np.argsort(drop, axis=1, kind="stable"), axis=1)
            out.append(torch.from_numpy(np.ascontiguousarray(idx[:, :k], dtype=np.int64)))
    if not out:
        return torch.empty(0, k, dtype=torch.long)
    return torch.cat(out)


def topk_metrics(
    topk: np.ndarray,
    positives: list[np.ndarray] | None,
    ks: tuple[int, ...],
    hits: np.ndarray | None = None,
) -> dict[str, float]:
    """Recall, hit rate and NDCG at each k.

    Args:
        topk: [U, K] retrieved item ids per user, best first (K >= max(ks)).
        positives: per user, the array of distinct positive item ids.
        hits: optional precomputed bool [U, K] (topk[u, r] is a positive).
    """
    n_pos = np.array([len(p) for p in positives], dtype=np.float64)
    if hits is None:
        hits = np.stack([np.isin(topk[u], positives[u]) for u in range(len(positives))])
    return _from_hits(hits, n_pos, ks)


def _from_hits(hits: np.ndarray, n_pos: np.ndarray, ks: tuple[int, ...]) -> dict[str, float]:
    out: dict[str, float] = {}
    if hits.shape[0] == 0:
        return {f"{m}@{k}": float("nan") for k in ks for m in ("recall", "hit", "ndcg")}
    discount = 1.0 / np.log2(np.arange(hits.shape[1]) + 2.0)
    for k in ks:
        h = hits[:, :k]
        found = h.sum(axis=1)
        out[f"recall@{k}"] = float(np.mean(found / n_pos))
        out[f"hit@{k}"] = float(np.mean(found > 0))
        dcg = (h * discount[: h.shape[1]]).sum(axis=1)
        ideal = np.cumsum(discount[:k])[np.minimum(n_pos, k).astype(int) - 1]
        out[f"ndcg@{k}"] = float(np.mean(dcg / ideal))
    return out


# ---- long-tail metrics ----------------------------------------------------------------
def popularity_ranks(exposures: np.ndarray, corpus_ids: np.ndarray) -> np.ndarray:
    """int64 [num_items]: rank of each corpus item by exposures (0 = least exposed,
    ties by item id); -1 for ids outside the corpus."""
    order = np.lexsort((corpus_ids, exposures[corpus_ids]))
    ranks = np.full(exposures.shape[0], -1, dtype=np.int64)
    ranks[corpus_ids[order]] = np.arange(len(corpus_ids))
    return ranks


def tail_recall(
    hits: np.ndarray,
    topk: np.ndarray,
    pair_users: np.ndarray,
    pair_items: np.ndarray,
    is_tail: np.ndarray,
    k: int,
) -> float:
    """Recall@k over tail positives, averaged over users with a tail positive.

    Args:
        hits: bool [U, K] (topk[u, r] is one of user u's positives).
        topk: int [U, K] item ids.
        pair_users: int [P] row (0..U-1) of each positive pair's user.
        pair_items: int [P] item id of each positive pair (distinct pairs).
        is_tail: bool [num_items].
    """
    n_tail = np.bincount(pair_users[is_tail[pair_items]], minlength=hits.shape[0])
    found = (hits[:, :k] & is_tail[topk[:, :k]]).sum(axis=1)
    users = n_tail > 0
    if not users.any():
        return float("nan")
    return float(np.mean(found[users] / n_tail[users]))


def coverage(topk: np.ndarray, k: int, corpus_size: int) -> float:
    """Share of the corpus that appears in at least one row of ``topk[:, :k]``."""
    if corpus_size == 0:
        return float("nan")
    return float(np.unique(topk[:, :k]).shape[0] / corpus_size)


def discovery(topk: np.ndarray, k: int, item_group: np.ndarray, user_groups: np.ndarray) -> float:
    """Share of users whose top k holds an item of one of their groups to discover.

    Args:
        topk: int [U, K] item ids.
        item_group: int [num_items] group of each item (e.g. its category).
        user_groups: bool [U, G]: the groups each user has yet to discover.
            Users with none are left out of the average.
    """
    has = user_groups.any(axis=1)
    if not has.any():
        return float("nan")
    groups = item_group[topk[:, :k]]  # [U, k]
    found = np.take_along_axis(user_groups, groups, axis=1).any(axis=1)
    return float(np.mean(found[has]))


def recall_by_decile(
    hits: np.ndarray,
    topk: np.ndarray,
    pair_items: np.ndarray,
    ranks: np.ndarray,
    exposures: np.ndarray,
    corpus_size: int,
    k: int,
) -> dict[str, list]:
    """Pooled recall@k of positives by popularity decile of their item.

    Args:
        hits, topk: as in :func:`tail_recall`.
        pair_items: int [P] item id of each distinct positive pair.
        ranks: :func:`popularity_ranks`.
        exposures: int [num_items] train exposures per item id.

    Returns: columns ``decile`` (0 = least exposed), ``items``,
    ``exposures_min``, ``exposures_max``, ``positives``, ``found`` and
    ``recall@k`` (NaN for a decile without positives).
    """
    decile_of = np.where(ranks >= 0, ranks * 10 // max(corpus_size, 1), -1)
    pos_dec = decile_of[pair_items]
    pos_dec = pos_dec[pos_dec >= 0]
    found_dec = decile_of[topk[:, :k][hits[:, :k]]]
    positives = np.bincount(pos_dec, minlength=10)[:10]
    found = np.bincount(found_dec[found_dec >= 0], minlength=10)[:10]
    in_corpus = ranks >= 0
    table: dict[str, list] = {
        "decile": list(range(10)),
        "items": [],
        "exposures_min": [],
        "exposures_max": [],
        "positives": [int(p) for p in positives],
        "found": [int(f) for f in found],
        f"recall@{k}": [
            float(f / p) if p else float("nan") for f, p in zip(found, positives, strict=True)
        ],
    }
    for d in range(10):
        members = in_corpus & (decile_of == d)
        table["items"].append(int(members.sum()))
        e = exposures[members]
        table["exposures_min"].append(int(e.min()) if e.size else 0)
        table["exposures_max"].append(int(e.max()) if e.size else 0)
    return table


# ---- evaluator --------------------------------------------------------------------------
@dataclass
class OracleLists:
    """The reference's answer for U users.

    Attributes:
        best: int [U, k] item ids of the true top k, best first.
        mass: float [U] share of each user's true click probability (summed over
            the corpus) that the given lists hold (NaN if unknown).
        best_mass: float [U] the same share for ``best``.
        exposed_mass, best_exposed_mass: float [U] the same two shares with each
            item's probability weighted by an exposure (None unless asked for).
    """

    best: np.ndarray
    mass: np.ndarray
    best_mass: np.ndarray
    exposed_mass: np.ndarray | None = None
    best_exposed_mass: np.ndarray | None = None


@dataclass
class Reference:
    """What the data's generator knows (synthetic data): the true ranking and the
    interests a user has yet to discover.

    Attributes:
        rank: (user ids [U], corpus item ids [N], k, lists int [U, k] item ids,
            exposure float [num_items] or None, exclude: CSR (indptr [U + 1],
            corpus rows) of each user's items left out of the ranking, or None)
            -> :class:`OracleLists` (with the exposure-weighted shares when an
            exposure is given; the excluded items hold no click mass).
        item_group: int [num_items] group of each item id (e.g. its category), or None.
        user_groups: user ids [U] -> bool [U, G], the groups each user has yet to
            discover, or None.
    """

    rank: Callable[
        [
            np.ndarray,
            np.ndarray,
            int,
            np.ndarray,
            np.ndarray | None,
            tuple[np.ndarray, np.ndarray] | None,
        ],
        OracleLists,
    ]
    item_group: np.ndarray | None = None
    user_groups: Callable[[np.ndarray], np.ndarray] | None = None
    #: (column, value) of a slice of the test split -> float [num_items] exposure
    #: probability of each item id in that slice, or None if unknown.
    slice_exposure: Callable[[str, float], np.ndarray | None] | None = None


@dataclass
class RetrievalReport:
    """Metrics (``recall@100``, ...) and the recall-by-decile table of one evaluation."""

    metrics: dict[str, float]
    deciles: dict[str, list] | None = None
    users: int = 0


class FullCorpusEvaluator:
    """Streams a split's rows, then scores each user against the whole corpus.

    Memory: one D-vector per user id and the positive (user, item) pairs; never
    the split itself.

    Args:
        num_users: size of the user-id vocabulary.
        dim: embedding size D.
    """

    def __init__(self, num_users: int, dim: int) -> None:
        self.first_ts = np.full(num_users, np.iinfo(np.int64).max, dtype=np.int64)
        self.queries = np.zeros((num_users, dim), dtype=np.float32)
        self.pairs: list[np.ndarray] = []
        #: [earliest, latest] time of the evaluated rows (the period the corpus must cover)
        self.span = [np.iinfo(np.int64).max, np.iinfo(np.int64).min]

    def update(
        self,
        user_ids: torch.Tensor,
        ts: torch.Tensor,
        user_emb: torch.Tensor,
        item_ids: torch.Tensor,
        positive: torch.Tensor,
    ) -> None:
        """Args: user_ids [B], ts [B], user_emb [B, D], item_ids [B], positive bool [B]."""
        u = user_ids.cpu().numpy()
        t = ts.cpu().numpy()
        if len(t):
            self.span = [min(self.span[0], int(t.min())), max(self.span[1], int(t.max()))]
        order = np.lexsort((t, u))  # by user, then time
        first = order[np.unique(u[order], return_index=True)[1]]  # earliest row per user
        earlier = t[first] < self.first_ts[u[first]]
        rows = first[earlier]
        self.first_ts[u[rows]] = t[rows]
        self.queries[u[rows]] = user_emb.detach().cpu().float().numpy()[rows]
        pos = positive.cpu().numpy().astype(bool)
        self.pairs.append(np.stack([u[pos], item_ids.cpu().numpy()[pos]], axis=1))

    @classmethod
    def merged(cls, parts: list[FullCorpusEvaluator]) -> FullCorpusEvaluator:
        """One evaluator over the rows of all ``parts`` (e.g. one per rank): each user's
        query is that of their earliest row in any part (the first part's on a tie)."""
        out = cls.__new__(cls)
        out.first_ts, out.queries = parts[0].first_ts.copy(), parts[0].queries.copy()
        out.pairs, out.span = list(parts[0].pairs), list(parts[0].span)
        for part in parts[1:]:
            earlier = part.first_ts < out.first_ts
            out.first_ts[earlier] = part.first_ts[earlier]
            out.queries[earlier] = part.queries[earlier]
            out.pairs += part.pairs
            out.span = [min(out.span[0], part.span[0]), max(out.span[1], part.span[1])]
        return out

    def add_positives(self, user_ids: torch.Tensor, item_ids: torch.Tensor) -> None:
        """Positive (user, item) pairs only, for an evaluator whose queries come from
        another one (:meth:`sharing_queries`). Args: user_ids [B], item_ids [B]."""
        u, i = user_ids.cpu().numpy(), item_ids.cpu().numpy()
        self.pairs.append(np.stack([u, i], axis=1).astype(np.int64))

    def sharing_queries(self) -> FullCorpusEvaluator:
        """A new evaluator with this one's per-user queries and no positives: it
        evaluates another set of positives (e.g. a slice of the split) with the
        same query per user."""
        other = FullCorpusEvaluator.__new__(FullCorpusEvaluator)
        other.first_ts, other.queries, other.pairs = self.first_ts, self.queries, []
        other.span = self.span  # the same period (a slice's rows lie in it)
        return other

    def positive_pairs(self) -> np.ndarray:
        """int64 [P, 2] distinct (user id, item id) positive pairs, sorted."""
        stacked = np.concatenate(self.pairs) if self.pairs else np.zeros((0, 2), np.int64)
        return np.unique(stacked.astype(np.int64), axis=0)

    def compute(
        self,
        item_emb: torch.Tensor,
        item_ids: torch.Tensor,
        ks: tuple[int, ...] = (10, 50, 100),
        exposures: np.ndarray | None = None,
        exclude: np.ndarray | None = None,
        reference: Reference | None = None,
        tail_share: float = 0.8,
        long_tail_k: int = 100,
        exposure: np.ndarray | None = None,
        windows: ItemWindows | None = None,
        backend: str = "auto",
    ) -> RetrievalReport:
        """Score every evaluated user against the corpus.

        Args:
            item_emb: [N, D] corpus embeddings; item_ids [N] their ids.
            exposures: int [num_items] train exposures per item id: enables
                ``tail_recall``, the decile table (and ``coverage`` needs nothing).
            exclude: int [Q, 2] (user id, item id) pairs to drop from the user's
                ranking (e.g. train positives); they leave the user's positives
                too (an item that cannot be returned is not judged), and the
                oracle ranks without them alike. Users left without positives
                are not evaluated.
            reference: enables the ``oracle_*`` and ``discovery`` metrics.
            long_tail_k: the k of tail recall, coverage, discovery, deciles, oracle.
            exposure: float [num_items] exposure probability of each item id in the
                evaluated rows (with ``reference``): enables ``slice_expected_recall``.
            windows: the items' availability; the corpus shrinks to the items
                available during the evaluated rows' period (:attr:`span`).
            backend: the exact search of :func:`topk_items`.
        """
        pairs = self.positive_pairs()
        if exclude is not None and len(pairs):
            exclude = np.asarray(exclude, dtype=np.int64).reshape(-1, 2)
            width = int(max(pairs[:, 1].max(), exclude[:, 1].max(initial=0))) + 1
            known = np.isin(
                pairs[:, 0] * width + pairs[:, 1], exclude[:, 0] * width + exclude[:, 1]
            )
            pairs = pairs[~known]
        users, starts, counts = np.unique(pairs[:, 0], return_index=True, return_counts=True)
        corpus_ids = item_ids.cpu().numpy().astype(np.int64)
        if windows is not None and self.span[0] <= self.span[1]:
            available = windows.during(*self.span)[corpus_ids]
            corpus_ids = corpus_ids[available]
            item_emb = item_emb[torch.from_numpy(available).to(item_emb.device)]
        k_max = max(*ks, long_tail_k)
        csr = _exclusion_csr(users, corpus_ids, exclude) if exclude is not None else None
        queries = torch.from_numpy(self.queries[users]).to(item_emb.device)
        rows = topk_items(queries, item_emb.float(), k_max, exclude=csr, backend=backend)
        topk = corpus_ids[rows.numpy()]
        # Membership of (user, item) in the positive pairs, vectorised via one key.
        span = int(max(corpus_ids.max(initial=0), pairs[:, 1].max(initial=0))) + 1
        pos_keys = pairs[:, 0] * span + pairs[:, 1]
        hits = np.isin(users[:, None] * span + topk, pos_keys)
        out = _from_hits(hits, counts.astype(np.float64), ks)
        out["corpus_items"] = float(len(corpus_ids))
        k = long_tail_k
        pair_users = np.repeat(np.arange(len(users)), counts)  # pairs are sorted by user
        out[f"coverage@{k}"] = coverage(topk, k, len(corpus_ids))
        deciles = None
        if exposures is not None:
            exposures = np.asarray(exposures, dtype=np.int64)
            ranks = popularity_ranks(exposures, corpus_ids)
            is_tail = (ranks >= 0) & (ranks < int(tail_share * len(corpus_ids)))
            out[f"tail_recall@{k}"] = tail_recall(hits, topk, pair_users, pairs[:, 1], is_tail, k)
            deciles = recall_by_decile(
                hits, topk, pairs[:, 1], ranks, exposures, len(corpus_ids), k
            )
        if reference is not None and len(users):
            oracle = reference.rank(users, corpus_ids, k, topk[:, :k], exposure, csr)
            best = oracle.best
            best_hits = np.isin(users[:, None] * span + best, pos_keys)
            out[f"oracle_recall@{k}"] = float(np.mean(best_hits.sum(axis=1) / counts))
            out[f"expected_recall@{k}"] = float(np.mean(oracle.mass))
            out[f"oracle_expected_recall@{k}"] = float(np.mean(oracle.best_mass))
            if oracle.exposed_mass is not None and oracle.best_exposed_mass is not None:
                out[f"slice_expected_recall@{k}"] = float(np.mean(oracle.exposed_mass))
                out[f"oracle_slice_expected_recall@{k}"] = float(np.mean(oracle.best_exposed_mass))
            if reference.item_group is not None and reference.user_groups is not None:
                groups = reference.user_groups(users)
                out[f"discovery@{k}"] = discovery(topk, k, reference.item_group, groups)
                out[f"oracle_discovery@{k}"] = discovery(best, k, reference.item_group, groups)
        return RetrievalReport(out, deciles, users=len(users))


def _exclusion_csr(
    users: np.ndarray, corpus_ids: np.ndarray, pairs: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """CSR (indptr [U + 1], corpus rows) of the pairs' items for each of ``users``."""
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    if len(users) == 0:
        return np.zeros(1, dtype=np.int64), np.zeros(0, dtype=np.int64)
    row_of = np.full(int(max(corpus_ids.max(initial=0), pairs[:, 1].max(initial=0))) + 1, -1)
    row_of[corpus_ids] = np.arange(len(corpus_ids))
    slot = np.searchsorted(users, pairs[:, 0])
    slot = np.minimum(slot, len(users) - 1)
    keep = (users[slot] == pairs[:, 0]) & (row_of[pairs[:, 1]] >= 0)
    slot, items = slot[keep], row_of[pairs[keep, 1]]
    order = np.argsort(slot, kind="stable")
    indptr = np.zeros(len(users) + 1, dtype=np.int64)
    np.cumsum(np.bincount(slot, minlength=len(users)), out=indptr[1:])
    return indptr, items[order]
