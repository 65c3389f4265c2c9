"""Full-corpus retrieval evaluation at 1M items: time and memory.

:class:`ranking.metrics.retrieval.FullCorpusEvaluator` scores every evaluated
user against every corpus item (:func:`ranking.metrics.retrieval.topk_items`)
and computes recall, NDCG and hit rate at 10/50/100, tail recall, coverage and
the decile table. This times its ``compute`` on random unit-norm embeddings
(N items, U users with 3 positives each, D=64) with both exact-search backends
(``faiss``, the CPU default, and ``torch``, chunked matrix products), against
the reference in the same run: FAISS ``IndexFlatIP`` exact search of the same
queries for the top 100 (the ranking part alone, no metrics). All three must
give the same recall@100.

Memory: the peak growth of the resident set during one run of each variant,
each in a fresh process of its own (sampled every 5 ms), next to the size of
one U x N float32 score matrix, which neither backend forms. FAISS is told to
use BLAS for any number of queries, for the reference as for the evaluator.

    OMP_NUM_THREADS=2 .venv/bin/python scripts/bench/full_corpus_eval.py \\
        --items 1000000 --users 2000 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch  # before faiss: FAISS then shares torch's OpenMP runtime, as in training

# isort: split
import faiss
from machine import cpu_model  # scripts/bench/machine.py (this script's folder)

from ranking.metrics.retrieval import FullCorpusEvaluator


class PeakRSS:
    """Peak resident-set growth (MiB) over a ``with`` block, sampled every 5 ms."""

    def __enter__(self) -> PeakRSS:
        self.base = self.peak = _rss_mib()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, _rss_mib())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_mib())

    @property
    def growth(self) -> float:
        return self.peak - self.base


def _rss_mib() -> float:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--positives", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--memory-of", help=argparse.SUPPRESS)  # internal: one variant's RSS
    args = parser.parse_args(argv)
    # BLAS for any number of queries, for the reference as for the evaluator
    # (faiss's default scores fewer than 128k query-dims one query at a time)
    faiss.cvar.distance_compute_blas_threshold = 0
    rng = np.random.default_rng(args.seed)
    n, u, d = args.items, args.users, args.dim
    emb = rng.standard_normal((n, d), dtype=np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    queries = rng.standard_normal((u, d), dtype=np.float32)
    # positives: half among each query's best items of the first 20k (so recall is
    # not ~0), half at random
    pool = emb[: min(n, 20_000)]
    near = np.concatenate(
        [
            np.argsort(-(queries[a : a + 256] @ pool.T), axis=1)[:, : args.positives]
            for a in range(0, u, 256)
        ]
    )
    pos_items = np.where(rng.random(near.shape) < 0.5, near, rng.integers(0, n, near.shape))
    exposures = rng.poisson(5.0, n).astype(np.int64)
    item_ids = torch.arange(n)
    item_emb = torch.from_numpy(emb)

    ev = FullCorpusEvaluator(num_users=u, dim=d)
    users = np.repeat(np.arange(u), args.positives)
    ev.update(
        torch.from_numpy(users),
        torch.zeros(len(users), dtype=torch.int64),
        torch.from_numpy(queries[users]),
        torch.from_numpy(pos_items.ravel()),
        torch.ones(len(users), dtype=torch.bool),
    )
    index = faiss.IndexFlatIP(d)
    index.add(emb)

    def evaluator(backend: str) -> Callable[[], float]:
        return lambda: ev.compute(item_emb, item_ids, exposures=exposures, backend=backend).metrics[
            "recall@100"
        ]

    def reference() -> float:
        top = index.search(queries, 100)[1]
        held = [len(set(p) & set(t)) / len(set(p)) for p, t in zip(pos_items, top, strict=True)]
        return float(np.mean(held))

    variants = {
        "evaluator, faiss backend (default)": evaluator("faiss"),
        "evaluator, torch backend": evaluator("torch"),
        "FAISS IndexFlatIP search only": reference,
    }
    if args.memory_of is not None:
        with PeakRSS() as rss:
            variants[args.memory_of]()
        print(rss.growth)
        return 0
    # each variant's memory in a fresh process of its own (no memory freed by another)
    memory = {
        name: float(
            subprocess.run(
                [sys.executable, __file__, *(argv or sys.argv[1:]), "--memory-of", name],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.split()[-1]
        )
        for name in variants
    }
    recall = {name: fn() for name, fn in variants.items()}
    if max(recall.values()) - min(recall.values()) > 1e-6:
        raise SystemExit(f"the variants disagree on recall@100: {recall}")
    times = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, fn in variants.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    print(
        f"machine: {cpu_model()}, torch threads {torch.get_num_threads()}, "
        f"faiss threads {faiss.omp_get_max_threads()}"
    )
    print(f"corpus {n:,} items x D={d}, {u:,} users, {args.repeats} repeats")
    ref = statistics.median(times["FAISS IndexFlatIP search only"])
    for name, ts in times.items():
        med = statistics.median(ts)
        print(
            f"{name:36s} recall@100 {recall[name]:.4f}  {med:6.2f} s ({min(ts):.2f} - "
            f"{max(ts):.2f})  x{med / ref:.2f} the reference  peak RSS +{memory[name]:.0f} MiB"
        )
    print(f"(one U x N float32 score matrix: {u * n * 4 / 2**20:,.0f} MiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
