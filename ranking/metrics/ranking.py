"""Per-task ranking metrics, exact and streaming: AUC, GAUC, log loss, NE,
calibration, oracle AUC (synthetic data).

Definitions (per task t, over the N evaluated impressions with label y in {0, 1}
and predicted probability p; for an ESMM task p is the joint probability, e.g.
pCTCVR against click-and-purchase labels):

- ``auc/t``: ROC AUC, the probability that a random positive scores above a
  random negative, ties counting one half (Mann-Whitney U with tie-averaged
  ranks). Exact: computed from every (score, label) pair, not from a histogram.
- ``gauc/t``: per-user AUC averaged with weights equal to the user's number of
  impressions, over the users whose impressions hold both classes (the others
  have no AUC and are left out of numerator and denominator)::

      GAUC = sum_u n_u AUC_u / sum_u n_u,   u in {users with a positive and a negative}

  (Zhou et al., DIN 2018, weight by impressions; some write clicks instead:
  this one is impressions.)
- ``logloss/t``: mean binary cross-entropy, probabilities clamped to [1e-7, 1 - 1e-7].
- ``ne/t``: normalised entropy (He et al., 2014): log loss divided by the
  entropy of the base rate ``ybar`` of the evaluated labels,
  ``-(ybar log ybar + (1 - ybar) log(1 - ybar))``. Below 1 = better than
  predicting the base rate.
- ``calibration/t``: mean prediction / mean label (1 = calibrated on average).
- ``oracle_auc/t``: AUC of the data's true probability (synthetic data only):
  the best AUC any model can reach on these labels; ``auc_oracle_ratio/t`` =
  (AUC - 0.5) / (oracle AUC - 0.5), the share of the attainable lift reached.

Memory: AUC and GAUC are rank statistics and need every score, so the
accumulator keeps, per evaluated row, the user id (int64, 8 bytes) and per task
the score (float32, 4 bytes), the label (int8, 1 byte) and, with an oracle, the
true probability (float32, 4 bytes): 8 + 9T bytes per row (26 bytes for two
tasks with oracles, ~1.6 MB for the quickstart's 62k test rows, 2.6 GB per 100M
rows), in chunks as they arrive; batches themselves are not kept. ``compute``
sorts them (O(N log N) time, about three times that memory for the duration).
Log loss, calibration and base rates are running float64 sums. torchmetrics'
``BinaryAUROC`` (exact mode) keeps float32 scores and int64 targets (12 bytes a
row per task) and has no grouped AUC, so it is used in the tests as a reference
rather than here.
"""

from __future__ import annotations

import math

import numpy as np
import torch

EPS = 1e-7


def _tie_starts(sorted_keys: list[np.ndarray]) -> np.ndarray:
    """bool [N]: True where a row differs from the previous in any key (row 0 True)."""
    n = len(sorted_keys[0])
    new = np.zeros(n, dtype=bool)
    if n:
        new[0] = True
    for k in sorted_keys:
        new[1:] |= k[1:] != k[:-1]
    return new


def _average_positions(starts: np.ndarray) -> np.ndarray:
    """0-based position of each row averaged over its run of equal keys."""
    n = len(starts)
    first = np.flatnonzero(starts)
    last = np.append(first[1:], n) - 1
    run = np.cumsum(starts) - 1
    return ((first + last) / 2.0)[run]


def binary_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Exact ROC AUC with ties counted one half; NaN without both classes."""
    labels = labels.astype(bool)
    n_pos = int(labels.sum())
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="stable")
    ranks = _average_positions(_tie_starts([scores[order]])) + 1.0
    rank_sum = float(ranks[labels[order]].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def grouped_auc(scores: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> tuple[float, int]:
    """Impression-weighted mean of per-group AUCs over groups with both classes.

    Returns (GAUC, number of groups that count); (NaN, 0) if no group counts.
    One sort by (group, score) for all groups: O(N log N).
    """
    order = np.lexsort((scores, groups))
    g, s, y = groups[order], scores[order], labels[order].astype(np.float64)
    group_start = _tie_starts([g])
    gid = np.cumsum(group_start) - 1
    first_of_group = np.flatnonzero(group_start)
    # Ranks within each group (ties averaged within the group only).
    pos = _average_positions(_tie_starts([g, s]))
    rank = pos - first_of_group[gid] + 1.0
    n = np.bincount(gid).astype(np.float64)
    n_pos = np.bincount(gid, weights=y)
    n_neg = n - n_pos
    rank_sum = np.bincount(gid, weights=rank * y)
    ok = (n_pos > 0) & (n_neg > 0)
    if not ok.any():
        return float("nan"), 0
    auc = (rank_sum[ok] - n_pos[ok] * (n_pos[ok] + 1) / 2.0) / (n_pos[ok] * n_neg[ok])
    return float((n[ok] * auc).sum() / n[ok].sum()), int(ok.sum())


def _entropy(rate: float) -> float:
    if rate <= 0.0 or rate >= 1.0:
        return float("nan")
    return -(rate * math.log(rate) + (1 - rate) * math.log(1 - rate))


class _Chunks:
    """Append-only column of one dtype, kept as the chunks that arrived."""

    def __init__(self, dtype: np.dtype) -> None:
        self.dtype = dtype
        self.chunks: list[np.ndarray] = []

    def add(self, x: torch.Tensor | np.ndarray) -> None:
        if isinstance(x, torch.Tensor):
            x = x.detach().cpu().numpy()
        self.chunks.append(np.ascontiguousarray(x, dtype=self.dtype))

    def array(self) -> np.ndarray:
        return np.concatenate(self.chunks) if self.chunks else np.empty(0, self.dtype)


class RankingMetrics:
    """Accumulates one evaluation pass; ``compute()`` returns ``metric/task`` keys.

    Args:
        tasks: task names, in the order of the columns of ``probs``.

    Example::

        m = RankingMetrics(["click", "purchase"])
        for batch in loader:
            m.update(torch.sigmoid(model(batch)), batch.labels, batch.oracle, batch.user_ids)
        m.compute()   # {"auc/click": ..., "gauc/click": ..., "ne/purchase": ..., ...}
    """

    def __init__(self, tasks: list[str]) -> None:
        self.tasks = list(tasks)
        self.scores = {t: _Chunks(np.float32) for t in self.tasks}
        self.labels = {t: _Chunks(np.int8) for t in self.tasks}
        self.oracle = {t: _Chunks(np.float32) for t in self.tasks}
        self.users = _Chunks(np.int64)
        self.loss_sum = {t: 0.0 for t in self.tasks}
        self.prob_sum = {t: 0.0 for t in self.tasks}
        self.label_sum = {t: 0.0 for t in self.tasks}
        self.count = 0

    def update(
        self,
        probs: torch.Tensor,
        labels: dict[str, torch.Tensor],
        oracle: dict[str, torch.Tensor] | None = None,
        user_ids: torch.Tensor | None = None,
    ) -> None:
        """Args: probs float [B, T]; labels {task: [B]} in {0, 1}; oracle {task: [B]}
        true probabilities (may be empty); user_ids int [B] (GAUC needs them)."""
        probs = probs.detach().double().cpu()
        oracle = oracle or {}
        for i, t in enumerate(self.tasks):
            p = probs[:, i]
            y = labels[t].detach().cpu().double()
            pc = p.clamp(EPS, 1 - EPS)
            self.loss_sum[t] += float(-(y * pc.log() + (1 - y) * (1 - pc).log()).sum())
            self.prob_sum[t] += float(p.sum())
            self.label_sum[t] += float(y.sum())
            self.scores[t].add(p.float())
            self.labels[t].add(y.to(torch.int8))
            if t in oracle:
                self.oracle[t].add(oracle[t].float())
        if user_ids is not None:
            self.users.add(user_ids)
        self.count += int(probs.shape[0])

    @classmethod
    def merged(cls, parts: list[RankingMetrics]) -> RankingMetrics:
        """One accumulator holding the rows of all ``parts`` (e.g. one per rank), in order."""
        out = cls(parts[0].tasks)
        for part in parts:
            for t in out.tasks:
                for mine, theirs in (
                    (out.scores, part.scores),
                    (out.labels, part.labels),
                    (out.oracle, part.oracle),
                ):
                    mine[t].chunks += theirs[t].chunks
                out.loss_sum[t] += part.loss_sum[t]
                out.prob_sum[t] += part.prob_sum[t]
                out.label_sum[t] += part.label_sum[t]
            out.users.chunks += part.users.chunks
            out.count += part.count
        return out

    def compute(self) -> dict[str, float]:
        out: dict[str, float] = {}
        n = max(self.count, 1)
        users = self.users.array()
        for t in self.tasks:
            scores, labels = self.scores[t].array(), self.labels[t].array()
            logloss = self.loss_sum[t] / n
            rate = self.label_sum[t] / n
            out[f"auc/{t}"] = binary_auc(scores, labels)
            if len(users) == len(scores) and len(users):
                out[f"gauc/{t}"] = grouped_auc(scores, labels, users)[0]
            out[f"logloss/{t}"] = logloss
            out[f"ne/{t}"] = logloss / _entropy(rate)
            out[f"calibration/{t}"] = (self.prob_sum[t] / n) / rate if rate > 0 else float("nan")
            oracle = self.oracle[t].array()
            if len(oracle) == len(labels) and len(oracle):
                best = binary_auc(oracle, labels)
                out[f"oracle_auc/{t}"] = best
                out[f"auc_oracle_ratio/{t}"] = (out[f"auc/{t}"] - 0.5) / (best - 0.5)
        return out
