"""The export bundle loads without the training stack and matches the eager models."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from ranking.data.datamodule import RecDataModule
from ranking.schema import Schema, Side
from ranking.serving.bundle import FORMAT_VERSION
from ranking.serving.convert import flat_inputs

BLOCKED = [
    "torchrec",
    "fbgemm_gpu",
    "lightning",
    "pytorch_lightning",
    "hydra",
    "mlflow",
    "omegaconf",
]

# Runs in a fresh interpreter where the training stack cannot be imported.
BLOCKER = textwrap.dedent(
    f"""
    import importlib.abc, sys
    BLOCKED = {BLOCKED!r}
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"blocked in this test: {{name}}")
            return None
    sys.meta_path.insert(0, Block())
    for name in BLOCKED:
        try:
            __import__(name)
        except ImportError:
            pass
        else:
            raise SystemExit(f"{{name}} is importable: the block does not work")
    """
)

SCORE = textwrap.dedent(
    """
    import torch
    bundle, cases, out = sys.argv[1], sys.argv[2], sys.argv[3]
    cases = torch.load(cases)
    models = {name: torch.jit.load(f"{bundle}/{name}.pt") for name in ("user_tower", "item_tower", "ranker")}
    results = {key: models[key.split("@")[0]](inputs) for key, inputs in cases.items()}
    torch.save(results, out)
    leaked = [m for m in sys.modules if m.split(".")[0] in BLOCKED]
    assert not leaked, leaked
    """
)


@pytest.mark.parametrize("size", [1, 7, 512])
def test_bundle_matches_eager_models_without_training_stack(
    bundle, tiny_trained, tiny_dataset, tmp_path, size
):
    _, retrieval, ranking, _ = tiny_trained
    dm = RecDataModule(tiny_dataset, batch_size=size, eval_batch_size=size, validate=False)
    dm.setup()
    batch = next(iter(dm.test_dataloader()))
    assert len(batch) == size
    schema = dm.schema
    with torch.no_grad():
        want = {
            "user_tower": retrieval.model.encode_users(batch),
            "item_tower": retrieval.model.encode_items(batch),
            "ranker": torch.sigmoid(ranking.model(batch)),
        }
    cases = {
        "user_tower": flat_inputs(schema, batch, (Side.USER,)),
        "item_tower": flat_inputs(schema, batch, (Side.ITEM,)),
        "ranker": flat_inputs(schema, batch, (Side.USER, Side.ITEM, Side.CONTEXT)),
    }
    torch.save(cases, tmp_path / "cases.pt")
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            BLOCKER + SCORE,
            str(bundle),
            str(tmp_path / "cases.pt"),
            str(tmp_path / "out.pt"),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = torch.load(tmp_path / "out.pt")
    for key in want:
        assert got[key].shape == want[key].shape
        diff = (got[key] - want[key]).abs().max().item()
        assert diff < 1e-5, f"{key} at batch {size}: max abs diff {diff}"


def test_manifest_describes_every_file(bundle):
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["format_version"] == FORMAT_VERSION
    files = {p.name for p in bundle.iterdir() if p.name != "manifest.json"}
    assert set(manifest["files"]) == files
    assert {"user_tower.pt", "item_tower.pt", "ranker.pt", "items.faiss"} <= files
    ranker = manifest["artifacts"]["ranker"]
    assert ranker["tasks"] == ["click", "purchase"]  # output columns, in this order
    assert [o["task"] for o in ranker["outputs"]] == ranker["tasks"]
    assert ranker["outputs"][1]["probability"] == "P(click and purchase)"  # ESMM pCTCVR
    assert ranker["output"]["shape"] == ["B", 2]
    names = [i["name"] for i in ranker["inputs"]]
    assert "hist_items" in names and "dense_context" in names
    emb = np.load(bundle / "item_embeddings.npy")
    ids = np.load(bundle / "item_ids.npy")
    assert emb.shape[0] == ids.shape[0] == manifest["index"]["ntotal"]


def test_recommend_cli_from_bundle_alone(bundle, tmp_path):
    code = BLOCKER + textwrap.dedent(
        f"""
        from ranking.serving.recommend import main
        rc = main(["--bundle", {str(bundle)!r}, "--users", "0", "5", "17", "--top-n", "5"])
        leaked = [m for m in sys.modules if m.split(".")[0] in BLOCKED]
        assert not leaked, leaked
        sys.exit(rc)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(line) for line in proc.stdout.strip().splitlines()]
    assert [line["user_id"] for line in lines] == [0, 5, 17]
    corpus = set(np.load(bundle / "item_ids.npy").tolist())
    for line in lines:
        assert len(line["items"]) == 5 and len(set(line["items"])) == 5
        assert set(line["items"]) <= corpus
        assert line["scores"] == sorted(line["scores"], reverse=True)


def test_recommend_unknown_user_is_a_clear_error(bundle, capsys):
    from ranking.serving.recommend import main

    assert main(["--bundle", str(bundle), "--users", "999999"]) == 2
    assert "user id 999999 is not in the bundle" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_recommend_at_a_time_serves_only_the_items_available_then(bundle, kind, capsys):
    from ranking.serving.index import IndexConfig, build_index
    from ranking.serving.recommend import Recommender, main

    rec = Recommender(bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["index"]["availability"]["file"] == "item_availability.npz"
    start, end = rec.windows
    emb = np.load(bundle / "item_embeddings.npy")
    if kind != "flat":
        # one IVF list of eight probed: a filtered search finds fewer than k, and exact
        # search over the available items completes the list
        rec.index = build_index(emb, IndexConfig(type=kind, nlist=8, nprobe=1))[0]
    at = int(start[start > np.iinfo(np.int64).min].max())  # the last release: many streams ended
    available = (start <= at) & (at < end)
    assert 0.2 < available.mean() < 0.95
    users = rec.user_sorted[:20].tolist()
    rows = torch.from_numpy(rec.user_rows(users))
    with torch.no_grad():
        query = rec.user_tower({k: v[rows] for k, v in rec.users.items()}).numpy()
    k = rec.retrieve_k
    unfiltered = rec._search(query, k, None)
    assert not available[unfiltered].all()  # the filter has something to remove
    assert (unfiltered >= 0).all()
    if kind == "ivf":
        raw = rec.index.search(query, k)[1]
        assert (raw < 0).any()  # the index alone comes up short: the completion is used
    got = rec._search(query, k, rec.available(at))
    assert (got >= 0).all() and available[got].all()
    assert all(len(set(r)) == k for r in got.tolist())  # no candidate twice
    np.testing.assert_array_equal(rec.available(at), available)
    if kind == "flat":  # exact: the top k of the available items, by brute force
        scores = np.where(available[None, :], query @ emb.T, -np.inf)
        want = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        np.testing.assert_array_equal(np.sort(got, axis=1), np.sort(want, axis=1))
    servable = set(rec.item_ids[available].tolist())
    for line in rec.recommend(users, 5, at=at):
        assert len(line["items"]) == 5 and set(line["items"]) <= servable
    assert main(["--bundle", str(bundle), "--users", *map(str, users[:3]), "--at", str(at)]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
    assert len(lines) == 3 and all(set(x["items"]) <= servable for x in lines)


def test_recommend_at_on_a_bundle_without_windows_warns(bundle, capsys, monkeypatch):
    from ranking.serving import recommend

    load = recommend.Recommender.__init__

    def without_windows(self, root):
        load(self, root)
        self.windows = None

    monkeypatch.setattr(recommend.Recommender, "__init__", without_windows)
    args = ["--bundle", str(bundle), "--users", "0", "5"]
    assert recommend.main(args) == 0
    plain = capsys.readouterr()
    assert recommend.main([*args, "--at", "0"]) == 0  # t = 0: before every release
    at = capsys.readouterr()
    assert "has no availability windows; --at is ignored" in at.err and not plain.err
    assert at.out == plain.out and len(at.out.splitlines()) == 2


def test_recommend_with_fewer_available_items_than_asked(bundle):
    from ranking.serving.recommend import Recommender

    rec = Recommender(bundle)
    n = len(rec.item_ids)
    start = np.full(n, 100, dtype=np.int64)
    end = np.full(n, 200, dtype=np.int64)
    open_rows = np.array([3, 17, 40])
    start[open_rows], end[open_rows] = 0, 1_000  # only three rows servable at t = 50
    rec.windows = (start, end)
    users = rec.user_sorted[:4].tolist()
    for line in rec.recommend(users, top_n=5, at=50):
        assert sorted(line["items"]) == sorted(rec.item_ids[open_rows].tolist())
        assert len(line["scores"]) == 3 and np.isfinite(line["scores"]).all()
    assert all(line["items"] == [] for line in rec.recommend(users, top_n=5, at=5_000))
    assert len(rec.recommend(users, top_n=5, at=150)[0]["items"]) == 5


def _raw_histories(dataset) -> dict[int, set[int]]:
    """user id -> the raw item ids of their ``hist_items`` in users.parquet (an
    independent reading of what the bundle's snapshot encodes)."""
    import pyarrow.parquet as pq

    t = pq.read_table(dataset / "users.parquet", columns=["user_id", "hist_items"])
    return {
        int(u): set(h)
        for u, h in zip(t["user_id"].to_pylist(), t["hist_items"].to_pylist(), strict=True)
    }


def test_recommend_exclude_seen_drops_the_users_history(bundle, tiny_dataset, capsys):
    """``--exclude-seen``: no recommended item is in the user's history; the ranker
    still sees the top ``retrieve_k`` unseen items by inner product (brute force)."""
    from ranking.serving.recommend import Recommender, main

    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["serving"]["seen"]["user_inputs"] == ["hist_items"]  # not hist_cats
    rec = Recommender(bundle)
    hist = _raw_histories(tiny_dataset)
    users = [u for u in rec.user_sorted.tolist() if len(hist[u]) >= 3][:12]
    empty = [u for u in rec.user_sorted.tolist() if not hist[u]][:2]
    assert len(users) == 12 and len(empty) == 2
    plain = rec.recommend(users, top_n=10)
    assert any(set(line["items"]) & hist[line["user_id"]] for line in plain)  # something to drop
    got = rec.recommend(users, top_n=10, exclude_seen=True)
    for line in got:
        assert len(line["items"]) == 10 and not set(line["items"]) & hist[line["user_id"]]
    # the candidates: the exact top k of the unseen items
    emb = np.load(bundle / "item_embeddings.npy")
    rows = torch.from_numpy(rec.user_rows(users))
    inputs = {k: v[rows] for k, v in rec.users.items()}
    with torch.no_grad():
        query = rec.user_tower(inputs).numpy()
    seen = rec.seen(inputs)
    for u, s in zip(users, seen, strict=True):
        assert set(rec.item_ids[s].tolist()) == hist[u] & set(rec.item_ids.tolist())
    k = rec.retrieve_k
    cand = rec._candidates(query, k, None, seen)
    scores = query @ emb.T
    for u in range(len(users)):
        scores[u, seen[u]] = -np.inf
    want = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    np.testing.assert_array_equal(np.sort(cand, axis=1), np.sort(want, axis=1))
    # a user without history gets the same list either way
    assert rec.recommend(empty, 10, exclude_seen=True) == rec.recommend(empty, 10)
    assert main(["--bundle", str(bundle), "--users", str(users[0]), "--exclude-seen"]) == 0
    line = json.loads(capsys.readouterr().out)
    assert line == got[0]


def test_recommend_exclude_seen_on_a_bundle_without_the_entry(bundle, capsys, monkeypatch):
    from ranking.serving import recommend

    load = recommend.Recommender.__init__

    def older(self, root):
        load(self, root)
        self.seen_spec = None

    monkeypatch.setattr(recommend.Recommender, "__init__", older)
    assert recommend.main(["--bundle", str(bundle), "--users", "0", "--exclude-seen"]) == 2
    assert "no serving.seen entry" in capsys.readouterr().err


def test_retrieval_only_bundle_serves_the_exact_top_n(tiny_trained, tiny_dataset, tmp_path):
    """A run without the ranking stage (a log of positives only) exports the towers,
    the index and the snapshots; ``ranking-recommend`` serves the top N by inner
    product, the same list as an exact search over the exported embeddings."""
    from ranking.data.stats import DenseStats, Moments, compute_dense_stats
    from ranking.pipeline import export_run
    from ranking.serving.bundle import Bundle
    from ranking.serving.recommend import Recommender

    cfg, retrieval, _, _ = tiny_trained
    # the statistics a (here: pretend) warm-started run trained with go into the contract
    own = compute_dense_stats(Schema.load(tiny_dataset))
    stats = DenseStats(
        {k: Moments(m.transform, m.mean + 1.0, m.std * 2, m.count) for k, m in own.moments.items()}
    )
    out = export_run(cfg, tiny_dataset, retrieval, None, tmp_path / "bundle", {}, None, stats=stats)
    manifest = json.loads((out / "manifest.json").read_text())
    contract = manifest["preprocessing"]["features"]
    for name, m in stats.moments.items():
        if "standardize" in m.transform:
            assert (contract[name]["mean"], contract[name]["std"]) == (m.mean, m.std), name
    assert sorted(manifest["artifacts"]) == ["item_tower", "user_tower"]
    assert not (out / "ranker.pt").exists()
    assert manifest["serving"]["order"] == "retrieval_score"
    assert manifest["serving"]["rank_by"] is None
    checked = Bundle(out).check_test_vectors("pt2")
    assert sorted(checked) == ["item_tower", "retrieval", "user_tower"]

    rec = Recommender(out)
    users = [0, 5, 17]
    got = rec.recommend(users, top_n=5)
    emb = np.load(out / "item_embeddings.npy")
    ids = np.load(out / "item_ids.npy")
    tower = torch.jit.load(str(out / "user_tower.pt"))
    with np.load(out / "user_snapshot.npz") as z:
        snap = {k: torch.from_numpy(z[k]) for k in z.files}
    snap_ids = snap.pop("user_ids").numpy()
    for line, user in zip(got, users, strict=True):
        row = int(np.flatnonzero(snap_ids == user)[0])
        with torch.no_grad():
            q = tower({k: v[row : row + 1] for k, v in snap.items()}).numpy()[0]
        scores = emb @ q
        top = np.argsort(-scores, kind="stable")[:5]
        assert line["items"] == ids[top].tolist()
        np.testing.assert_allclose(line["scores"], scores[top], atol=1e-5)
    # without the seen items: the exact top 5 of the rest
    hist = _raw_histories(tiny_dataset)
    busy = [u for u in snap_ids.tolist() if len(hist[u]) >= 5][:6]
    dropped = 0
    for line in rec.recommend(busy, top_n=5, exclude_seen=True):
        row = int(np.flatnonzero(snap_ids == line["user_id"])[0])
        with torch.no_grad():
            q = tower({k: v[row : row + 1] for k, v in snap.items()}).numpy()[0]
        scores = np.where(np.isin(ids, list(hist[line["user_id"]])), -np.inf, emb @ q)
        top = np.argsort(-scores, kind="stable")[:5]
        assert line["items"] == ids[top].tolist()
        dropped += len(set(ids[np.argsort(-(emb @ q), kind="stable")[:5]]) & hist[line["user_id"]])
    assert dropped > 0  # the exclusion changed some list
    # with a request time: only the items available then
    windows = np.load(out / "item_availability.npz")
    at = int(np.median(windows["start"][windows["start"] > windows["start"].min()]))
    servable = set(ids[(windows["start"] <= at) & (at < windows["end"])].tolist())
    for line in rec.recommend(users, top_n=5, at=at):
        assert len(line["items"]) == 5 and set(line["items"]) <= servable
