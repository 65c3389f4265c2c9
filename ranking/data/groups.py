"""Row groups of a log: the rows that share a key (a request, a session).

Two uses, both in :class:`ranking.data.dataset.ParquetIterableDataset`:

- :func:`group_permutation` shuffles a window of rows group by group, so the
  rows of one request reach the same batch (hard negatives: a click's
  non-clicked neighbours in its request).
- :func:`groups_holding` marks the rows whose group holds a positive (negative
  downsampling that keeps only the impressions of requests with a click).

A group is all rows of equal key in the rows given (a shuffle window, a shard);
a null key is a group of its own. The rows of a group need not be consecutive.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def group_codes(keys: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """int64 [N]: a group code per row, equal for equal keys (any Arrow type);
    each null key gets a code of its own."""
    if isinstance(keys, pa.ChunkedArray):
        keys = keys.combine_chunks()
    encoded = pc.dictionary_encode(keys)
    codes = pc.fill_null(encoded.indices, -1).to_numpy(zero_copy_only=False).astype(np.int64)
    nulls = codes < 0
    if nulls.any():
        codes[nulls] = len(encoded.dictionary) + np.arange(int(nulls.sum()))
    return codes


def group_permutation(keys: pa.Array | pa.ChunkedArray, rng: np.random.Generator) -> np.ndarray:
    """int64 [N]: a row order that permutes the groups uniformly at random and
    keeps each group's rows together, in their original order.

    Example:
        >>> order = group_permutation(pa.array([7, 7, 3, 9, 3]), np.random.default_rng(0))
        >>> sorted(order.tolist()) == [0, 1, 2, 3, 4]
        True
    """
    codes = group_codes(keys)
    if not len(codes):
        return np.zeros(0, dtype=np.int64)
    n_groups = int(codes.max()) + 1
    rank = np.empty(n_groups, dtype=np.int64)
    rank[rng.permutation(n_groups)] = np.arange(n_groups)
    return np.argsort(rank[codes], kind="stable")


def groups_holding(keys: pa.Array | pa.ChunkedArray, marked: np.ndarray) -> np.ndarray:
    """bool [N]: rows whose group (all rows of equal key; a null key is a group of
    its own) holds a marked row. The rows of a group need not be consecutive.

    Args:
        keys: the group column [N].
        marked: bool [N], e.g. the positive rows.

    Example:
        >>> groups_holding(pa.array([1, 2, 2, 1, None]), np.array([0, 0, 0, 1, 0], bool)).tolist()
        [True, False, False, True, False]
    """
    if isinstance(keys, pa.ChunkedArray):
        keys = keys.combine_chunks()
    marked = np.asarray(marked, dtype=bool)
    if len(keys) == 0:
        return np.zeros(0, dtype=bool)
    held = pc.unique(pc.drop_null(keys.filter(pa.array(marked))))
    inside = pc.fill_null(pc.is_in(keys, value_set=held, skip_nulls=True), False)
    return inside.to_numpy(zero_copy_only=False) | marked
