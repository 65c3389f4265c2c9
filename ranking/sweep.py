"""Hydra sweeps as MLflow runs, and the metric a sweep optimises.

``ranking-train -m retrieval.task.logq=true,false seed=0,1`` (Hydra's grid
sweeper, or any sweeper plugin such as hydra-optuna-sweeper) makes one MLflow
*sweep run*; each job's run (with its stage runs) is nested under it and named
after the overrides that vary. The sweep run holds:

- params ``sweep.overrides`` (the command line) and tag ``sweep_dir``;
- one point per finished job of the objective metric (``step`` = job number);
- tags ``best_job``, ``best_overrides``, ``best_run_id`` and metric
  ``best/<objective>``, updated after every job;
- artifact ``sweep.csv`` (job, status, overrides, objective, value, run id,
  output dir), written when the sweep ends; then the run is FINISHED.

The jobs also append their results to ``<sweep dir>/sweep_results.jsonl``. A
job that fails ends the sweep (``ranking-train`` exits with its error): its line
says so and the sweep run is marked FAILED.

The objective is a validation metric by default (``objective.metric: null``:
``valid/auc/<export.rank_by>`` with the ranking stage, else
``valid/recall@<largest k>``), so the test split takes no part in the choice.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from ranking.data.errors import ConfigError

log = logging.getLogger(__name__)

SWEEP_FILE = "mlflow_sweep.json"  # in the sweep dir: the sweep run's id, for the jobs
RESULTS_FILE = "sweep_results.jsonl"
RUN_NAME_LEN = 250


def objective_name(cfg: DictConfig) -> str:
    """The metric ``ranking-train`` returns to a sweeper (``objective.metric``)."""
    name = cfg.get("objective", {}).get("metric")
    if name:
        return str(name)
    if "ranking" in cfg.stages:
        return f"valid/auc/{cfg.export.rank_by or cfg.ranking.model.tasks[0]}"
    return f"valid/recall@{max(cfg.retrieval.eval.ks)}"


def check_objective(cfg: DictConfig) -> None:
    """Before training: the objective's stage (``valid``, ``test``, a test slice, or
    ``index`` with export) and its task (``<stage>/<metric>/<task>``: the ranker's)
    or its retrieval form (``<stage>/<metric>``) must be ones this job reports.
    Its metric part is checked when the job ends (:func:`objective_value`)."""
    name = objective_name(cfg)
    _direction(cfg)
    parts = name.split("/")
    slices = {*(cfg.retrieval.eval.get("slices") or {}), *(cfg.ranking.eval.get("slices") or {})}
    stages = ["valid", "test", *sorted(slices)] + (["index"] if "export" in cfg.stages else [])
    if len(parts) not in (2, 3) or parts[0] not in stages:
        raise ConfigError(
            f"objective.metric={name!r}: expected <stage>/<metric>[@k][/<task>] with a "
            f"stage of {stages} (e.g. valid/auc/click, valid/recall@100)"
        )
    if parts[0] == "index":
        return
    tasks = list(cfg.ranking.model.tasks) if "ranking" in cfg.stages else []
    if len(parts) == 3 and parts[2] not in tasks:
        raise ConfigError(
            f"objective.metric={name!r}: a ranker metric of task {parts[2]!r}, but the "
            f"ranker of this job has tasks {tasks} (stages={list(cfg.stages)})"
        )
    if len(parts) == 2 and "retrieval" not in cfg.stages:
        raise ConfigError(
            f"objective.metric={name!r}: a retrieval metric, but stages={list(cfg.stages)}"
        )


def objective_value(cfg: DictConfig, metrics: dict[str, float]) -> tuple[str, float]:
    """(name, value) of the objective among ``metrics``; a clear error when absent."""
    name = objective_name(cfg)
    if name not in metrics:
        raise ConfigError(
            f"objective.metric={name!r} is not a metric of this run; it has: "
            + ", ".join(sorted(metrics))
        )
    return name, float(metrics[name])


def better(a: float, b: float, direction: str) -> bool:
    """Is ``a`` better than ``b`` (NaN is never better)?"""
    if math.isnan(a):
        return False
    if math.isnan(b):
        return True
    return a > b if direction == "maximize" else a < b


def _direction(cfg: DictConfig) -> str:
    direction = str(cfg.get("objective", {}).get("direction", "maximize"))
    if direction not in ("maximize", "minimize"):
        raise ConfigError(f"objective.direction={direction!r}: use maximize or minimize")
    return direction


def _client(tracking_uri: str):
    import mlflow

    return mlflow.MlflowClient(tracking_uri=tracking_uri)


def _mlflow_key(name: str) -> str:
    from ranking.tracking import mlflow_key

    return mlflow_key(name)


def current_sweep() -> dict[str, Any] | None:
    """In a sweep's job: the sweep run's {run_id, tracking_uri, overrides, dir}, or None."""
    if not HydraConfig.initialized():
        return None
    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN:
        return None
    path = Path(hc.sweep.dir) / SWEEP_FILE
    if not path.exists():  # tracking off, or the callback not configured
        return None
    sweep = json.loads(path.read_text())
    sweep["dir"] = str(Path(hc.sweep.dir))
    return sweep


def job_overrides() -> tuple[int, list[str]]:
    """(job number, the overrides this job varies) in a Hydra multirun: those not
    given as such on the sweep's command line (``seed=1`` from ``seed=0,1``; an
    Optuna sweeper's sampled values)."""
    hc = HydraConfig.get()
    sweep = current_sweep()
    fixed = fixed_keys(sweep["overrides"]) if sweep is not None else set()
    job = [str(o) for o in hc.overrides.task]
    keys = [o.key_or_group for o in OverridesParser.create().parse_overrides(job)]
    return int(hc.job.num), [o for o, key in zip(job, keys, strict=True) if key not in fixed]


def fixed_keys(overrides: list[str]) -> set[str]:
    """Keys a sweep's command line sets to one value (not ``a=1,2``, ``range(..)``,
    ``interval(..)``, ...)."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    return {o.key_or_group for o in parsed if not o.is_sweep_override()}


def job_run_name(num: int, varied: list[str]) -> str:
    return f"{num}: {' '.join(varied)}"[:RUN_NAME_LEN] if varied else str(num)


def record_job(
    sweep: dict[str, Any],
    cfg: DictConfig,
    num: int,
    varied: list[str],
    run_id: str | None,
    objective: tuple[str, float],
    output_dir: Path,
) -> None:
    """After a sweep's job: append its result and update the sweep run."""
    name, value = objective
    record = {
        "job": num,
        "status": "completed",
        "overrides": varied,
        "objective": name,
        "value": value,
        "run_id": run_id,
        "output_dir": str(output_dir),
    }
    path = Path(sweep["dir"]) / RESULTS_FILE
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")
    client = _client(sweep["tracking_uri"])
    if not math.isnan(value):
        client.log_metric(sweep["run_id"], _mlflow_key(name), value, step=num)
    best = best_job(read_results(path), name, _direction(cfg))
    if best is not None:
        client.log_metric(sweep["run_id"], _mlflow_key(f"best/{name}"), best["value"], step=num)
        client.set_tag(sweep["run_id"], "best_job", str(best["job"]))
        client.set_tag(sweep["run_id"], "best_overrides", " ".join(best["overrides"]))
        client.set_tag(sweep["run_id"], "best_run_id", str(best["run_id"]))


def fail_job(sweep: dict[str, Any], error: BaseException) -> None:
    """A sweep's job failed: its line in the results, and the sweep run FAILED (an
    error ends the whole sweep: ``ranking-train`` exits with it)."""
    num, varied = job_overrides()
    record = {
        "job": num,
        "status": "failed",
        "overrides": varied,
        "objective": None,
        "value": None,
        "run_id": None,
        "output_dir": str(HydraConfig.get().runtime.output_dir),
        "error": repr(error)[:2000],
    }
    with (Path(sweep["dir"]) / RESULTS_FILE).open("a") as f:
        f.write(json.dumps(record) + "\n")
    _client(sweep["tracking_uri"]).set_terminated(sweep["run_id"], status="FAILED")


def read_results(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def best_job(results: list[dict[str, Any]], name: str, direction: str) -> dict[str, Any] | None:
    """The completed job with the best value of objective ``name`` (earliest on ties)."""
    best = None
    for r in sorted(results, key=lambda r: r["job"]):
        if r["status"] != "completed" or r["objective"] != name:
            continue
        if best is None or better(r["value"], best["value"], direction):
            best = r
    return best


class MlflowSweep(Callback):
    """Hydra callback (``hydra.callbacks`` in conf/train.yaml): the sweep's MLflow run."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not config.mlflow.enabled:
            return
        from ranking.tracking import git_commit

        sweep_dir = Path(config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        client = _client(config.mlflow.tracking_uri)
        exp = client.get_experiment_by_name(config.mlflow.experiment)
        exp_id = exp.experiment_id if exp else client.create_experiment(config.mlflow.experiment)
        overrides = [str(o) for o in config.hydra.overrides.task]
        run = client.create_run(
            exp_id,
            run_name=f"sweep {sweep_dir.name}",
            tags={"sweep_dir": str(sweep_dir), "git_commit": git_commit(), "kind": "sweep"},
        )
        client.log_param(run.info.run_id, "sweep.overrides", " ".join(overrides)[:6000])
        (sweep_dir / SWEEP_FILE).write_text(
            json.dumps(
                {
                    "run_id": run.info.run_id,
                    "tracking_uri": config.mlflow.tracking_uri,
                    "overrides": overrides,
                }
            )
        )
        log.info("MLflow sweep run %s in %s", run.info.run_id, config.mlflow.tracking_uri)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        path = sweep_dir / SWEEP_FILE
        if not config.mlflow.enabled or not path.exists():
            return
        sweep = json.loads(path.read_text())
        results = read_results(sweep_dir / RESULTS_FILE)
        table = sweep_dir / "sweep.csv"
        fields = ["job", "status", "overrides", "objective", "value", "run_id", "output_dir"]
        with table.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
            writer.writeheader()
            for r in sorted(results, key=lambda r: r["job"]):
                writer.writerow({**r, "overrides": " ".join(r["overrides"])})
        client = _client(sweep["tracking_uri"])
        client.log_artifact(sweep["run_id"], str(table))
        failed = any(r["status"] == "failed" for r in results)
        client.set_terminated(sweep["run_id"], status="FAILED" if failed else "FINISHED")
        names = {r["objective"] for r in results if r["status"] == "completed"}
        for name in sorted(names):
            best = best_job(results, name, _direction(config))
            if best is not None:
                log.info(
                    "sweep %s: best %s = %.4f, job %d (%s)",
                    sweep_dir,
                    name,
                    best["value"],
                    best["job"],
                    " ".join(best["overrides"]),
                )
