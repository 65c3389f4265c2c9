"""`ranking-train -m`: one MLflow sweep run with the jobs' runs nested under it,
ranked by the objective (a validation metric by default)."""

from __future__ import annotations

import csv
import json
import math

import pytest

from ranking.data.errors import ConfigError
from ranking.sweep import best_job, check_objective, fixed_keys, objective_name, objective_value
from tests.conftest import compose_train
from tests.test_cli import FAST, WORLD, cli

SWEEP = ["data.path=ds", "stages=[retrieval]", *FAST, "mlflow.tracking_uri=sqlite:///sweep.db"]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    work = tmp_path_factory.mktemp("sweep")
    made = cli("ranking-data", "out=ds", *WORLD, cwd=work)
    assert made.returncode == 0, made.stderr[-3000:]
    return work


def _runs(work):
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{work / 'sweep.db'}")
    exp = client.get_experiment_by_name("ranking")
    return client, client.search_runs([exp.experiment_id])


@pytest.mark.slow
def test_sweep_run_holds_its_jobs_and_their_best(work):
    res = cli("ranking-train", "-m", *SWEEP, "retrieval.task.logq=true,false", cwd=work)
    assert res.returncode == 0, res.stderr[-3000:]
    client, runs = _runs(work)
    top = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    (sweep,) = [r for r in top if r.data.tags["sweep_dir"].startswith(str(work / "multirun"))]
    assert sweep.info.status == "FINISHED" and sweep.data.tags["kind"] == "sweep"
    assert "retrieval.task.logq=true,false" in sweep.data.params["sweep.overrides"]
    jobs = {
        r.info.run_name: r
        for r in runs
        if r.data.tags.get("mlflow.parentRunId") == sweep.info.run_id
    }
    # named after what the job varies, not the overrides every job shares
    assert set(jobs) == {"0: retrieval.task.logq=True", "1: retrieval.task.logq=False"}

    # each job's objective: its retrieval run's last validation recall@100
    values = {}
    for name, job in jobs.items():
        stage = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == job.info.run_id]
        assert [r.info.run_name for r in stage] == ["retrieval"]
        history = client.get_metric_history(stage[0].info.run_id, "valid/recall_at_100")
        values[int(name[0])] = history[-1].value
    points = client.get_metric_history(sweep.info.run_id, "valid/recall_at_100")
    assert sorted(p.step for p in points) == [0, 1]
    for p in points:
        assert p.value == pytest.approx(values[p.step], abs=1e-6)
    best = max(values, key=values.get)
    assert sweep.data.tags["best_job"] == str(best)
    assert sweep.data.metrics["best/valid/recall_at_100"] == pytest.approx(values[best], abs=1e-6)
    best_run = jobs[next(n for n in jobs if n.startswith(str(best)))]
    assert sweep.data.tags["best_run_id"] == best_run.info.run_id

    # the table beside the jobs' folders, also an artifact of the sweep run
    (sweep_dir,) = (work / "multirun").iterdir()
    rows = list(csv.DictReader((sweep_dir / "sweep.csv").open()))
    assert [(r["job"], r["status"], r["overrides"]) for r in rows] == [
        ("0", "completed", "retrieval.task.logq=True"),
        ("1", "completed", "retrieval.task.logq=False"),
    ]
    for r in rows:
        assert float(r["value"]) == pytest.approx(values[int(r["job"])], abs=1e-6)
        assert (sweep_dir / r["job"] / "metrics.json").exists()
    assert "sweep.csv" in {a.path for a in client.list_artifacts(sweep.info.run_id)}


@pytest.mark.slow
def test_failed_job_ends_the_sweep_and_marks_it_failed(work):
    # a ranker metric for a retrieval-only job: refused before any training
    res = cli(
        "ranking-train",
        "-m",
        *SWEEP,
        "objective.metric=valid/auc/click",
        "hydra.sweep.dir=failed",
        "seed=0,1",
        cwd=work,
    )
    assert res.returncode == 2
    assert "error: objective.metric='valid/auc/click': a ranker metric" in res.stderr
    _, runs = _runs(work)
    sweep = next(r for r in runs if r.data.tags.get("sweep_dir") == str(work / "failed"))
    assert sweep.info.status == "FAILED"
    (line,) = (work / "failed" / "sweep_results.jsonl").read_text().splitlines()
    assert json.loads(line)["status"] == "failed" and json.loads(line)["job"] == 0
    assert json.loads(line)["overrides"] == ["seed=0"]
    assert not (work / "failed" / "1").exists()  # the sweep stopped at its first job


def test_default_objective_is_a_validation_metric():
    assert objective_name(compose_train([])) == "valid/auc/click"
    assert objective_name(compose_train(["export.rank_by=purchase"])) == "valid/auc/purchase"
    cfg = compose_train(["stages=[retrieval]", "retrieval.eval.ks=[5,20]"])
    assert objective_name(cfg) == "valid/recall@20"
    cfg = compose_train(["objective.metric=test_random/recall@100"])
    check_objective(cfg)
    assert objective_value(cfg, {"test_random/recall@100": 0.25}) == (
        "test_random/recall@100",
        0.25,
    )
    with pytest.raises(ConfigError, match="not a metric of this run; it has: a/b, c/d"):
        objective_value(cfg, {"c/d": 1.0, "a/b": 2.0})


def test_default_objective_follows_the_tasks_and_missing_is_nan_outside_sweeps():
    cfg = compose_train(
        ["stages=[ranking]", "ranking.model.tasks=[purchase]", "ranking.model.esmm={}"]
    )
    assert objective_name(cfg) == "valid/auc/purchase"  # export.rank_by=click: not a task
    check_objective(cfg)
    assert objective_name(compose_train(["objective=null"])) == "valid/auc/click"
    name, value = objective_value(compose_train([]), {"test/auc/click": 0.7}, required=False)
    assert name == "valid/auc/click" and math.isnan(value)


def test_sweeps_the_sweep_run_cannot_follow_are_refused():
    from omegaconf import OmegaConf

    from ranking.sweep import _check_sweep

    base = {"objective": {"direction": "maximize"}, "hydra": {"sweeper": {}}}
    with pytest.raises(ConfigError, match="a sweep over \\['mlflow.tracking_uri'\\]"):
        _check_sweep(OmegaConf.create(base), ["mlflow.tracking_uri=a,b", "seed=0,1"])
    _check_sweep(OmegaConf.create(base), ["mlflow.tracking_uri=a", "seed=0,1"])
    base["hydra"]["sweeper"]["direction"] = "minimize"  # hydra-optuna-sweeper's default
    with pytest.raises(ConfigError, match="hydra.sweeper.direction=minimize but objective"):
        _check_sweep(OmegaConf.create(base), ["seed=0,1"])


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["objective.metric=valid/recall@1000"], "reports cut-offs \\[10, 50, 100\\]"),
        (["trainer.limit_val_batches=0"], "but trainer.limit_val_batches=0"),
        (
            ["objective.metric=val/auc/click"],
            "stage of \\['valid', 'test', 'test_random', 'index'\\]",
        ),
        (["objective.metric=valid/auc/buy"], "task 'buy', but the ranker of this job has tasks"),
        (["objective.metric=valid/auc/click", "stages=[retrieval]"], "has tasks \\[\\]"),
        (["objective.metric=valid/recall@100", "stages=[ranking]"], "a retrieval metric"),
        (["objective.direction=up"], "maximize or minimize"),
    ],
)
def test_objective_refused_before_training(overrides, message):
    with pytest.raises(ConfigError, match=message):
        check_objective(compose_train(overrides))


def test_best_job_by_direction_skipping_failed_and_nan():
    def job(num, value, status="completed", name="valid/logloss/click"):
        return {"job": num, "status": status, "objective": name, "value": value}

    results = [
        job(2, 0.30),
        job(0, 0.40),
        job(1, math.nan),
        job(3, 0.10, status="failed"),
        job(4, 0.05, name="valid/auc/click"),
        job(5, 0.30),
    ]
    assert best_job(results, "valid/logloss/click", "minimize")["job"] == 2  # tie: earliest
    assert best_job(results, "valid/logloss/click", "maximize")["job"] == 0
    assert best_job([job(1, math.nan)], "valid/logloss/click", "maximize")["job"] == 1
    assert best_job(results, "valid/ne/click", "maximize") is None


def test_fixed_keys_are_the_overrides_given_one_value():
    got = fixed_keys(
        ["data.path=ds", "seed=0,1", "lr=interval(0.1,1)", "+x=range(3)", "hydra/sweeper=optuna"]
    )
    assert got == {"data.path", "hydra/sweeper"}
