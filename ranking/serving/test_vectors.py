"""Test vectors of a bundle: raw requests, the tensors they become, the outputs.

A server reimplements preprocessing (raw log values -> tensors) and loads the
artifacts in its own runtime; the test vectors let it check both halves:

- ``requests``: a few impressions of the test split as raw values (raw brand
  codes, raw prices, id lists), plus edge cases built from them: empty lists,
  extreme raw values of hashed features (int64 min/max), zero dense values, and
  lists longer than ``max_len`` where the schema truncates;
- per artifact, the input tensors of those requests, made by the *training*
  converter (:class:`~ranking.data.convert.BatchConverter` + ``flat_inputs``), the
  same code that fed the model, and the artifact's expected output.

The export checks that the numpy reference (:mod:`ranking.serving.preprocess`)
reproduces every tensor exactly before it writes the files, so the contract and
the training path cannot drift apart unnoticed.

- ``retrieval`` (format 2): the exact top-``k`` corpus items of each user-tower
  test vector's output by inner product over ``item_embeddings.npy``: ``rows``
  int64 [B, k] (corpus rows), ``item_ids`` int64 [B, k] (their raw ids,
  ``item_ids.npy[rows]``) and ``scores`` float32 [B, k], best first, ties by
  corpus row, so a server can check its index and its id mapping end to end.

Files: ``test_vectors.pt`` (``torch.save`` of ``{"format_version", "tolerance",
"artifacts": {name: {"file", "inputs": {input: tensor}, "output": tensor}},
"retrieval": {"query", "k", "rows", "item_ids", "scores"}}``; libtorch reads it with
``torch::pickle_load``) and ``test_vectors.json`` (the raw requests and the same
tensors as nested lists).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from ranking.data.convert import BatchConverter
from ranking.data.files import csv_column_types, iter_record_batches
from ranking.data.stats import DenseStats
from ranking.schema import Schema, Side
from ranking.serving.bundle import TEST_VECTORS, exact_top_k
from ranking.serving.convert import flat_inputs
from ranking.serving.preprocess import Preprocessor

TEST_VECTORS_JSON = "test_vectors.json"
VECTORS_VERSION = 2  # 2: the retrieval case
#: top-k of the retrieval case
RETRIEVAL_K = 10
TOLERANCE = 1e-5
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1


def log_rows(schema: Schema, columns: list[str], n: int) -> pa.Table:
    """The first ``n`` rows of the test split (of the train split if test is empty)."""
    for split in ("test", "train"):
        for path in schema.split_paths(split):
            types = csv_column_types(schema)  # CSV splits: the schema's column types
            for _, rb in iter_record_batches(path, columns, batch_rows=n, column_types=types):
                if rb.num_rows:
                    return pa.Table.from_batches([rb]).slice(0, n)
    raise ValueError(f"{schema.root}: no rows to build test vectors from")


def edge_rows(schema: Schema, base: dict[str, Any], types: pa.Schema) -> list[dict[str, Any]]:
    """Edge cases inside the training domain, derived from one logged row."""
    lists = [f for f in schema.sparse() if f.is_list]
    hashed = [f for f in schema.sparse() if f.hashed]
    out = []
    if lists:
        out.append({**base, **{f.name: [] for f in lists}})
    if hashed:
        lo: dict[str, Any] = {}
        hi: dict[str, Any] = {}
        for f in hashed:
            text = _is_text(types.field(f.name).type)
            low, high = ("", "ü" * 40) if text else (INT64_MIN, INT64_MAX)
            lo[f.name] = [low, high] if f.is_list else low
            hi[f.name] = [high] if f.is_list else high
        out += [{**base, **lo}, {**base, **hi}]
    dense = schema.dense()
    if dense:
        out.append({**base, **{f.name: 0.0 for f in dense}})
    long = [f for f in lists if f.truncate and base.get(f.name)]
    if long:
        out.append({**base, **{f.name: (base[f.name] * (f.max_len + 1)) for f in long}})
    return out


def _is_text(t: pa.DataType) -> bool:
    """A string column (or list of strings), dictionary-encoded or not."""
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        t = t.value_type
    if pa.types.is_dictionary(t):
        t = t.value_type
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def build(
    schema: Schema,
    dense_stats: dict[str, Any],
    manifest: dict[str, Any],
    modules: dict[str, torch.nn.Module],
    n_logged: int = 4,
    corpus: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Requests, tensors and expected outputs for every artifact in ``modules``;
    with ``corpus`` (item embeddings float32 [N, D] and raw item ids int64 [N], in
    corpus row order) and a ``user_tower`` among them, the retrieval case too
    (:func:`retrieval_case`).

    Raises:
        RuntimeError: the numpy reference preprocessing disagrees with the
            training converter on some tensor (a contract bug: fix before shipping).
    """
    conv = BatchConverter(schema, DenseStats.from_dict(dense_stats))
    logged = log_rows(schema, conv.columns, n_logged)
    raw = logged.to_pylist()
    rows = raw + edge_rows(schema, raw[0], logged.schema)
    table = pa.Table.from_pylist(rows, schema=logged.schema)
    batch = conv.convert(table)
    flat = flat_inputs(schema, batch, (Side.USER, Side.ITEM, Side.CONTEXT))
    features = [f.name for f in schema.features]
    requests = [{k: r[k] for k in features} for r in rows]

    reference = Preprocessor(manifest)
    artifacts: dict[str, Any] = {}
    with torch.no_grad():
        for name, module in modules.items():
            specs = manifest["artifacts"][name]["inputs"]
            inputs = {s["name"]: flat[s["name"]].contiguous() for s in specs}
            ref = reference.inputs(name, requests)
            for key, x in inputs.items():
                got = ref[key]
                if got.shape != tuple(x.shape) or not np.array_equal(got, x.numpy()):
                    raise RuntimeError(
                        f"the reference preprocessing disagrees with the training converter "
                        f"on {name}/{key}: the preprocessing contract is wrong"
                    )
            artifacts[name] = {
                "file": manifest["artifacts"][name]["file"],
                "inputs": inputs,
                "output": module.eval()(inputs).contiguous(),
            }
    vectors = {
        "format_version": VECTORS_VERSION,
        "tolerance": TOLERANCE,
        "requests": requests,
        "artifacts": artifacts,
    }
    if corpus is not None and "user_tower" in artifacts:
        vectors["retrieval"] = retrieval_case(artifacts["user_tower"]["output"], *corpus)
    return vectors


def retrieval_case(
    queries: torch.Tensor, embeddings: np.ndarray, item_ids: np.ndarray, k: int = RETRIEVAL_K
) -> dict[str, Any]:
    """The user-tower test vectors' exact top-k over the corpus (see the module
    docstring)."""
    rows, scores = exact_top_k(queries.float().numpy(), embeddings, k)
    return {
        "query": "user_tower",
        "k": int(rows.shape[1]),
        "rows": torch.from_numpy(rows),
        "item_ids": torch.from_numpy(np.asarray(item_ids, dtype=np.int64)[rows]),
        "scores": torch.from_numpy(scores),
    }


def save(vectors: dict[str, Any], out: str | Path) -> dict[str, Any]:
    """Write ``test_vectors.pt`` and ``test_vectors.json``; returns the manifest entry."""
    out = Path(out)
    tensors = {k: v for k, v in vectors.items() if k != "requests"}
    torch.save(tensors, out / TEST_VECTORS)
    as_lists = {
        name: {
            "inputs": {k: v.tolist() for k, v in case["inputs"].items()},
            "output": case["output"].tolist(),
        }
        for name, case in vectors["artifacts"].items()
    }
    doc = {
        "format_version": vectors["format_version"],
        "tolerance": vectors["tolerance"],
        "requests": vectors["requests"],
        "artifacts": as_lists,
    }
    if "retrieval" in vectors:
        doc["retrieval"] = {
            k: v.tolist() if isinstance(v, torch.Tensor) else v
            for k, v in vectors["retrieval"].items()
        }
    (out / TEST_VECTORS_JSON).write_text(json.dumps(doc))
    return {
        "file": TEST_VECTORS,
        "json": TEST_VECTORS_JSON,
        "requests": len(vectors["requests"]),
        "tolerance": vectors["tolerance"],
        "what": "raw requests (json), the tensors the training converter makes of them "
        "and each artifact's expected output; preprocess.py reproduces the tensors exactly",
    }
