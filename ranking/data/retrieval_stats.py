"""Per-item counts of a split for retrieval: exposures and positives.

Retrieval needs two statistics of the train log that no Batch carries:

- **positives per item** (rows whose label is 1): the corpus estimate of the
  in-batch sampling distribution that logQ correction divides out
  (:class:`ranking.tasks.retrieval.RetrievalTask`);
- **exposures per item** (every row): item popularity as the log saw it, which
  defines the long tail of the evaluation (``tail_recall``, recall by
  popularity decile in :mod:`ranking.metrics.retrieval`).

One pass over three columns (user id, item id, label) of the split's files,
whatever the file count; memory O(items) plus, when asked, the distinct
positive (user, item) pairs (to exclude already-clicked items at evaluation).
Every rank computes the same counts (the split is read whole, three columns).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ranking.data.files import csv_column_types, iter_record_batches
from ranking.schema import Schema


@dataclass(frozen=True)
class ItemCounts:
    """Counts of one split, indexed by item id (``[0, vocab_size)`` of the item id).

    Attributes:
        exposures: int64 [N] rows showing the item.
        positives: int64 [N] rows showing it with the label at 1.
        pairs: int64 [P, 2] distinct positive (user id, item id) pairs, sorted;
            None unless requested.
    """

    exposures: np.ndarray
    positives: np.ndarray
    pairs: np.ndarray | None = None


def item_counts(
    schema: Schema, label: str, split: str = "train", with_pairs: bool = False
) -> ItemCounts:
    """Exposures and positives per item id of ``split`` (and the positive pairs).

    Args:
        schema: dataset schema (item-id vocabulary, files).
        label: label column whose 1s are positives (e.g. ``click``).
        split: split to count.
        with_pairs: also collect the distinct positive (user, item) pairs.
    """
    n = int(schema.feature(schema.item_id).vocab_size)
    exposures = np.zeros(n, dtype=np.int64)
    positives = np.zeros(n, dtype=np.int64)
    pairs: list[np.ndarray] = []
    cols = [schema.item_id, label] + ([schema.user_id] if with_pairs else [])
    types = csv_column_types(schema)
    for path in schema.split_paths(split):
        for _, rb in iter_record_batches(path, cols, 1 << 18, types):
            items = _ints(rb.column(0))
            pos = _numpy(pc.cast(rb.column(1), pa.float64())) > 0.5
            exposures += np.bincount(items, minlength=n)
            positives += np.bincount(items[pos], minlength=n)
            if with_pairs:
                users = _ints(rb.column(2))
                pairs.append(np.unique(np.stack([users[pos], items[pos]], axis=1), axis=0))
    out_pairs = None
    if with_pairs:
        stacked = np.concatenate(pairs) if pairs else np.zeros((0, 2), np.int64)
        out_pairs = np.unique(stacked, axis=0)
    return ItemCounts(exposures, positives, out_pairs)


def _numpy(arr: pa.Array) -> np.ndarray:
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    return arr.to_numpy(zero_copy_only=False)


def _ints(arr: pa.Array) -> np.ndarray:
    return _numpy(arr).astype(np.int64)
