"""A dataset directory over a time window of another's train split.

``ranking-data source=window raw=<dataset dir> window.from=T0 window.to=T1
out=<dir>`` writes a dataset whose train split holds the source's train rows
with ``T0 <= time < T1`` (either bound may be null: unbounded), in their
order, as Parquet; everything else (schema, valid and test splits, item
corpus, a synthetic world's files) is the source's: symlinked, not copied. It
replays a log day by day for continuous training (:mod:`ranking.warm_start`):
train on the first days, then warm-start on each next day's window.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml

from ranking.data.errors import ConfigError
from ranking.data.files import csv_column_types, iter_record_batches
from ranking.schema import SCHEMA_FILE, Schema

TRAIN_DIR = "train"


@dataclass(frozen=True)
class WindowSummary:
    """``rows`` of ``total`` train rows kept; the source's train spans [first, last]."""

    rows: int
    total: int
    first: int
    last: int


def write_window(
    source: str | Path, out: str | Path, start: int | None, end: int | None
) -> tuple[Schema, WindowSummary]:
    """Write the windowed dataset (see the module docstring) and load its schema."""
    source, out = Path(source).resolve(), Path(out)
    schema = Schema.load(source)
    if start is not None and end is not None and start >= end:
        raise ConfigError(f"window: from={start} must be below to={end}")
    train_entry = schema.files["train"]
    (out / TRAIN_DIR).mkdir(parents=True, exist_ok=True)
    types = csv_column_types(schema)
    kept = total = 0
    first, last = None, None
    for i, path in enumerate(schema.split_paths("train")):
        writer = None
        for _, rb in iter_record_batches(path, None, 1 << 18, types):
            ts = rb.column(schema.time)
            total += len(rb)
            if len(rb):
                lo, hi = pc.min(ts).as_py(), pc.max(ts).as_py()
                first = lo if first is None else min(first, lo)
                last = hi if last is None else max(last, hi)
            inside = pc.and_(
                pc.greater_equal(ts, start) if start is not None else pa.scalar(True),
                pc.less(ts, end) if end is not None else pa.scalar(True),
            )
            part = pa.Table.from_batches([rb.filter(inside)])
            if not part.num_rows:
                continue
            if writer is None:
                writer = pq.ParquetWriter(out / TRAIN_DIR / f"part-{i:05d}.parquet", part.schema)
            writer.write_table(part)
            kept += part.num_rows
        if writer is not None:
            writer.close()
    if not kept:
        raise ConfigError(
            f"window [{start}, {end}) holds none of the {total} train rows of {source} "
            f"(its times span {first}..{last})"
        )
    raw = yaml.safe_load((source / SCHEMA_FILE).read_text())
    raw["files"] = {**raw["files"], "train": TRAIN_DIR}
    (out / SCHEMA_FILE).write_text(yaml.safe_dump(raw, sort_keys=False))
    for entry in sorted(source.iterdir()):
        if entry.name in (SCHEMA_FILE, train_entry, TRAIN_DIR):
            continue
        os.symlink(entry, out / entry.name)
    return Schema.load(out), WindowSummary(kept, total, int(first), int(last))
