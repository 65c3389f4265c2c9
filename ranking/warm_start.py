"""Continuous training: start each stage from an earlier run's final model.

A platform retrains every day on the day's new log. Training from scratch on
one day forgets what the earlier days taught; retraining on every day so far
grows without bound. Warm starting (``warm_start.run=runs/<yesterday>``,
conf/train.yaml) trains on today's partition from yesterday's model, as
ByteDance's Monolith does, and this module moves the state across:

- **What is copied**: every learned tensor of the stage's Lightning module (its
  parameters: tables, towers, heads, a learned temperature) and every buffer of
  its model. The task's buffers are statistics of the data (logQ's item
  probabilities, train exposures): they are this run's dataset's own.
- **New ids**: a table whose vocabulary grew (the schema's ``vocab_size`` rose:
  items released, users who signed up) keeps its earlier rows; the new rows
  keep their initial values, the start any new id gets. A table may not shrink,
  change width or change ``hash_buckets`` (each row would change meaning).
- **Stale ids** (``warm_start.expire_after``, in units of the time column): the
  rows of ids that no train row has looked up for longer than that before this
  run's first train event are reset to their initial values, as Monolith
  expires stale entries: an id that comes back after a long absence (a relisted
  product, a recycled hash bucket) starts again rather than from a stale row.
  Each run keeps the last sighting of every row, carried over from the run it
  started from (``checkpoints/id_activity.npz``, :mod:`ranking.data.id_activity`).
- **Anything else that differs** (a tensor only one side has, another shape: a
  changed model config) stops the run with a :class:`ConfigError` listing it;
  ``warm_start.partial=true`` keeps those tensors at their initial values.

- **Optimiser state** (``warm_start.optimizer``, on by default): the dense
  optimiser's per-parameter state (Adam's moments and step) and the fused tables'
  (row-wise Adagrad: one accumulated squared gradient per row) continue from the
  earlier run's end, grown and expired rows at their fresh values, as the weights.
  A fresh Adagrad accumulator makes a trained row's next steps as large as its
  first ever were (lr x gradient / |gradient|), which undoes part of what it
  learned. ``false``: every optimiser starts afresh; sharded runs (either side)
  need it, their optimiser state being split across ranks.
- **Learning rates** (``warm_start.schedule``): ``continue`` (default) trains at
  the factor the earlier run's schedule ended at (the cosine's ``min_factor``),
  constant, without a warm-up: the chain is one long run past its decay (an
  earlier run that stopped within its warm-up has it continued).
  ``restart`` runs this run's schedule from its start (warm-up to the full rate).
  Restarting at the full rate on top of a trained model loses part of it
  (docs/benchmarks.md, continuous training).

``resume=`` is different: it continues one interrupted run exactly.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ranking.data.errors import ConfigError
from ranking.data.id_activity import Activity
from ranking.lit.fused_tables import SPARSE_STATE_KEY, FusedTables
from ranking.modules.fused_embedding import fused_optimizer
from ranking.schema import Schema

_TABLE_KEY = re.compile(r"(?:^|\.)embedding_bags\.([^.]+)\.weight$")
#: marks a checkpoint :func:`earlier_checkpoint` read from a sharded run's directory
SHARDED = "_sharded"


@dataclass
class WarmStart:
    """What a warm start did to one stage's module.

    Attributes:
        copied: tensors taken from the earlier run (whole or grown).
        grown: table -> (earlier rows, rows now).
        expired: table -> rows reset to their initial values.
        fresh: tensors kept at their initial values (``partial``: new in this model).
        dropped: tensors of the earlier run this model does not have (``partial``).
        optimizer: what of the optimisers' state was carried (:func:`carry_optimizer`).
        rates: how the learning rates continue (:func:`continue_schedule`).
    """

    copied: int = 0
    grown: dict[str, tuple[int, int]] = field(default_factory=dict)
    expired: dict[str, int] = field(default_factory=dict)
    fresh: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    optimizer: list[str] = field(default_factory=list)
    rates: str | None = None

    def summary(self) -> str:
        parts = [f"{self.copied} tensors copied"]
        if self.optimizer:
            parts.append("optimiser state carried: " + ", ".join(self.optimizer))
        if self.rates is not None:
            parts.append(self.rates)
        parts += [f"{t} grew {a} -> {b} rows" for t, (a, b) in self.grown.items()]
        parts += [f"{t}: {n} expired rows reset" for t, n in self.expired.items() if n]
        if self.fresh:
            parts.append(f"kept initial values: {', '.join(self.fresh)}")
        if self.dropped:
            parts.append(f"not in this model: {', '.join(self.dropped)}")
        return "; ".join(parts)


def earlier_checkpoint(checkpoint: Path) -> dict[str, Any]:
    """A stage checkpoint's contents (a file, or a sharded run's
    torch.distributed.checkpoint directory with its meta file), read without
    building its model."""
    from ranking.lit.sharding import META_FILE, is_sharded_checkpoint

    if not checkpoint.exists():
        raise ConfigError(f"warm_start: {checkpoint} does not exist (no such stage in that run)")
    if not is_sharded_checkpoint(checkpoint):
        return torch.load(checkpoint, map_location="cpu", weights_only=False)
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    meta = torch.load(checkpoint / META_FILE, map_location="cpu", weights_only=False)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "state.pt"
        dcp_to_torch_save(str(checkpoint), str(out))
        return {**meta, **torch.load(out, map_location="cpu", weights_only=False), SHARDED: True}


def earlier_state(checkpoint: Path) -> dict[str, torch.Tensor]:
    """The ``state_dict`` of a stage checkpoint (see :func:`earlier_checkpoint`)."""
    return earlier_checkpoint(checkpoint)["state_dict"]


def warm_keys(module: torch.nn.Module) -> list[str]:
    """State keys a warm start copies: the module's parameters and its model's buffers."""
    params = {name for name, _ in module.named_parameters()}
    return [k for k in module.state_dict() if k in params or k.startswith("model.")]


def warm_start(
    module: torch.nn.Module,
    earlier: dict[str, torch.Tensor],
    schema: Schema,
    expired: dict[str, np.ndarray] | None = None,
    partial: bool = False,
) -> WarmStart:
    """Load ``earlier`` (a state dict) into ``module`` as the module docstring says.

    Args:
        module: the stage's freshly built module (its values are the initial ones).
        earlier: the earlier run's state dict (:func:`earlier_state`).
        schema: this run's schema (which tables are hashed).
        expired: table -> bool [earlier rows] to reset
            (:func:`ranking.data.id_activity.expired_rows`).
        partial: keep mismatched tensors at their initial values instead of failing.
    """
    state = module.state_dict()
    report = WarmStart()
    problems: list[str] = []
    for key in warm_keys(module):
        now = state[key]
        if key not in earlier:
            report.fresh.append(key)
            problems.append(f"{key} is new (not in the earlier model)")
            continue
        table = _table_of(key, schema)
        value, reset = carried(earlier[key], now, table, schema, expired)
        if value is None:
            report.fresh.append(key)
            problems.append(
                f"{key}: shape {tuple(earlier[key].shape)} earlier, {tuple(now.shape)} now"
            )
            continue
        if value.shape[0:1] != earlier[key].shape[0:1] and table is not None:
            report.grown[table] = (int(earlier[key].shape[0]), int(now.shape[0]))
        if reset is not None:
            report.expired[table] = reset
        state[key] = value
        report.copied += 1
    report.dropped = [k for k in earlier if k not in state]
    problems += [f"{k} is not in this model" for k in report.dropped]
    if problems and not partial:
        raise ConfigError(
            "warm_start: the earlier model does not fit this one ("
            + "; ".join(problems)
            + "). Train with the same model config, or warm_start.partial=true to keep "
            "those tensors at their initial values"
        )
    module.load_state_dict(state)
    return report


def carry_optimizer(
    module: FusedTables,
    earlier: dict[str, Any],
    schema: Schema,
    report: WarmStart,
    expired: dict[str, np.ndarray] | None = None,
    sharded: bool = False,
) -> None:
    """Continue ``earlier``'s optimiser state (a stage checkpoint,
    :func:`earlier_checkpoint`) in ``module``, as the module docstring says.

    The fused tables' state is loaded now; the dense optimiser's is handed to
    :meth:`~ranking.lit.fused_tables.FusedTables.carry_dense_state`, which loads
    it once ``trainer.fit`` has built that optimiser. ``report.optimizer`` says
    what was carried.

    Raises:
        ConfigError: the earlier run or this one is sharded; either side's state
            does not fit the other (another optimiser, another model); the
            earlier checkpoint holds no optimiser state.
    """
    if earlier.get(SHARDED) or sharded:
        raise ConfigError(
            "warm_start.optimizer=true: a sharded run's optimiser state is split across its "
            "ranks and is not carried over; set warm_start.optimizer=false (every optimiser "
            "starts afresh)"
        )
    problems: list[str] = []
    if module.model.fused:
        fused = fused_optimizer(module.model.sparse)
        now = fused.state_dict()
        before = earlier.get(SPARSE_STATE_KEY)
        if before is None:
            problems.append("the earlier checkpoint has no fused-table optimiser state")
        else:
            state, n = _carried_state(now["state"], before["state"], schema, expired, problems)
            if not problems:
                fused.load_state_dict({**now, "state": state})
                if n:  # (plain SGD keeps none)
                    report.optimizer.append(f"{n} table state tensors")
    dense = _dense_state(earlier)
    if dense is None:
        problems.append("the earlier checkpoint has no dense optimiser state")
    else:
        params = module.dense_parameters()
        names = {id(p): n for n, p in module.named_parameters()}
        indices = dense["param_groups"][0]["params"] if dense["param_groups"] else []
        # the hyperparameters' names tell the optimiser's kind (Adam's betas, SGD's momentum)
        kind_now = set(module.optimizer_factory(params).param_groups[0]) - {"params"}
        kind_then = set(dense["param_groups"][0]) - {"params", "initial_lr"} if indices else set()
        if len(dense["param_groups"]) != 1 or len(indices) != len(params):
            problems.append(
                f"the dense optimiser had {len(indices)} parameters earlier, {len(params)} now"
            )
        elif not _same_kind(kind_then, kind_now):
            problems.append(
                "the dense optimiser is another kind (hyperparameters "
                f"{sorted(kind_then)} earlier, {sorted(kind_now)} now)"
            )
        else:
            state: dict[int, dict[str, Any]] = {}
            for i, p in enumerate(params):
                name = names[id(p)]
                table = _table_of(name, schema)
                row: dict[str, Any] = {}
                for k, v in dense["state"].get(i, {}).items():
                    if not torch.is_tensor(v) or v.dim() == 0:  # e.g. Adam's step
                        row[k] = v.clone() if torch.is_tensor(v) else v
                        continue
                    # a fresh optimiser's per-element state is zeros of the parameter's
                    # shape (Adam's moments, SGD's momentum); a table under the dense
                    # optimiser keeps the scalar step, so a reset row's Adam bias
                    # correction is a trained row's, not a new one's
                    value, _ = carried(v, torch.zeros_like(p), table, schema, expired)
                    if value is None:
                        problems.append(
                            f"dense optimiser state {k!r} of {name}: shape {tuple(v.shape)} "
                            f"earlier, parameter {tuple(p.shape)} now"
                        )
                    row[k] = value
                if row:
                    state[i] = row
            if not problems:
                module.carry_dense_state(state)
                report.optimizer.append(f"dense state of {len(state)} parameters")
    if problems:
        raise ConfigError(
            "warm_start.optimizer=true: the earlier optimiser state does not fit this run ("
            + "; ".join(problems)
            + "); set warm_start.optimizer=false to start the optimisers afresh"
        )


def continue_schedule(module: FusedTables, earlier: dict[str, Any], report: WarmStart) -> None:
    """``warm_start.schedule=continue``: train at the learning-rate factor the earlier
    run's schedule ended at (its last rate over its base rate: the cosine's
    ``min_factor`` once it has decayed), constant: a chain of runs is one long run
    past its decay. An earlier run that stopped within its warm-up has its warm-up
    continued from there (then the full rate).

    Raises:
        ConfigError: no optimiser state to read the rate from; the earlier run ended
            at rate 0 (a ``min_factor`` of 0: nothing would train).
    """
    dense = _dense_state(earlier)
    if dense is None or len(dense["param_groups"]) != 1:
        raise ConfigError(
            "warm_start.schedule=continue: the earlier checkpoint has no optimiser state to "
            "read its last learning rate from; use warm_start.schedule=restart"
        )
    group = dense["param_groups"][0]
    factor = float(group["lr"]) / float(group.get("initial_lr", group["lr"]))
    scheduler = (earlier.get("lr_schedulers") or [None])[0]
    shape = scheduler["lr_lambdas"][0] if scheduler else None  # a WarmupSchedule's fields
    if isinstance(shape, dict) and "warmup_steps" in shape:
        at = int(shape.get("offset", 0)) + int(scheduler["last_epoch"])
        if at < int(shape["warmup_steps"]):
            module.continue_rates(1.0, warmup_steps=int(shape["warmup_steps"]), offset=at)
            report.rates = (
                f"the earlier run's warm-up continued from step {at} of {shape['warmup_steps']}"
            )
            return
    if factor <= 0:
        raise ConfigError(
            "warm_start.schedule=continue: the earlier run ended at learning rate 0 (its "
            "schedule's min_factor), so nothing would train; use warm_start.schedule=restart "
            "or a min_factor above 0"
        )
    module.continue_rates(factor)
    report.rates = f"learning rates at {factor:.3g} x, the earlier run's last"


def _dense_state(earlier: dict[str, Any]) -> dict[str, Any] | None:
    """The dense optimiser's state dict in a Lightning checkpoint (or None)."""
    return (earlier.get("optimizer_states") or [None])[0]


def _same_kind(then: set[str], now: set[str]) -> bool:
    """Two optimisers' hyperparameter names name one kind (Adam's betas, SGD's
    momentum); a newer torch may add names, so one set may hold the other."""
    return then <= now or now <= then


def _carried_state(
    now: dict[str, dict[str, torch.Tensor]],
    before: dict[str, dict[str, torch.Tensor]],
    schema: Schema,
    expired: dict[str, np.ndarray] | None,
    problems: list[str],
) -> tuple[dict[str, dict[str, torch.Tensor]], int]:
    """The fused tables' optimiser state: ``{"<table>.weight": {name: tensor}}``,
    ``before``'s where it fits (:func:`carried`), the count carried."""
    state: dict[str, dict[str, torch.Tensor]] = {}
    n = 0
    if set(now) != set(before):
        problems.append(f"tables with optimiser state {sorted(before)} earlier, {sorted(now)} now")
        return state, n
    for key, tensors in now.items():
        table = _table_of(f"embedding_bags.{key}", schema)  # key: "<table>.weight"
        state[key] = {}
        if set(tensors) != set(before[key]):
            problems.append(
                f"{key}: optimiser state {sorted(before[key])} earlier, {sorted(tensors)} now"
            )
            continue
        for name, value in tensors.items():
            out, _ = carried(before[key][name], value, table, schema, expired)
            if out is None:
                problems.append(
                    f"{name}: shape {tuple(before[key][name].shape)} earlier, {tuple(value.shape)} now"
                )
                continue
            state[key][name] = out
            n += 1
    return state, n


def expiry(
    earlier: Activity | None, now: Activity, expire_after: int | None
) -> dict[str, np.ndarray] | None:
    """The rows to reset: ids the earlier runs last saw more than ``expire_after``
    before this run's first train event. None when nothing expires."""
    from ranking.data.id_activity import expired_rows

    if expire_after is None:
        return None
    if earlier is None:
        raise ConfigError(
            "warm_start.expire_after needs the earlier run's id activity "
            "(checkpoints/id_activity.npz), which that run did not write"
        )
    if expire_after < 0:
        raise ConfigError(f"warm_start.expire_after={expire_after}: must be >= 0")
    return expired_rows(earlier, now.start, int(expire_after))


def carried(
    before: torch.Tensor,
    now: torch.Tensor,
    table: str | None,
    schema: Schema,
    expired: dict[str, np.ndarray] | None,
) -> tuple[torch.Tensor | None, int | None]:
    """``before`` (an earlier tensor) in ``now``'s place: ``(value, expired rows reset)``.

    The same shape: ``before``. A table's per-row tensor (its weights, an optimiser's
    per-row state) whose table grew: the earlier rows, ``now``'s new rows. A table's
    expired rows take ``now``'s values (their initial ones). ``(None, None)`` when
    ``before`` does not fit (another shape; a table that shrank or is hashed)."""
    before = before.to(now.dtype)
    if before.shape == now.shape:
        value = before.clone()
    elif table is not None and _can_grow(before, now, table, schema):
        value = now.clone()
        value[: before.shape[0]] = before
    else:
        return None, None
    if table is None or expired is None or table not in expired or value.dim() == 0:
        return value, None
    rows = np.flatnonzero(expired[table][: before.shape[0]])
    value[rows] = now[rows]
    return value, len(rows)


def _table_of(key: str, schema: Schema) -> str | None:
    m = _TABLE_KEY.search(key)
    return m.group(1) if m and m.group(1) in schema.tables else None


def _can_grow(before: torch.Tensor, now: torch.Tensor, table: str, schema: Schema) -> bool:
    """A table's per-row tensor (rows first) with more rows now, the rest alike."""
    hashed = any(schema.feature(f).hashed for f in schema.tables[table].features)
    return (
        not hashed
        and before.dim() == now.dim() >= 1
        and before.shape[1:] == now.shape[1:]
        and before.shape[0] < now.shape[0]
    )
