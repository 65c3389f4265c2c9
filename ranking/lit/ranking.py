"""Lightning module for the multi-task ranking stage."""

from __future__ import annotations

from collections.abc import Callable

import pytorch_lightning as pl
import torch

from ranking.data.batch import Batch
from ranking.metrics.ranking import RankingMetrics
from ranking.models.dlrm import DLRM
from ranking.tasks.ranking import RankingTask


class RankingModule(pl.LightningModule):
    """Trains the ranker on every impression; logs ``stage/metric/task`` keys."""

    def __init__(
        self,
        model: DLRM,
        task: RankingTask,
        optimizer: Callable[..., torch.optim.Optimizer],
    ) -> None:
        super().__init__()
        self.model = model
        self.task = task
        self.optimizer_factory = optimizer
        self.metrics: RankingMetrics | None = None
        self.last_metrics: dict[str, float] = {}

    def _step(self, batch: Batch, stage: str) -> torch.Tensor:
        logits = self.model(batch)
        loss, per_task = self.task.loss(logits, batch.labels)
        size = len(batch)
        self.log(f"{stage}/loss", loss, batch_size=size, prog_bar=stage == "train")
        if stage != "train":
            self.metrics.update(self.task.probabilities(logits), batch.labels, batch.oracle)
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

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.optimizer_factory(self.parameters())
