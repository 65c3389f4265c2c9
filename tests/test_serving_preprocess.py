"""The numpy reference preprocessing: standalone, equal to the training path."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from ranking.data.stats import DenseStats, Moments
from ranking.hashing import hash_int, hash_strings
from ranking.serving import preprocess
from ranking.serving.preprocess import Preprocessor


def test_bundled_copy_reproduces_the_test_vectors_alone(bundle, tmp_path):
    """bundle/preprocess.py, run where neither this package nor torch can be imported."""
    code = textwrap.dedent(
        """
        import importlib.abc, runpy, sys
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("ranking", "torch", "pyarrow", "faiss"):
                    raise ImportError(f"blocked in this test: {name}")
        sys.meta_path.insert(0, Block())
        sys.argv = [sys.argv[1], sys.argv[2]]
        runpy.run_path(sys.argv[0], run_name="__main__")
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(bundle / "preprocess.py"), str(bundle)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert proc.stdout.strip() == "ok"
    vectors = json.loads((bundle / "test_vectors.json").read_text())
    assert len(vectors["requests"]) >= 5
    # The requests hold raw values: hashed features as raw codes, dense values unscaled.
    manifest = json.loads((bundle / "manifest.json").read_text())
    hashed = [
        n
        for n, f in manifest["preprocessing"]["features"].items()
        if f.get("ids", {}).get("map") == "hash"
    ]
    assert any(
        r[n] >= f_buckets(manifest, n) or r[n] < 0 for r in vectors["requests"] for n in hashed
    )


def f_buckets(manifest: dict, name: str) -> int:
    return manifest["preprocessing"]["features"][name]["ids"]["buckets"]


def test_vendored_hash_is_ranking_hashing():
    rng = np.random.default_rng(0)
    ints = np.concatenate(
        [rng.integers(-(2**63), 2**63 - 1, 1000, dtype=np.int64), [-(2**63), -1, 0, 2**63 - 1]]
    )
    for buckets in (1, 7, 4096, 2**31 - 1):
        assert np.array_equal(
            preprocess.hash_rows([int(v) for v in ints], buckets, 0x5EED), hash_int(ints, buckets)
        )
    words = ["", "a", "brand-42", "品牌", "x" * 300]
    assert np.array_equal(preprocess.hash_rows(words, 1000, 0x5EED), hash_strings(words, 1000))


CONTRACT = {
    "preprocessing": {
        "features": {
            "cat": {"kind": "categorical", "ids": {"map": "vocab", "vocab_size": 5, "oov_row": 5}},
            "tag": {"kind": "categorical", "ids": {"map": "hash", "buckets": 10, "seed": 0x5EED}},
            "seq": {
                "kind": "sequence",
                "ids": {"map": "vocab", "vocab_size": 5, "oov_row": 5},
                "max_len": 3,
                "longer": "keep_last",
                "padding": -1,
            },
            "strict": {
                "kind": "multi_hot",
                "ids": {"map": "hash", "buckets": 10, "seed": 0x5EED},
                "max_len": 2,
                "longer": "error",
                "padding": -1,
            },
            "price": {"kind": "dense", "transform": "log1p_standardize", "mean": 1.0, "scale": 2.0},
            "raw": {"kind": "dense", "transform": "none"},
        }
    },
    "artifacts": {
        "m": {
            "inputs": [
                {"name": "cat", "dtype": "int64", "shape": ["B"]},
                {"name": "tag", "dtype": "int64", "shape": ["B"]},
                {"name": "seq", "dtype": "int64", "shape": ["B", "L"]},
                {
                    "name": "dense_item",
                    "dtype": "float32",
                    "shape": ["B", 2],
                    "columns": ["raw", "price"],
                },
            ]
        }
    },
}


def test_hand_computed_contract():
    pre = Preprocessor(CONTRACT)
    requests = [
        {"cat": 4, "tag": 123, "seq": [1, 7, 2, 3, 4], "raw": 2.5, "price": 0.0},
        {"cat": -3, "tag": "red", "seq": [], "raw": -1.0, "price": np.e - 1},
        {"cat": 2**62, "tag": -(2**63), "seq": [9, 1], "raw": 0.0, "price": 1.0},
    ]
    got = pre.inputs("m", requests)
    assert got["cat"].tolist() == [4, 5, 5]  # out of vocabulary -> oov_row
    tags = [
        hash_int(np.array([123]), 10)[0],
        hash_strings(["red"], 10)[0],
        hash_int(np.array([-(2**63)]), 10)[0],
    ]
    assert got["tag"].tolist() == tags
    # Out-of-vocabulary ids dropped, the last max_len kept, right-padded with -1.
    assert got["seq"].tolist() == [[2, 3, 4], [-1, -1, -1], [1, -1, -1]]
    assert got["seq"].dtype == np.int64 and got["dense_item"].dtype == np.float32
    want_price = (np.log1p(np.array([0.0, np.e - 1, 1.0])) - 1.0) / 2.0
    np.testing.assert_array_equal(got["dense_item"][:, 0], np.float32([2.5, -1.0, 0.0]))
    np.testing.assert_array_equal(got["dense_item"][:, 1], want_price.astype(np.float32))


def test_contract_errors_name_feature_and_request():
    pre = Preprocessor(CONTRACT)
    with pytest.raises(
        ValueError, match=r"feature 'strict' of request 0: 3 ids, more than max_len 2"
    ):
        pre.id_lists("strict", [[1, 2, 3]])
    with pytest.raises(ValueError, match=r"request 1 has no value for feature 'cat'"):
        pre.inputs("m", [{"cat": 1, "tag": 1, "seq": [], "raw": 0, "price": 0}, {"tag": 1}])
    with pytest.raises(ValueError, match=r"feature 'price' of request 0: value -2.0 is not finite"):
        pre.dense("price", [-2.0])


def test_dense_transform_is_dense_stats_apply():
    stats = DenseStats({"price": Moments("log1p_standardize", 3.1, 1.7, 10)})
    contract = {
        "preprocessing": {
            "features": {
                "price": {
                    "kind": "dense",
                    "transform": "log1p_standardize",
                    "mean": 3.1,
                    "scale": 1.7,
                }
            }
        },
        "artifacts": {},
    }
    x = np.random.default_rng(1).gamma(2.0, 50.0, 1000).astype(np.float32)
    got = Preprocessor(contract).dense("price", [float(v) for v in x])
    np.testing.assert_array_equal(got, stats.apply("price", x))


class _Sum(torch.nn.Module):
    """A stand-in model: any dict of inputs -> float32 [B, 1]."""

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        total = torch.zeros(0)
        for x in inputs.values():
            v = x.reshape(x.shape[0], -1).float().sum(dim=1, keepdim=True)
            total = v if total.numel() == 0 else total + v
        return total


@pytest.mark.parametrize("test_csv", [False, True])
def test_reference_equals_training_converter_on_a_generic_dataset(tmp_path, test_csv):
    """String-hashed categoricals and multi-hots, truncated sequences, integer dense
    columns, CSV splits: the test-vector builder asserts tensor equality itself."""
    from ranking.data.stats import compute_dense_stats
    from ranking.schema import Schema, Side
    from ranking.serving.contract import describe_inputs, preprocessing_contract
    from ranking.serving.export import input_specs
    from ranking.serving.test_vectors import build
    from tests.test_pipeline import make_dataset

    make_dataset(tmp_path, test_csv=test_csv)
    schema = Schema.load(tmp_path)
    stats = compute_dense_stats(schema).to_dict()
    sides = (Side.USER, Side.ITEM, Side.CONTEXT)
    manifest = {
        "artifacts": {
            "all": {"file": "all.pt", "inputs": describe_inputs(schema, input_specs(schema, sides))}
        },
        "preprocessing": preprocessing_contract(schema, stats),
    }
    vectors = build(schema, stats, manifest, {"all": _Sum()})
    requests = vectors["requests"]
    assert any(r["hist_items"] == [] for r in requests)  # empty lists
    assert any(len(r["hist_items"]) > 3 for r in requests)  # truncated to the last 3
    assert any(r["city"] == "" for r in requests)  # extreme strings of a hashed feature
    inputs = vectors["artifacts"]["all"]["inputs"]
    assert inputs["hist_items"].shape[1] == 3 and inputs["kw"].shape[1] == 3
