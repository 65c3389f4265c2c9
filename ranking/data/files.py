"""Open a split's Parquet or CSV files as a stream of pyarrow RecordBatches.

Validation and the training reader both walk dataset files batch by batch (memory
stays bounded whatever the file size) and both need to say *which row of which
file* a value came from, so every batch comes with its global row offset within
its file.

Parquet is read as written. CSV has no types, so a caller passes the Arrow type it
expects per column (see :func:`csv_column_types` for the types a schema implies);
those columns are read as text and converted here, and a value that does not
convert raises :class:`DataError` naming its row. CSV conventions:

- an empty field is null (``NA``, ``null`` and the like are ordinary text);
- a list column holds ids joined by ``|`` (``"3|17|42"``, MovieLens style); an
  empty field is an empty list.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from ranking.data.errors import DataError
from ranking.schema import Kind, Schema

SUFFIXES = (".parquet", ".csv")
CSV_LIST_SEPARATOR = "|"
DEFAULT_BATCH_ROWS = 65_536
_CSV_BLOCK_BYTES = 8 << 20


def file_columns(path: str | Path) -> list[str]:
    """Column names of one Parquet or CSV file (reads the footer / header only)."""
    path = _readable(path)
    with _arrow_errors(path):
        if path.suffix == ".parquet":
            return list(pq.read_schema(path).names)
        return list(pacsv.open_csv(path).schema.names)


def iter_record_batches(
    path: str | Path,
    columns: Sequence[str] | None = None,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    column_types: Mapping[str, pa.DataType] | None = None,
) -> Iterator[tuple[int, pa.RecordBatch]]:
    """Yield ``(row_offset, batch)`` over one file, in file order.

    Args:
        path: a ``.parquet`` or ``.csv`` file.
        columns: columns to read (all when None). A column the file lacks raises
            DataError rather than being skipped.
        batch_rows: at most this many rows per batch (Parquet row groups and CSV
            blocks may end a batch earlier).
        column_types: CSV only: the Arrow type of each named column; values that do
            not convert raise DataError with their row. Ignored for Parquet,
            whose types are the file's own.

    Yields:
        row_offset: index within the file of the batch's first row (0-based).
        batch: a RecordBatch of ``len(batch)`` rows.
    """
    if batch_rows <= 0:
        raise ValueError(f"batch_rows must be positive, got {batch_rows}")
    path = _readable(path)
    if columns is not None:
        columns = list(columns)
        present = set(file_columns(path))
        for c in columns:
            if c not in present:
                raise DataError(f"column missing (the file has {sorted(present)})", path, column=c)
    if path.suffix == ".parquet":
        yield from _parquet_batches(path, columns, batch_rows)
    else:
        yield from _csv_batches(path, columns, batch_rows, dict(column_types or {}))


def csv_column_types(schema: Schema) -> dict[str, pa.DataType]:
    """Arrow types a CSV file of this schema is read with.

    Ids with a vocabulary are int64; hashed values are strings (CSV cannot say
    whether ``"123"`` is a number or a code, and the two hash differently, so text
    is the only stable reading); lists are lists of those; dense values, labels
    and oracle probabilities are float64; the time column and the availability
    bounds are int64.
    """
    types: dict[str, pa.DataType] = {}
    for f in schema.features:
        if f.kind == Kind.DENSE:
            types[f.name] = pa.float64()
            continue
        scalar = pa.string() if f.hashed else pa.int64()
        types[f.name] = pa.list_(scalar) if f.is_list else scalar
    for c in (*schema.labels, *schema.oracle.values()):
        types[c] = pa.float64()
    for c in (schema.time, *schema.availability.values()):
        types[c] = pa.int64()
    return types


# ---- Parquet ---------------------------------------------------------------------


def _parquet_batches(
    path: Path, columns: list[str] | None, batch_rows: int
) -> Iterator[tuple[int, pa.RecordBatch]]:
    with _arrow_errors(path):
        batches = pq.ParquetFile(path).iter_batches(batch_size=batch_rows, columns=columns)
    offset = 0
    while True:
        with _arrow_errors(path, offset):
            batch = next(batches, None)
        if batch is None:
            return
        yield offset, batch
        offset += batch.num_rows


# ---- CSV -------------------------------------------------------------------------


class _Unreadable(Exception):
    """A text value that does not convert: its row within the converted array."""

    def __init__(self, row: int, text: str | None, target: pa.DataType, in_list: bool) -> None:
        self.row, self.text, self.target, self.in_list = row, text, target, in_list


def _csv_batches(
    path: Path, columns: list[str] | None, batch_rows: int, types: dict[str, pa.DataType]
) -> Iterator[tuple[int, pa.RecordBatch]]:
    wanted = {c: t for c, t in types.items() if columns is None or c in columns}
    convert = pacsv.ConvertOptions(
        include_columns=columns or [],
        column_types={c: pa.string() for c in wanted},
        null_values=[""],
        strings_can_be_null=True,
    )
    with _arrow_errors(path):
        blocks = iter(
            pacsv.open_csv(
                path,
                read_options=pacsv.ReadOptions(block_size=_CSV_BLOCK_BYTES),
                convert_options=convert,
            )
        )
    offset = 0
    while True:
        with _arrow_errors(path, offset):
            block = next(blocks, None)
        if block is None:
            return
        block = _convert_block(path, offset, block, wanted)
        for start in range(0, block.num_rows, batch_rows):
            yield offset + start, block.slice(start, batch_rows)
        offset += block.num_rows


def _convert_block(
    path: Path, offset: int, block: pa.RecordBatch, types: dict[str, pa.DataType]
) -> pa.RecordBatch:
    arrays = []
    for name, arr in zip(block.schema.names, block.columns, strict=True):
        if name in types:
            try:
                arr = _from_text(arr, types[name])
            except _Unreadable as e:
                what = "a list element" if e.in_list else "value"
                raise DataError(
                    f"{what} cannot be read as {e.target}",
                    path,
                    column=name,
                    row=offset + e.row,
                    value=e.text,
                ) from None
        arrays.append(arr)
    return pa.RecordBatch.from_arrays(arrays, names=block.schema.names)


def _from_text(text: pa.Array, target: pa.DataType) -> pa.Array:
    """Convert a string array to ``target`` (a scalar type or a list of one)."""
    if pa.types.is_list(target) or pa.types.is_large_list(target):
        return _list_from_text(text, target.value_type)
    return _cast_or_locate(text, target)


def _list_from_text(text: pa.Array, value_type: pa.DataType) -> pa.Array:
    """``"3|17|42"`` -> ``[3, 17, 42]``; an empty field -> ``[]``. Vectorised."""
    text = pc.fill_null(text, "")
    empty = pc.equal(text, "").to_numpy(zero_copy_only=False)
    parts = pc.split_pattern(text, CSV_LIST_SEPARATOR)
    parent = pc.list_parent_indices(parts).to_numpy()
    keep = ~empty[parent]  # an empty field splits into one "" token: not a value
    tokens = pc.utf8_trim_whitespace(pc.list_flatten(parts).filter(pa.array(keep)))
    values = _cast_or_locate(tokens, value_type, row_of=parent[keep])
    lengths = np.where(empty, 0, pc.list_value_length(parts).to_numpy(zero_copy_only=False))
    offsets = np.zeros(len(text) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), values)


def _cast_or_locate(
    text: pa.Array, target: pa.DataType, row_of: np.ndarray | None = None
) -> pa.Array:
    """Cast; on failure find the first value that does not convert.

    Arrow's cast stops at a bad value without saying where. The search bisects on
    prefixes (log2(n) casts), so the happy path pays nothing and a failure stays
    vectorised.
    """
    try:
        return pc.cast(text, target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    ok, bad = 0, len(text)  # cast(text[:ok]) succeeds, cast(text[:bad]) fails
    while bad - ok > 1:
        mid = (ok + bad) // 2
        try:
            pc.cast(text.slice(0, mid), target)
            ok = mid
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            bad = mid
    i = bad - 1
    row = i if row_of is None else int(row_of[i])
    raise _Unreadable(row, text[i].as_py(), target, in_list=row_of is not None)


# ---- shared ----------------------------------------------------------------------


def _readable(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise DataError("file not found", path)
    if path.suffix not in SUFFIXES:
        raise DataError(f"unsupported file type {path.suffix!r} (expected .parquet or .csv)", path)
    return path


@contextlib.contextmanager
def _arrow_errors(path: Path, offset: int | None = None) -> Iterator[None]:
    """Turn a pyarrow read failure (corrupt file, ragged CSV row) into a DataError."""
    try:
        yield
    except (pa.ArrowException, OSError) as e:
        where = "" if offset is None else f" (in the batch starting at row {offset})"
        kind = "Parquet" if path.suffix == ".parquet" else "CSV"
        raise DataError(f"cannot read {kind} file{where}: {e}", path) from None
