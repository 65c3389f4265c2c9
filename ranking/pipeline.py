"""The steps the command-line entry points are made of.

``ranking-train`` reads as: prepare the dataset, build the data module, then
for each stage build the Lightning module, fit, test; export; record.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict
from pytorch_lightning.callbacks import ModelCheckpoint

from ranking.data import id_activity
from ranking.data.datamodule import RecDataModule
from ranking.data.errors import ConfigError, DataError
from ranking.data.files import csv_column_types, iter_record_batches
from ranking.data.stats import DenseStats
from ranking.lit.best_epoch import BestEpoch, copy_checkpoint, early_stopping
from ranking.lit.ranking import RankingModule
from ranking.lit.retrieval import RetrievalModule
from ranking.lit.sharding import (
    META_FILE,
    TorchrecStrategy,
    is_sharded_checkpoint,
    load_model_state,
)
from ranking.schema import SCHEMA_FILE, Schema
from ranking.serving.artifacts import aoti_artifacts
from ranking.serving.export import export_bundle
from ranking.tasks.retrieval import RetrievalTask
from ranking.tracking import StageLogger, Tracker
from ranking.warm_start import (
    carry_optimizer,
    continue_schedule,
    earlier_checkpoint,
    expiry,
    warm_start,
)

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
            "(make one with `ranking-data out=DIR`: the synthetic world, or source=movielens-1m "
            "raw=DIR for a public dataset)",
            file=path,
        )
    from ranking.data.synthetic import SyntheticConfig, generate

    log.info("No dataset at %s: generating the synthetic world there.", path)
    generate(path, SyntheticConfig(**OmegaConf.to_container(cfg.world, resolve=True)))
    return path


def check_stages(cfg: DictConfig, schema: Schema) -> None:
    """Refuse, before any training, stages this dataset cannot train: a stage's
    labels must be the schema's, the ranker's must hold both 0 and 1 in train
    (every row a positive, as in MovieLens's ratings, trains retrieval only),
    and the export bundle needs the retrieval stage (without ranking it holds
    the towers and the index only)."""
    stages = list(cfg.stages)
    if "export" in stages and "retrieval" not in stages:
        raise ConfigError(f"stages={stages}: export needs the retrieval stage (or drop export)")
    if "export" in stages:
        _aoti_option(cfg.export.get("aoti", False), "ranking" in stages)
    if cfg.mlflow.get("register") and ("export" not in stages or not cfg.mlflow.enabled):
        raise ConfigError(
            f"mlflow.register={cfg.mlflow.register!r} registers the exported bundle: it needs "
            f"the export stage (stages={stages}) and mlflow.enabled=true"
        )
    if "retrieval" in stages and cfg.retrieval.task.positive_label not in schema.labels:
        raise ConfigError(
            f"retrieval.task.positive_label={cfg.retrieval.task.positive_label!r} is not a "
            f"label of the dataset {schema.name!r} (labels: {list(schema.labels)})"
        )
    if "ranking" not in stages:
        return
    tasks = list(cfg.ranking.model.tasks)
    unknown = [t for t in tasks if t not in schema.labels]
    if unknown:
        raise ConfigError(
            f"ranking.model.tasks: {unknown} are not labels of the dataset {schema.name!r} "
            f"(labels: {list(schema.labels)}); set ranking.model.tasks=[...]"
        )
    types = csv_column_types(schema)
    for task in tasks:
        seen: set[float] = set()
        batches = (
            rb
            for path in schema.split_paths("train")
            for _, rb in iter_record_batches(path, [task], 1 << 18, types)
        )
        for rb in batches:  # stops at the first batch that completes {0, 1}
            seen.update(pc.unique(pc.cast(rb.column(0), pa.float64())).to_pylist())
            if {0.0, 1.0} <= seen:
                break
        if not {0.0, 1.0} <= seen:
            raise DataError(
                f"label {task!r} is {sorted(seen)} on every train row: the ranker needs both "
                "clicked and not-clicked impressions (a log of positives only trains "
                "retrieval: stages=[retrieval])",
                file=schema.root / "train",
                column=task,
            )


def build_datamodule(
    cfg: DictConfig,
    path: Path,
    train_filter: str | tuple[str | float, ...] | None = None,
    train_group_by: str | None = None,
    train_positive_groups_only: bool = False,
    stats: DenseStats | None = None,
) -> RecDataModule:
    """The data module of ``path`` (set up). ``stats``: the dense statistics to
    standardise with (a trained run's); None: computed from the train split."""
    dm = RecDataModule(
        path=path,
        stats=stats,
        batch_size=cfg.data.batch_size,
        eval_batch_size=cfg.data.eval_batch_size,
        num_workers=cfg.data.num_workers,
        seed=cfg.seed,
        validate=cfg.data.validate,
        train_filter=train_filter,
        train_group_by=train_group_by,
        train_positive_groups_only=train_positive_groups_only,
    )
    dm.setup()
    return dm


def _build(node: DictConfig, schema: Schema) -> torch.nn.Module:
    # Partial first: Hydra would turn the Schema dataclass into a config node.
    return instantiate(node, _partial_=True, _convert_="all")(schema=schema)


def build_retrieval(cfg: DictConfig, schema: Schema) -> RetrievalModule:
    model = _build(cfg.retrieval.model, schema)
    num_items = schema.feature(schema.item_id).vocab_size
    task = instantiate(
        cfg.retrieval.task,
        num_items=num_items,
        embedding_dim=model.out_dim,
        impression_share=float(cfg.retrieval.get("negative_share", 1.0)),
        _convert_="all",
    )
    optimizer, schedule = _optimisation(cfg.retrieval.optimizer)
    num_users = schema.feature(schema.user_id).vocab_size
    evaluation = OmegaConf.to_container(cfg.retrieval.get("eval", {}), resolve=True)
    return RetrievalModule(
        model,
        task,
        optimizer,
        num_users=num_users,
        seed=cfg.seed,
        schedule=schedule,
        **evaluation,
    )


def build_ranking(cfg: DictConfig, schema: Schema) -> RankingModule:
    model = _build(cfg.ranking.model, schema)
    task = instantiate(cfg.ranking.task, _convert_="all")
    optimizer, schedule = _optimisation(cfg.ranking.optimizer)
    evaluation = cfg.ranking.get("eval")  # absent from runs trained before slices existed
    evaluation = OmegaConf.to_container(evaluation, resolve=True) if evaluation else {}
    return RankingModule(model, task, optimizer, schedule=schedule, **evaluation)


def _optimisation(opt: DictConfig) -> tuple[Any, dict[str, Any] | None]:
    """(dense optimiser factory, schedule or None) of a stage's optimizer config:
    a bare torch optimiser for every parameter (optimizer=adam), or
    conf/optimizer/fused*.yaml's dense optimiser and schedule (the tables' fused
    optimiser, ``opt.sparse``, went into the model: conf/model/*.yaml)."""
    if "dense" not in opt:
        return instantiate(opt), None
    schedule = opt.get("schedule")
    schedule = OmegaConf.to_container(schedule, resolve=True) if schedule else None
    return instantiate(opt.dense), schedule


def build_stage(stage: str, cfg: DictConfig, schema: Schema) -> pl.LightningModule:
    return {"retrieval": build_retrieval, "ranking": build_ranking}[stage](cfg, schema)


def stage_datamodule(
    stage: str, cfg: DictConfig, path: Path, stats: DenseStats | None = None
) -> RecDataModule:
    """Retrieval trains on positive rows only (its task's label; every row when its
    loss reads the other impressions too, or, with ``retrieval.positive_groups_only``,
    those of the requests that hold a positive); ranking on all.
    ``retrieval.group_by`` shuffles retrieval's train rows request by request."""
    if stage != "retrieval":
        return build_datamodule(cfg, path, stats=stats)
    task = cfg.retrieval.task
    all_rows = RetrievalTask.reads_all_rows(
        task.get("hard_negatives", False),
        task.get("impression_weight", 0.0),
        task.get("exposure_weight", 0.0),
    )
    share = float(cfg.retrieval.get("negative_share", 1.0))  # of the other impressions
    group_by = cfg.retrieval.get("group_by")
    groups_only = bool(cfg.retrieval.get("positive_groups_only", False))
    if groups_only and (
        group_by is None
        or share <= 0
        or not task.get("hard_negatives", False)
        or task.get("impression_weight", 0.0)
        or task.get("exposure_weight", 0.0)
    ):
        raise ValueError(
            "retrieval.positive_groups_only keeps the impressions of requests with a positive, "
            "the rows hard negatives need: it needs retrieval.group_by, "
            "retrieval.task.hard_negatives=true and retrieval.negative_share > 0, and would "
            "bias the impression and exposure losses (their weights must be 0)"
        )
    rows = task.positive_label
    if all_rows:
        rows = (task.positive_label, 1.0, share) if share < 1 or groups_only else None
    dm = build_datamodule(cfg, path, rows, group_by, groups_only, stats)
    if cfg.retrieval.get("batch_size"):
        dm.batch_size = int(cfg.retrieval.batch_size)  # its own train batch (positives)
    return dm


def make_trainer(
    cfg: DictConfig,
    epochs: int,
    logger: StageLogger | None,
    run_dir: Path,
    stage: str | None = None,
) -> pl.Trainer:
    """A Trainer; with ``stage``, it also keeps ``run_dir/checkpoints/<stage>/last.ckpt``
    up to date after every epoch (what ``resume=`` continues from) and, with
    ``<stage>.early_stopping.metric``, the best epoch's ``best-step<N>.ckpt``
    (:class:`~ranking.lit.best_epoch.BestEpoch`)."""
    callbacks: list[pl.Callback] = []
    if stage is not None:
        best = early_stopping(cfg, stage, run_dir / "checkpoints" / stage)
        if best is not None:
            callbacks.append(best)
        callbacks.append(
            ModelCheckpoint(
                dirpath=run_dir / "checkpoints" / stage,
                filename="last",
                save_top_k=1,
                enable_version_counter=False,
                # at the very end of the epoch (after validation): a resumed run then
                # starts the next epoch, whose data order depends on the epoch number
                save_on_train_epoch_end=True,
            )
        )
    options = OmegaConf.to_container(cfg.trainer, resolve=True)
    sharding = options.pop("sharding", None)
    if sharding is not None:
        options["strategy"] = TorchrecStrategy(
            sharding_types=sharding.get("types"),
            process_group_backend=sharding.get("backend"),
        )
    return pl.Trainer(
        max_epochs=epochs,
        logger=logger if logger is not None else False,
        default_root_dir=str(run_dir),
        enable_checkpointing=stage is not None,
        callbacks=callbacks,
        deterministic=False,
        **options,
    )


def sharded(cfg: DictConfig) -> bool:
    """True when the trainer shards the tables (``trainer=cpu_sharded``)."""
    return OmegaConf.select(cfg, "trainer.sharding", default=None) is not None


def single_process(cfg: DictConfig) -> DictConfig:
    """``cfg`` with a one-process trainer (evaluating or exporting a sharded run)."""
    if not sharded(cfg):
        return cfg
    out = cfg.copy()
    with open_dict(out):
        out.trainer.pop("sharding")
        out.trainer.devices, out.trainer.num_nodes = 1, 1
    return out


def check_sharding(cfg: DictConfig, in_sweep: bool) -> None:
    """Refuse, before training, what a sharded run cannot do (yet)."""
    if not sharded(cfg):
        return
    if in_sweep:
        raise ConfigError("a sweep (ranking-train -m) cannot run sharded jobs (trainer.sharding)")
    for stage in ("retrieval", "ranking"):
        if stage in cfg.stages and not cfg[stage].model.get("sparse_optimizer"):
            raise ConfigError(
                f"{stage}: sharded training needs fused tables, i.e. a fused optimizer "
                f"(conf/optimizer/fused*.yaml); optimizer@{stage}.optimizer without `sparse` "
                "updates dense table gradients, which DistributedModelParallel does not produce"
            )


def resume_checkpoint(cfg: DictConfig, stage: str) -> Path | None:
    """``resume=RUN_DIR``: the ``last.ckpt`` a killed run left for ``stage`` (None
    when that stage never finished an epoch there: it then starts afresh)."""
    run = cfg.get("resume")
    if not run:
        return None
    if not Path(run).is_dir():
        raise FileNotFoundError(f"resume={run}: no such run directory")
    last = Path(run) / "checkpoints" / stage / "last.ckpt"
    if not last.exists():
        return None
    if is_sharded_checkpoint(last) != sharded(cfg):
        kind = "sharded" if is_sharded_checkpoint(last) else "one-process"
        raise ConfigError(
            f"resume={run}: its {stage} checkpoint is {kind}; resume it with the trainer that "
            "wrote it (trainer.sharding set for a sharded run, unset otherwise)"
        )
    return last


def stage_checkpoint(run_dir: Path, stage: str) -> Path:
    """``run_dir``'s checkpoint of ``stage`` (a file, or a sharded run's directory)."""
    ckpt = run_dir / "checkpoints" / CHECKPOINTS[stage]
    if not ckpt.exists():
        raise FileNotFoundError(f"{ckpt}: no checkpoint for stage {stage!r} in this run")
    return ckpt


def trained_stats(run_dir: Path, stages: Iterable[str]) -> DenseStats | None:
    """The dense statistics ``run_dir``'s stages trained with, saved with their
    checkpoints (the data module's state): what evaluation, export and a warm start
    must apply, not the statistics of whatever the dataset's train split holds now.
    None for checkpoints without them. Raises ConfigError when the stages disagree
    (one serving bundle applies one standardisation)."""
    found: dict[str, DenseStats] = {}
    for stage in stages:
        ckpt = stage_checkpoint(run_dir, stage)
        meta = ckpt / META_FILE if is_sharded_checkpoint(ckpt) else ckpt
        try:  # mmap: the tables are not read; a legacy (non-zip) file cannot be mapped
            saved = torch.load(meta, map_location="cpu", weights_only=False, mmap=True)
        except RuntimeError:
            saved = torch.load(meta, map_location="cpu", weights_only=False)
        stats = checkpoint_stats(saved)
        if stats is not None:
            found[stage] = stats
    first = next(iter(found.values()), None)
    if any(stats != first for stats in found.values()):
        raise ConfigError(
            f"{run_dir}: its stages trained with different dense statistics "
            f"({', '.join(found)}); one bundle standardises its inputs one way"
        )
    return first


def checkpoint_stats(checkpoint: dict[str, Any]) -> DenseStats | None:
    """The dense statistics in a Lightning checkpoint's data-module state (or None)."""
    stats = checkpoint.get(RecDataModule.__name__, {}).get("dense_stats")
    return DenseStats.from_dict(stats) if stats is not None else None


def trained_datamodule(stage: str, cfg: DictConfig, path: Path, run_dir: Path) -> RecDataModule:
    """:func:`stage_datamodule` with the dense statistics ``run_dir``'s stage trained with."""
    return stage_datamodule(stage, cfg, path, stats=trained_stats(run_dir, [stage]))


WARM_STATS = ("merged", "earlier", "own")


def warm_stats(mode: str, earlier: DenseStats | None, own: DenseStats) -> DenseStats:
    """``warm_start.dense_stats``: the statistics a warm-started stage standardises with.

    ``merged`` (default): the earlier run's and this split's together, i.e. those of
    every train split the chain has seen (a full retrain's, when the splits are
    disjoint days; a row in two splits counts twice); ``earlier``: the earlier
    run's, unchanged (the inputs exactly as the weights learned them); ``own``: this
    split's alone (a day's statistics can sit far from the ones the weights learned:
    counts that grow over the log shift by about a standard deviation)."""
    if mode not in WARM_STATS:
        raise ConfigError(f"warm_start.dense_stats={mode!r}: use one of {', '.join(WARM_STATS)}")
    if mode == "own" or earlier is None:
        return own
    try:
        merged = earlier.merged(own)  # checks that each feature's transform is unchanged
    except ValueError as e:
        raise ConfigError(f"warm_start.dense_stats={mode}: {e}") from None
    if mode == "earlier":  # features new in this run: their own statistics
        merged = DenseStats({**merged.moments, **earlier.moments})
    return DenseStats({k: merged[k] for k in own.moments})  # this schema's features


def warm_start_run(cfg: DictConfig) -> Path | None:
    """``warm_start.run``: the earlier run every stage starts from (None: from scratch)."""
    run = OmegaConf.select(cfg, "warm_start.run", default=None)
    if not run:
        return None
    if not (Path(run) / "checkpoints").is_dir():
        raise ConfigError(f"warm_start.run={run}: not a run directory (no checkpoints/ in it)")
    return Path(run)


def track_ids(cfg: DictConfig, schema: Schema, run_dir: Path, lead: bool) -> dict | None:
    """When each table row was last looked up, over this run's train split and the
    runs it warm-started from (``checkpoints/id_activity.npz``, what the next day's
    ``warm_start.expire_after`` reads). Returns the rows that warm start resets
    (table -> bool [earlier rows]), or None. Reads a validated train split."""
    now = id_activity.last_seen(schema)
    run = warm_start_run(cfg)
    earlier_file = run / "checkpoints" / id_activity.ACTIVITY_FILE if run is not None else None
    earlier = (
        id_activity.load(earlier_file)
        if earlier_file is not None and earlier_file.exists()
        else None
    )
    expired = expiry(earlier, now, OmegaConf.select(cfg, "warm_start.expire_after", default=None))
    state = id_activity.merged(earlier, now, expired) if earlier is not None else now
    if lead:
        id_activity.save(run_dir / "checkpoints" / id_activity.ACTIVITY_FILE, state)
    return expired


class IdTracking:
    """:func:`track_ids` once per run, at its first stage (once the data module has
    validated the split it reads)."""

    def __init__(self, cfg: DictConfig, run_dir: Path, lead: bool) -> None:
        self.cfg, self.run_dir, self.lead = cfg, run_dir, lead
        self._expired: dict | None = None
        self._done = False

    def expired(self, schema: Schema) -> dict | None:
        if not self._done:
            self._expired = track_ids(self.cfg, schema, self.run_dir, self.lead)
            self._done = True
        return self._expired


def start_warm(
    stage: str,
    cfg: DictConfig,
    module: pl.LightningModule,
    dm: RecDataModule,
    run: Path,
    expired: dict[str, np.ndarray] | None,
) -> str:
    """``warm_start.*``: ``module`` takes ``run``'s final model of the stage (and its
    optimisers' state and last learning-rate factor), ``dm`` the statistics of the
    chain's train splits (:mod:`ranking.warm_start`). Returns what was carried, as
    logged (the stage's MLflow run keeps it as its ``warm_start`` tag)."""
    earlier = earlier_checkpoint(run / "checkpoints" / CHECKPOINTS[stage])
    report = warm_start(
        module,
        earlier["state_dict"],
        dm.schema,
        expired,
        partial=bool(OmegaConf.select(cfg, "warm_start.partial", default=False)),
    )
    if OmegaConf.select(cfg, "warm_start.optimizer", default=True):
        carry_optimizer(module, earlier, dm.schema, report, expired, sharded=sharded(cfg))
    schedule = OmegaConf.select(cfg, "warm_start.schedule", default="continue")
    if schedule == "continue":
        continue_schedule(module, earlier, report)
    elif schedule != "restart":
        raise ConfigError(f"warm_start.schedule={schedule!r}: use continue or restart")
    mode = str(OmegaConf.select(cfg, "warm_start.dense_stats", default="merged"))
    dm.use_stats(warm_stats(mode, checkpoint_stats(earlier), dm.stats))
    summary = f"from {run}: {report.summary()}; dense statistics: {mode}"
    log.info("%s: warm start %s", stage, summary)
    return summary


def train_stage(
    stage: str,
    cfg: DictConfig,
    path: Path,
    tracker: Tracker,
    run_dir: Path,
    ids: IdTracking | None = None,
) -> tuple[pl.LightningModule, dict[str, float]]:
    """Fit one stage, test it, save its checkpoint. Returns (module, test metrics).
    With ``<stage>.early_stopping.metric`` the best epoch's model is the one tested,
    saved and returned, and its validation metrics are the module's ``last_metrics``.

    ``ids`` records the run's id activity. With ``warm_start.run`` the module
    starts from that run's final model of the stage (:mod:`ranking.warm_start`),
    the rows of expired ids reset."""
    dm = stage_datamodule(stage, cfg, path)
    module = build_stage(stage, cfg, dm.schema)
    expired = ids.expired(dm.schema) if ids is not None else None
    run, resumed = warm_start_run(cfg), resume_checkpoint(cfg, stage)
    tags = {}
    if run is not None and resumed is None:
        tags["warm_start"] = start_warm(stage, cfg, module, dm, run, expired)
    elif run is not None:  # the checkpoint holds the warm-started state, optimisers included
        log.info("%s: resuming %s (warm-started from %s)", stage, resumed, run)
        tags["warm_start"] = f"from {run}: resumed from {resumed}"
    with tracker.child(stage, dm.schema.name, tags) as logger:
        trainer = make_trainer(cfg, cfg[stage].epochs, logger, run_dir, stage=stage)
        best = next((c for c in trainer.callbacks if isinstance(c, BestEpoch)), None)
        if best is not None and resumed is not None:
            best.resume_dir = resumed.parent  # where the killed run kept its best
        trainer.fit(module, datamodule=dm, ckpt_path=resumed)
        kept = best.adopt(trainer) if best is not None else None
        if best is not None:  # early_stopping: test, save and export the best epoch's model
            summary = best.summary()  # before the test, which reloads the callback's state
            (log.info if kept is not None else log.warning)("%s: %s", stage, summary)
            tracker.set_tags({"early_stopping": summary})
            module.last_metrics.update(best.best_metrics)  # and report its validation
        trainer.test(module, datamodule=dm, verbose=False, ckpt_path=kept)
        ckpt = run_dir / "checkpoints" / CHECKPOINTS[stage]
        if kept is not None:
            copy_checkpoint(trainer, kept, ckpt)
        else:
            trainer.save_checkpoint(ckpt, weights_only=False)
        metrics = test_metrics(module.last_metrics)
        tracker.log_metrics(metrics)
    return module, metrics


def test_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """The test stage's metrics and those of its slices (``test/...``, ``test_<slice>/...``)."""
    return {k: v for k, v in metrics.items() if k.startswith(("test/", "test_"))}


def load_stage(stage: str, cfg: DictConfig, schema: Schema, run_dir: Path) -> pl.LightningModule:
    """Rebuild a stage's module from a run's config and load its checkpoint (a file,
    or a sharded run's directory: the one function that gathers a sharded model's
    state into a single-process model, for evaluation and export)."""
    module = build_stage(stage, cfg, schema)
    ckpt = stage_checkpoint(run_dir, stage)
    if is_sharded_checkpoint(ckpt):  # a sharded run's: its tables gathered into one process
        load_model_state(module, ckpt)
    else:
        state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
        module.load_state_dict(state)
    return module.eval()


def export_run(
    cfg: DictConfig,
    path: Path,
    retrieval: RetrievalModule,
    ranking: RankingModule | None,
    out: Path,
    metrics: dict[str, float],
    run_id: str | None,
    stats: DenseStats | None = None,
) -> Path:
    """The serving bundle of the trained stages. ``stats``: the dense statistics they
    trained with (:func:`trained_stats`; the bundle's preprocessing contract), None:
    those of ``path``'s train split (modules trained on it from scratch)."""
    dm = build_datamodule(cfg, path, stats=stats)
    return export_bundle(
        out,
        dm.schema,
        dm.stats.to_dict(),
        retrieval.model,
        ranking.model if ranking is not None else None,
        list(ranking.task.tasks) if ranking is not None else None,
        corpus_batches=dm.corpus_dataloader(),
        user_batches=dm.users_dataloader(),
        metrics=metrics,
        run_id=run_id,
        retrieve_k=cfg.export.retrieve_k,
        rank_by=cfg.export.rank_by,
        index=OmegaConf.to_container(cfg.export.get("index", {}), resolve=True),
        aoti=_aoti_option(cfg.export.get("aoti", False), ranking is not None),
    )


def _aoti_option(value: Any, has_ranker: bool) -> bool | list[str]:
    """``export.aoti``: true / false, or a list of artifact names (``[ranker]``)."""
    if isinstance(value, bool) or value is None:
        return bool(value)
    if isinstance(value, str):
        chosen = [value]
    elif isinstance(value, (list, tuple, ListConfig)):
        chosen = [str(v) for v in value]
    else:
        raise ConfigError(f"export.aoti={value!r}: use true, false or a list of artifact names")
    try:
        aoti_artifacts(chosen, ["user_tower", "item_tower"] + (["ranker"] if has_ranker else []))
    except ValueError as e:
        raise ConfigError(f"{e}; use true, false or a list of them") from None
    return chosen


def write_metrics(path: Path, metrics: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dict(sorted(metrics.items())), indent=2))
