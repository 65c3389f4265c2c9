"""FAISS index of the bundle: kinds, measured recall against exact search, latency."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from ranking.serving.index import IndexConfig, build_index, measure_index, sample_rows


@pytest.fixture(scope="module")
def vectors() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(4000, 16)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    queries = rng.normal(size=(50, 16)).astype(np.float32)
    return emb, queries


def test_flat_index_is_exact(vectors):
    emb, queries = vectors
    index, info = build_index(emb, IndexConfig())
    assert info["type"] == "IndexFlatIP" and info["ntotal"] == len(emb)
    got = measure_index(index, emb, queries, k=20)
    assert got["recall_vs_exact"] == 1.0
    assert got["queries"] == 50 and got["k"] == 20
    lat = got["latency_ms"]
    assert 0 < lat["p50"] <= lat["p99"] and lat["threads"] == 1


@pytest.mark.parametrize(("kind", "cls"), [("ivf", "IndexIVFFlat"), ("hnsw", "IndexHNSWFlat")])
def test_approximate_indexes_report_their_recall(vectors, kind, cls):
    emb, queries = vectors
    cfg = IndexConfig(type=kind, nlist=64, nprobe=1, hnsw_m=4, ef_search=10, ef_construction=20)
    index, info = build_index(emb, cfg)
    assert info["type"] == cls
    got = measure_index(index, emb, queries, k=100)
    # brute force: overlap of the index's top 100 with the exact top 100
    _, want = faiss.knn(queries, emb, 100, metric=faiss.METRIC_INNER_PRODUCT)
    _, approx = index.search(queries, 100)
    overlap = np.mean([len(set(a) & set(w)) / 100 for a, w in zip(approx, want, strict=True)])
    assert got["recall_vs_exact"] == pytest.approx(overlap)
    assert got["recall_vs_exact"] < 1.0  # one IVF cell / a narrow beam do miss neighbours
    if kind == "ivf":
        assert info["params"] == {"nlist": 64, "nprobe": 1}


def test_ivf_cells_default_and_cap(vectors):
    emb, _ = vectors
    _, info = build_index(emb, IndexConfig(type="ivf"))
    assert info["params"]["nlist"] == min(int(4 * np.sqrt(len(emb))), len(emb) // 39)
    _, small = build_index(emb[:100], IndexConfig(type="ivf", nlist=50))
    assert small["params"]["nlist"] == 100 // 39


def test_unknown_kind_and_sample(vectors):
    with pytest.raises(ValueError, match="index type"):
        IndexConfig(type="lsh")
    rows = sample_rows(10, 4, seed=1)
    assert len(rows) == 4 and len(set(rows.tolist())) == 4 and list(rows) == sorted(rows)
    assert len(sample_rows(3, 10)) == 3
