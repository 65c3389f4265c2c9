"""``ranking-train``: dataset -> retrieval -> ranking -> export, logged to MLflow."""

from __future__ import annotations

import json
import os
import traceback
from pathlib import Path

import hydra
import pytorch_lightning as pl
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from ranking.cli import CONFIG_PATH
from ranking.data.errors import GUARDED, main_guard
from ranking.lit.best_epoch import check_early_stopping
from ranking.lit.sharding import is_lead_process
from ranking.pipeline import (
    IdTracking,
    check_sharding,
    check_stages,
    export_run,
    load_stage,
    prepare_dataset,
    sharded,
    train_stage,
    trained_stats,
    write_metrics,
)
from ranking.schema import Schema
from ranking.serving.index import index_metrics
from ranking.sweep import (
    check_objective,
    current_sweep,
    fail_job,
    job_overrides,
    job_run_name,
    objective_value,
    record_job,
)
from ranking.tracking import Tracker


def run(cfg: DictConfig, run_dir: Path) -> tuple[dict[str, float], float]:
    """The main job. Returns the test metrics (also written to metrics.json) and
    the value of the objective (ranking/sweep.py)."""
    pl.seed_everything(cfg.seed, workers=True)
    data_dir = prepare_dataset(cfg)
    schema = Schema.load(data_dir)
    check_stages(cfg, schema)
    check_early_stopping(cfg)
    # a sweep needs its objective; a single run only checks one it was given
    needed = _in_sweep()
    check_sharding(cfg, needed)
    if needed or OmegaConf.select(cfg, "objective.metric", default=None):
        check_objective(cfg)
    # a sharded run's other processes train and evaluate; rank 0 records and exports
    lead = is_lead_process()
    tracker = Tracker(cfg.mlflow.tracking_uri, cfg.mlflow.experiment, cfg.mlflow.enabled and lead)
    metrics: dict[str, float] = {}
    modules = {}
    registered = None
    sweep = current_sweep() if cfg.mlflow.enabled else None
    run_name = run_dir.name
    if sweep is not None:  # a job of `ranking-train -m ...`: named after what it varies
        job, varied = job_overrides()
        run_name = job_run_name(job, varied)
    sweep_run_id = sweep["run_id"] if sweep is not None else None
    # each table row's last sighting (what a later run's warm_start.expire_after reads)
    ids = IdTracking(cfg, run_dir, lead)
    with tracker.parent(cfg, schema.name, run_name, sweep_run_id) as run_id:
        for stage in ("retrieval", "ranking"):
            if stage in cfg.stages:
                modules[stage], stage_metrics = train_stage(
                    stage, cfg, data_dir, tracker, run_dir, ids
                )
                metrics.update(stage_metrics)
        if not lead:
            return metrics, float("nan")
        tracker.log_metrics(metrics)
        write_metrics(run_dir / "metrics.json", metrics)
        if "export" in cfg.stages:
            exported = modules
            if sharded(cfg):  # the sharded checkpoints, gathered into one process
                exported = {s: load_stage(s, cfg, schema, run_dir) for s in modules}
            bundle = export_run(
                cfg,
                data_dir,
                exported["retrieval"],
                exported.get("ranking"),
                run_dir / "bundle",
                metrics,
                run_id,
                stats=trained_stats(run_dir, modules),
            )
            # the index's recall against exact search and its latency, measured at build
            built = index_metrics(json.loads((bundle / "manifest.json").read_text())["index"])
            metrics.update(built)
            tracker.log_metrics(built)
            write_metrics(bundle.parent / "metrics.json", metrics)
            tracker.log_artifacts(bundle, "bundle")
            if cfg.mlflow.get("register"):  # the bundle in the Model Registry
                registered = tracker.register_bundle(bundle, cfg.mlflow.register)
        tracker.log_artifact(run_dir / "metrics.json")
    if not _in_sweep():
        _point_latest(run_dir)
    _report(cfg, run_dir, metrics, run_id)
    if registered:
        print(
            f"model:   models:/{registered['name']}/{registered['version']} ({registered['model_uri']})"
        )
    # what a sweeper optimises: by default a validation metric of the last epoch (of
    # the kept one with early stopping)
    final = {k: v for m in modules.values() for k, v in m.last_metrics.items()}
    name, value = objective_value(cfg, {**final, **metrics}, required=needed)
    print(f"objective: {name} = {value:.4f}")
    if sweep is not None:
        record_job(sweep, cfg, job, varied, run_id, (name, value), run_dir)
    return metrics, value


def _report(cfg: DictConfig, run_dir: Path, metrics: dict[str, float], run_id: str | None) -> None:
    print(f"\nmetrics: {run_dir / 'metrics.json'}")
    for k, v in sorted(metrics.items()):
        print(f"  {k:32s} {v:.4f}")
    if "export" in cfg.stages:
        print(f"bundle:  {run_dir / 'bundle'}")
    if run_id:
        print(
            f"mlflow:  run {run_id} in {cfg.mlflow.tracking_uri} "
            f"(open: mlflow ui --backend-store-uri {cfg.mlflow.tracking_uri})"
        )


def _in_sweep() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _point_latest(run_dir: Path) -> None:
    """``runs/latest`` -> the newest run, so commands can name it without a timestamp."""
    link = run_dir.parent / "latest"
    try:
        if link.is_symlink() or link.exists():
            link.unlink()
        os.symlink(run_dir.name, link)
    except OSError:
        pass


@hydra.main(config_path=CONFIG_PATH, config_name="train", version_base="1.3")
@main_guard
def main(cfg: DictConfig) -> float:
    """Returns the objective (``objective.metric``) to a Hydra sweeper."""
    sweep = current_sweep() if cfg.mlflow.enabled else None
    try:
        _, objective = run(cfg, Path(HydraConfig.get().runtime.output_dir))
    except BaseException as e:
        if sweep is None:
            raise
        fail_job(sweep, e)
        if isinstance(e, Exception) and not isinstance(e, GUARDED):
            # Hydra would record it and go on with the next job: a failed job ends the sweep
            traceback.print_exc()
            raise SystemExit(1) from None
        raise
    return objective


if __name__ == "__main__":
    main()
