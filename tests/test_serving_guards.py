"""Safety at the serving boundary: extreme ids never read outside a table, bad
inputs are refused by name from inside the artifacts, a changed file is refused."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from ranking.serving.bundle import Bundle, BundleError
from ranking.serving.recommend import main as recommend_main

FORMATS = ["torchscript", "pt2"]
EXTREMES = [-(2**63), -(2**62), -7, -2, -1, 2**31, 2**62, 2**63 - 1]


@pytest.fixture(scope="module")
def loaded(bundle) -> dict:
    b = Bundle(bundle)
    vectors = b.test_vectors()["artifacts"]
    arts = {(fmt, name): b.load(name, fmt) for fmt in FORMATS for name in b.manifest["artifacts"]}
    return {"bundle": b, "vectors": vectors, "artifacts": arts}


def _id_specs(bundle: Bundle, name: str) -> list[dict]:
    return [s for s in bundle.manifest["artifacts"][name]["inputs"] if "ids" in s]


def _fill(x: torch.Tensor, values: list[int]) -> torch.Tensor:
    """x's shape filled with ``values`` cycled (int64)."""
    v = torch.tensor(values, dtype=torch.int64)
    return v[torch.arange(x.numel()) % len(v)].reshape(x.shape)


@pytest.mark.parametrize("fmt", FORMATS)
def test_extreme_ids_map_into_every_table(loaded, fmt):
    b = loaded["bundle"]
    with torch.no_grad():
        for name, case in loaded["vectors"].items():
            fn = loaded["artifacts"][(fmt, name)]
            base = dict(case["inputs"])
            for spec in _id_specs(b, name):
                key, ids = spec["name"], spec["ids"]
                wild = _fill(base[key], EXTREMES + [int(ids.get("buckets") or ids["vocab_size"])])
                out = fn({**base, key: wild})
                assert torch.isfinite(out).all(), (fmt, name, key)
                is_list = "max_len" in spec
                if ids["map"] == "hash":  # reduced modulo the bucket count (lists: < 0 is padding)
                    reduced = wild.remainder(int(ids["buckets"]))
                    same = torch.where(wild < 0, -1, reduced) if is_list else reduced
                elif is_list:  # out of vocabulary or negative: padding
                    same = torch.full_like(wild, -1)
                else:  # every out-of-vocabulary id reads the same (zero) row
                    same = torch.full_like(wild, int(ids["vocab_size"]))
                want = fn({**base, key: same})
                assert torch.equal(out, want), (fmt, name, key)
            # Every id input extreme at once.
            everything = {
                **base,
                **{s["name"]: _fill(base[s["name"]], EXTREMES) for s in _id_specs(b, name)},
            }
            assert torch.isfinite(fn(everything)).all(), (fmt, name)


def _bad_cases(specs: list[dict], base: dict[str, torch.Tensor]):
    """(what, input name the message must carry, inputs)."""
    first_id = next(s["name"] for s in specs if s["dtype"] == "int64")
    dense = next(s["name"] for s in specs if s["dtype"] == "float32")
    lst = next((s for s in specs if "max_len" in s), None)
    yield "dtype int32", first_id, {**base, first_id: base[first_id].int()}
    yield "dtype float64", dense, {**base, dense: base[dense].double()}
    yield "float ids", first_id, {**base, first_id: base[first_id].float()}
    yield "missing", first_id, {k: v for k, v in base.items() if k != first_id}
    yield "unexpected", "brnad", {**base, "brnad": base[first_id]}
    yield "rank", first_id, {**base, first_id: base[first_id].reshape(-1, 1)}
    yield "batch", first_id, {**base, first_id: base[first_id][:3]}
    width = base[dense].shape[1]
    yield "dense width", dense, {**base, dense: torch.zeros(len(base[dense]), width + 1)}
    if lst is not None:
        name, max_len = lst["name"], int(lst["max_len"])
        long = torch.full((len(base[name]), max_len + 1), 1, dtype=torch.int64)
        yield "list too long", name, {**base, name: long}
        yield "list empty", name, {**base, name: base[name][:, :0]}


@pytest.mark.parametrize("fmt", FORMATS)
def test_bad_inputs_are_refused_by_name(loaded, fmt):
    b = loaded["bundle"]
    for name, case in loaded["vectors"].items():
        fn = loaded["artifacts"][(fmt, name)]
        specs = b.manifest["artifacts"][name]["inputs"]
        for what, culprit, inputs in _bad_cases(specs, dict(case["inputs"])):
            with pytest.raises(Exception) as err:
                fn(inputs)
            assert f"'{culprit}'" in str(err.value), (fmt, name, what, str(err.value)[-300:])


def test_exported_program_alone_refuses_bad_inputs(bundle, loaded):
    """Without our loader's checks, the .pt2 program itself still refuses: its input
    tree (names), an in-graph dtype assert and its shape guards."""
    b = loaded["bundle"]
    for name, case in loaded["vectors"].items():
        program = torch.export.load(str(b.artifact_file(name, "pt2"))).module()
        specs = b.manifest["artifacts"][name]["inputs"]
        for what, _, inputs in _bad_cases(specs, dict(case["inputs"])):
            if what in ("rank", "list empty"):
                # Not guards of the program (a [B, 1] id fails later, in a kernel; L = 0
                # runs as all padding): Bundle.load's host-side checks refuse both by name.
                continue
            with pytest.raises(Exception):  # noqa: B017 - any refusal, not a silent output
                program(inputs)


def _copy(bundle, tmp_path):
    out = tmp_path / "bundle"
    shutil.copytree(bundle, out)
    return out


@pytest.mark.parametrize(
    "victim", ["ranker.pt", "user_tower.pt2", "items.faiss", "test_vectors.pt"]
)
def test_changed_file_is_refused_by_name(bundle, tmp_path, capsys, victim):
    copy = _copy(bundle, tmp_path)
    data = bytearray((copy / victim).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / victim).write_bytes(bytes(data))
    with pytest.raises(BundleError, match=victim.replace(".", r"\.") + ": sha256 differs"):
        Bundle(copy)
    assert recommend_main(["--bundle", str(copy), "--users", "0"]) == 2
    assert victim in capsys.readouterr().err


def test_missing_file_and_wrong_format_version_are_refused(bundle, tmp_path):
    copy = _copy(bundle, tmp_path)
    (copy / "ranker.pt2").unlink()
    with pytest.raises(BundleError, match=r"ranker\.pt2: listed in the manifest but missing"):
        Bundle(copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["format_version"] = 1
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="format version 1"):
        Bundle(copy)


@pytest.mark.parametrize("fmt", FORMATS)
def test_bundle_runs_its_own_test_vectors(loaded, fmt):
    diffs = loaded["bundle"].check_test_vectors(fmt)
    assert set(diffs) == {*loaded["bundle"].manifest["artifacts"], "retrieval"}
    assert max(diffs.values()) < 1e-5


def test_retrieval_case_is_the_brute_force_top_k(bundle):
    import numpy as np

    vectors = Bundle(bundle).test_vectors()
    case = vectors["retrieval"]
    emb = np.load(bundle / "item_embeddings.npy")
    ids = np.load(bundle / "item_ids.npy")
    queries = vectors["artifacts"]["user_tower"]["output"].numpy()
    assert case["query"] == "user_tower" and case["k"] == 10
    assert case["rows"].shape == (len(queries), 10)
    for b, q in enumerate(queries):
        scores = [float(np.dot(q.astype(np.float64), e.astype(np.float64))) for e in emb]
        best = sorted(range(len(emb)), key=lambda i: (-scores[i], i))[:10]
        assert case["rows"][b].tolist() == best
        assert case["item_ids"][b].tolist() == [int(ids[i]) for i in best]
        assert case["scores"][b].tolist() == pytest.approx([scores[i] for i in best], abs=1e-6)
    json_case = json.loads((bundle / "test_vectors.json").read_text())["retrieval"]
    assert json_case["item_ids"] == case["item_ids"].tolist()


def test_a_wrong_retrieval_case_is_refused(loaded):
    b = loaded["bundle"]
    vectors = b.test_vectors()
    case = vectors["retrieval"]
    scores = case["scores"].numpy()
    # two places whose scores are far apart: swapping their rows is a real error
    u = 0
    assert scores[u, 0] - scores[u, 9] > 1e-3
    swapped = {**case, "rows": case["rows"].clone()}
    swapped["rows"][u, [0, 9]] = swapped["rows"][u, [9, 0]]
    with pytest.raises(BundleError, match="retrieval.*corpus row"):
        b.check_retrieval({**vectors, "retrieval": swapped})
    other_ids = {**case, "item_ids": case["item_ids"] + 1}
    with pytest.raises(BundleError, match="retrieval.*raw id"):
        b.check_retrieval({**vectors, "retrieval": other_ids})
    off = {**case, "scores": case["scores"] + 1e-2}
    with pytest.raises(BundleError, match="retrieval.*score"):
        b.check_retrieval({**vectors, "retrieval": off})


def test_top_k_mismatch_lets_near_ties_swap_and_catches_the_rest():
    import numpy as np

    from ranking.serving.bundle import top_k_mismatch

    t = 1e-4
    want_rows, want = np.array([[0, 1, 2]]), np.array([[10.0, 10.0 - 1.5 * t, 5.0]])
    # each score moved by less than t, so rows 0 and 1 (1.5 t apart) may swap
    got = np.array([[10.0 - 0.6 * t, 10.0 - 0.9 * t, 5.0]])
    assert top_k_mismatch(np.array([[1, 0, 2]]), got, want_rows, want, t) is None
    # rows 3 t apart may not swap
    far = np.array([[10.0, 10.0 - 3 * t, 5.0]])
    assert "corpus row" in top_k_mismatch(np.array([[1, 0, 2]]), far, want_rows, far, t)
    # the last place is guarded by the next score: a near tie there may swap
    assert (
        top_k_mismatch(
            np.array([[0, 1, 7]]), want, want_rows, want, t, next_scores=np.array([5.0 - t])
        )
        is None
    )
    assert "corpus row 7" in top_k_mismatch(
        np.array([[0, 1, 7]]), want, want_rows, want, t, next_scores=np.array([4.0])
    )
    # a score off by more than t, and a NaN, fail
    assert "score" in top_k_mismatch(want_rows, want + 2 * t, want_rows, want, t)
    assert "score" in top_k_mismatch(want_rows, want * np.nan, want_rows, want, t)
    # raw ids are checked at the same places
    ids = np.array([[5, 6, 7]])
    assert "raw id 8" in top_k_mismatch(
        want_rows, want, want_rows, want, t, got_ids=np.array([[5, 6, 8]]), want_ids=ids
    )
