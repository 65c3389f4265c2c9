"""Stream a split's files as whole :class:`~ranking.data.batch.Batch` objects.

Sharding (every row exactly once per epoch, across ranks and workers):

1. **Shards** are planned from Parquet footers only (no data read): consecutive
   row groups of one file are packed until they hold at least ``shard_rows``
   rows; a row group larger than that is a shard of its own (a shard never
   splits a row group, so no row group is decoded twice). A CSV file is one
   shard.
2. Each epoch the shard list is permuted by ``(seed, epoch)`` (identity when not
   shuffling) and laid end to end as one sequence of N rows. That sequence is
   cut into P = world_size x num_workers contiguous, near-equal parts (sizes
   differ by at most one row); part ``rank * num_workers + worker`` is read by
   that worker. Parts may begin or end inside a shard. Every rank gets the same
   row count (+-1) whatever the file layout, which keeps DDP ranks in step.
3. A worker reads its pieces in chunks of at most ``shard_rows`` rows, drawn
   round-robin from ``buffer_shards`` pieces at a time, gathers a window of about
   ``buffer_shards * shard_rows`` rows, permutes the window's rows (or its
   groups of rows, with ``group_by``) with a
   generator seeded by ``(seed, epoch, part)``, and cuts batches; the rows left
   over (fewer than a batch) carry into the next window, so every batch is
   full except a worker's last one. Without shuffling, pieces are read in order.

Memory per worker: one window of the needed columns plus its converted Batch
(a few shards' worth), plus what pyarrow buffers for each open stream (the
compressed column chunks of the row group being read), whatever the split size.
Row groups of 16k-64k rows keep that small and the shuffle fine-grained.

Per-epoch order comes from :meth:`ParquetIterableDataset.set_epoch`. The epoch
lives in a shared-memory tensor, so it reaches DataLoader workers, persistent
ones included. :class:`RecDataLoader` sets it from a callable (the Lightning
trainer's ``current_epoch``) each time an epoch's iterator is created.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from ranking.data.batch import Batch
from ranking.data.convert import BatchConverter
from ranking.data.errors import DataError
from ranking.data.files import csv_column_types, file_columns, iter_record_batches
from ranking.data.groups import group_permutation, groups_holding
from ranking.hashing import hash_int, string_to_int
from ranking.schema import Schema, Side

DEFAULT_SHARD_ROWS = 16_384
DEFAULT_BUFFER_SHARDS = 4
_MAX_OPEN_FILES = 32


@dataclass(frozen=True)
class Shard:
    """A contiguous row range of one file, made of whole row groups.

    Attributes:
        path: the file.
        row_groups: Parquet row-group indices (empty for a CSV file).
        group_rows: rows per row group (the whole file's rows for CSV).
        start: index within the file of the shard's first row.
    """

    path: str
    row_groups: tuple[int, ...]
    group_rows: tuple[int, ...]
    start: int

    @property
    def num_rows(self) -> int:
        return sum(self.group_rows)


def plan_shards(
    paths: Sequence[str | Path],
    shard_rows: int = DEFAULT_SHARD_ROWS,
    columns: Sequence[str] | None = None,
    csv_types: dict[str, pa.DataType] | None = None,
) -> list[Shard]:
    """Cut files into shards of at least ``shard_rows`` rows at row-group bounds.

    Reads Parquet footers only (a CSV file is streamed once to count its rows).
    With ``columns``, a file that lacks one raises :class:`DataError`.
    """
    if shard_rows <= 0:
        raise ValueError(f"shard_rows must be positive, got {shard_rows}")
    shards: list[Shard] = []
    for path in map(Path, paths):
        if columns is not None:
            present = set(file_columns(path))
            for c in columns:
                if c not in present:
                    raise DataError(
                        f"column missing (the file has {sorted(present)})", path, column=c
                    )
        if path.suffix != ".parquet":
            probe = list(columns[:1]) if columns else None
            n = sum(rb.num_rows for _, rb in iter_record_batches(path, probe, 1 << 20, csv_types))
            if n:
                shards.append(Shard(str(path), (), (n,), 0))
            continue
        meta = pq.ParquetFile(path).metadata
        groups: list[int] = []
        sizes: list[int] = []
        start = row = 0
        for g in range(meta.num_row_groups):
            rows = meta.row_group(g).num_rows
            if rows == 0:
                continue
            if not groups:
                start = row
            groups.append(g)
            sizes.append(rows)
            row += rows
            if sum(sizes) >= shard_rows:
                shards.append(Shard(str(path), tuple(groups), tuple(sizes), start))
                groups, sizes = [], []
        if groups:
            shards.append(Shard(str(path), tuple(groups), tuple(sizes), start))
    return shards


def partition(
    sizes: Sequence[int], order: Sequence[int], parts: int, part: int
) -> list[tuple[int, int, int]]:
    """Rows of part ``part`` of ``parts`` over shards laid end to end in ``order``.

    Returns ``(shard_index, lo, hi)`` pieces (row offsets within the shard), in
    reading order. Part p holds rows ``[N * p // parts, N * (p + 1) // parts)``
    of the laid-out sequence, so part sizes differ by at most one row and the
    parts tile the sequence exactly.
    """
    sizes_in_order = np.asarray([sizes[i] for i in order], dtype=np.int64)
    ends = np.cumsum(sizes_in_order)
    total = int(ends[-1]) if len(ends) else 0
    lo, hi = total * part // parts, total * (part + 1) // parts
    pieces = []
    j = int(np.searchsorted(ends, lo, side="right"))
    while j < len(order) and lo < hi:
        start = int(ends[j] - sizes_in_order[j])
        a, b = lo - start, min(hi, int(ends[j])) - start
        if b > a:
            pieces.append((int(order[j]), a, b))
        lo = start + b
        j += 1
    return pieces


def part_sizes(total: int, parts: int) -> list[int]:
    """Row counts of the ``parts`` parts of :func:`partition` (epoch-independent)."""
    return [total * (p + 1) // parts - total * p // parts for p in range(parts)]


class RowSlicer:
    """Cut a Batch of N rows into row ranges without converting again.

    Precomputes each key's value offsets once, so a slice costs one concatenation
    of F value ranges. Works in numpy (single-threaded): torch's intra-op thread
    pool made these small copies 5x slower on a busy 2-core machine.
    """

    def __init__(self, batch: Batch) -> None:
        self.batch = batch
        kjt = batch.sparse
        self.keys = kjt.keys()
        n = len(batch)
        self.n = n
        lengths = kjt.lengths().numpy()
        self.lengths = lengths.reshape(len(self.keys), n)
        # Values are key-major, so one cumsum over the flat lengths gives, at k * n + r,
        # where row r of key k starts (and at k * n + n, where key k ends).
        self.starts = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=self.starts[1:])
        self.key_base = np.arange(len(self.keys), dtype=np.int64) * n
        self.values = kjt.values().numpy()
        self.dense = {k: v.numpy() for k, v in batch.dense.items()}
        self.labels = {k: v.numpy() for k, v in batch.labels.items()}
        self.oracle = {k: v.numpy() for k, v in batch.oracle.items()}
        self.user_ids = batch.user_ids.numpy()
        self.item_ids = batch.item_ids.numpy()
        self.time = None if batch.time is None else batch.time.numpy()

    def __call__(self, a: int, b: int) -> Batch:
        starts, stops = (
            self.starts[self.key_base + a].tolist(),
            self.starts[self.key_base + b].tolist(),
        )
        values = np.concatenate([self.values[s:e] for s, e in zip(starts, stops, strict=True)])
        lengths = np.ascontiguousarray(self.lengths[:, a:b]).reshape(-1)
        t = torch.from_numpy
        cut = lambda d: {k: t(v[a:b].copy()) for k, v in d.items()}  # noqa: E731
        return Batch(
            sparse=KeyedJaggedTensor(
                keys=self.keys, values=t(values), lengths=t(lengths), stride=b - a
            ),
            dense=cut(self.dense),
            labels=cut(self.labels),
            user_ids=t(self.user_ids[a:b].copy()),
            item_ids=t(self.item_ids[a:b].copy()),
            oracle=cut(self.oracle),
            time=None if self.time is None else t(self.time[a:b].copy()),
        )


class _FileRows:
    """Read row ranges of shards; keeps a few ParquetFile handles open per process.

    With ``row_filter`` (``(column, value)``), only rows where the column equals
    the value exist: row offsets count kept rows, so a range that starts inside a
    shard is found by reading that shard from its start. ``(column, value,
    others)`` also keeps a share ``others`` of the remaining rows, a fixed sample
    drawn by a hash of each row's file name and position (e.g. every click plus
    10% of the impressions without one). ``(column, value, others, group)``
    draws those others only from the groups of equal ``group`` key (a request)
    in the shard that hold a matching row (:func:`ranking.data.groups.groups_holding`).
    """

    def __init__(
        self,
        columns: list[str],
        chunk_rows: int,
        csv_types: dict[str, pa.DataType],
        row_filter: tuple[float | str, ...] | None = None,
    ) -> None:
        self.columns = columns
        self.chunk_rows = chunk_rows
        self.csv_types = csv_types
        self.row_filter = row_filter
        self._open: dict[str, pq.ParquetFile] = {}
        self._pid = os.getpid()

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_open": {}}

    def _file(self, path: str) -> pq.ParquetFile:
        if self._pid != os.getpid():  # a forked worker: never share a parent's handles
            self._open, self._pid = {}, os.getpid()
        f = self._open.get(path)
        if f is None:
            if len(self._open) >= _MAX_OPEN_FILES:
                self._open.pop(next(iter(self._open))).close()
            f = self._open[path] = pq.ParquetFile(path)
        return f

    def count(self, shard: Shard) -> int:
        """Rows of the shard that :meth:`read` returns (all, or those the filter keeps;
        counting those reads the filter column only)."""
        if self.row_filter is None:
            return shard.num_rows
        probe = _FileRows(
            self._filter_columns(), max(self.chunk_rows, 1 << 16), self.csv_types, self.row_filter
        )
        probe._open = self._open
        return sum(c.num_rows for c in probe.read(shard, 0, shard.num_rows))

    def _filter_columns(self) -> list[str]:
        assert self.row_filter is not None
        group = self.row_filter[3] if len(self.row_filter) > 3 else None
        column = str(self.row_filter[0])
        return [column, *([str(group)] if group and group != column else [])]

    def _in_marked_groups(self, shard: Shard) -> np.ndarray:
        """bool [shard rows]: rows whose group (equal keys in the shard) holds a
        matching row (reads the filter's two columns of the whole shard)."""
        column, value, _, group = self.row_filter
        probe = _FileRows(self._filter_columns(), max(self.chunk_rows, 1 << 16), self.csv_types)
        probe._open = self._open
        chunks = list(probe._read_raw(shard, 0, shard.num_rows))
        if not chunks:
            return np.zeros(0, dtype=bool)
        rows = concat_rows(chunks)
        match = pc.equal(pc.cast(rows.column(column), pa.float64()), float(value))
        return groups_holding(rows.column(group), pc.fill_null(match, False).to_numpy())

    def read(self, shard: Shard, lo: int, hi: int) -> Iterator[pa.Table]:
        """Rows ``[lo, hi)`` of a shard (shard-relative; kept rows only when filtering),
        in chunks of at most ``chunk_rows``."""
        if self.row_filter is None:
            yield from self._read_raw(shard, lo, hi)
            return
        pos = raw = 0
        column, value, others, group = (*self.row_filter, 0.0, None)[:4]
        salt = int(string_to_int([Path(shard.path).name])[0]) if others > 0 else 0
        in_groups = self._in_marked_groups(shard) if group and others > 0 else None
        for chunk in self._read_raw(shard, 0, shard.num_rows):
            keep = pc.equal(pc.cast(chunk.column(column), pa.float64()), float(value))
            if others > 0:
                rows = np.arange(raw, raw + chunk.num_rows, dtype=np.int64) + shard.start
                sampled = hash_int(rows ^ salt, 1 << 24) < int(others * (1 << 24))
                if in_groups is not None:
                    sampled &= in_groups[raw : raw + chunk.num_rows]
                keep = pc.or_(keep, pa.array(sampled))
            raw += chunk.num_rows
            kept = chunk.filter(keep)
            a, b = max(lo - pos, 0), min(hi - pos, kept.num_rows)
            if b > a:
                yield kept.slice(a, b - a)
            pos += kept.num_rows
            if pos >= hi:
                return

    def _read_raw(self, shard: Shard, lo: int, hi: int) -> Iterator[pa.Table]:
        if not shard.row_groups:  # CSV
            for offset, rb in iter_record_batches(
                shard.path, self.columns, self.chunk_rows, self.csv_types
            ):
                a, b = max(lo - offset, 0), min(hi - offset, rb.num_rows)
                if b > a:
                    yield _normalise(rb.slice(a, b - a))
                if offset + rb.num_rows >= hi:
                    return
            return
        starts = np.concatenate([[0], np.cumsum(shard.group_rows)])
        g0 = int(np.searchsorted(starts, lo, side="right")) - 1
        g1 = int(np.searchsorted(starts, hi, side="left"))
        pos = int(starts[g0])
        groups = list(shard.row_groups[g0:g1])
        try:
            batches = self._file(shard.path).iter_batches(
                batch_size=self.chunk_rows, row_groups=groups, columns=self.columns
            )
            for rb in batches:
                a, b = max(lo - pos, 0), min(hi - pos, rb.num_rows)
                if b > a:
                    yield _normalise(rb.slice(a, b - a))
                pos += rb.num_rows
                if pos >= hi:
                    return
        except (pa.ArrowException, OSError) as e:
            raise DataError(
                f"cannot read Parquet rows {shard.start + lo}..{shard.start + hi}: {e}", shard.path
            ) from None


def _check_group_keys(paths: Sequence[str | Path], column: str) -> None:
    """Refuse a ``group_by`` column whose Parquet type is not a scalar key (a list,
    struct or map), naming the first such file (footers only)."""
    for path in map(Path, paths):
        if path.suffix != ".parquet":
            continue
        t = pq.read_schema(path).field(column).type
        if pa.types.is_nested(t):
            raise DataError(
                f"group_by needs scalar keys, the column holds {t}", path, column=column
            )


def _normalise(rb: pa.RecordBatch) -> pa.Table:
    """RecordBatch -> Table with dictionary columns decoded (so files concatenate)."""
    cols = [c.dictionary_decode() if pa.types.is_dictionary(c.type) else c for c in rb.columns]
    return pa.Table.from_arrays(cols, names=rb.schema.names)


def concat_rows(tables: Sequence[pa.Table]) -> pa.Table:
    """Concatenate row blocks whose physical types may differ between files (int32 vs
    int64, string vs large_string): columns align by name and are promoted."""
    if len(tables) == 1:
        return tables[0]
    return pa.concat_tables(tables, promote_options="permissive")


class PackedBatch:
    """A Batch laid out in one byte buffer, for the trip from a worker to the loader.

    A DataLoader worker normally hands each tensor to the main process through a
    shared-memory segment of its own, measured at 1 to 5 ms apiece here: a Batch
    of ~12 tensors cost 12 ms per 1024 rows, the pipeline's bottleneck. Packed,
    a batch crosses the worker pipe as one pickled byte string (~0.3 MB per 1024
    rows of the synthetic data, well under a millisecond), and :func:`unpack`
    rebuilds the Batch as zero-copy views of it.
    """

    __slots__ = ("buffer", "keys", "stride", "layout")

    def __init__(
        self, buffer: torch.Tensor, keys: list[str], stride: int, layout: list[tuple]
    ) -> None:
        self.buffer = buffer  # uint8 [nbytes]
        self.keys = keys
        self.stride = stride
        self.layout = layout  # (group, name, dtype, shape, byte offset)

    def __reduce__(self) -> tuple:
        # bytes, not a tensor: pickling a tensor would create a shared-memory segment
        raw = self.buffer.numpy().tobytes()
        return (_packed_from_bytes, (raw, self.keys, self.stride, self.layout))

    def pin_memory(self) -> PackedBatch:
        return PackedBatch(self.buffer.pin_memory(), self.keys, self.stride, self.layout)


def _packed_from_bytes(
    raw: bytes, keys: list[str], stride: int, layout: list[tuple]
) -> PackedBatch:
    buffer = (
        torch.frombuffer(bytearray(raw), dtype=torch.uint8)
        if raw
        else torch.empty(0, dtype=torch.uint8)
    )
    return PackedBatch(buffer, keys, stride, layout)


def pack(batch: Batch) -> PackedBatch:
    """Copy a Batch's tensors into one 8-byte-aligned buffer."""
    parts: list[tuple[str, str, torch.Tensor]] = [
        ("sparse", "values", batch.sparse.values()),
        ("sparse", "lengths", batch.sparse.lengths()),
        ("ids", "user_ids", batch.user_ids),
        ("ids", "item_ids", batch.item_ids),
    ]
    if batch.time is not None:
        parts.append(("ids", "time", batch.time))
    for group in ("dense", "labels", "oracle"):
        parts += [(group, k, v) for k, v in getattr(batch, group).items()]
    layout, offset = [], 0
    for group, name, t in parts:
        layout.append((group, name, t.dtype, tuple(t.shape), offset))
        offset += -(-t.numel() * t.element_size() // 8) * 8
    buffer = torch.empty(offset, dtype=torch.uint8)
    for (_, _, dtype, _, start), (_, _, t) in zip(layout, parts, strict=True):
        nbytes = t.numel() * t.element_size()
        buffer[start : start + nbytes].view(dtype).copy_(t.reshape(-1))
    return PackedBatch(buffer, batch.sparse.keys(), len(batch), layout)


def unpack(packed: PackedBatch | Batch) -> Batch:
    """Inverse of :func:`pack` (views into the buffer); a Batch passes through."""
    if not isinstance(packed, PackedBatch):
        return packed
    out: dict[str, dict[str, torch.Tensor]] = {
        "sparse": {},
        "ids": {},
        "dense": {},
        "labels": {},
        "oracle": {},
    }
    for group, name, dtype, shape, start in packed.layout:
        n = math.prod(shape) * dtype.itemsize
        out[group][name] = packed.buffer[start : start + n].view(dtype).view(shape)
    return Batch(
        sparse=KeyedJaggedTensor(
            keys=packed.keys,
            values=out["sparse"]["values"],
            lengths=out["sparse"]["lengths"],
            stride=packed.stride,
        ),
        dense=out["dense"],
        labels=out["labels"],
        user_ids=out["ids"]["user_ids"],
        item_ids=out["ids"]["item_ids"],
        oracle=out["oracle"],
        time=out["ids"].get("time"),
    )


class _Unpacking:
    """Iterator adapter: unpack what the DataLoader's workers sent."""

    def __init__(self, it: Iterator[Any]) -> None:
        self._it = it

    def __iter__(self) -> _Unpacking:
        return self

    def __next__(self) -> Batch:
        return unpack(next(self._it))

    def __len__(self) -> int:
        return len(self._it)  # type: ignore[arg-type]


def _worker() -> tuple[int, int]:
    info = get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


class _Distributed:
    """Rank / world size: explicit values win, else torch.distributed, else 0 / 1.

    Resolved in the main process (construction, ``len``, :class:`RecDataLoader`'s
    ``iter``), so spawned workers, where torch.distributed is not initialised,
    still get the right values. Also the transfer format: with
    ``pack_batches`` (set by :class:`RecDataLoader` when it has workers), a
    worker yields :class:`PackedBatch` and the loader unpacks it.
    """

    pack_batches = False

    def _out(self, batch: Batch) -> Batch | PackedBatch:
        return pack(batch) if self.pack_batches and get_worker_info() is not None else batch

    def _init_dist(self, rank: int | None, world_size: int | None) -> None:
        if (rank is None) != (world_size is None):
            raise ValueError("give both rank and world_size, or neither")
        if rank is not None and world_size is not None and not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        self._explicit = (rank, world_size) if rank is not None else None
        self.resolve_distributed()

    def resolve_distributed(self) -> None:
        if self._explicit is not None:
            self.rank, self.world_size = self._explicit
        elif dist.is_available() and dist.is_initialized():
            self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        else:
            self.rank, self.world_size = 0, 1


class ParquetIterableDataset(IterableDataset, _Distributed):
    """One split streamed as Batches, sharded by rank and DataLoader worker.

    Args:
        schema: dataset schema (its ``files[split]`` names the files).
        split: "train", "valid" or "test".
        converter: turns Arrow rows into a Batch (decides the columns read).
        batch_size: rows per Batch; every batch is full except each worker's last.
        shuffle: permute shards and rows each epoch (train); False keeps file order.
        seed: with the epoch, decides the permutation.
        rank, world_size: this process's place; default: torch.distributed if
            initialised, else 0 / 1.
        drop_last: False: every row exactly once, the last batch of each worker may
            be short. True: every (rank, worker) yields the same number of full
            batches, ``(N // parts) // batch_size`` (DDP-safe: no rank waits on a
            collective another rank never reaches); the few rows past it are not
            yielded that epoch.
        shard_rows: target shard size (rows); shards follow row-group bounds.
        buffer_shards: rows are shuffled within windows of this many shards.
        row_filter: a label column: only rows where it is 1 exist for this dataset
            (e.g. retrieval trains on clicks); or ``(column, value)``: only rows
            where that column (any column of the files, e.g. the synthetic
            ``policy``; read in addition to the converter's) equals ``value``;
            or ``(column, value, others)``: those plus a fixed share ``others``
            of the other rows (negative downsampling).
            Exactly-once, ``len`` and drop_last then count kept rows; planning
            streams that one column once to count them per shard.
        group_by: a column of the files (e.g. ``request_id``; scalar keys, read
            as text from CSV): shuffling then permutes whole groups of equal key
            within each window and keeps a group's rows together
            (:func:`ranking.data.groups.group_permutation`; in window order), so
            a request's rows share a batch unless the batch ends inside it, or
            the group spans two windows (it then moves as two groups). No effect
            without shuffle (file order: logs that write a request's rows
            together keep them together).
        positive_groups_only: with ``group_by`` and a ``(column, value, others)``
            row filter (others > 0): the others are drawn only from the groups
            (rows of equal key in a shard; a group cut by a shard boundary counts
            as two) that hold a matching row, e.g. the non-clicked impressions of
            requests with a click, the hard negatives' rows.

    Use with ``DataLoader(ds, batch_size=None, num_workers=...)`` (or
    :class:`RecDataLoader`, which also keeps ``len`` exact and sets the epoch).

    Example::

        ds = ParquetIterableDataset(schema, "train", conv, batch_size=1024, shuffle=True, seed=0)
        ds.set_epoch(3)
        for batch in DataLoader(ds, batch_size=None, num_workers=2):
            ...  # batch.sparse: KJT [F keys x B], batch.dense["user"]: [B, D_user]
    """

    def __init__(
        self,
        schema: Schema,
        split: str,
        converter: BatchConverter,
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        drop_last: bool = False,
        shard_rows: int = DEFAULT_SHARD_ROWS,
        buffer_shards: int = DEFAULT_BUFFER_SHARDS,
        row_filter: str | tuple[str | float, ...] | None = None,
        group_by: str | None = None,
        positive_groups_only: bool = False,
    ) -> None:
        super().__init__()
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.schema = schema
        self.split = split
        self.converter = converter
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.drop_last = drop_last
        self.shard_rows = int(shard_rows)
        self.buffer_shards = max(1, int(buffer_shards))
        self.buffer_rows = self.buffer_shards * self.shard_rows
        self._init_dist(rank, world_size)
        self.columns = converter.columns
        if isinstance(row_filter, str):
            if row_filter not in schema.labels:
                raise ValueError(
                    f"row_filter must be a label of the schema {schema.labels} "
                    f"or a (column, value) pair, got {row_filter!r}"
                )
            row_filter = (row_filter, 1.0)
        if row_filter is not None:
            column, value, others = (*row_filter, 0.0)[:3]
            if not 0.0 <= float(others) <= 1.0:
                raise ValueError("row_filter: the share of other rows must lie in [0, 1]")
            row_filter = (str(column), float(value), float(others))
            if column not in self.columns:
                self.columns = [*self.columns, str(column)]
        if positive_groups_only:
            if group_by is None or row_filter is None or not row_filter[2] > 0:
                raise ValueError(
                    "positive_groups_only needs group_by and a row_filter (column, value, "
                    f"share) with share > 0 (the share of the other rows it keeps), got "
                    f"group_by={group_by!r}, row_filter={row_filter!r}"
                )
            row_filter = (*row_filter, str(group_by))
        self.group_by = None if group_by is None else str(group_by)
        if self.group_by is not None and self.group_by not in self.columns:
            self.columns = [*self.columns, self.group_by]
        self.row_filter: tuple[str | float, ...] | None = row_filter
        csv_types = csv_column_types(schema)
        if self.group_by is not None and self.group_by not in csv_types:
            # read CSV keys as text: inferred per block, they could change type
            csv_types = {**csv_types, self.group_by: pa.string()}
        self.shards = plan_shards(
            schema.split_paths(split), self.shard_rows, self.columns, csv_types
        )
        if self.group_by is not None:
            _check_group_keys(schema.split_paths(split), self.group_by)
        self._reader = _FileRows(self.columns, self.shard_rows, csv_types, row_filter)
        # rows each shard contributes (the filtered count streams the label column once)
        self.shard_sizes = [self._reader.count(s) for s in self.shards]
        self.num_rows = sum(self.shard_sizes)
        # Shared memory: set_epoch in the main process reaches (persistent) workers.
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()
        #: DataLoader workers per rank; :class:`RecDataLoader` sets it (``len`` needs it).
        self.loader_workers = 0

    # ---- epoch -----------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        self._epoch.fill_(int(epoch))

    @property
    def epoch(self) -> int:
        return int(self._epoch.item())

    # ---- plan ------------------------------------------------------------------
    def _num_parts(self, workers: int) -> int:
        return self.world_size * max(1, workers)

    def shard_order(self, epoch: int) -> np.ndarray:
        """The epoch's shard permutation (identical on every rank and worker)."""
        n = len(self.shards)
        if not self.shuffle:
            return np.arange(n)
        return np.random.default_rng([self.seed, epoch]).permutation(n)

    def pieces(
        self, epoch: int, rank: int, worker: int, workers: int
    ) -> list[tuple[int, int, int]]:
        """``(shard, lo, hi)`` row ranges that (rank, worker) reads in ``epoch``."""
        parts = self._num_parts(workers)
        part = rank * max(1, workers) + worker
        return partition(self.shard_sizes, self.shard_order(epoch), parts, part)

    def _batch_limit(self, workers: int) -> int | None:
        if not self.drop_last:
            return None
        return (self.num_rows // self._num_parts(workers)) // self.batch_size

    def __len__(self) -> int:
        """Batches this rank yields per epoch (exact when ``loader_workers`` matches the loader)."""
        self.resolve_distributed()
        return self.rank_lengths()[self.rank]

    def rank_lengths(self) -> list[int]:
        """Batches each rank yields per epoch (``len`` on every rank, computed here)."""
        w = max(1, self.loader_workers)
        limit = self._batch_limit(self.loader_workers)
        if limit is not None:
            return [limit * w] * self.world_size
        sizes = part_sizes(self.num_rows, self._num_parts(self.loader_workers))
        return [
            sum(math.ceil(n / self.batch_size) for n in sizes[r * w : (r + 1) * w])
            for r in range(self.world_size)
        ]

    # ---- iteration ---------------------------------------------------------------
    def _windows(self, pieces: list[tuple[int, int, int]]) -> Iterator[pa.Table]:
        """Row windows of about ``buffer_rows`` rows.

        Shuffling draws chunks round-robin from ``buffer_shards`` pieces at once, so a
        window mixes several shards even when one row group is bigger than the
        window (e.g. a file per day written as a single row group). Without
        shuffling pieces are read one after the other, in order.
        """
        streams = self.buffer_shards if self.shuffle else 1
        todo = iter(pieces)
        active: list[Iterator[pa.Table]] = []
        buf: list[pa.Table] = []
        rows = 0
        while True:
            while len(active) < streams and (p := next(todo, None)) is not None:
                active.append(self._reader.read(self.shards[p[0]], p[1], p[2]))
            if not active:
                break
            for stream in list(active):
                chunk = next(stream, None)
                if chunk is None:
                    active.remove(stream)
                    continue
                buf.append(chunk)
                rows += chunk.num_rows
            if rows >= self.buffer_rows:
                yield concat_rows(buf)
                buf, rows = [], 0
        if buf:
            yield concat_rows(buf)

    def __iter__(self) -> Iterator[Batch]:
        worker, workers = _worker()
        epoch = self.epoch
        part = self.rank * workers + worker
        limit = self._batch_limit(workers)
        rng = np.random.default_rng([self.seed, epoch, part, 1])
        bs = self.batch_size
        emitted = 0
        carry: pa.Table | None = None
        for window in self._windows(self.pieces(epoch, self.rank, worker, workers)):
            if limit is not None and emitted >= limit:
                return
            if self.shuffle:
                order = (
                    group_permutation(window.column(self.group_by), rng)
                    if self.group_by is not None
                    else rng.permutation(window.num_rows)
                )
                window = window.take(pa.array(order))
            if carry is not None and carry.num_rows:
                window = concat_rows([carry, window])
            full = window.num_rows - window.num_rows % bs
            if full:
                cut = RowSlicer(self.converter.convert(window.slice(0, full)))
                for a in range(0, full, bs):
                    if limit is not None and emitted >= limit:
                        return
                    yield self._out(cut(a, a + bs))
                    emitted += 1
            carry = window.slice(full)
        if carry is not None and carry.num_rows and limit is None:
            yield self._out(self.converter.convert(carry))


class _SnapshotDataset(IterableDataset, _Distributed):
    """One side's snapshot table (item corpus / users) in id order.

    Batch k of the id-ordered table goes to rank ``k % world_size``; a rank's j-th
    batch to worker ``j % num_workers``. A DataLoader returns its workers' batches
    round-robin, so each rank sees its batches in id order (a single process sees
    the whole table in order). A file not sorted by id is read whole and sorted.
    """

    side: Side
    file_key: str

    def __init__(
        self,
        schema: Schema,
        converter: BatchConverter,
        batch_size: int,
        rank: int | None = 0,
        world_size: int | None = 1,
        chunk_rows: int = 65_536,
    ) -> None:
        super().__init__()
        if self.file_key not in schema.files:
            raise DataError(f"the schema names no {self.file_key!r} file", schema.root)
        self.schema = schema
        self.converter = converter
        self.batch_size = int(batch_size)
        self.chunk_rows = int(chunk_rows)
        self.paths = schema.split_paths(self.file_key)
        self.columns = converter.side_columns(self.side)
        self.csv_types = csv_column_types(schema)
        self._init_dist(rank, world_size)
        ids = [
            rb.column(0).to_numpy(zero_copy_only=False)
            for p in self.paths
            for _, rb in iter_record_batches(p, self.columns[:1], self.chunk_rows, self.csv_types)
        ]
        key = np.concatenate(ids) if ids else np.empty(0, np.int64)
        self.num_rows = len(key)
        self.sorted = bool(np.all(key[1:] >= key[:-1]))
        self._order = None if self.sorted else np.argsort(key, kind="stable")

    def __len__(self) -> int:
        self.resolve_distributed()
        return len(range(self.rank, math.ceil(self.num_rows / self.batch_size), self.world_size))

    def _tables(self) -> Iterator[pa.Table]:
        """The whole table in id order, as B-row tables (the last may be shorter)."""
        bs = self.batch_size
        chunks = (
            _normalise(rb)
            for p in self.paths
            for _, rb in iter_record_batches(p, self.columns, self.chunk_rows, self.csv_types)
        )
        if self._order is not None:
            table = concat_rows(list(chunks)).take(pa.array(self._order))
            for a in range(0, table.num_rows, bs):
                yield table.slice(a, bs)
            return
        carry: pa.Table | None = None
        for chunk in chunks:
            t = chunk if carry is None else concat_rows([carry, chunk])
            full = t.num_rows - t.num_rows % bs
            for a in range(0, full, bs):
                yield t.slice(a, bs)
            carry = t.slice(full)
        if carry is not None and carry.num_rows:
            yield carry

    def _convert(self, rows: pa.Table) -> Batch:
        raise NotImplementedError

    def __iter__(self) -> Iterator[Batch]:
        worker, workers = _worker()
        for k, rows in enumerate(self._tables()):
            if k % self.world_size == self.rank and (k // self.world_size) % workers == worker:
                yield self._out(self._convert(rows))


class ItemCorpusDataset(_SnapshotDataset):
    """The item corpus (``files.items``) in item-id order, as corpus Batches
    (:meth:`BatchConverter.convert_items`). Not sharded by default (rank 0 of 1):
    the index needs every item; pass rank/world_size to split the work."""

    side = Side.ITEM
    file_key = "items"

    def _convert(self, rows: pa.Table) -> Batch:
        return self.converter.convert_items(rows)


class UserSnapshotDataset(_SnapshotDataset):
    """The users snapshot (``files.users``) in user-id order
    (:meth:`BatchConverter.convert_users`)."""

    side = Side.USER
    file_key = "users"

    def _convert(self, rows: pa.Table) -> Batch:
        return self.converter.convert_users(rows)


class RecDataLoader(DataLoader):
    """A DataLoader over a Batch-yielding dataset (``batch_size=None``, no collate).

    Each time an epoch's iterator is made it (1) sets the dataset's epoch from
    ``epoch_fn`` (e.g. ``lambda: trainer.current_epoch``), (2) resolves the
    dataset's rank from torch.distributed in this (main) process, (3) tells
    the dataset its worker count, so ``len(loader)`` is exact, and (4) with
    workers, has them send each Batch packed in one buffer (:func:`pack`, 10x
    cheaper to pass between processes) and unpacks it here.

    Args:
        dataset: a :class:`ParquetIterableDataset` or snapshot dataset.
        num_workers: DataLoader worker processes.
        epoch_fn: returns the epoch to use; None leaves the dataset's epoch alone.
        **kwargs: passed to DataLoader (``persistent_workers``, ``pin_memory``, ...).
    """

    def __init__(
        self,
        dataset: IterableDataset,
        num_workers: int = 0,
        epoch_fn: Callable[[], int] | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.pop("batch_size", None)
        super().__init__(dataset, batch_size=None, num_workers=num_workers, **kwargs)
        self.epoch_fn = epoch_fn

    def _prepare(self) -> None:
        ds = self.dataset
        if hasattr(ds, "resolve_distributed"):
            ds.resolve_distributed()
        if hasattr(ds, "loader_workers"):
            ds.loader_workers = self.num_workers
        if self.epoch_fn is not None and hasattr(ds, "set_epoch"):
            ds.set_epoch(self.epoch_fn())
        if hasattr(ds, "pack_batches"):
            ds.pack_batches = self.num_workers > 0

    def __iter__(self) -> Any:
        self._prepare()
        it = super().__iter__()
        return _Unpacking(it) if self.num_workers > 0 else it

    def __len__(self) -> int:
        self._prepare()
        return super().__len__()
