"""Lightning module for the multi-task ranking stage."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch

from ranking.data.batch import Batch
from ranking.lit.fused_tables import FusedTables
from ranking.lit.sharding import gathered
from ranking.lit.slices import present_slices
from ranking.metrics.ranking import RankingMetrics
from ranking.models.dlrm import DLRM
from ranking.tasks.ranking import RankingTask

log = logging.getLogger("ranking")


class RankingModule(FusedTables):
    """Trains the ranker on every impression; logs ``stage/metric/task`` keys.

    Optimisation (:class:`~ranking.lit.fused_tables.FusedTables`): the dense
    parts (MLPs, attention, heads) use ``optimizer`` (a torch optimiser
    factory, e.g. AdamW); the embedding tables, when the model's are fused, are
    updated inside the backward pass by their own torchrec optimiser (row-wise
    Adagrad), which Lightning does not see. The warm-up/decay schedule scales
    both learning rates by the same factor of the global step. Checkpoints hold
    the fused optimiser's state too, so resuming from ``last.ckpt`` continues
    exactly where the run stopped. With more than one rank, each evaluates its
    part of the rows and the metrics are computed over all of them (gathered).

    Args:
        model: the ranker.
        task: loss per task.
        optimizer: factory of the dense optimiser, called with the dense parameters.
        schedule: :class:`WarmupSchedule` fields except ``total_steps`` (taken from
            the trainer), or None for constant learning rates.
        slices: stage name -> ``{"column": ..., "value": ...}``: test rows where the
            column equals the value, evaluated again as ``<stage>/...`` (e.g.
            ``test_random/auc/click`` on the random-exposure rows; skipped with a
            log line when the test files have no such column).
    """

    def __init__(
        self,
        model: DLRM,
        task: RankingTask,
        optimizer: Callable[..., torch.optim.Optimizer],
        schedule: dict[str, Any] | None = None,
        slices: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.task = task
        self.init_optimisation(optimizer, schedule)
        self.slices = dict(slices or {})
        self.metrics: RankingMetrics | None = None
        self.last_metrics: dict[str, float] = {}

    # ---- steps -------------------------------------------------------------------
    def _step(self, batch: Batch, stage: str) -> torch.Tensor | None:
        logits = self.net(batch)
        if batch.padding:  # ran only to keep sharded ranks in step
            return None
        loss, per_task = self.task.loss(logits, batch.labels)
        size = len(batch)
        self.log(f"{stage}/loss", loss, batch_size=size, prog_bar=stage == "train")
        if stage == "train" and len(per_task) > 1:
            for t, v in per_task.items():
                self.log(f"train/loss/{t}", v, batch_size=size)
        if stage != "train":
            self.metrics.update(
                self.task.probabilities(logits), batch.labels, batch.oracle, batch.user_ids
            )
        return loss

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def _eval_end(self, stage: str) -> None:
        logged = {f"{stage}/{k}": v for k, v in gathered(self.metrics).compute().items()}
        self.log_dict(logged)
        if not self.trainer.sanity_checking:  # the 2-batch check before training is no result
            self.last_metrics.update(logged)
        self.metrics = None

    def on_validation_epoch_start(self) -> None:
        self.metrics = RankingMetrics(self.task.tasks)

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._step(batch, "valid")

    def on_validation_epoch_end(self) -> None:
        self._eval_end("valid")

    def on_test_epoch_start(self) -> None:
        self.metrics = RankingMetrics(self.task.tasks)

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._step(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._eval_end("test")
        for logged in self.slice_metrics(self.trainer.datamodule).values():
            self.log_dict(logged)
            self.last_metrics.update(logged)

    @torch.no_grad()
    def slice_metrics(self, dm: Any) -> dict[str, dict[str, float]]:
        """Slice stage -> its ``<stage>/metric/task`` values over the test rows of
        ``self.slices`` (a slice without rows is skipped with a log line)."""
        out = {}
        for stage, column, value in present_slices(dm.schema, "test", self.slices, "ranking"):
            metrics = RankingMetrics(self.task.tasks)
            for batch in dm.slice_dataloader("test", column, value):
                batch = batch.to(self.device)
                probs = self.task.probabilities(self.net(batch))
                if not batch.padding:
                    metrics.update(probs, batch.labels, batch.oracle, batch.user_ids)
            metrics = gathered(metrics)  # every rank's rows
            if not metrics.count:
                log.warning(
                    "ranking: the slice %s (%s == %s) holds no test row; its metrics are "
                    "not reported",
                    stage,
                    column,
                    value,
                )
                continue
            out[stage] = {f"{stage}/{k}": v for k, v in metrics.compute().items()}
        return out
