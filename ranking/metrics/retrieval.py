"""Full-corpus retrieval metrics: exact top-K over every item, per user.

Protocol: each evaluated user is queried once, with the user features of the
user's earliest row in the split (the state before the period started); the
user's positives are the distinct items with a positive label in the split.
Users without a positive are not evaluated. Metrics are averaged over users:

- ``recall@k`` = |top-k ∩ positives| / |positives|
- ``hit@k``    = 1 if top-k holds any positive
- ``ndcg@k``   = DCG@k / IDCG@k with binary gains, IDCG over min(|positives|, k)
"""

from __future__ import annotations

import numpy as np
import torch


def topk_items(
    queries: torch.Tensor, items: torch.Tensor, k: int, chunk: int = 1024
) -> torch.Tensor:
    """Exact inner-product top-k. [U, D] x [N, D] -> row indices [U, k], best first.

    Scored in chunks of ``chunk`` queries so memory stays at chunk x N floats.
    """
    k = min(k, items.shape[0])
    out = []
    for start in range(0, queries.shape[0], chunk):
        scores = queries[start : start + chunk] @ items.T
        out.append(torch.topk(scores, k, dim=1).indices)
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
        order = np.lexsort((t, u))  # by user, then time
        first = order[np.unique(u[order], return_index=True)[1]]  # earliest row per user
        earlier = t[first] < self.first_ts[u[first]]
        rows = first[earlier]
        self.first_ts[u[rows]] = t[rows]
        self.queries[u[rows]] = user_emb.detach().cpu().numpy()[rows]
        pos = positive.cpu().numpy().astype(bool)
        self.pairs.append(np.stack([u[pos], item_ids.cpu().numpy()[pos]], axis=1))

    def compute(
        self, item_emb: torch.Tensor, item_ids: torch.Tensor, ks: tuple[int, ...] = (10, 50, 100)
    ) -> dict[str, float]:
        """Args: item_emb [N, D] for the corpus, item_ids [N] their ids."""
        pairs = np.unique(
            np.concatenate(self.pairs) if self.pairs else np.zeros((0, 2), np.int64), axis=0
        )
        users, starts, counts = np.unique(pairs[:, 0], return_index=True, return_counts=True)
        corpus_ids = item_ids.cpu().numpy()
        rows = topk_items(torch.from_numpy(self.queries[users]), item_emb.float(), max(ks))
        topk = corpus_ids[rows.numpy()]
        # Membership of (user, item) in the positive pairs, vectorised via one key.
        span = int(max(corpus_ids.max(initial=0), pairs[:, 1].max(initial=0))) + 1
        pos_keys = pairs[:, 0] * span + pairs[:, 1]
        hits = np.isin(users[:, None] * span + topk, pos_keys)
        out = _from_hits(hits, counts.astype(np.float64), ks)
        out["users"] = float(len(users))
        return out
