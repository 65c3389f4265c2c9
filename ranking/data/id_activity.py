"""When the log last used each embedding row: the state behind id expiry.

Continuous training (:mod:`ranking.warm_start`) resets the rows of ids that have
not appeared for a while, as ByteDance's Monolith expires stale entries of its
hash tables: an id that comes back after a long absence starts again from a
fresh row instead of a stale one (a recycled hash bucket, a product relisted
under an old id). What it needs is, per table row, the time of the latest train
row that looked it up, through any feature of that table (the item id, the item
ids of a behaviour sequence, a hashed brand): :func:`last_seen`.

Rows are the ones the model sees: hashed features are hashed, lists truncated
to their last ``max_len`` values where the schema says ``truncate``, exactly as
:mod:`ranking.data.convert` does for training batches.

One pass over the split's sparse columns and time column, memory O(rows of the
tables) plus one record batch. The split is one the validator passed
(:mod:`ranking.data.validate`: ids in range, no nulls, integer times).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ranking.data.convert import feature_rows
from ranking.data.files import csv_column_types, iter_record_batches
from ranking.schema import Schema

#: last-seen value of a row no train row ever looked up
NEVER = int(np.iinfo(np.int64).min)
#: file of a run's last-seen state (``checkpoints/id_activity.npz``)
ACTIVITY_FILE = "id_activity.npz"


@dataclass(frozen=True)
class Activity:
    """Last sightings of every table row, and the span of time they cover.

    Attributes:
        tables: table name -> int64 [num_rows], the latest time a train row
            looked the row up (:data:`NEVER`: no row did).
        start, end: the earliest and latest time of the split's rows.
    """

    tables: dict[str, np.ndarray]
    start: int
    end: int


def last_seen(schema: Schema, split: str = "train") -> Activity:
    """When each row of each of the schema's tables was last looked up by ``split``."""
    out = {name: np.full(t.num_rows, NEVER, np.int64) for name, t in schema.tables.items()}
    start, end = np.iinfo(np.int64).max, np.iinfo(np.int64).min
    features = schema.sparse()
    cols = [schema.time] + [f.name for f in features]
    types = csv_column_types(schema)
    for path in schema.split_paths(split):
        for _, rb in iter_record_batches(path, cols, 1 << 16, types):
            ts = rb.column(0).to_numpy(zero_copy_only=False).astype(np.int64)
            if len(ts):
                start, end = min(start, int(ts.min())), max(end, int(ts.max()))
            for j, f in enumerate(features, start=1):
                rows, lengths = feature_rows(f, rb.column(j))
                np.maximum.at(out[f.table], rows, np.repeat(ts, lengths))
    return Activity(out, start, end)


def expired_rows(earlier: Activity, start: int, expire_after: int) -> dict[str, np.ndarray]:
    """Rows whose id ``earlier`` last saw more than ``expire_after`` before ``start``
    (bool [rows of ``earlier``] per table); rows it never saw do not expire."""
    cutoff = start - expire_after
    return {name: (seen != NEVER) & (seen < cutoff) for name, seen in earlier.tables.items()}


def merged(
    earlier: Activity, now: Activity, reset: dict[str, np.ndarray] | None = None
) -> Activity:
    """Both runs' sightings: the later of the two per row, after forgetting the
    ``reset`` rows of ``earlier`` (expired ids). ``earlier`` may hold fewer rows of
    a table (its vocabulary grew since); its tables absent from ``now`` are dropped."""
    out = {}
    for name, rows in now.tables.items():
        out[name] = rows.copy()
        prev = earlier.tables.get(name)
        if prev is None:
            continue
        if reset is not None and name in reset:
            prev = np.where(reset[name], NEVER, prev)
        n = min(len(prev), len(rows))
        np.maximum(out[name][:n], prev[:n], out=out[name][:n])
    return Activity(out, min(earlier.start, now.start), max(earlier.end, now.end))


def save(path: Path, activity: Activity) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {f"table/{k}": v for k, v in activity.tables.items()}
    with open(path, "wb") as fh:
        np.savez(fh, start=activity.start, end=activity.end, **arrays)


def load(path: Path) -> Activity:
    with np.load(path) as z:
        tables = {
            k[len("table/") :]: z[k].astype(np.int64) for k in z.files if k.startswith("table/")
        }
        return Activity(tables, int(z["start"]), int(z["end"]))
