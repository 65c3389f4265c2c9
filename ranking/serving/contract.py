"""The preprocessing contract of a bundle, from the schema and the train statistics.

Two things go into ``manifest.json``:

- each artifact input gains what the serving guard (:mod:`ranking.serving.guards`)
  needs: ``ids`` (how its ids reach a table row) and, for lists, ``max_len``;
- ``preprocessing``: per feature, how a raw value (as a user's logs hold it)
  becomes that input: the stable hash with its seed and bucket count, or vocabulary
  ids with the out-of-vocabulary row; the dense transform with its train
  statistics and its column in ``dense_<side>``; list caps, truncation and padding.
  :mod:`ranking.serving.preprocess` is the reference implementation (numpy only).
"""

from __future__ import annotations

from typing import Any

from ranking.hashing import DEFAULT_SEED
from ranking.schema import Feature, Schema, Side

CONTRACT_VERSION = 1
PADDING = -1


def id_rule(f: Feature) -> dict[str, Any]:
    """How ids of a sparse feature map to rows of its table (manifest ``ids``)."""
    if f.hashed:
        return {"map": "hash", "buckets": int(f.hash_buckets), "seed": DEFAULT_SEED}
    return {"map": "vocab", "vocab_size": int(f.vocab_size), "oov_row": int(f.vocab_size)}


def describe_inputs(schema: Schema, specs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The manifest's input specs of one artifact plus ``ids`` and ``max_len``
    for every input that is a sparse feature of the schema (others unchanged)."""
    sparse = {f.name: f for f in schema.sparse()}
    out = []
    for spec in specs:
        spec = dict(spec)
        f = sparse.get(spec["name"])
        if f is not None:
            spec["ids"] = id_rule(f)
            if f.is_list:
                spec["max_len"] = int(f.max_len)
        out.append(spec)
    return out


def preprocessing_contract(schema: Schema, dense_stats: dict[str, Any]) -> dict[str, Any]:
    """The ``preprocessing`` block of the manifest.

    Args:
        dense_stats: :meth:`ranking.data.stats.DenseStats.to_dict` of the train split.
    """
    moments = dense_stats.get("features", {})
    features: dict[str, Any] = {}
    for f in schema.features:
        entry: dict[str, Any] = {"side": str(f.side), "kind": str(f.kind)}
        if f.is_sparse:
            entry["input"] = f.name
            entry["ids"] = id_rule(f)
            if f.is_list:
                entry.update(
                    max_len=int(f.max_len),
                    longer=("keep_last" if f.truncate else "error"),
                    padding=PADDING,
                    pad_to="max_len",
                )
        else:
            side_dense = [g.name for g in schema.dense(Side(f.side))]
            entry["input"] = f"dense_{f.side}"
            entry["column"] = side_dense.index(f.name)
            entry["transform"] = f.transform
            if f.transform in ("standardize", "log1p_standardize"):
                if f.name not in moments:
                    raise ValueError(f"dense stats have no entry for {f.name!r} ({f.transform})")
                m = moments[f.name]
                std = float(m["std"])
                entry.update(mean=float(m["mean"]), std=std, scale=std if std > 0 else 1.0)
        features[f.name] = entry
    return {
        "version": CONTRACT_VERSION,
        "reference": "preprocess.py",
        "hash": {
            "seed": DEFAULT_SEED,
            "int": "row = splitmix64(uint64(value) XOR seed) mod buckets "
            "(value as two's-complement int64)",
            "str": "value = int64 of the little-endian BLAKE2b-64 digest of the UTF-8 "
            "bytes, then hashed as an int",
            "splitmix64": "z += 0x9E3779B97F4A7C15; z = (z ^ z>>30) * 0xBF58476D1CE4E5B9; "
            "z = (z ^ z>>27) * 0x94D049BB133111EB; z ^= z>>31 (all mod 2**64)",
        },
        "vocab": "row = id if 0 <= id < vocab_size; otherwise a one-id categorical takes "
        "oov_row (= vocab_size, a zero row) and a list drops the id",
        "lists": "map ids (dropping out-of-vocabulary ones), then a list longer than "
        "max_len keeps its last max_len ids (longer: keep_last) or is an error "
        "(longer: error); pad on the right with -1 to max_len",
        "dense": "float64: log1p (log1p transforms), then (x - mean) / scale "
        "(standardize transforms); cast to float32; column `column` of input `input`",
        "missing": "every feature an artifact reads must be present; None is an error",
        "features": features,
    }
