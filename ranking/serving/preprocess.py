"""Reference preprocessing: raw feature values -> the serving artifacts' input tensors.

The contract lives in the bundle's ``manifest.json`` (``preprocessing``: per
feature the hash or vocabulary, the dense transform with its train statistics,
list caps and padding; ``artifacts.<name>.inputs``: the tensors each artifact
takes). This file implements it with numpy and the standard library only and
imports nothing from this package, so a server can copy it (the bundle ships a
copy as ``preprocess.py``) and check its own implementation against the
bundle's test vectors.

Example::

    pre = Preprocessor.from_bundle("runs/latest/bundle")
    request = {"user_id": 7, "hist_items": [12, 40], "brand": 90211, "price": 19.9, ...}
    tensors = pre.inputs("ranker", [request])   # {name: np.ndarray}, ready for torch

    python preprocess.py BUNDLE   # checks the test vectors, prints "ok"
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

_M64 = 0xFFFFFFFFFFFFFFFF


# ---- the stable hash (same as ranking.hashing; vendored so this file stands alone) ----
def splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser, elementwise on uint64 (wraps modulo 2**64)."""
    z = np.asarray(x, dtype=np.uint64).copy()
    with np.errstate(over="ignore"):
        z += np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return z & np.uint64(_M64)


def string_code(value: str) -> int:
    """int64 of the little-endian BLAKE2b-64 digest of the UTF-8 bytes."""
    u = int.from_bytes(hashlib.blake2b(value.encode(), digest_size=8).digest(), "little")
    return u - (1 << 64) if u >= 1 << 63 else u


def hash_rows(values: list[int | str], buckets: int, seed: int) -> np.ndarray:
    """Raw ints (any int64) or strings -> rows in [0, buckets), int64."""
    codes = np.array(
        [string_code(v) if isinstance(v, str) else _as_int64(v) for v in values], dtype=np.int64
    )
    mixed = splitmix64(codes.view(np.uint64) ^ np.uint64(seed))
    return (mixed % np.uint64(buckets)).astype(np.int64)


def _as_int64(v: Any) -> int:
    if isinstance(v, bool | float) or not isinstance(v, int | np.integer):
        raise TypeError(f"expected an integer or a string, got {v!r}")
    v = int(v)
    if not -(1 << 63) <= v < 1 << 63:
        raise ValueError(f"{v} does not fit in int64")
    return v


class Preprocessor:
    """Applies a bundle's preprocessing contract to raw requests.

    Args:
        manifest: the bundle's parsed ``manifest.json``.
    """

    def __init__(self, manifest: dict[str, Any]) -> None:
        self.manifest = manifest
        self.contract = manifest["preprocessing"]
        self.features: dict[str, dict[str, Any]] = self.contract["features"]

    @classmethod
    def from_bundle(cls, bundle: str | Path) -> Preprocessor:
        return cls(json.loads((Path(bundle) / "manifest.json").read_text()))

    # ---- one feature -------------------------------------------------------------
    def ids(self, name: str, values: list[Any]) -> np.ndarray:
        """One-id categorical: raw values of B requests -> int64 [B] rows."""
        f = self.features[name]
        rule = f["ids"]
        if rule["map"] == "hash":
            return hash_rows(values, int(rule["buckets"]), int(rule["seed"]))
        vocab = int(rule["vocab_size"])
        out = np.array([_as_int64(v) for v in values], dtype=np.int64)
        return np.where((out >= 0) & (out < vocab), out, int(rule["oov_row"]))

    def id_lists(self, name: str, values: list[list[Any]]) -> np.ndarray:
        """List feature: raw lists of B requests -> int64 [B, max_len], -1 padded."""
        f = self.features[name]
        rule, max_len = f["ids"], int(f["max_len"])
        out = np.full((len(values), max_len), int(f["padding"]), dtype=np.int64)
        for i, raw in enumerate(values):
            if not isinstance(raw, list | tuple | np.ndarray):
                raise TypeError(f"feature {name!r} of request {i}: expected a list, got {raw!r}")
            if len(raw) == 0:
                continue
            if rule["map"] == "hash":
                rows = hash_rows(list(raw), int(rule["buckets"]), int(rule["seed"]))
            else:
                rows = np.array([_as_int64(v) for v in raw], dtype=np.int64)
                rows = rows[(rows >= 0) & (rows < int(rule["vocab_size"]))]
            if len(rows) > max_len:
                if f["longer"] != "keep_last":
                    raise ValueError(
                        f"feature {name!r} of request {i}: {len(rows)} ids, more than "
                        f"max_len {max_len}"
                    )
                rows = rows[-max_len:]
            out[i, : len(rows)] = rows
        return out

    def dense(self, name: str, values: list[Any]) -> np.ndarray:
        """Dense feature: raw values of B requests -> float32 [B] (transformed)."""
        f = self.features[name]
        x = np.array([float(v) for v in values], dtype=np.float64)
        if f["transform"] in ("log1p", "log1p_standardize"):
            with np.errstate(invalid="ignore", divide="ignore"):
                x = np.log1p(x)
        if f["transform"] in ("standardize", "log1p_standardize"):
            x = (x - float(f["mean"])) / float(f["scale"])
        bad = ~np.isfinite(x)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"feature {name!r} of request {i}: value {values[i]!r} is not finite "
                f"after {f['transform']}"
            )
        return x.astype(np.float32)

    # ---- one artifact --------------------------------------------------------------
    def inputs(self, artifact: str, requests: list[dict[str, Any]]) -> dict[str, np.ndarray]:
        """Raw requests ({feature: raw value}) -> the named input arrays of ``artifact``."""
        specs = self.manifest["artifacts"][artifact]["inputs"]
        out: dict[str, np.ndarray] = {}
        for spec in specs:
            name = spec["name"]
            if spec["dtype"] == "float32":
                cols = spec.get("columns", [])
                x = np.zeros((len(requests), len(cols)), dtype=np.float32)
                for j, col in enumerate(cols):
                    x[:, j] = self.dense(col, _column(requests, col))
                out[name] = x
            elif self.features[name]["kind"] in ("multi_hot", "sequence"):
                out[name] = self.id_lists(name, _column(requests, name))
            else:
                out[name] = self.ids(name, _column(requests, name))
        return out


def _column(requests: list[dict[str, Any]], name: str) -> list[Any]:
    values = []
    for i, r in enumerate(requests):
        if r.get(name) is None:
            raise ValueError(f"request {i} has no value for feature {name!r}")
        values.append(r[name])
    return values


def check_test_vectors(bundle: str | Path) -> int:
    """Run the bundle's raw test requests through this file; 0 when every tensor matches."""
    bundle = Path(bundle)
    pre = Preprocessor.from_bundle(bundle)
    vectors = json.loads((bundle / "test_vectors.json").read_text())
    bad = 0
    for artifact, case in vectors["artifacts"].items():
        got = pre.inputs(artifact, vectors["requests"])
        for name, want in case["inputs"].items():
            want_arr = np.array(want, dtype=got[name].dtype)
            if want_arr.shape != got[name].shape or not np.array_equal(got[name], want_arr):
                print(f"{artifact}/{name}: differs from the test vectors", file=sys.stderr)
                bad += 1
    print("ok" if bad == 0 else f"{bad} mismatches")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(check_test_vectors(sys.argv[1] if len(sys.argv) > 1 else "."))
