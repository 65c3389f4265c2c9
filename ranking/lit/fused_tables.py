"""Optimisation of a model whose embedding tables may carry a fused optimiser.

Shared by the retrieval and ranking Lightning modules. Two optimisers, one
schedule: the dense parameters (MLPs, heads, task parameters) use a torch
optimiser built by ``optimizer_factory``; the embedding tables, when the
model's are fused (:mod:`ranking.modules.fused_embedding`), are updated inside
the backward pass by their own torchrec optimiser, which Lightning does not
see. An optional warm-up/decay :class:`~ranking.lit.schedule.WarmupSchedule`
scales both learning rates by the same factor of the global step.

Checkpoints: Lightning saves the model's ``state_dict`` (tables included, under
the EmbeddingBagCollection's keys) and the dense optimiser and scheduler; the
fused optimiser's state (e.g. one Adagrad accumulator per table row) lives
inside fbgemm's kernel, so :meth:`FusedTables.on_save_checkpoint` adds it under
``"sparse_optimizer"`` and :meth:`FusedTables.on_load_checkpoint` copies it
back. Resuming from ``last.ckpt`` continues exactly where the run stopped.

Sharding (:class:`~ranking.lit.sharding.TorchrecStrategy`): ``configure_model``
wraps the model in torchrec's DistributedModelParallel, which shards its tables
in place; the training step runs through that wrapper (:attr:`FusedTables.net`),
so the dense gradients are all-reduced across ranks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
import torch

from ranking.lit.schedule import WarmupSchedule
from ranking.modules.fused_embedding import fused_optimizer

SPARSE_STATE_KEY = "sparse_optimizer"


class FusedTables(pl.LightningModule):
    """Base of a LightningModule whose ``self.model`` has ``sparse`` (its tables)
    and ``fused`` (whether they carry their own optimiser).

    Call :meth:`init_optimisation` from ``__init__`` once ``self.model`` is set.
    """

    def init_optimisation(
        self,
        optimizer: Callable[..., torch.optim.Optimizer],
        schedule: dict[str, Any] | None = None,
    ) -> None:
        """``optimizer``: factory of the dense optimiser (called with the dense
        parameters); ``schedule``: :class:`WarmupSchedule` fields except
        ``total_steps`` (taken from the trainer), or None for constant rates."""
        self.optimizer_factory = optimizer
        self.schedule_options = dict(schedule) if schedule else None
        self.schedule: WarmupSchedule | None = None
        self.sparse_lr = (
            float(fused_optimizer(self.model.sparse).param_groups[0]["lr"])
            if self.model.fused
            else None
        )
        self.__dict__["_sharded"] = None  # the DMP wrapper, kept out of the module tree
        self._carried_dense: dict[int, dict[str, Any]] | None = None

    @property
    def net(self) -> torch.nn.Module:
        """What the training step calls: the DMP wrapper when sharded, else the model."""
        return self._sharded if self._sharded is not None else self.model

    def configure_model(self) -> None:
        from ranking.lit.sharding import TorchrecStrategy

        trainer = self._trainer
        if self._sharded is None and isinstance(
            getattr(trainer, "strategy", None), TorchrecStrategy
        ):
            if not self.model.fused:
                raise ValueError(
                    "sharded training needs fused tables (conf/optimizer/fused*.yaml): a "
                    "stage optimizer without `sparse` (e.g. adam) updates dense table "
                    "gradients, which DistributedModelParallel does not produce"
                )
            self.__dict__["_sharded"] = trainer.strategy.shard(self.model)

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

    def continue_rates(self, factor: float, warmup_steps: int = 0, offset: int = 0) -> None:
        """Train at ``factor`` x the configured learning rates, without decay: a warm
        start continuing where the earlier run's schedule ended (at the end of its
        decay; or within its warm-up: ``warmup_steps``, ``offset`` steps of it done)."""
        self.schedule_options = {
            "warmup_steps": int(warmup_steps),
            "decay": "constant",
            "scale": float(factor),
            "offset": int(offset),
        }

    def carry_dense_state(self, state: dict[int, dict[str, Any]]) -> None:
        """Start the dense optimiser from ``state`` (its ``state_dict()["state"]``: one
        entry per index of :meth:`dense_parameters`; a warm start's,
        :func:`ranking.warm_start.carry_optimizer`) instead of empty; its learning rates
        stay this run's. Loaded when training starts from step 0 (a resumed run
        restores its own)."""
        self._carried_dense = state

    def on_train_start(self) -> None:
        if self.schedule is not None:
            self.schedule.total_steps = int(self.trainer.estimated_stepping_batches)
        if self._carried_dense is not None and self.global_step == 0:
            optimizer = self.trainer.optimizers[0]
            optimizer.load_state_dict({**optimizer.state_dict(), "state": self._carried_dense})
        self._carried_dense = None

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # The fused update happens in this step's backward: set its rate before.
        if self.sparse_lr is None:
            return
        factor = self.schedule(self.global_step) if self.schedule is not None else 1.0
        fused = fused_optimizer(self.model.sparse)
        for group in fused.param_groups:
            group["lr"] = self.sparse_lr * factor
        fused.step()  # a fused "step" only hands the learning rate to the kernel

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.model.fused:
            checkpoint[SPARSE_STATE_KEY] = fused_optimizer(self.model.sparse).state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.model.fused and SPARSE_STATE_KEY in checkpoint:
            fused_optimizer(self.model.sparse).load_state_dict(checkpoint[SPARSE_STATE_KEY])
