"""What ``ranking-recommend --at T`` adds to a request: the availability filter.

One request = one user query (batch 1) against N item embeddings (D=64, unit
norm), top k. Variants, each timed over the same queries at one thread:

- ``unfiltered``: ``IndexFlatIP.search`` (the request without ``--at``);
- ``bitmap``: the window mask at T (two numpy compares), then
  :func:`ranking.serving.recommend.filtered_search` (the mask packed into an
  ``IDSelectorBitmap``): what ``--at`` does;
- ``batch``: the same with ``IDSelectorBatch`` over the servable row ids (a
  hash set built per request: the first version of ``--at``);
- ``mask after``: the reference without FAISS: one matmul over every item,
  unavailable scores set to -inf, ``argpartition``.

The filtered variants' top k is checked against ``mask after`` (all servable,
no repeats, the same k scores).

    .venv/bin/python scripts/bench/filtered_search.py --items 100000 1000000 --requests 300 --repeats 3
"""

from __future__ import annotations

import argparse
import time

import faiss
import numpy as np

from ranking.serving.recommend import filtered_search


def windows(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """int64 [n] starts and ends: a third of the items are 2-day streams spread over
    30 days, the rest released at some day and never ending (as in the synthetic world)."""
    day = 86_400
    start = rng.integers(0, 30, n) * day
    end = np.full(n, np.iinfo(np.int64).max)
    live = rng.random(n) < 1 / 3
    end[live] = start[live] + 2 * day
    return start, end


def bench(n: int, dim: int, k: int, requests: int, seed: int) -> dict[str, list[float]]:
    rng = np.random.default_rng(seed)
    emb = rng.standard_normal((n, dim)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    index = faiss.IndexFlatIP(dim)
    index.add(emb)
    start, end = windows(n, rng)
    queries = rng.standard_normal((requests, dim)).astype(np.float32)
    times = rng.integers(20, 30, requests) * 86_400  # late in the log: many streams ended

    def unfiltered(q, t):
        return index.search(q, k)[1][0]

    def bitmap(q, t):
        return filtered_search(index, q, k, (start <= t) & (t < end))[0]

    def batch(q, t):
        rows = np.flatnonzero((start <= t) & (t < end)).astype(np.int64)
        sel = faiss.IDSelectorBatch(rows)
        return index.search(q, k, params=faiss.SearchParameters(sel=sel))[1][0]

    def mask_after(q, t):
        scores = emb @ q[0]
        scores[~((start <= t) & (t < end))] = -np.inf
        return np.argpartition(-scores, k)[:k]

    variants = {
        "unfiltered": unfiltered,
        "bitmap": bitmap,
        "batch": batch,
        "mask after": mask_after,
    }
    out: dict[str, list[float]] = {name: [] for name in variants}
    for i in range(requests):
        q, t = queries[i : i + 1], int(times[i])
        servable = (start <= t) & (t < end)
        scores = emb @ q[0]
        want = np.sort(scores[mask_after(q, t)])
        for name, fn in variants.items():
            t0 = time.perf_counter()
            got = fn(q, t)
            out[name].append((time.perf_counter() - t0) * 1e3)
            if name in ("bitmap", "batch"):  # the same top k (up to float ties at the edge)
                ok = servable[got].all() and len(set(got.tolist())) == k
                if not ok or not np.allclose(np.sort(scores[got]), want, atol=1e-5):
                    raise AssertionError(f"{name}: top {k} differs from the reference, request {i}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, nargs="+", default=[100_000])
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--k", type=int, default=500)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    faiss.omp_set_num_threads(1)
    print(
        "| items | variant | p50 ms, median (min - max) | p99 ms, median (min - max) | p50 vs unfiltered |"
    )
    print("|---|---|---|---|---|")
    for n in args.items:
        runs = [bench(n, args.dim, args.k, args.requests, seed) for seed in range(args.repeats)]
        stats = {
            name: np.array([np.percentile(r[name], [50, 99]) for r in runs]) for name in runs[0]
        }
        base = np.median(stats["unfiltered"][:, 0])
        for name, s in stats.items():
            p50, p99 = s[:, 0], s[:, 1]
            print(
                f"| {n:,} | {name} | {np.median(p50):.2f} ({p50.min():.2f} - {p50.max():.2f}) "
                f"| {np.median(p99):.2f} ({p99.min():.2f} - {p99.max():.2f}) "
                f"| {np.median(p50) / base:.2f} |"
            )


if __name__ == "__main__":
    main()
