"""Keep a stage's best epoch by a validation metric; stop once it stops improving.

``<stage>.early_stopping.metric`` (e.g. ``valid/auc/click``, ``valid/recall@100``)
turns it on. After every validation, :class:`BestEpoch` compares the metric with
the best so far:

- an improvement (by more than ``min_delta``, in the metric's ``direction``)
  writes ``checkpoints/<stage>/best.ckpt``, a full checkpoint (weights, the
  dense and the fused optimisers' state, the schedule);
- after ``patience`` validations without one, training stops (``null``: every
  epoch runs, and the best is kept).

The stage then tests the best checkpoint and saves it as its final model
(``checkpoints/<stage>.ckpt``), the model that ``ranking-eval``, the export and a
next day's warm start read. Its validation metrics are the ones the sweep
objective reads.

The comparison, the patience count, the stop on a non-finite metric and the state
saved with every ``last.ckpt`` come from Lightning's ``EarlyStopping``. A run
resumed from ``last.ckpt`` therefore counts on from where it was killed. When the
killed run had already decided to stop, the resumed run stops too instead of
training another epoch, and the earlier run's ``best.ckpt`` is copied into the
new run directory.
"""

from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import EarlyStopping
from pytorch_lightning.callbacks.early_stopping import EarlyStoppingReason

from ranking.data.errors import ConfigError

log = logging.getLogger("ranking")

BEST_FILE = "best.ckpt"
MODES = {"maximize": "max", "minimize": "min"}


class BestEpoch(EarlyStopping):
    """Lightning's EarlyStopping that also keeps the best checkpoint.

    Args:
        metric: a validation metric the stage logs (``valid/...``).
        direction: ``maximize`` or ``minimize``.
        patience: validations without improvement before training stops; None:
            never stop early (only keep the best).
        min_delta: the smallest change that counts as an improvement.
        dirpath: where ``best.ckpt`` goes (the stage's checkpoint directory).
        stage: the stage's name, for messages (``ranking.early_stopping...``).
    """

    def __init__(
        self,
        metric: str,
        direction: str = "maximize",
        patience: int | None = None,
        min_delta: float = 0.0,
        dirpath: Path | str = ".",
        stage: str = "stage",
    ) -> None:
        super().__init__(
            monitor=metric,
            mode=MODES[direction],
            patience=sys.maxsize if patience is None else int(patience),
            min_delta=float(min_delta),
            strict=True,
            verbose=True,
        )
        self.path = Path(dirpath) / BEST_FILE
        self.stage = stage
        #: (0-based) epoch and global step of the best validation so far, its valid/* metrics
        self.best_epoch: int | None = None
        self.best_step = 0
        self.best_metrics: dict[str, float] = {}
        # where the best checkpoint is (a resumed run: the earlier run's, until copied)
        self._saved_at: Path | None = None
        self.epochs_run = self.steps_run = 0

    # ---- the check, around EarlyStopping's -----------------------------------------
    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self.epochs_run, self.steps_run = trainer.current_epoch + 1, trainer.global_step
        self._select(trainer, module, super().on_train_epoch_end, self._check_on_train_epoch_end)

    def on_validation_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self._select(trainer, module, super().on_validation_end, not self._check_on_train_epoch_end)

    def _select(
        self, trainer: pl.Trainer, module: pl.LightningModule, check: Any, due: bool
    ) -> None:
        if not due or self._should_skip_check(trainer) or trainer.fast_dev_run:
            return
        logged = trainer.callback_metrics
        if self.monitor not in logged:
            raise ConfigError(
                f"{self.stage}.early_stopping.metric={self.monitor!r} is not a validation "
                f"metric of this stage; it logs: "
                + ", ".join(sorted(k for k in logged if k.startswith("valid/")))
            )
        before = self.best_score.clone()
        check(trainer, module)  # EarlyStopping: compare, count, maybe stop
        if torch.equal(self.best_score.cpu(), before.cpu()):
            return
        self.best_epoch, self.best_step = trainer.current_epoch, trainer.global_step
        self.best_metrics = {
            k: float(v) for k, v in logged.items() if k.startswith("valid/") and v.numel() == 1
        }
        trainer.save_checkpoint(self.path, weights_only=False)  # optimisers too: a warm start's
        self._saved_at = self.path

    # ---- resume --------------------------------------------------------------------
    def on_train_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        earlier = self._saved_at
        if earlier is not None and earlier != self.path:
            # resumed from another run's last.ckpt: its best checkpoint, into this run
            if trainer.is_global_zero:
                _copy(earlier, self.path)
            trainer.strategy.barrier()
            self._saved_at = self.path
        if self.stopping_reason != EarlyStoppingReason.NOT_STOPPED:
            trainer.should_stop = True  # the killed run had already decided to stop

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "best_epoch": self.best_epoch,
            "best_step": self.best_step,
            "steps_run": self.steps_run,
            "best_metrics": dict(self.best_metrics),
            "best_path": str(self._saved_at) if self._saved_at is not None else None,
            "epochs_run": self.epochs_run,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.best_epoch = state_dict.get("best_epoch")
        self.best_step = int(state_dict.get("best_step", 0))
        self.steps_run = int(state_dict.get("steps_run", 0))
        self.best_metrics = dict(state_dict.get("best_metrics") or {})
        path = state_dict.get("best_path")
        self._saved_at = Path(path) if path else None
        self.epochs_run = int(state_dict.get("epochs_run", 0))

    # ---- the result ----------------------------------------------------------------
    @property
    def best_path(self) -> Path | None:
        """The best checkpoint (None: no validation ran)."""
        return self._saved_at

    def summary(self) -> str:
        """One line: which epoch was kept and why training ended."""
        if self.best_epoch is None:
            return f"no validation of {self.monitor}: the last epoch is kept"
        value = self.best_metrics.get(self.monitor, float("nan"))
        ended = (
            f"stopped early ({self.stopping_reason_message})"
            if self.stopping_reason != EarlyStoppingReason.NOT_STOPPED
            else "every epoch trained"
        )
        return (
            f"kept epoch {self.best_epoch + 1} of {self.epochs_run} (step {self.best_step} of "
            f"{self.steps_run}): {self.monitor} {value:.4f}; {ended}"
        )


def _copy(source: Path, target: Path) -> None:
    """Copy a checkpoint: a file, or a sharded run's directory."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_dir():
        shutil.rmtree(target)
    elif target.exists():
        target.unlink()
    if source.is_dir():
        shutil.copytree(source, target)
    else:
        shutil.copyfile(source, target)


def copy_checkpoint(trainer: pl.Trainer, source: Path, target: Path) -> None:
    """``source`` as ``target``, written by the lead process, then every rank waits."""
    if trainer.is_global_zero:
        _copy(source, target)
    trainer.strategy.barrier()


def early_stopping(cfg: DictConfig, stage: str, dirpath: Path) -> BestEpoch | None:
    """The stage's :class:`BestEpoch` from ``<stage>.early_stopping`` (None: off)."""
    node = OmegaConf.select(cfg, f"{stage}.early_stopping", default=None)
    if not node or not node.get("metric"):
        return None
    return BestEpoch(
        str(node.metric),
        direction=str(node.get("direction", "maximize")),
        patience=node.get("patience"),
        min_delta=float(node.get("min_delta", 0.0)),
        dirpath=dirpath,
        stage=stage,
    )


def check_early_stopping(cfg: DictConfig) -> None:
    """Before training: each enabled stage's early-stopping options. The metric's
    exact name is checked at the first validation, against what the stage logs."""
    for stage in ("retrieval", "ranking"):
        node = OmegaConf.select(cfg, f"{stage}.early_stopping", default=None)
        if stage not in cfg.stages or not node or not node.get("metric"):
            continue
        key = f"{stage}.early_stopping"
        metric = str(node.metric)
        if not metric.startswith("valid/"):
            raise ConfigError(
                f"{key}.metric={metric!r}: early stopping watches a validation metric "
                "(valid/..., e.g. valid/auc/click or valid/recall@100), never the test split"
            )
        direction = node.get("direction", "maximize")
        if direction not in MODES:
            raise ConfigError(f"{key}.direction={direction!r}: use maximize or minimize")
        patience = node.get("patience")
        if patience is not None and (type(patience) is not int or patience < 1):
            raise ConfigError(f"{key}.patience={patience!r}: a whole number >= 1, or null")
        if float(node.get("min_delta", 0.0)) < 0:
            raise ConfigError(f"{key}.min_delta={node.min_delta!r}: must be >= 0")
        if OmegaConf.select(cfg, "trainer.limit_val_batches") == 0:
            raise ConfigError(
                f"{key}.metric={metric!r} needs validation, but trainer.limit_val_batches=0"
            )
