"""Reference rankers on a MovieLens dataset directory (``ranking-data
source=movielens-1m``), scored by the same protocol as ``ranking-train
experiment=movielens_1m``: each user's test row is the query, exact top-k over
the item corpus, Hit@k of the held-out movie.

- ``most_popular``: the corpus by train ratings (ties by id); its Hit@100 on
  MovieLens-1M is the published 17.35 % (``../shared/data/README.md``), so it
  also checks that the split holds the same held-out movies; counted over every
  rating but the last (train + valid) and with all of them removed, the
  published 22.6 % too;
- ``item_knn``: item-based collaborative filtering (Sarwar et al. 2001):
  cosine similarity of the items' train user vectors; a user's score for j is
  the sum of sim(h, j) over the movies h of the test row's ``hist_items``
  (the same history the user tower reads).

Each with already-rated movies left in the ranking (the published protocol)
and with the user's train movies removed (``retrieval.eval.exclude_train``).
``--run DIR`` puts a trained run's ``metrics.json`` (and ``eval_metrics.json``
when it holds the exclusion protocol) beside them. numpy only.

Usage::

    .venv/bin/python scripts/bench/movielens_baselines.py --data data/movielens-1m \\
        [--run runs/<dir> ...] [--ks 10 50 100]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from machine import cpu_model  # scripts/bench/machine.py (this script's folder)


def load(data: Path) -> dict[str, np.ndarray]:
    """Train pairs, test rows (user, item, hist offsets/values), corpus item ids."""
    train = pq.read_table(data / "train.parquet", columns=["user_id", "item_id"])
    valid = pq.read_table(data / "valid.parquet", columns=["user_id", "item_id"])
    test = pq.read_table(data / "test.parquet", columns=["user_id", "item_id", "hist_items"])
    hist = test.column("hist_items").combine_chunks()
    items = pq.read_table(data / "items.parquet", columns=["item_id"]).column(0).to_numpy()
    return {
        "train_user": train.column("user_id").to_numpy(),
        "train_item": train.column("item_id").to_numpy(),
        "valid_user": valid.column("user_id").to_numpy(),
        "valid_item": valid.column("item_id").to_numpy(),
        "test_user": test.column("user_id").to_numpy(),
        "test_item": test.column("item_id").to_numpy(),
        "hist_offsets": hist.offsets.to_numpy(),
        "hist_values": hist.values.to_numpy(),
        "items": np.sort(items),
    }


def hits(scores: np.ndarray, target_col: np.ndarray, ks: list[int]) -> dict[int, float]:
    """Hit@k per k. scores float [U, N] (-inf = excluded); target_col int [U]."""
    target = scores[np.arange(len(scores)), target_col]
    # rank = items scored above the target, ties counted against it (by column order)
    above = (scores > target[:, None]).sum(1)
    tied_before = (
        (scores == target[:, None]) & (np.arange(scores.shape[1]) < target_col[:, None])
    ).sum(1)
    rank = above + tied_before
    return {k: float((rank < k).mean()) for k in ks}


def evaluate(d: dict[str, np.ndarray], ks: list[int]) -> dict[str, dict[int, float]]:
    items = d["items"]  # sorted corpus ids
    n = len(items)
    users = np.unique(np.concatenate([d["train_user"], d["valid_user"], d["test_user"]]))

    def col(ids: np.ndarray) -> np.ndarray:  # corpus column of each item id
        return np.searchsorted(items, ids)

    def urow(ids: np.ndarray) -> np.ndarray:  # row of each user id
        return np.searchsorted(users, ids)

    R = np.zeros((len(users), n), np.float32)  # train user x item (binary)
    R[urow(d["train_user"]), col(d["train_item"])] = 1
    target = col(d["test_item"])
    rated = R[urow(d["test_user"])] > 0

    out = {}
    pop = R.sum(0)
    order = np.lexsort((items, -pop))  # by count, ties by id
    pop_scores = np.empty(n, np.float64)
    pop_scores[order] = -np.arange(n, dtype=np.float64)
    base = np.broadcast_to(pop_scores, (len(target), n))
    out["most_popular"] = hits(base, target, ks)
    out["most_popular, rated removed"] = hits(np.where(rated, -np.inf, base), target, ks)
    # torch-rechub's reading: counts and removal over every rating but the last
    # (train + the valid row), the published 17.35 % / 22.6 %
    V = R.copy()
    V[urow(d["valid_user"]), col(d["valid_item"])] = 1
    order = np.lexsort((items, -V.sum(0)))
    all_scores = np.empty(n, np.float64)
    all_scores[order] = -np.arange(n, dtype=np.float64)
    base = np.broadcast_to(all_scores, (len(target), n))
    seen = V[urow(d["test_user"])] > 0
    out["most_popular over all but the last"] = hits(base, target, ks)
    out["the same, all rated removed"] = hits(np.where(seen, -np.inf, base), target, ks)

    norms = np.sqrt(R.sum(0))
    sim = (R.T @ R) / np.maximum(np.outer(norms, norms), 1e-12)
    np.fill_diagonal(sim, 0)
    off, val = d["hist_offsets"], d["hist_values"]
    H = np.zeros((len(target), n), np.float32)
    rows = np.repeat(np.arange(len(target)), np.diff(off))
    np.add.at(H, (rows, col(val)), 1)
    knn = H @ sim
    out["item_knn"] = hits(knn, target, ks)
    out["item_knn, rated removed"] = hits(np.where(rated, -np.inf, knn), target, ks)
    return out


def run_rows(run: Path, ks: list[int]) -> dict[str, dict[int, float]]:
    rows = {}
    for name, file in (("", "metrics.json"), (", rated removed", "eval_metrics.json")):
        path = run / file
        if path.exists():
            m = json.loads(path.read_text())
            if f"test/hit@{ks[-1]}" in m:
                rows[f"{run.name}{name}"] = {k: m[f"test/hit@{k}"] for k in ks}
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=Path("data/movielens-1m"))
    p.add_argument("--run", type=Path, nargs="*", default=[])
    p.add_argument("--ks", type=int, nargs="+", default=[10, 50, 100])
    args = p.parse_args()
    t0 = time.perf_counter()
    table = evaluate(load(args.data), args.ks)
    took = time.perf_counter() - t0
    for run in args.run:
        table.update(run_rows(run, args.ks))
    print(f"# {args.data}: {cpu_model()}, {os.cpu_count()} cores; baselines in {took:.1f} s")
    print("| ranker | " + " | ".join(f"Hit@{k}" for k in args.ks) + " |")
    print("|---|" + "---|" * len(args.ks))
    for name, h in table.items():
        print(f"| {name} | " + " | ".join(f"{100 * h[k]:.2f} %" for k in args.ks) + " |")


if __name__ == "__main__":
    main()
