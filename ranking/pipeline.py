"""The steps the command-line entry points are made of.

``ranking-train`` reads as: prepare the dataset, build the data module, then
for each stage build the Lightning module, fit, test; export; record.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from ranking.data.datamodule import RecDataModule
from ranking.data.errors import DataError
from ranking.lit.ranking import RankingModule
from ranking.lit.retrieval import RetrievalModule
from ranking.schema import SCHEMA_FILE, Schema
from ranking.serving.export import export_bundle
from ranking.tracking import StageLogger, Tracker

log = logging.getLogger("ranking")

CHECKPOINTS = {"retrieval": "retrieval.ckpt", "ranking": "ranking.ckpt"}


def prepare_dataset(cfg: DictConfig) -> Path:
    """The dataset directory. The synthetic world is generated only at its own
    default location (``data.generate_at``) when that is absent: a mistyped
    ``data.path`` is an error, never a silently generated dataset."""
    path = Path(cfg.data.path)
    if (path / SCHEMA_FILE).exists():
        return path
    generate_at = cfg.data.get("generate_at")
    if path.exists() or generate_at is None or path != Path(generate_at):
        raise DataError(
            f"no {SCHEMA_FILE} here: not a dataset directory "
            "(make a synthetic one with `ranking-data out=DIR`)",
            file=path,
        )
    from ranking.data.synthetic import SyntheticConfig, generate

    log.info("No dataset at %s: generating the synthetic world there.", path)
    generate(path, SyntheticConfig(**OmegaConf.to_container(cfg.world, resolve=True)))
    return path


def build_datamodule(cfg: DictConfig, path: Path, train_filter: str | None = None) -> RecDataModule:
    dm = RecDataModule(
        path=path,
        batch_size=cfg.data.batch_size,
        eval_batch_size=cfg.data.eval_batch_size,
        num_workers=cfg.data.num_workers,
        seed=cfg.seed,
        validate=cfg.data.validate,
        train_filter=train_filter,
    )
    dm.setup()
    return dm


def _build(node: DictConfig, schema: Schema) -> torch.nn.Module:
    # Partial first: Hydra would turn the Schema dataclass into a config node.
    return instantiate(node, _partial_=True, _convert_="all")(schema=schema)


def build_retrieval(cfg: DictConfig, schema: Schema) -> RetrievalModule:
    model = _build(cfg.retrieval.model, schema)
    task = instantiate(cfg.retrieval.task, _convert_="all")
    optimizer = instantiate(cfg.retrieval.optimizer)
    num_users = schema.feature(schema.user_id).vocab_size
    return RetrievalModule(model, task, optimizer, num_users=num_users)


def build_ranking(cfg: DictConfig, schema: Schema) -> RankingModule:
    model = _build(cfg.ranking.model, schema)
    task = instantiate(cfg.ranking.task, _convert_="all")
    optimizer = instantiate(cfg.ranking.optimizer)
    return RankingModule(model, task, optimizer)


def build_stage(stage: str, cfg: DictConfig, schema: Schema) -> pl.LightningModule:
    return {"retrieval": build_retrieval, "ranking": build_ranking}[stage](cfg, schema)


def stage_datamodule(stage: str, cfg: DictConfig, path: Path) -> RecDataModule:
    """Retrieval trains on positive rows only (its task's label); ranking on all."""
    positive = cfg.retrieval.task.positive_label if stage == "retrieval" else None
    return build_datamodule(cfg, path, train_filter=positive)


def make_trainer(
    cfg: DictConfig, epochs: int, logger: StageLogger | None, run_dir: Path
) -> pl.Trainer:
    return pl.Trainer(
        max_epochs=epochs,
        logger=logger if logger is not None else False,
        default_root_dir=str(run_dir),
        enable_checkpointing=False,
        deterministic=False,
        **OmegaConf.to_container(cfg.trainer, resolve=True),
    )


def train_stage(
    stage: str, cfg: DictConfig, path: Path, tracker: Tracker, run_dir: Path
) -> tuple[pl.LightningModule, dict[str, float]]:
    """Fit one stage, test it, save its checkpoint. Returns (module, test metrics)."""
    dm = stage_datamodule(stage, cfg, path)
    module = build_stage(stage, cfg, dm.schema)
    with tracker.child(stage, dm.schema.name) as logger:
        trainer = make_trainer(cfg, cfg[stage].epochs, logger, run_dir)
        trainer.fit(module, datamodule=dm)
        trainer.test(module, datamodule=dm, verbose=False)
        ckpt = run_dir / "checkpoints" / CHECKPOINTS[stage]
        trainer.save_checkpoint(ckpt)
        metrics = {k: v for k, v in module.last_metrics.items() if k.startswith("test/")}
        tracker.log_metrics(metrics)
    return module, metrics


def load_stage(stage: str, cfg: DictConfig, schema: Schema, run_dir: Path) -> pl.LightningModule:
    """Rebuild a stage's module from a run's config and load its checkpoint."""
    module = build_stage(stage, cfg, schema)
    ckpt = run_dir / "checkpoints" / CHECKPOINTS[stage]
    if not ckpt.exists():
        raise FileNotFoundError(f"{ckpt}: no checkpoint for stage {stage!r} in this run")
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    module.load_state_dict(state)
    return module.eval()


def export_run(
    cfg: DictConfig,
    path: Path,
    retrieval: RetrievalModule,
    ranking: RankingModule,
    out: Path,
    metrics: dict[str, float],
    run_id: str | None,
) -> Path:
    dm = build_datamodule(cfg, path)
    return export_bundle(
        out,
        dm.schema,
        dm.stats.to_dict(),
        retrieval.model,
        ranking.model,
        list(ranking.task.tasks),
        corpus_batches=dm.corpus_dataloader(),
        user_batches=dm.users_dataloader(),
        metrics=metrics,
        run_id=run_id,
        retrieve_k=cfg.export.retrieve_k,
        rank_by=cfg.export.rank_by,
    )


def write_metrics(path: Path, metrics: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dict(sorted(metrics.items())), indent=2))
