"""Lightning module for the multi-task ranking stage."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
import torch

from ranking.data.batch import Batch
from ranking.lit.schedule import WarmupSchedule
from ranking.metrics.ranking import RankingMetrics
from ranking.models.dlrm import DLRM
from ranking.tasks.ranking import RankingTask

SPARSE_STATE_KEY = "sparse_optimizer"


class RankingModule(pl.LightningModule):
    """Trains the ranker on every impression; logs ``stage/metric/task`` keys.

    Two optimisers, one schedule: the dense parts (MLPs, attention, heads) use
    ``optimizer`` (a torch optimiser factory, e.g. AdamW); the embedding tables,
    when the model's are fused, are updated inside the backward pass by their
    own torchrec optimiser (row-wise Adagrad), which Lightning does not see. The
    warm-up/decay :class:`WarmupSchedule` scales both learning rates by the
    same factor of the global step.

    Checkpoints: Lightning saves the model's ``state_dict`` (tables included,
    under the EmbeddingBagCollection's keys) and the dense optimiser and
    scheduler; the fused optimiser's state (one Adagrad accumulator per table
    row) lives inside fbgemm's kernel, so :meth:`on_save_checkpoint` adds it
    under ``"sparse_optimizer"`` and :meth:`on_load_checkpoint` copies it back.
    Resuming from ``last.ckpt`` therefore continues exactly where the run stopped.

    Args:
        model: the ranker.
        task: loss per task.
        optimizer: factory of the dense optimiser, called with the dense parameters.
        schedule: :class:`WarmupSchedule` fields except ``total_steps`` (taken from
            the trainer), or None for constant learning rates.
    """

    def __init__(
        self,
        model: DLRM,
        task: RankingTask,
        optimizer: Callable[..., torch.optim.Optimizer],
        schedule: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.task = task
        self.optimizer_factory = optimizer
        self.schedule_options = dict(schedule) if schedule else None
        self.schedule: WarmupSchedule | None = None
        self.sparse_lr = (
            float(model.sparse.fused_optimizer().param_groups[0]["lr"]) if model.fused else None
        )
        self.metrics: RankingMetrics | None = None
        self.last_metrics: dict[str, float] = {}

    # ---- steps -------------------------------------------------------------------
    def _step(self, batch: Batch, stage: str) -> torch.Tensor:
        logits = self.model(batch)
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
        logged = {f"{stage}/{k}": v for k, v in self.metrics.compute().items()}
        self.log_dict(logged)
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

    # ---- optimisation ------------------------------------------------------------
    def dense_parameters(self) -> list[torch.nn.Parameter]:
        """Every parameter except the fused tables' (their optimiser is their own)."""
        fused = {id(p) for p in self.model.sparse.parameters()} if self.model.fused else set()
        return [p for p in self.parameters() if id(p) not in fused]

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.dense_parameters())
        if self.schedule_options is None:
            return optimizer
        # total_steps is filled in on_train_start: asking the trainer for it here
        # would build the train iterator before a resumed run has restored its epoch.
        self.schedule = WarmupSchedule(**self.schedule_options)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, self.schedule)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    def on_train_start(self) -> None:
        if self.schedule is not None:
            self.schedule.total_steps = int(self.trainer.estimated_stepping_batches)

    def on_train_batch_start(self, batch: Batch, batch_idx: int) -> None:
        # The fused update happens in this step's backward: set its rate before.
        if self.sparse_lr is None:
            return
        factor = self.schedule(self.global_step) if self.schedule is not None else 1.0
        fused = self.model.sparse.fused_optimizer()
        for group in fused.param_groups:
            group["lr"] = self.sparse_lr * factor
        fused.step()  # a fused "step" only hands the learning rate to the kernel

    # ---- checkpoints ---------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.model.fused:
            checkpoint[SPARSE_STATE_KEY] = self.model.sparse.fused_optimizer().state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.model.fused and SPARSE_STATE_KEY in checkpoint:
            self.model.sparse.fused_optimizer().load_state_dict(checkpoint[SPARSE_STATE_KEY])
