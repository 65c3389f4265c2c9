"""``ranking-export``: the serving bundle of a finished run's checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import hydra
from omegaconf import DictConfig

from ranking.cli import CONFIG_PATH
from ranking.cli.runs import run_config
from ranking.data.errors import main_guard
from ranking.pipeline import export_run, load_stage, trained_stats
from ranking.schema import Schema


@hydra.main(config_path=CONFIG_PATH, config_name="export", version_base="1.3")
@main_guard
def main(cfg: DictConfig) -> None:
    run_dir, run_cfg = run_config(cfg.run)
    data_dir = Path(run_cfg.data.path)
    schema = Schema.load(data_dir)
    retrieval = load_stage("retrieval", run_cfg, schema, run_dir)
    # a run without the ranking stage exports a retrieval-only bundle
    ranked = "ranking" in run_cfg.stages
    ranking = load_stage("ranking", run_cfg, schema, run_dir) if ranked else None
    metrics_file = run_dir / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.exists() else {}
    out = Path(cfg.out) if cfg.out else run_dir / "bundle"
    stats = trained_stats(run_dir, ["retrieval", "ranking"] if ranked else ["retrieval"])
    export_run(run_cfg, data_dir, retrieval, ranking, out, metrics, run_id=None, stats=stats)
    print(f"bundle: {out}")


if __name__ == "__main__":
    main()
