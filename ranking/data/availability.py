"""When each item can be shown: the schema's optional ``availability`` columns.

On a live-stream shopping platform a stream is a candidate only while it is
live, and items are released during the log. A dataset says so with two
item-corpus columns (``availability: {from: ..., to: ...}`` in the schema, the
time column's units): item i is a candidate at time t when
``start[i] <= t < end[i]``; a null bound is unbounded.

Readers:

- evaluation ranks only the items available at some time of the evaluated
  period (:meth:`ItemWindows.during`), the oracle too, so neither spends top-k
  slots on items the period could not show;
- the export bundle stores the windows by index row and ``ranking-recommend
  --at T`` searches only the items available at T.

Validation (:mod:`ranking.data.validate`) checks ``start < end`` and that every
logged row's time lies in its item's window.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ranking.data.files import csv_column_types, iter_record_batches
from ranking.schema import Schema

#: Bounds of an unbounded window.
OPEN_START = np.iinfo(np.int64).min
OPEN_END = np.iinfo(np.int64).max


@dataclass(frozen=True)
class ItemWindows:
    """Availability windows by item id.

    Attributes:
        start: int64 [num_items] first time the item can be shown
            (:data:`OPEN_START` when unbounded or the id is not in the corpus).
        end: int64 [num_items] first time it no longer can (:data:`OPEN_END`
            when unbounded).
    """

    start: np.ndarray
    end: np.ndarray

    def at(self, t: int) -> np.ndarray:
        """bool [num_items]: available at time ``t``."""
        return (self.start <= t) & (t < self.end)

    def during(self, lo: int, hi: int) -> np.ndarray:
        """bool [num_items]: available at some time in ``[lo, hi]`` (both included)."""
        return (self.start <= hi) & (self.end > lo)


def ticks(arr: pa.Array | pa.ChunkedArray, fill: int) -> np.ndarray:
    """int64 ticks of an integer or timestamp column, nulls replaced by ``fill``
    (a uint64 value past int64 wraps: validation reports it first)."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    if pa.types.is_timestamp(arr.type):
        arr = arr.cast(pa.int64())
    as_int = arr.cast(pa.int64(), safe=arr.type != pa.uint64())
    return pc.fill_null(as_int, fill).to_numpy(zero_copy_only=False)


def read_windows(schema: Schema) -> ItemWindows | None:
    """The corpus's windows by item id, or None when the schema declares none.

    Reads the item id and the one or two window columns of ``files.items`` (a
    few bytes per item). Values are trusted: :func:`ranking.data.validate.
    validate_dataset` checks them.
    """
    spec = schema.availability
    if not spec:
        return None
    vocab = schema.feature(schema.item_id).vocab_size
    assert vocab is not None  # the schema requires a vocabulary for the item id
    start = np.full(vocab, OPEN_START, dtype=np.int64)
    end = np.full(vocab, OPEN_END, dtype=np.int64)
    columns = [schema.item_id, *spec.values()]
    types = csv_column_types(schema)
    for path in schema.split_paths("items"):
        for _, batch in iter_record_batches(path, columns, column_types=types):
            ids = ticks(batch.column(schema.item_id), 0)
            if "from" in spec:
                start[ids] = ticks(batch.column(spec["from"]), OPEN_START)
            if "to" in spec:
                end[ids] = ticks(batch.column(spec["to"]), OPEN_END)
    return ItemWindows(start, end)
