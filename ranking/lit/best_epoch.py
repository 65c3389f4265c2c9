"""Keep a stage's best epoch by a validation metric; stop once it stops improving.

``<stage>.early_stopping.metric`` (e.g. ``valid/auc/click``, ``valid/recall@100``)
turns it on. After every validation, :class:`BestEpoch` compares the metric with
the best so far:

- an improvement (by more than ``min_delta``, in the metric's ``direction``)
  writes ``checkpoints/<stage>/best-step<N>.ckpt``, a full checkpoint (weights,
  the dense and the fused optimisers' state, the schedule);
- after ``patience`` validations without one, training stops (``null``: every
  epoch runs, and the best is kept). A metric that is not finite (NaN) stops
  training too, keeping the best before it.

The stage then tests the best checkpoint and saves it as its final model
(``checkpoints/<stage>.ckpt``), the model that ``ranking-eval``, the export and a
next day's warm start read. Its validation metrics are the ones the sweep
objective reads.

The comparison, the patience count, the stop on a non-finite metric and the state
saved with every ``last.ckpt`` come from Lightning's ``EarlyStopping``. A run
resumed from ``last.ckpt`` therefore counts on from where it was killed. When the
killed run had already decided to stop, the resumed run stops too instead of
training another epoch, and the earlier run's best checkpoint is copied into
the new run directory.
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

MODES = {"maximize": "max", "minimize": "min"}


class BestEpoch(EarlyStopping):
    """Lightning's EarlyStopping that also keeps the best checkpoint.

    The best is written as ``best-step<N>.ckpt`` (through a temporary name, then
    renamed, so a kill never leaves a torn file). A new best keeps the previous
    one beside it, since the last ``last.ckpt`` may still name that one; older
    ones go, and the previous one too once training starts or ends.

    Args:
        metric: a validation metric the stage logs (``valid/...``).
        direction: ``maximize`` or ``minimize``.
        patience: validations without improvement before training stops; None:
            never stop early (only keep the best).
        min_delta: the smallest change that counts as an improvement.
        dirpath: the stage's checkpoint directory (where the best goes).
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
        self.dirpath = Path(dirpath)
        self.stage = stage
        #: (0-based) epoch and global step of the best validation so far, its valid/* metrics
        self.best_epoch: int | None = None
        self.best_step = 0
        self.best_metrics: dict[str, float] = {}
        self.best_name: str | None = None  # its file in the stage's checkpoint directory
        self.epochs_run = self.steps_run = 0
        #: a resumed run: the killed run's checkpoint directory (where its best is)
        self.resume_dir: Path | None = None

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
        improved = not torch.equal(self.best_score.cpu(), before.cpu())
        # every rank saves (a sharded checkpoint is collective): rank 0's decision for all
        if not trainer.strategy.broadcast(improved, src=0):
            return
        self.best_epoch, self.best_step = trainer.current_epoch, trainer.global_step
        self.best_metrics = {  # as the module reports them (its objective's source)
            k: float(v) for k, v in module.last_metrics.items() if k.startswith("valid/")
        }
        self._save(trainer, f"best-step{trainer.global_step}.ckpt")

    def _save(self, trainer: pl.Trainer, name: str) -> None:
        """Write the best under ``name``; keep the previous best, drop any older."""
        tmp = self.dirpath / f".{name}.partial"
        trainer.save_checkpoint(tmp, weights_only=False)  # optimisers too: a warm start's
        if trainer.is_global_zero:
            _remove(self.dirpath / name)
            tmp.rename(self.dirpath / name)
            self._prune({name, self.best_name})
        trainer.strategy.barrier()
        self.best_name = name

    def _prune(self, keep: set[str | None]) -> None:
        """Drop the best checkpoints not in ``keep`` (and a killed write's leftovers)."""
        for old in [*self.dirpath.glob("best-step*.ckpt"), *self.dirpath.glob(".best-step*")]:
            if old.name not in keep:
                _remove(old)

    # ---- resume --------------------------------------------------------------------
    def on_train_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self.adopt(trainer)
        if self.stopping_reason != EarlyStoppingReason.NOT_STOPPED:
            trainer.should_stop = True  # the killed run had already decided to stop

    def adopt(self, trainer: pl.Trainer) -> Path | None:
        """The best checkpoint, in this run's directory: a resumed run's best is the
        killed run's until copied here. Called on every rank where ``last.ckpt``
        names the current best (when training starts or ends); rank 0 copies and
        drops the older bests. None: no validation has run."""
        if self.best_name is None:
            return None
        here = self.dirpath / self.best_name
        there = self.resume_dir / self.best_name if self.resume_dir is not None else None
        if not here.exists() and (there is None or not there.exists()):
            raise ConfigError(
                f"{self.stage}: early stopping's best checkpoint {self.best_name} is "
                f"neither in {self.dirpath} nor in the resumed run's {self.resume_dir}"
            )
        if trainer.is_global_zero:
            if not here.exists():
                _copy(there, here)
            self._prune({self.best_name})
        trainer.strategy.barrier()
        return here

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "best_epoch": self.best_epoch,
            "best_step": self.best_step,
            "best_metrics": dict(self.best_metrics),
            "best_name": self.best_name,
            "epochs_run": self.epochs_run,
            "steps_run": self.steps_run,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.best_epoch = state_dict.get("best_epoch")
        self.best_step = int(state_dict.get("best_step", 0))
        self.best_metrics = dict(state_dict.get("best_metrics") or {})
        self.best_name = state_dict.get("best_name")
        self.epochs_run = int(state_dict.get("epochs_run", 0))
        self.steps_run = int(state_dict.get("steps_run", 0))

    # ---- the result ----------------------------------------------------------------
    def summary(self) -> str:
        """One line: which epoch was kept and why training ended."""
        if self.best_epoch is None:
            return f"no validation of {self.monitor} ran: the last model is kept"
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


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def _copy(source: Path, target: Path) -> None:
    """Copy a checkpoint: a file, or a sharded run's directory."""
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove(target)
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
        delta = node.get("min_delta", 0.0)
        if isinstance(delta, bool) or not isinstance(delta, (int, float)) or delta < 0:
            raise ConfigError(f"{key}.min_delta={delta!r}: a number >= 0")
        every = OmegaConf.select(cfg, "trainer.check_val_every_n_epoch", default=1) or 1
        if int(every) > int(cfg[stage].epochs):
            raise ConfigError(
                f"{key}.metric={metric!r}: trainer.check_val_every_n_epoch={every} exceeds "
                f"{stage}.epochs={cfg[stage].epochs}, so no validation would run"
            )
        if OmegaConf.select(cfg, "trainer.limit_val_batches") == 0:
            raise ConfigError(
                f"{key}.metric={metric!r} needs validation, but trainer.limit_val_batches=0"
            )
