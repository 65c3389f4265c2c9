"""``ranking-eval``: test metrics of a finished run's checkpoints.

Writes ``<run>/eval_metrics.json`` (this evaluation's metrics) and appends one
line to ``<run>/eval_history.jsonl`` per evaluation: its time, stages, dataset,
config overrides and metrics, so evaluations under several protocols stay
side by side.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from ranking.cli import CONFIG_PATH
from ranking.cli.runs import run_config
from ranking.data.errors import main_guard
from ranking.pipeline import (
    load_stage,
    make_trainer,
    single_process,
    test_metrics,
    trained_datamodule,
    write_metrics,
)

#: conf/evaluate.yaml's own keys; any other (``+retrieval.eval.exclude_train=true``)
#: overrides the run's config.
OWN_KEYS = ("run", "data_path", "stages")


@hydra.main(config_path=CONFIG_PATH, config_name="evaluate", version_base="1.3")
@main_guard
def main(cfg: DictConfig) -> None:
    run_dir, run_cfg = run_config(cfg.run, cfg.data_path)
    run_cfg = single_process(run_cfg)  # a sharded run's checkpoints load into one process
    changed = {k: v for k, v in cfg.items() if k not in OWN_KEYS}  # +key=value overrides
    if changed:
        run_cfg = OmegaConf.merge(run_cfg, changed)
    stages = cfg.stages or [s for s in ("retrieval", "ranking") if s in run_cfg.stages]
    metrics: dict[str, float] = {}
    for stage in stages:
        # standardised as the run trained, whatever train split data_path holds
        dm = trained_datamodule(stage, run_cfg, Path(run_cfg.data.path), run_dir)
        module = load_stage(stage, run_cfg, dm.schema, run_dir)
        trainer = make_trainer(run_cfg, 1, None, run_dir)
        trainer.test(module, datamodule=dm, verbose=False)
        metrics.update(test_metrics(module.last_metrics))
    write_metrics(run_dir / "eval_metrics.json", metrics)
    entry = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "stages": list(stages),
        "data_path": str(run_cfg.data.path),
        "overrides": OmegaConf.to_container(OmegaConf.create(changed), resolve=True),
        "metrics": dict(sorted(metrics.items())),
    }
    with open(run_dir / "eval_history.jsonl", "a") as f:
        f.write(json.dumps(entry) + "\n")
    print(json.dumps(metrics, indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
