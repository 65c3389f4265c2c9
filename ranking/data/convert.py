"""Arrow rows -> typed :class:`~ranking.data.batch.Batch`, vectorised.

A :class:`BatchConverter` turns a pyarrow Table or RecordBatch of B rows into one
Batch with no per-row Python: every column goes through numpy/pyarrow kernels.

Sparse features (``schema.sparse()``, schema order) become one
KeyedJaggedTensor:

- ``values`` int64 embedding rows. Ids with a vocabulary are taken as they are
  (validation guarantees the range); ``hash_buckets`` features go through
  :mod:`ranking.hashing` (``hash_int`` for integer columns, ``hash_strings`` for
  strings; a string column is dictionary-encoded first, so each distinct string
  is hashed once per call).
- ``lengths`` int32 [F * B] (torchrec's own datasets use int32; the CPU
  EmbeddingBagCollection takes int32 or int64). Categoricals have length 1;
  list features (``list<int>`` columns) are flattened through their offsets;
  ``truncate: true`` keeps the *last* ``max_len`` values of a longer list (a
  sequence is most-recent-last). A longer list without ``truncate`` raises.

Corpus batches (:meth:`BatchConverter.convert_items`, :meth:`convert_users`) hold
one side's columns only: keys of the other sides are present with zero lengths,
so a model's embedding collection sees the same key set in every batch, and an
item gets the same embedding from a corpus batch as from an impression batch.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from ranking.data.batch import Batch
from ranking.data.errors import DataError
from ranking.data.stats import DenseStats
from ranking.hashing import hash_int, hash_strings
from ranking.schema import Feature, Schema, Side

SIDES: tuple[str, ...] = tuple(s.value for s in Side)
LENGTHS_DTYPE = np.int32

Rows = pa.Table | pa.RecordBatch


class BatchConverter:
    """Convert Arrow rows of a dataset to Batches, per its schema and train stats.

    Args:
        schema: the dataset schema (feature order, kinds, tables, transforms).
        stats: dense statistics from :func:`~ranking.data.stats.compute_dense_stats`
            (must cover every dense feature that standardises).

    Example::

        conv = BatchConverter(schema, compute_dense_stats(schema))
        batch = conv.convert(pq.read_table(path, columns=conv.columns))
        batch.sparse.keys() == [f.name for f in schema.sparse()]
        batch.dense["item"].shape == (len(batch), len(schema.dense(Side.ITEM)))
    """

    def __init__(self, schema: Schema, stats: DenseStats) -> None:
        self.schema = schema
        self.stats = stats
        self.sparse_features: list[Feature] = schema.sparse()
        self.keys: list[str] = [f.name for f in self.sparse_features]
        self.dense_features: dict[str, list[Feature]] = {s: schema.dense(Side(s)) for s in SIDES}
        for f in schema.dense():
            if f.transform != "none" and f.name not in stats:
                raise ValueError(
                    f"dense stats have no entry for {f.name!r} (transform {f.transform})"
                )
        self.tasks: tuple[str, ...] = tuple(schema.labels)

    # ---- which columns each mode reads ----------------------------------------------
    @property
    def columns(self) -> list[str]:
        """Columns :meth:`convert` reads: features, ids, time, labels, oracle (not ignored ones)."""
        cols = [f.name for f in self.schema.features]
        extra = (
            self.schema.user_id,
            self.schema.time,
            self.schema.item_id,
            *self.schema.labels,
            *self.schema.oracle.values(),
        )
        return cols + [c for c in extra if c not in cols]

    def side_columns(self, side: Side | str) -> list[str]:
        """Columns a one-side snapshot holds: that side's id first, then its features."""
        side = Side(side)
        id_col = {Side.ITEM: self.schema.item_id, Side.USER: self.schema.user_id}[side]
        return [id_col] + [
            f.name for f in self.schema.features if f.side == side and f.name != id_col
        ]

    @property
    def item_columns(self) -> list[str]:
        return self.side_columns(Side.ITEM)

    @property
    def user_columns(self) -> list[str]:
        return self.side_columns(Side.USER)

    # ---- conversion ------------------------------------------------------------
    def convert(self, rows: Rows) -> Batch:
        """Impression rows (all columns of :attr:`columns`) -> Batch with labels (and oracle)."""
        n = rows.num_rows
        labels = {t: _float32(_col(rows, t)) for t in self.tasks}
        oracle = {t: _float32(_col(rows, c)) for t, c in self.schema.oracle.items()}
        return Batch(
            sparse=self._sparse(rows, set(SIDES)),
            dense=self._dense(rows, set(SIDES)),
            labels=labels,
            user_ids=_ids(_col(rows, self.schema.user_id), n),
            item_ids=_ids(_col(rows, self.schema.item_id), n),
            oracle=oracle,
            time=_ids(_col(rows, self.schema.time), n),
        )

    def convert_items(self, rows: Rows) -> Batch:
        """Item-corpus rows (item id + item-side features) -> Batch.

        User/context keys have zero lengths, user/context dense are zeros, labels
        are empty and ``user_ids`` is -1.
        """
        return self._convert_side(rows, Side.ITEM)

    def convert_users(self, rows: Rows) -> Batch:
        """User-snapshot rows (user id + user-side features) -> Batch (``item_ids`` -1)."""
        return self._convert_side(rows, Side.USER)

    def _convert_side(self, rows: Rows, side: Side) -> Batch:
        n = rows.num_rows
        missing = -torch.ones(n, dtype=torch.int64)
        own = _ids(_col(rows, self.side_columns(side)[0]), n)
        return Batch(
            sparse=self._sparse(rows, {side.value}),
            dense=self._dense(rows, {side.value}),
            labels={},
            user_ids=own if side == Side.USER else missing,
            item_ids=own if side == Side.ITEM else missing,
        )

    def _sparse(self, rows: Rows, sides: set[str]) -> KeyedJaggedTensor:
        n = rows.num_rows
        values: list[np.ndarray] = []
        lengths: list[np.ndarray] = []
        for f in self.sparse_features:
            if f.side.value in sides:
                v, ln = feature_rows(f, _col(rows, f.name))
            else:
                v, ln = np.empty(0, np.int64), np.zeros(n, LENGTHS_DTYPE)
            values.append(v)
            lengths.append(ln)
        return KeyedJaggedTensor(
            keys=self.keys,
            values=torch.from_numpy(np.concatenate(values)),
            lengths=torch.from_numpy(np.concatenate(lengths)),
            stride=n,
        )

    def _dense(self, rows: Rows, sides: set[str]) -> dict[str, torch.Tensor]:
        n = rows.num_rows
        out: dict[str, torch.Tensor] = {}
        for side in SIDES:
            feats = self.dense_features[side]
            x = np.zeros((n, len(feats)), dtype=np.float32)
            if side in sides:
                for j, f in enumerate(feats):
                    raw = _col(rows, f.name)
                    _no_nulls(raw, f.name)
                    if pa.types.is_dictionary(raw.type):
                        raw = raw.dictionary_decode()
                    vals = _numpy(raw).astype(np.float64)
                    x[:, j] = self.stats.apply(f, vals) if f.name in self.stats else vals
            out[side] = torch.from_numpy(x)
        return out


def feature_rows(f: Feature, arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """One sparse column -> (int64 rows [sum of lengths], int32 lengths [B])."""
    n = len(arr)
    if f.is_list:
        if not _is_list(arr.type):
            raise DataError(
                f"has type {arr.type}, but a {f.kind} feature needs a list column",
                column=f.name,
            )
        _no_nulls(arr, f.name)
        lengths = _numpy(pc.list_value_length(arr)).astype(LENGTHS_DTYPE)
        flat = arr.flatten()  # respects slicing, unlike .values
        _no_nulls(flat, f.name)
        v = _rows(f, flat)
        assert f.max_len is not None
        if len(lengths) and int(lengths.max()) > f.max_len:
            if not f.truncate:
                row = int(np.flatnonzero(lengths > f.max_len)[0])
                raise DataError(
                    f"list of {int(lengths[row])} values is longer than max_len {f.max_len} "
                    "(set truncate: true to keep the last values)",
                    column=f.name,
                    row=row,
                )
            v, lengths = keep_last(v, lengths, f.max_len)
        return v, lengths
    _no_nulls(arr, f.name)
    return _rows(f, arr), np.ones(n, LENGTHS_DTYPE)


def _rows(f: Feature, arr: pa.Array) -> np.ndarray:
    """Flat raw values -> int64 table rows (hashed or as is)."""
    if pa.types.is_dictionary(arr.type):
        if f.hashed:  # hash the dictionary once, then gather
            return _rows(f, arr.dictionary)[_numpy(arr.indices).astype(np.int64)]
        arr = arr.dictionary_decode()
    t = arr.type
    if not f.hashed:
        if not pa.types.is_integer(t):
            raise DataError(
                f"has type {t}, but ids with a vocabulary must be integers", column=f.name
            )
        return _numpy(arr).astype(np.int64)
    assert f.hash_buckets is not None
    if pa.types.is_integer(t):
        return hash_int(_numpy(arr).astype(np.int64), f.hash_buckets)
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        enc = pc.dictionary_encode(arr)
        uniq = hash_strings(enc.dictionary.to_numpy(zero_copy_only=False), f.hash_buckets)
        return uniq[_numpy(enc.indices).astype(np.int64)]
    raise DataError(f"has type {t}, but hashed values must be integers or strings", column=f.name)


def keep_last(
    values: np.ndarray, lengths: np.ndarray, max_len: int
) -> tuple[np.ndarray, np.ndarray]:
    """Keep the last ``max_len`` values of each list of a flat jagged array. Vectorised.

    Args:
        values: [sum(lengths)] flat values, list after list.
        lengths: [B] list lengths.

    Returns:
        (values [sum(min(lengths, max_len))], lengths [B]).
    """
    ends = np.cumsum(lengths, dtype=np.int64)
    # Position of each value counted from the end of its list: 1 = last value.
    from_end = np.repeat(ends, lengths) - np.arange(len(values), dtype=np.int64)
    return values[from_end <= max_len], np.minimum(lengths, max_len).astype(lengths.dtype)


def _col(rows: Rows, name: str) -> pa.Array:
    try:
        col = rows.column(name)
    except KeyError:
        raise DataError(
            f"column missing (the rows have {rows.schema.names})", column=name
        ) from None
    return col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col


def _is_list(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)


def _numpy(arr: pa.Array) -> np.ndarray:
    return arr.to_numpy(zero_copy_only=False)


def _no_nulls(arr: pa.Array, name: str) -> None:
    if arr.null_count:
        row = int(np.flatnonzero(_numpy(arr.is_null()))[0])
        raise DataError("null value (validation should have stopped this)", column=name, row=row)


def _float32(arr: pa.Array) -> torch.Tensor:
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    return torch.from_numpy(np.array(_numpy(arr), dtype=np.float32))


def _ids(arr: pa.Array, n: int) -> torch.Tensor:
    """Integer (or timestamp: its integer ticks) column -> int64 [n]."""
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    if pa.types.is_timestamp(arr.type):
        arr = arr.cast(pa.int64())
    out = np.array(_numpy(arr), dtype=np.int64)
    assert len(out) == n
    return torch.from_numpy(out)
