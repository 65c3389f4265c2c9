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

The jobs also append their results to ``<sweep dir>/sweep_results.jsonl`` (with
tracking on; the sweep dir's files of an earlier sweep are removed first). A
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
import re
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from ranking.data.errors import ConfigError

log = logging.getLogger(__name__)

SWEEP_FILE = "mlflow_sweep.json"  # in the sweep dir: the sweep run's id, for the jobs
RESULTS_FILE = "sweep_results.jsonl"
RUN_NAME_LEN = 250


def objective_name(cfg: DictConfig) -> str:
    """The metric ``ranking-train`` returns to a sweeper (``objective.metric``)."""
    name = OmegaConf.select(cfg, "objective.metric", default=None)
    if name:
        return str(name)
    if "ranking" in cfg.stages:
        tasks = list(cfg.ranking.model.tasks)
        rank_by = OmegaConf.select(cfg, "export.rank_by", default=None)
        use = rank_by if "export" in cfg.stages and rank_by in tasks else tasks[0]
        return f"valid/auc/{use}"
    return f"valid/recall@{max(cfg.retrieval.eval.ks)}"


def check_objective(cfg: DictConfig) -> None:
    """Before training: the objective's stage (``valid``, ``test``, a test slice, or
    ``index`` with export), its task (``<stage>/<metric>/<task>``: the ranker's),
    its retrieval form (``<stage>/<metric>[@k]``, k one of ``retrieval.eval.ks``
    or ``long_tail_k``) and, for a ``valid/`` metric, a validation that runs.
    The metric's own name is checked when the job ends (:func:`objective_value`)."""
    name = objective_name(cfg)
    _direction(cfg)
    parts = name.split("/")
    slices = {
        *(OmegaConf.select(cfg, "retrieval.eval.slices", default=None) or {}),
        *(OmegaConf.select(cfg, "ranking.eval.slices", default=None) or {}),
    }
    stages = ["valid", "test", *sorted(slices)] + (["index"] if "export" in cfg.stages else [])
    if len(parts) not in (2, 3) or parts[0] not in stages:
        raise ConfigError(
            f"objective.metric={name!r}: expected <stage>/<metric>[@k][/<task>] with a "
            f"stage of {stages} (e.g. valid/auc/click, valid/recall@100)"
        )
    if parts[0] == "valid" and OmegaConf.select(cfg, "trainer.limit_val_batches") == 0:
        raise ConfigError(
            f"objective.metric={name!r} is a validation metric, but trainer.limit_val_batches=0"
        )
    if parts[0] == "index":
        return
    tasks = list(cfg.ranking.model.tasks) if "ranking" in cfg.stages else []
    if len(parts) == 3 and parts[2] not in tasks:
        raise ConfigError(
            f"objective.metric={name!r}: a ranker metric of task {parts[2]!r}, but the "
            f"ranker of this job has tasks {tasks} (stages={list(cfg.stages)})"
        )
    if len(parts) == 2:
        if "retrieval" not in cfg.stages:
            raise ConfigError(
                f"objective.metric={name!r}: a retrieval metric, but stages={list(cfg.stages)}"
            )
        cut = re.fullmatch(r".*@(\d+)", parts[1])
        ks = {*cfg.retrieval.eval.ks, int(cfg.retrieval.eval.get("long_tail_k", 100))}
        if cut and int(cut.group(1)) not in ks:
            raise ConfigError(
                f"objective.metric={name!r}: the retrieval stage reports cut-offs {sorted(ks)} "
                "(retrieval.eval.ks, long_tail_k)"
            )


def objective_value(
    cfg: DictConfig, metrics: dict[str, float], required: bool = True
) -> tuple[str, float]:
    """(name, value) of the objective among ``metrics``. Absent: a clear error when
    ``required`` (a sweep's job), else a warning and NaN (a single run)."""
    name = objective_name(cfg)
    if name not in metrics:
        message = f"objective.metric={name!r} is not a metric of this run; it has: " + ", ".join(
            sorted(metrics)
        )
        if required:
            raise ConfigError(message)
        log.warning("%s", message)
        return name, float("nan")
    return name, float(metrics[name])


def better(a: float, b: float, direction: str) -> bool:
    """Is ``a`` better than ``b`` (NaN is never better)?"""
    if math.isnan(a):
        return False
    if math.isnan(b):
        return True
    return a > b if direction == "maximize" else a < b


def _direction(cfg: DictConfig) -> str:
    direction = str(OmegaConf.select(cfg, "objective.direction", default="maximize"))
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
    sweep_dir = Path(hc.runtime.cwd) / hc.sweep.dir  # absolute, also with hydra.job.chdir
    path = sweep_dir / SWEEP_FILE
    if not path.exists():  # tracking off, or the callback not configured
        return None
    sweep = json.loads(path.read_text())
    sweep["dir"] = str(sweep_dir)
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


def _record(num: int, varied: list[str], status: str, output_dir: str, **fields: Any) -> dict:
    return {"job": num, "status": status, "overrides": varied, "objective": None,
            "value": None, "run_id": None, "output_dir": output_dir, **fields}  # fmt: skip


def _append(sweep: dict[str, Any], record: dict[str, Any]) -> list[dict[str, Any]]:
    path = Path(sweep["dir"]) / RESULTS_FILE
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")
    return read_results(path)


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
    record = _record(
        num, varied, "completed", str(output_dir), objective=name, value=value, run_id=run_id
    )
    results = _append(sweep, record)
    client = _client(sweep["tracking_uri"])
    if not math.isnan(value):
        client.log_metric(sweep["run_id"], _mlflow_key(name), value, step=num)
    _tag_best(client, sweep["run_id"], results, name, _direction(cfg))


def _tag_best(client: Any, run_id: str, results: list, name: str, direction: str) -> None:
    best = best_job(results, name, direction)
    if best is None:
        return
    client.log_metric(run_id, _mlflow_key(f"best/{name}"), best["value"], step=best["job"])
    client.set_tag(run_id, "best_job", str(best["job"]))
    client.set_tag(run_id, "best_overrides", " ".join(best["overrides"]))
    client.set_tag(run_id, "best_run_id", str(best["run_id"]))
    log.info("sweep: best %s = %.4f, job %d (%s)", name, best["value"], best["job"],
             " ".join(best["overrides"]))  # fmt: skip


def fail_job(sweep: dict[str, Any], error: BaseException) -> None:
    """A sweep's job failed: its line in the results, and the sweep run FAILED
    (``ranking-train`` then exits: a failed job ends the whole sweep)."""
    num, varied = job_overrides()
    out = str(HydraConfig.get().runtime.output_dir)
    _append(sweep, _record(num, varied, "failed", out, error=repr(error)[:2000]))
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

        overrides = [str(o) for o in config.hydra.overrides.task]
        _check_sweep(config, overrides)
        sweep_dir = Path(config.hydra.sweep.dir).resolve()
        sweep_dir.mkdir(parents=True, exist_ok=True)
        for stale in (SWEEP_FILE, RESULTS_FILE, "sweep.csv"):  # a sweep dir used before
            (sweep_dir / stale).unlink(missing_ok=True)
        client = _client(config.mlflow.tracking_uri)
        exp = client.get_experiment_by_name(config.mlflow.experiment)
        exp_id = exp.experiment_id if exp else client.create_experiment(config.mlflow.experiment)
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
        names = sorted({r["objective"] for r in results if r["status"] == "completed"})
        for name in names:  # again at the end: parallel jobs may have tagged out of order
            _tag_best(client, sweep["run_id"], results, name, _direction(config))
        client.set_terminated(sweep["run_id"], status="FAILED" if failed else "FINISHED")


def _check_sweep(config: DictConfig, overrides: list[str]) -> None:
    """Refuse sweeps the sweep run cannot follow: varying where the jobs log, or an
    Optuna-style ``hydra.sweeper.direction`` that disagrees with ``objective.direction``."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    swept = [o.key_or_group for o in parsed if o.is_sweep_override()]
    tracking = [k for k in swept if k.startswith("mlflow.")]
    if tracking:
        raise ConfigError(
            f"a sweep over {tracking}: every job logs under the sweep's MLflow run, so "
            "mlflow.* must be the same for all of them"
        )
    sweeper_direction = OmegaConf.select(config, "hydra.sweeper.direction", default=None)
    sweeper_direction = getattr(sweeper_direction, "name", sweeper_direction)  # Optuna's enum
    direction = _direction(config)
    if isinstance(sweeper_direction, str) and sweeper_direction != direction:
        raise ConfigError(
            f"hydra.sweeper.direction={sweeper_direction} but objective.direction={direction}: "
            f"set both (the sweeper {sweeper_direction}s what the sweep run ranks by {direction})"
        )
