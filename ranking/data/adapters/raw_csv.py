"""What the adapters share: the raw header checked against the layout, the first
bad field named after pyarrow gave up on a file, the first empty field of a parsed
block, the first row failing a vectorised check, and the file names and row-group
size of the dataset directory they write."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ranking.data.errors import DataError

#: ``files`` of every dataset directory an adapter writes
DATASET_FILES = {
    "train": "train.parquet",
    "valid": "valid.parquet",
    "test": "test.parquet",
    "items": "items.parquet",
    "users": "users.parquet",
}
#: rows per Parquet row group written: the loader's default shard
#: (``ranking.data.dataset.DEFAULT_SHARD_ROWS``, not imported: it pulls torchrec)
ROW_GROUP_ROWS = 16_384
_WHAT = {pa.int64(): "an integer", pa.float64(): "a number", pa.float32(): "a number"}


def checked_header(
    path: Path, want: list[str], layout: str, skip: tuple[str, ...] = ()
) -> list[str]:
    """The header of ``path`` (every field, ``skip`` included); a column of ``want``
    missing from it, or one it has that is neither in ``want`` nor in ``skip``, is
    an error naming the column."""
    if not path.is_file():
        raise DataError("missing", path)
    with open(path, newline="") as f:
        header = next(csv.reader(f), [])
    twice = [c for i, c in enumerate(header) if c in header[:i]]
    if twice:
        raise DataError("named twice in the header", path, twice[0])
    for c in want:
        if c not in header:
            raise DataError("missing from the header", path, c)
    for c in header:
        if c not in want and c not in skip:
            raise DataError(f"not a column of the {layout} layout", path, c)
    return header


def name_bad_field(path: Path, header: list[str], types: dict[str, pa.DataType]) -> None:
    """Raise a DataError naming the first line with the wrong field count (a blank
    line has none) or a field that does not convert to its column's type (ints,
    floats, timestamps; converted by pyarrow as the reader does, so an int beyond
    int64 fails here too). Slow (line by line); for after pyarrow's reader failed
    on the file. Empty fields are left to the null checks."""
    with open(path, newline="") as f:
        rows = csv.reader(f)
        next(rows)
        for line, fields in enumerate(rows):
            if len(fields) != len(header):
                raise DataError(
                    f"expected {len(header)} fields, found {len(fields)}", path, row=line
                )
            for name, text in zip(header, fields, strict=True):
                kind = types.get(name)
                if not text or kind is None:
                    continue
                what = "a timestamp" if pa.types.is_timestamp(kind) else _WHAT.get(kind)
                if what is None:  # text and dictionary columns take any text
                    continue
                try:
                    pc.cast(pa.array([text]), kind)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                    raise DataError(f"not {what}", path, name, line, text) from None


def fail_first(
    problem: str,
    path: Path,
    column: str,
    bad: np.ndarray,
    values: np.ndarray | None = None,
    line0: int = 0,
) -> None:
    """A DataError at the first True of ``bad`` (bool [R]) naming its line (``line0``:
    the file line of row 0) and, given ``values``, its value; nothing when all False."""
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        if values is None:
            raise DataError(problem, path, column, line0 + i)
        raise DataError(problem, path, column, line0 + i, values[i].item())


def check_no_empty(path: Path, table: pa.Table, columns: list[str], line0: int = 0) -> None:
    """An empty field (a null after parsing) in ``columns`` is an error naming its line
    (``line0``: the file line of the table's first row)."""
    for c in columns:
        col = table.column(c)
        if col.null_count:
            i = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
            raise DataError("empty field", path, c, line0 + i)
