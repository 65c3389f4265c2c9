"""Eager, TorchScript and .pt2 artifacts agree (< 1e-5) at batch 1, 7, 512, with
varied list lengths and extreme ids, in a process without the training stack."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from omegaconf import OmegaConf

from ranking.data.datamodule import RecDataModule
from ranking.schema import Schema, Side
from ranking.serving.artifacts import guarded
from ranking.serving.convert import (
    flat_inputs,
    item_tower_predictor,
    ranker_predictor,
    user_tower_predictor,
)
from tests.test_bundle import BLOCKER

TOL = 1e-5

RUN = textwrap.dedent(
    """
    import torch
    from ranking.serving.bundle import Bundle
    bundle = Bundle(sys.argv[1])
    cases = torch.load(sys.argv[2])
    formats = sys.argv[4].split(",")
    results = {}
    with torch.no_grad():
        for fmt in formats:
            for name in cases:
                fn = bundle.load(name, fmt)
                for key, inputs in cases[name].items():
                    results[(fmt, name, key)] = fn(inputs)
    torch.save(results, sys.argv[3])
    leaked = [m for m in sys.modules if m.split(".")[0] in BLOCKED]
    assert not leaked, leaked
    """
)


@pytest.fixture(scope="module")
def manifest(bundle) -> dict:
    return json.loads((bundle / "manifest.json").read_text())


@pytest.fixture(scope="module")
def eager(manifest, tiny_trained, tiny_dataset) -> dict[str, torch.nn.Module]:
    """The guarded eager modules every artifact file was made from."""
    _, retrieval, ranking, _ = tiny_trained
    schema = Schema.load(tiny_dataset)
    predictors = {
        "user_tower": user_tower_predictor(schema, retrieval.model),
        "item_tower": item_tower_predictor(schema, retrieval.model),
        "ranker": ranker_predictor(schema, ranking.model),
    }
    return {n: guarded(p, manifest["artifacts"][n]["inputs"]) for n, p in predictors.items()}


def random_inputs(specs: list[dict], batch: int, seed: int) -> dict[str, torch.Tensor]:
    """Ids anywhere in int64 (in range, out of range, negative), lists of random
    lengths and random padded widths, random dense values."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for s in specs:
        if s["dtype"] == "float32":
            out[s["name"]] = torch.randn(batch, int(s["shape"][1]), generator=g)
            continue
        rows = int(s["ids"].get("buckets") or s["ids"]["vocab_size"])
        width = int(torch.randint(1, int(s.get("max_len", 1)) + 1, (1,), generator=g))
        shape = (batch, width) if len(s["shape"]) == 2 else (batch,)
        ids = torch.randint(0, rows, shape, generator=g)
        extreme = torch.tensor([-(2**63), -7, -1, rows, rows + 1, 2**62, 2**63 - 1])
        pick = torch.randint(0, len(extreme), shape, generator=g)
        wild = torch.rand(shape, generator=g) < 0.2
        ids = torch.where(wild, extreme[pick], ids)
        if len(shape) == 2:  # right-padded lists of random lengths (some empty)
            lengths = torch.randint(0, width + 1, (batch, 1), generator=g)
            ids = torch.where(torch.arange(width) < lengths, ids, torch.full_like(ids, -1))
        out[s["name"]] = ids
    return out


@pytest.fixture(scope="module")
def cases(manifest, tiny_dataset) -> dict[str, dict[str, dict[str, torch.Tensor]]]:
    """artifact -> case name -> inputs."""
    out: dict[str, dict[str, dict[str, torch.Tensor]]] = {n: {} for n in manifest["artifacts"]}
    for size in (1, 7, 512):
        dm = RecDataModule(tiny_dataset, batch_size=size, eval_batch_size=size, validate=False)
        dm.setup()
        batch = next(iter(dm.test_dataloader()))
        assert len(batch) == size
        flat = flat_inputs(dm.schema, batch, (Side.USER, Side.ITEM, Side.CONTEXT))
        for name, art in manifest["artifacts"].items():
            inputs = {s["name"]: flat[s["name"]] for s in art["inputs"]}
            out[name][f"batch{size}"] = inputs
            if size == 7:  # the same requests with lists cut to shorter padded widths
                for length in (1, 3):
                    out[name][f"batch7_L{length}"] = {
                        k: (v[:, :length] if k in _lists(art) else v) for k, v in inputs.items()
                    }
    for name, art in manifest["artifacts"].items():
        for seed, size in ((0, 1), (1, 7), (2, 512)):
            out[name][f"random{size}"] = random_inputs(art["inputs"], size, seed)
    return out


def _lists(artifact: dict) -> set[str]:
    return {s["name"] for s in artifact["inputs"] if "max_len" in s}


def run_blocked(bundle, cases, tmp_path, formats: list[str]) -> dict:
    torch.save(cases, tmp_path / "cases.pt")
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            BLOCKER + RUN,
            str(bundle),
            str(tmp_path / "cases.pt"),
            str(tmp_path / "out.pt"),
            ",".join(formats),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return torch.load(tmp_path / "out.pt")


def assert_parity(got: dict, eager, cases, formats: list[str]) -> None:
    with torch.no_grad():
        for name, by_case in cases.items():
            for key, inputs in by_case.items():
                want = eager[name](inputs)
                assert torch.isfinite(want).all(), (name, key)
                for fmt in formats:
                    out = got[(fmt, name, key)]
                    assert out.shape == want.shape, (fmt, name, key)
                    diff = (out - want).abs().max().item()
                    assert diff < TOL, f"{fmt} {name} {key}: max abs diff {diff}"


def test_every_format_matches_eager_without_training_stack(bundle, eager, cases, tmp_path):
    formats = ["torchscript", "pt2"]
    got = run_blocked(bundle, cases, tmp_path, formats)
    assert_parity(got, eager, cases, formats)


def test_guarded_eager_matches_the_training_models(manifest, eager, tiny_trained, tiny_dataset):
    """The guard and the extra out-of-vocabulary row change nothing for valid ids."""
    _, retrieval, ranking, _ = tiny_trained
    dm = RecDataModule(tiny_dataset, batch_size=64, eval_batch_size=64, validate=False)
    dm.setup()
    batch = next(iter(dm.test_dataloader()))
    flat = flat_inputs(dm.schema, batch, (Side.USER, Side.ITEM, Side.CONTEXT))
    with torch.no_grad():
        want = {
            "user_tower": retrieval.model.encode_users(batch),
            "item_tower": retrieval.model.encode_items(batch),
            "ranker": torch.sigmoid(ranking.model(batch)),
        }
        for name, module in eager.items():
            specs = manifest["artifacts"][name]["inputs"]
            got = module({s["name"]: flat[s["name"]] for s in specs})
            assert (got - want[name]).abs().max().item() < TOL, name


@pytest.mark.slow
def test_aoti_packages_match_eager(tiny_trained, tiny_dataset, eager, cases, tmp_path):
    """export.aoti=[ranker] adds an AOTInductor package for the ranker alone (each
    takes ~25 s to compile here); it agrees with eager too."""
    from ranking.pipeline import export_run
    from ranking.serving.bundle import Bundle, BundleError

    cfg, retrieval, ranking, _ = tiny_trained
    cfg = OmegaConf.merge(cfg, {"export": {"aoti": ["ranker"]}})  # a copy: the fixture's stays
    out = export_run(cfg, tiny_dataset, retrieval, ranking, tmp_path / "bundle", {}, None)
    manifest = json.loads((out / "manifest.json").read_text())
    formats = {n: sorted(a["formats"]) for n, a in manifest["artifacts"].items()}
    assert formats == {
        "user_tower": ["pt2", "torchscript"],
        "item_tower": ["pt2", "torchscript"],
        "ranker": ["aoti", "pt2", "torchscript"],
    }
    assert "aoti" in manifest["artifact_formats"]
    with pytest.raises(BundleError, match="no 'aoti' file.*export.aoti"):
        Bundle(out).load("user_tower", "aoti")
    subset = {"ranker": {k: cases["ranker"][k] for k in ("batch1", "batch512", "random7")}}
    got = run_blocked(out, subset, tmp_path, ["aoti"])
    assert_parity(got, eager, subset, ["aoti"])


def test_aoti_option_names_only_artifacts_of_the_bundle():
    from ranking.data.errors import ConfigError
    from ranking.pipeline import _aoti_option

    assert _aoti_option(True, True) is True and _aoti_option(False, True) is False
    assert _aoti_option(OmegaConf.create({"a": ["ranker"]}).a, True) == ["ranker"]
    assert _aoti_option("user_tower", False) == ["user_tower"]
    with pytest.raises(ConfigError, match=r"\['ranker'\], not artifacts .*'item_tower'\]"):
        _aoti_option(["ranker"], False)  # a retrieval-only bundle has no ranker
    with pytest.raises(ConfigError, match="export.aoti=1: use true, false or a list"):
        _aoti_option(1, True)
