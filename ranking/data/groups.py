"""Row groups of a log: the rows that share a key (a request, a session).

Two uses, both in :class:`ranking.data.dataset.ParquetIterableDataset`:

- :func:`group_permutation` shuffles a window of rows group by group, so the
  rows of one request reach the same batch (hard negatives: a click's
  non-clicked neighbours in its request).
- :func:`runs_holding` marks the rows whose run of equal keys holds a positive
  (negative downsampling that keeps only the impressions of requests with a
  click).

A group is a *run* of consecutive rows with equal keys in file order for
:func:`runs_holding`, and all rows with equal keys in the window for
:func:`group_permutation`; a null key is a group of its own. Logs that write a
request's rows together (the synthetic writer does) make the two the same.
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


def runs_holding(keys: pa.Array | pa.ChunkedArray, marked: np.ndarray) -> np.ndarray:
    """bool [N]: rows whose run (consecutive rows with equal keys) holds a marked row.

    Args:
        keys: the group column [N], in file order.
        marked: bool [N], e.g. the positive rows.

    Example:
        >>> runs_holding(pa.array([1, 1, 2, 2, 1]), np.array([0, 1, 0, 0, 0], bool)).tolist()
        [True, True, False, False, False]
    """
    if isinstance(keys, pa.ChunkedArray):
        keys = keys.combine_chunks()
    n = len(keys)
    if n == 0:
        return np.zeros(0, dtype=bool)
    changed = pc.fill_null(pc.not_equal(keys.slice(1), keys.slice(0, n - 1)), True)
    starts = np.concatenate([[True], changed.to_numpy(zero_copy_only=False)])
    run = np.cumsum(starts) - 1
    holds = np.bincount(run, weights=np.asarray(marked, dtype=np.float64)) > 0
    return holds[run]
