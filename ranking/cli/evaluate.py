"""``ranking-eval``: test metrics of a finished run's checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from ranking.cli import CONFIG_PATH
from ranking.cli.runs import run_config
from ranking.data.errors import main_guard
from ranking.pipeline import load_stage, make_trainer, stage_datamodule, write_metrics

#: conf/evaluate.yaml's own keys; any other (``+retrieval.eval.exclude_train=true``)
#: overrides the run's config.
OWN_KEYS = ("run", "data_path", "stages")


@hydra.main(config_path=CONFIG_PATH, config_name="evaluate", version_base="1.3")
@main_guard
def main(cfg: DictConfig) -> None:
    run_dir, run_cfg = run_config(cfg.run, cfg.data_path)
    changed = {k: v for k, v in cfg.items() if k not in OWN_KEYS}  # +key=value overrides
    if changed:
        run_cfg = OmegaConf.merge(run_cfg, changed)
    stages = cfg.stages or [s for s in ("retrieval", "ranking") if s in run_cfg.stages]
    metrics: dict[str, float] = {}
    for stage in stages:
        dm = stage_datamodule(stage, run_cfg, Path(run_cfg.data.path))
        module = load_stage(stage, run_cfg, dm.schema, run_dir)
        trainer = make_trainer(run_cfg, 1, None, run_dir)
        trainer.test(module, datamodule=dm, verbose=False)
        metrics.update(
            {
                k: v
                for k, v in module.last_metrics.items()
                if k.startswith(("test/", "test_random/"))
            }
        )
    write_metrics(run_dir / "eval_metrics.json", metrics)
    print(json.dumps(metrics, indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
