"""FAISS index over the exported item embeddings, measured when it is built.

Three kinds (inner product; with normalised towers that is cosine):

- ``flat``: ``IndexFlatIP``, exact brute force. The default: a few million
  items still answer in milliseconds per query on one core.
- ``ivf``: ``IndexIVFFlat``, ``nlist`` k-means cells (default ``4 sqrt(N)``),
  ``nprobe`` of them searched per query.
- ``hnsw``: ``IndexHNSWFlat``, graph with ``hnsw_m`` links per node,
  ``ef_construction`` / ``ef_search`` beam widths.

:func:`measure_index` compares the index with exact search on sample queries
(recall@k of the index's top k against the exact top k) and times one query at
a time on one thread (p50 / p99 milliseconds); both go into the bundle
manifest's ``index`` entry, so whoever serves the bundle knows what the
approximation costs. Imports numpy and faiss only.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np

INDEX_TYPES = ("flat", "ivf", "hnsw")


@dataclass(frozen=True)
class IndexConfig:
    """How to build the index (``export.index`` in ``conf/train.yaml``).

    Attributes:
        type: ``flat`` | ``ivf`` | ``hnsw``.
        nlist: IVF cells (None: ``4 sqrt(N)``, at most N / 39 so k-means has
            enough points per cell).
        nprobe: IVF cells searched per query.
        hnsw_m: HNSW links per node.
        ef_construction, ef_search: HNSW beam widths at build and query time.
        eval_queries: sample queries for the recall and latency measurement.
        eval_k: k of the measured recall.
        seed: seed of the query sample and of IVF's k-means.
    """

    type: str = "flat"
    nlist: int | None = None
    nprobe: int = 16
    hnsw_m: int = 32
    ef_construction: int = 200
    ef_search: int = 128
    eval_queries: int = 1000
    eval_k: int = 100
    seed: int = 0

    def __post_init__(self) -> None:
        if self.type not in INDEX_TYPES:
            raise ValueError(f"index type must be one of {INDEX_TYPES}, got {self.type!r}")


def build_index(emb: np.ndarray, cfg: IndexConfig) -> tuple[faiss.Index, dict[str, Any]]:
    """Index over ``emb`` float32 [N, D] (row i = corpus row i). Returns the index
    and its description for the manifest (class, metric, parameters)."""
    emb = np.ascontiguousarray(emb, dtype=np.float32)
    n, d = emb.shape
    params: dict[str, Any] = {}
    if cfg.type == "flat":
        index: faiss.Index = faiss.IndexFlatIP(d)
    elif cfg.type == "ivf":
        nlist = cfg.nlist or int(4 * math.sqrt(max(n, 1)))
        nlist = max(1, min(nlist, n // 39 if n >= 39 else 1))
        quantizer = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = cfg.seed
        index.train(emb)
        index.nprobe = min(cfg.nprobe, nlist)
        params = {"nlist": nlist, "nprobe": int(index.nprobe)}
    else:
        index = faiss.IndexHNSWFlat(d, cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = cfg.ef_construction
        index.hnsw.efSearch = cfg.ef_search
        params = {"M": cfg.hnsw_m, "efConstruction": cfg.ef_construction, "efSearch": cfg.ef_search}
    index.add(emb)
    info = {
        "type": type(index).__name__,
        "kind": cfg.type,
        "metric": "inner_product",
        "ntotal": int(index.ntotal),
        "dim": int(d),
        "params": params,
    }
    return index, info


def index_metrics(info: dict[str, Any]) -> dict[str, float]:
    """The measured part of a manifest's ``index`` entry (:func:`measure_index`'s
    keys) as flat metrics: ``index/recall_vs_exact@k``, ``index/latency_p50_ms``,
    ``index/latency_p99_ms``."""
    k = int(info["k"])
    return {
        f"index/recall_vs_exact@{k}": float(info["recall_vs_exact"]),
        "index/latency_p50_ms": float(info["latency_ms"]["p50"]),
        "index/latency_p99_ms": float(info["latency_ms"]["p99"]),
    }


def measure_index(
    index: faiss.Index, emb: np.ndarray, queries: np.ndarray, k: int = 100
) -> dict[str, Any]:
    """Recall@k of ``index`` against exact inner-product search over ``emb`` and
    its single-query latency on one thread.

    Args:
        index: the index (over ``emb``).
        emb: float32 [N, D] the indexed vectors.
        queries: float32 [Q, D] sample queries (e.g. user-tower outputs).

    Returns: ``{"k", "queries", "recall_vs_exact", "latency_ms": {"p50", "p99", "threads"}}``.
    """
    emb = np.ascontiguousarray(emb, dtype=np.float32)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    k = min(k, emb.shape[0])
    exact = faiss.IndexFlatIP(emb.shape[1])
    exact.add(emb)
    _, want = exact.search(queries, k)
    _, got = index.search(queries, k)
    found = [len(np.intersect1d(got[q], want[q])) / k for q in range(len(queries))]
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        times = []
        for q in range(len(queries)):
            start = time.perf_counter()
            index.search(queries[q : q + 1], k)
            times.append((time.perf_counter() - start) * 1000.0)
    finally:
        faiss.omp_set_num_threads(threads)
    return {
        "k": int(k),
        "queries": int(len(queries)),
        "recall_vs_exact": float(np.mean(found)) if found else float("nan"),
        "latency_ms": {
            "p50": float(np.percentile(times, 50)) if times else float("nan"),
            "p99": float(np.percentile(times, 99)) if times else float("nan"),
            "threads": 1,
        },
    }


def sample_rows(n: int, size: int, seed: int = 0) -> np.ndarray:
    """Sorted row indices of a uniform sample of ``min(size, n)`` of ``n`` rows."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=min(size, n), replace=False))
