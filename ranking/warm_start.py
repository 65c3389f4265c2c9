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

The optimisers start afresh (the dense optimiser's moments, the fused tables'
row-wise Adagrad accumulators, the learning-rate schedule with its warm-up):
each day is a new fit from the earlier weights. ``resume=`` is different: it
continues one interrupted run exactly, optimiser state included.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ranking.data.errors import ConfigError
from ranking.data.id_activity import Activity
from ranking.schema import Schema

_TABLE_KEY = re.compile(r"(?:^|\.)embedding_bags\.([^.]+)\.weight$")


@dataclass
class WarmStart:
    """What a warm start did to one stage's module.

    Attributes:
        copied: tensors taken from the earlier run (whole or grown).
        grown: table -> (earlier rows, rows now).
        expired: table -> rows reset to their initial values.
        fresh: tensors kept at their initial values (``partial``: new in this model).
        dropped: tensors of the earlier run this model does not have (``partial``).
    """

    copied: int = 0
    grown: dict[str, tuple[int, int]] = field(default_factory=dict)
    expired: dict[str, int] = field(default_factory=dict)
    fresh: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = [f"{self.copied} tensors copied"]
        parts += [f"{t} grew {a} -> {b} rows" for t, (a, b) in self.grown.items()]
        parts += [f"{t}: {n} expired rows reset" for t, n in self.expired.items() if n]
        if self.fresh:
            parts.append(f"kept initial values: {', '.join(self.fresh)}")
        if self.dropped:
            parts.append(f"not in this model: {', '.join(self.dropped)}")
        return "; ".join(parts)


def earlier_state(checkpoint: Path) -> dict[str, torch.Tensor]:
    """The ``state_dict`` of a stage checkpoint (a file, or a sharded run's
    torch.distributed.checkpoint directory), read without building its model."""
    from ranking.lit.sharding import is_sharded_checkpoint

    if not checkpoint.exists():
        raise ConfigError(f"warm_start: {checkpoint} does not exist (no such stage in that run)")
    if not is_sharded_checkpoint(checkpoint):
        return torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "state.pt"
        dcp_to_torch_save(str(checkpoint), str(out))
        return torch.load(out, map_location="cpu", weights_only=False)["state_dict"]


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
        before = earlier[key].to(now.dtype)
        table = _table_of(key, schema)
        if before.shape == now.shape:
            value = before.clone()
        elif table is not None and _can_grow(before, now, table, schema):
            value = now.clone()
            value[: before.shape[0]] = before
            report.grown[table] = (int(before.shape[0]), int(now.shape[0]))
        else:
            report.fresh.append(key)
            problems.append(f"{key}: shape {tuple(before.shape)} earlier, {tuple(now.shape)} now")
            continue
        if table is not None and expired is not None and table in expired:
            rows = np.flatnonzero(expired[table][: before.shape[0]])
            value[rows] = now[rows]
            report.expired[table] = len(rows)
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


def _table_of(key: str, schema: Schema) -> str | None:
    m = _TABLE_KEY.search(key)
    return m.group(1) if m and m.group(1) in schema.tables else None


def _can_grow(before: torch.Tensor, now: torch.Tensor, table: str, schema: Schema) -> bool:
    hashed = any(schema.feature(f).hashed for f in schema.tables[table].features)
    return (
        not hashed
        and before.dim() == now.dim() == 2
        and before.shape[1] == now.shape[1]
        and before.shape[0] < now.shape[0]
    )
