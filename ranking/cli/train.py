"""``ranking-train``: dataset -> retrieval -> ranking -> export, logged to MLflow."""

from __future__ import annotations

import json
import os
from pathlib import Path

import hydra
import pytorch_lightning as pl
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from ranking.cli import CONFIG_PATH
from ranking.data.errors import main_guard
from ranking.pipeline import check_stages, export_run, prepare_dataset, train_stage, write_metrics
from ranking.schema import Schema
from ranking.serving.index import index_metrics
from ranking.tracking import Tracker


def run(cfg: DictConfig, run_dir: Path) -> dict[str, float]:
    """The main job. Returns the test metrics (also written to metrics.json)."""
    pl.seed_everything(cfg.seed, workers=True)
    data_dir = prepare_dataset(cfg)
    schema = Schema.load(data_dir)
    check_stages(cfg, schema)
    tracker = Tracker(cfg.mlflow.tracking_uri, cfg.mlflow.experiment, cfg.mlflow.enabled)
    metrics: dict[str, float] = {}
    modules = {}
    with tracker.parent(cfg, schema.name, run_name=run_dir.name) as run_id:
        for stage in ("retrieval", "ranking"):
            if stage in cfg.stages:
                modules[stage], stage_metrics = train_stage(stage, cfg, data_dir, tracker, run_dir)
                metrics.update(stage_metrics)
        tracker.log_metrics(metrics)
        write_metrics(run_dir / "metrics.json", metrics)
        if "export" in cfg.stages:
            bundle = export_run(
                cfg,
                data_dir,
                modules["retrieval"],
                modules.get("ranking"),
                run_dir / "bundle",
                metrics,
                run_id,
            )
            # the index's recall against exact search and its latency, measured at build
            built = index_metrics(json.loads((bundle / "manifest.json").read_text())["index"])
            metrics.update(built)
            tracker.log_metrics(built)
            write_metrics(bundle.parent / "metrics.json", metrics)
            tracker.log_artifacts(bundle, "bundle")
        tracker.log_artifact(run_dir / "metrics.json")
    _point_latest(run_dir)
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
    return metrics


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
    metrics = run(cfg, Path(HydraConfig.get().runtime.output_dir))
    return metrics.get("test/auc/click", float("nan"))


if __name__ == "__main__":
    main()
