"""The console commands end to end, as a user runs them (subprocesses, tiny world)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.conftest import TINY_WORLD

BIN = Path(sys.executable).parent
WORLD = [f"world.{k}={v}" for k, v in TINY_WORLD.items()]
FAST = [
    "retrieval.epochs=1",
    "ranking.epochs=1",
    "data.batch_size=256",
    "data.eval_batch_size=512",
    "trainer.enable_progress_bar=false",
]


def cli(name: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / name), *args], cwd=cwd, capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """`ranking-data` then `ranking-train` in a fresh working directory."""
    work = tmp_path_factory.mktemp("work")
    made = cli("ranking-data", "out=ds", *WORLD, cwd=work)
    assert made.returncode == 0, made.stderr[-3000:]
    assert (work / "ds" / "schema.yaml").exists()
    trained = cli("ranking-train", "data.path=ds", *FAST, "mlflow.register=tiny", cwd=work)
    assert trained.returncode == 0, trained.stderr[-3000:]
    return work, trained.stdout + trained.stderr


@pytest.mark.slow
def test_train_prints_where_everything_went(trained_run):
    work, out = trained_run
    run = (work / "runs" / "latest").resolve()
    assert f"metrics: {run / 'metrics.json'}" in out
    assert f"bundle:  {run / 'bundle'}" in out
    assert "mlflow:  run " in out and "sqlite:///mlflow.db" in out
    assert "model:   models:/tiny/1 (models:/m-" in out
    metrics = json.loads((run / "metrics.json").read_text())
    for key in ("test/recall@100", "test/ndcg@10", "test/hit@50", "test/auc/click"):
        assert 0.0 <= metrics[key] <= 1.0, key
    bundle = json.loads((run / "bundle" / "manifest.json").read_text())
    assert bundle["metrics"]["test/auc/click"] == metrics["test/auc/click"]
    # the index's measured recall and latency: in the manifest, the metrics, the log
    index = bundle["index"]
    assert metrics["index/recall_vs_exact@100"] == index["recall_vs_exact"] == 1.0  # flat
    assert metrics["index/latency_p99_ms"] == index["latency_ms"]["p99"] > 0
    assert f"recall@100 vs exact search {index['recall_vs_exact']:.4f}" in out
    assert (run / "bundle" / "metrics.json").exists() or (run / "metrics.json").exists()


@pytest.mark.slow
def test_mlflow_parent_and_child_runs(trained_run):
    import mlflow

    work, _ = trained_run
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{work / 'mlflow.db'}")
    exp = client.get_experiment_by_name("ranking")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1
    parent = parents[0]
    children = {
        r.info.run_name: r
        for r in runs
        if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id
    }
    assert set(children) == {"retrieval", "ranking"}
    assert parent.data.params["retrieval.model.out_dim"] == "64"
    assert parent.data.params["data.path"] == "ds"
    assert len(parent.data.tags["git_commit"]) in (40, len("unknown"))
    assert parent.data.tags["dataset"] == "synthetic_interest_ecommerce"
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"bundle", "config.yaml", "metrics.json"} <= artifacts
    assert "test/recall_at_100" in parent.data.metrics
    assert parent.data.metrics["index/recall_vs_exact_at_100"] == 1.0
    assert "test/auc/click" in children["ranking"].data.metrics
    history = client.get_metric_history(children["retrieval"].info.run_id, "valid/recall_at_100")
    assert len(history) == 1  # one epoch -> one validation point


@pytest.mark.slow
def test_eval_reproduces_the_run_metrics(trained_run):
    work, _ = trained_run
    res = cli("ranking-eval", "run=runs/latest", cwd=work)
    assert res.returncode == 0, res.stderr[-3000:]
    run = (work / "runs" / "latest").resolve()
    first = json.loads((run / "metrics.json").read_text())
    again = json.loads((run / "eval_metrics.json").read_text())
    for key in ("test/recall@100", "test/auc/click"):
        assert again[key] == pytest.approx(first[key], abs=1e-6), key
    # another protocol on the same checkpoints: the retrieval stage alone, the
    # users' train clicks excluded (re-clicks are positives of the synthetic log)
    res = cli(
        "ranking-eval",
        "run=runs/latest",
        "stages=[retrieval]",
        "+retrieval.eval.exclude_train=true",
        cwd=work,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    other = json.loads((run / "eval_metrics.json").read_text())
    assert "test/auc/click" not in other
    assert other["test/recall@100"] != pytest.approx(first["test/recall@100"], abs=1e-4)
    # both evaluations side by side
    history = [json.loads(x) for x in (run / "eval_history.jsonl").read_text().splitlines()]
    assert [h["stages"] for h in history] == [["retrieval", "ranking"], ["retrieval"]]
    assert history[0]["overrides"] == {}
    assert history[1]["overrides"] == {"retrieval": {"eval": {"exclude_train": True}}}
    assert history[0]["metrics"] == again and history[1]["metrics"] == other


@pytest.mark.slow
def test_export_then_recommend(trained_run):
    work, _ = trained_run
    res = cli("ranking-export", "run=runs/latest", "out=exported", cwd=work)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (work / "exported" / "manifest.json").exists()
    rec = cli(
        "ranking-recommend", "--bundle", "exported", "--users", "3", "4", "--top-n", "7", cwd=work
    )
    assert rec.returncode == 0, rec.stderr[-3000:]
    lines = [json.loads(x) for x in rec.stdout.splitlines()]
    assert [x["user_id"] for x in lines] == [3, 4]
    assert all(len(x["items"]) == 7 for x in lines)


# mlflow is allowed, the rest of the training stack is not; `ranking` must come
# from the model's own code copy
PYFUNC = textwrap.dedent(
    """
    import importlib.abc, json, sys
    BLOCKED = ["torchrec", "fbgemm_gpu", "lightning", "pytorch_lightning", "hydra", "omegaconf"]
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"blocked in this test: {name}")
    sys.meta_path.insert(0, Block())
    import mlflow, pandas as pd
    mlflow.set_tracking_uri(sys.argv[1])
    model = mlflow.pyfunc.load_model("models:/tiny/1")
    users = pd.DataFrame({"user_id": list(range(40))})
    rows = {
        str(seen): model.predict(users, params={"top_n": 6, "exclude_seen": seen}).to_dict("records")
        for seen in (False, True)
    }
    import ranking
    print(json.dumps({"rows": rows, "code": ranking.__file__}))
    """
)


@pytest.mark.slow
def test_bundle_registered_and_served_as_pyfunc(trained_run):
    import mlflow

    work, _ = trained_run
    uri = f"sqlite:///{work / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    (version,) = client.search_model_versions("name='tiny'")
    (parent,) = [
        r
        for r in client.search_runs([client.get_experiment_by_name("ranking").experiment_id])
        if "mlflow.parentRunId" not in r.data.tags
    ]
    assert int(version.version) == 1 and version.run_id == parent.info.run_id

    res = subprocess.run(
        [sys.executable, "-c", PYFUNC, uri], capture_output=True, text=True, cwd=work, timeout=600
    )
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert "/artifacts/code/ranking/" in got["code"]  # not the installed package
    users = [str(u) for u in range(40)]
    for seen in (False, True):
        rec = cli(
            "ranking-recommend", "--bundle", "runs/latest/bundle", "--users", *users,
            "--top-n", "6", *(["--exclude-seen"] if seen else []), cwd=work,
        )  # fmt: skip
        assert rec.returncode == 0, rec.stderr[-3000:]
        assert got["rows"][str(seen)] == [json.loads(x) for x in rec.stdout.splitlines()]
    # the param reaches the recommender: some users' lists lose a seen item
    assert got["rows"]["True"] != got["rows"]["False"]


def test_register_needs_the_export_stage_and_tracking(tiny_dataset):
    from ranking.data.errors import ConfigError
    from ranking.pipeline import check_stages
    from ranking.schema import Schema
    from tests.conftest import compose_train

    schema = Schema.load(tiny_dataset)
    for bad in (["stages=[retrieval,ranking]"], ["mlflow.enabled=false"]):
        cfg = compose_train([f"data.path={tiny_dataset}", "mlflow.register=m", *bad])
        with pytest.raises(ConfigError, match="mlflow.register='m' registers the exported bundle"):
            check_stages(cfg, schema)
    check_stages(compose_train([f"data.path={tiny_dataset}", "mlflow.register=m"]), schema)


@pytest.mark.slow
def test_next_day_warm_starts_from_the_run_before(trained_run):
    """`ranking-data source=window` cuts the last train day out of the dataset;
    `ranking-train warm_start.run=...` trains it from the earlier run's ranker."""
    work, _ = trained_run
    earlier = (work / "runs" / "latest").resolve()
    times = pq.read_table(work / "ds" / "train", columns=["ts"]).column(0).to_numpy()
    last_day = int(times.max()) // 86_400 * 86_400
    made = cli(
        "ranking-data", "source=window", "raw=ds", f"window.from={last_day}", "out=day", cwd=work
    )
    assert made.returncode == 0, made.stderr[-3000:]
    assert f"train rows {int((times >= last_day).sum())} of {len(times)}" in made.stdout
    res = cli(
        "ranking-train", "data.path=day", *FAST, "stages=[ranking]",
        "mlflow.tracking_uri=sqlite:///next.db", f"warm_start.run={earlier}", "warm_start.expire_after=86400", "hydra.run.dir=next",
        cwd=work,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    log = (work / "next" / "train.log").read_text()
    line = next(x for x in log.splitlines() if "ranking: warm start from" in x)
    with np.load(earlier / "checkpoints" / "id_activity.npz") as z:
        seen = z["table/item_id"]
    with np.load(work / "next" / "checkpoints" / "id_activity.npz") as z:
        span = int(z["start"]), int(z["end"])
    assert span == (int(times.min()), int(times.max()))  # both runs' times
    first_today = int(times[times >= last_day].min())
    stale = int(((seen > np.iinfo(np.int64).min) & (seen < first_today - 86_400)).sum())
    assert stale > 0 and f"item_id: {stale} expired rows reset" in line
    assert "tensors copied" in line
    assert "optimiser state carried: " in line and "dense statistics: merged" in line
    # the stage's MLflow run says where it started from
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{work / 'next.db'}")
    (ranker,) = client.search_runs(
        [client.get_experiment_by_name("ranking").experiment_id],
        filter_string="tags.stage = 'ranking' and tags.warm_start LIKE 'from %'",
    )
    assert line.endswith(ranker.data.tags["warm_start"])
    # ranking-eval of that run on today's data standardises as it trained: its test
    # metrics again (a recomputation from today's train split would move them)
    evaluated = cli("ranking-eval", "run=next", "data_path=day", cwd=work)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    again = json.loads((work / "next" / "eval_metrics.json").read_text())
    trained = json.loads((work / "next" / "metrics.json").read_text())
    assert again["test/auc/click"] == pytest.approx(trained["test/auc/click"], rel=1e-12)
    assert again["test/logloss/click"] == pytest.approx(trained["test/logloss/click"], rel=1e-12)
    # the ranker standardised with the moments of both runs' train rows together
    from ranking.pipeline import trained_stats

    stats = trained_stats(work / "next", ["ranking"])
    for name, m in stats.moments.items():
        x = pq.read_table(work / "ds" / "train", columns=[name]).column(0).to_numpy()
        x = np.log1p(x.astype(np.float64)) if "log1p" in m.transform else x.astype(np.float64)
        both = np.concatenate([x, x[times >= last_day]])
        assert m.count == both.size
        np.testing.assert_allclose([m.mean, m.std], [both.mean(), both.std()], rtol=1e-9)


@pytest.mark.slow
def test_train_on_bad_data_names_file_column_row(trained_run):
    work, _ = trained_run
    bad = work / "bad"
    subprocess.run(["cp", "-r", str(work / "ds"), str(bad)], check=True)
    part = sorted((bad / "train").glob("*.parquet"))[0]
    table = pq.read_table(part)
    ages = table.column("age_bucket").to_pylist()
    ages[5] = 99
    idx = table.schema.get_field_index("age_bucket")
    import pyarrow as pa

    pq.write_table(table.set_column(idx, "age_bucket", pa.array(ages, pa.int64())), part)
    res = cli("ranking-train", "data.path=bad", *FAST, cwd=work)
    assert res.returncode == 2
    err = res.stderr.strip().splitlines()[-1]
    assert err.startswith("error: ")
    assert part.name in err and "'age_bucket'" in err and "row 5" in err and "99" in err


@pytest.mark.slow
def test_missing_dataset_directory_is_a_clear_error(tmp_path):
    res = cli("ranking-train", "data.path=nowhere", *FAST, cwd=tmp_path)
    assert res.returncode == 2
    assert "nowhere" in res.stderr and "schema.yaml" in res.stderr
