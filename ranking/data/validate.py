"""Check a dataset directory against its schema before any training.

A bad value that reaches training is silently clipped by an embedding lookup,
turned into NaN by a loss, or dropped by a reader; the run then "works" and is
wrong. So every split file and the item corpus are read once, batch by batch
(memory stays bounded), and the first problem in file order stops everything with
one :class:`DataError` naming the file, column, 0-based row within that file, what
is wrong and the value.

What is checked, per file:

1. every column the schema names is present (splits: features, ids, time,
   labels, oracle; item corpus: item id, item-side features and the
   availability columns);
2. each column's Arrow type fits its role (table ``_DTYPES``);
3. values fit their role (table ``_VALUE_CHECKS``): ids with a vocabulary are
   non-null, non-negative and below ``vocab_size`` (list elements too, reported
   at the row of the list); hashed values are non-null; dense values are finite;
   labels are 0/1; oracle probabilities lie in [0, 1]; time is non-null; lists
   are no longer than ``max_len`` unless the feature says ``truncate: true``;

and across files:

4. a split folder holds files and a split has rows;
5. item ids are unique in the corpus and every item id of a split is in it;
6. a hashed table's raw values are all integers or all strings (they hash
   differently, so a mix would silently split one value into two rows), and
   every file's time column and the window bounds share one unit (all
   integers, or timestamps of one unit: they are compared tick for tick);
7. with ``availability`` in the schema: each corpus window is non-empty
   (``from < to`` where both are set) and every row of a split lies in its
   item's window (``from <= time < to``): a click on an item the data says
   could not be shown means the window or the time column is wrong.

All value checks are vectorised (pyarrow.compute / numpy per record batch).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ranking.data.availability import OPEN_END, OPEN_START, ItemWindows, read_windows, ticks
from ranking.data.errors import NO_VALUE, DataError
from ranking.data.files import (
    DEFAULT_BATCH_ROWS,
    csv_column_types,
    file_columns,
    iter_record_batches,
)
from ranking.schema import SCHEMA_FILE, SPLITS, Feature, Kind, Schema

_Kinds = dict[str | tuple[str], tuple[str, str]]

#: ``kinds`` maps each hashed table (a str) to the kind of raw value it sees
#: (check 6), and this key (a tuple, so no table name can take it) to the time
#: units that every file's time and window columns share.
_TIME_KIND = ("time units",)

ITEMS = "items"


class Role(enum.StrEnum):
    """What a column is for; decides the dtype and value checks it gets."""

    ID = "id"  # categorical with vocab_size
    HASHED = "hashed"  # categorical with hash_buckets
    ID_LIST = "id_list"  # multi_hot / sequence with vocab_size
    HASHED_LIST = "hashed_list"  # multi_hot / sequence with hash_buckets
    DENSE = "dense"
    LABEL = "label"
    ORACLE = "oracle"
    TIME = "time"
    AVAILABILITY = "availability"  # a bound of the item corpus's availability window


@dataclass(frozen=True)
class Column:
    """A column to check, with its role and (for features) the declaration."""

    name: str
    role: Role
    feature: Feature | None = None

    def describe(self) -> str:
        f = self.feature
        if f is None:
            return {
                Role.LABEL: "a label",
                Role.ORACLE: "an oracle probability",
                Role.AVAILABILITY: "an availability bound",
            }.get(self.role, "the time column")
        size = f"hash_buckets {f.hash_buckets}" if f.hashed else f"vocab_size {f.vocab_size}"
        return f"a {f.kind} feature" + ("" if f.kind == Kind.DENSE else f" ({size})")


@dataclass(frozen=True)
class Problem:
    """The first bad position found by a check: row index within the checked array."""

    row: int
    what: str
    value: Any = NO_VALUE


Check = Callable[[pa.Array, Column], "Problem | None"]
#: A check across the columns of a batch: the first bad row and the column to blame.
RowCheck = Callable[[pa.RecordBatch], "tuple[Problem, Column] | None"]


# ---- public API ------------------------------------------------------------------


def validate_dataset(
    schema: Schema,
    splits: Sequence[str] = SPLITS,
    check_items: bool = True,
    *,
    batch_rows: int = DEFAULT_BATCH_ROWS,
) -> dict[str, Any]:
    """Check the item corpus and ``splits`` of a dataset; raise DataError on the first problem.

    The corpus (when ``check_items``) goes first so that split item ids can be
    checked against it. ``batch_rows`` bounds memory; results do not depend on it.

    Returns:
        ``{"rows": {split: n_rows}, "items": n_items or None,
        "undeclared_columns": {split: [names]}}``; undeclared columns are present
        in a file but neither declared nor listed under ``ignore`` (not an error:
        the lead may decide to make it one).
    """
    report: dict[str, Any] = {"rows": {}, "items": None, "undeclared_columns": {}}
    kinds: _Kinds = {}
    corpus = None
    windows = None
    if check_items:
        corpus = _ItemCorpus(schema)
        extra = {schema.item_id: (corpus.add,)}
        report["items"] = _validate_split(
            schema,
            ITEMS,
            schema.item_columns,
            extra,
            kinds,
            batch_rows,
            report,
            _window_checks(schema),
        )
        windows = read_windows(schema)
    for split in splits:
        extra = {schema.item_id: (corpus.check_known,)} if corpus else {}
        rows = (_in_window(schema, windows),) if windows is not None else ()
        report["rows"][split] = _validate_split(
            schema, split, schema.data_columns, extra, kinds, batch_rows, report, rows
        )
    return report


# ---- files and splits ------------------------------------------------------------


def _validate_split(
    schema: Schema,
    split: str,
    names: list[str],
    extra: dict[str, tuple[Check, ...]],
    kinds: _Kinds,
    batch_rows: int,
    report: dict[str, Any],
    row_checks: tuple[RowCheck, ...] = (),
) -> int:
    """Validate every file of a split; return its row count (zero rows is an error)."""
    columns = _columns(schema, names)
    plan = [(c, _VALUE_CHECKS[c.role] + extra.get(c.name, ())) for c in columns]
    declared = set(schema.data_columns) | set(schema.ignore) | set(schema.availability.values())
    undeclared: set[str] = set()
    rows = 0
    for path in _split_files(schema, split):
        present = file_columns(path)
        _check_columns_present(path, split, present, columns)
        undeclared |= set(present) - declared
        rows += _validate_file(path, schema, plan, kinds, batch_rows, row_checks)
    if undeclared:
        report["undeclared_columns"][split] = sorted(undeclared)
    if rows == 0:
        what = "the item corpus" if split == ITEMS else f"split {split!r}"
        raise DataError(f"{what} has no rows", schema.root / schema.files[split])
    return rows


def _split_files(schema: Schema, split: str) -> list[Path]:
    """The split's files; a missing path or an empty folder is an error, not an empty split."""
    entry = schema.root / schema.files[split]
    declared = f"{SCHEMA_FILE} files.{split} = {schema.files[split]!r}"
    if not entry.exists():
        raise DataError(f"{split} file not found ({declared})", entry)
    paths = schema.split_paths(split)
    if not paths:
        raise DataError(
            f"split {split!r} is empty: the folder holds no .parquet or .csv file ({declared})",
            entry,
        )
    return paths


def _validate_file(
    path: Path,
    schema: Schema,
    plan: list[tuple[Column, tuple[Check, ...]]],
    kinds: _Kinds,
    batch_rows: int,
    row_checks: tuple[RowCheck, ...] = (),
) -> int:
    names = [c.name for c, _ in plan]
    rows = 0
    batches = iter_record_batches(path, names, batch_rows, csv_column_types(schema))
    for offset, batch in batches:
        if rows == 0:  # one schema per file: check the types once
            _check_dtypes(path, batch.schema, [c for c, _ in plan], kinds)
        _check_batch(path, offset, batch, plan, row_checks)
        rows += batch.num_rows
    return rows


def _check_batch(
    path: Path,
    offset: int,
    batch: pa.RecordBatch,
    plan: list[tuple[Column, tuple[Check, ...]]],
    row_checks: tuple[RowCheck, ...] = (),
) -> None:
    """Run every check on the batch; raise for the earliest bad row (ties: schema
    order, then the cross-column checks)."""
    first: tuple[Problem, Column] | None = None
    for col, checks in plan:
        arr = _plain(batch.column(col.name))
        for check in checks:
            p = check(arr, col)
            if p is not None and (first is None or p.row < first[0].row):
                first = (p, col)
    if first is None or first[0].row > 0:
        for row_check in row_checks:
            found = row_check(batch)
            if found is not None and (first is None or found[0].row < first[0].row):
                first = found
    if first is not None:
        p, col = first
        raise DataError(p.what, path, column=col.name, row=offset + p.row, value=p.value)


# ---- check 1: columns present ----------------------------------------------------


def _check_columns_present(
    path: Path, split: str, present: list[str], columns: list[Column]
) -> None:
    have = set(present)
    for c in columns:
        if c.name not in have:
            shown = ", ".join(present[:30]) + (", ..." if len(present) > 30 else "")
            what = "the item corpus" if split == ITEMS else f"the {split} split"
            raise DataError(
                f"column missing: the schema declares it as {c.describe()}, which "
                f"{what} must hold; the file has: {shown}",
                path,
                column=c.name,
            )


# ---- check 2: dtypes (table-driven) ----------------------------------------------


def _is_int(t: pa.DataType) -> bool:
    return pa.types.is_integer(t)


def _is_str(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _is_list(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)


def _list_of(pred: Callable[[pa.DataType], bool]) -> Callable[[pa.DataType], bool]:
    return lambda t: _is_list(t) and pred(_unwrap(t.value_type))


_DTYPES: dict[Role, tuple[str, Callable[[pa.DataType], bool]]] = {
    Role.ID: ("an integer type", _is_int),
    Role.HASHED: ("an integer or string type", lambda t: _is_int(t) or _is_str(t)),
    Role.ID_LIST: ("a list of integers", _list_of(_is_int)),
    Role.HASHED_LIST: (
        "a list of integers or strings",
        _list_of(lambda t: _is_int(t) or _is_str(t)),
    ),
    Role.DENSE: (
        "a numeric type (integer or float)",
        lambda t: _is_int(t) or pa.types.is_floating(t),
    ),
    Role.LABEL: (
        "an integer, bool or float type holding 0/1",
        lambda t: _is_int(t) or pa.types.is_boolean(t) or pa.types.is_floating(t),
    ),
    Role.ORACLE: ("a float type", pa.types.is_floating),
    Role.TIME: ("an integer or timestamp type", lambda t: _is_int(t) or pa.types.is_timestamp(t)),
    Role.AVAILABILITY: (
        "an integer or timestamp type (the time column's units), or all null",
        lambda t: _is_int(t) or pa.types.is_timestamp(t) or pa.types.is_null(t),
    ),
}


def _check_dtypes(
    path: Path,
    arrow_schema: pa.Schema,
    columns: list[Column],
    kinds: _Kinds,
) -> None:
    for c in columns:
        t = _unwrap(arrow_schema.field(c.name).type)
        expected, ok = _DTYPES[c.role]
        if not ok(t):
            hint = ""
            if c.role in (Role.ID, Role.ID_LIST) and _is_float_or_list_of_float(t):
                hint = " (float ids usually mean missing values were written as NaN)"
            raise DataError(
                f"has type {t}, but {c.describe()} needs {expected}{hint}", path, column=c.name
            )
        if c.role in (Role.HASHED, Role.HASHED_LIST):
            _check_hash_kind(path, c, t, kinds)
        if c.role in (Role.TIME, Role.AVAILABILITY) and not pa.types.is_null(t):
            _check_time_kind(path, c, t, kinds)


def _check_hash_kind(path: Path, col: Column, t: pa.DataType, kinds: _Kinds) -> None:
    """Integers and strings hash differently: one table must see one kind everywhere."""
    assert col.feature is not None
    scalar = _unwrap(t.value_type) if _is_list(t) else t
    kind = "strings" if _is_str(scalar) else "integers"
    table = col.feature.table
    seen = kinds.setdefault(table, (kind, f"{path} column {col.name!r}"))
    if seen[0] != kind:
        raise DataError(
            f"hashed values are {kind} here but {seen[0]} in {seen[1]}; one table "
            f"({table!r}) must see one kind, since 123 and '123' hash to different rows",
            path,
            column=col.name,
        )


def _check_time_kind(path: Path, col: Column, t: pa.DataType, kinds: _Kinds) -> None:
    """Times are compared tick for tick (a row's time against its item's window,
    train against test): every file's time column and both window bounds must be
    integers, or timestamps of one unit."""
    kind = f"timestamps in {t.unit}" if pa.types.is_timestamp(t) else "integers"
    seen = kinds.setdefault(_TIME_KIND, (kind, f"{path} column {col.name!r}"))
    if seen[0] != kind:
        raise DataError(
            f"times are {kind} here but {seen[0]} in {seen[1]}; the time column and "
            "the availability bounds must share one unit, since they are compared "
            "tick for tick (write them all as integers of one unit, or as timestamps "
            "of one unit)",
            path,
            column=col.name,
        )


def _is_float_or_list_of_float(t: pa.DataType) -> bool:
    return pa.types.is_floating(_unwrap(t.value_type) if _is_list(t) else t)


# ---- check 3: values (table-driven) ---------------------------------------


def _check_present(arr: pa.Array, col: Column) -> Problem | None:
    """No null (and, for float columns, no NaN): nothing may be silently dropped."""
    bad = pc.is_null(arr, nan_is_null=True)
    i = _first_true(bad)
    if i is None:
        return None
    return Problem(i, "missing value (null)" if arr[i].as_py() is None else "NaN value")


def _check_not_negative(arr: pa.Array, col: Column) -> Problem | None:
    return _problem(pc.less(arr, 0), arr, "negative id (ids index table rows from 0)")


def _check_in_vocab(arr: pa.Array, col: Column) -> Problem | None:
    """An id past the table would be clipped or crash the lookup on another device."""
    assert col.feature is not None and col.feature.vocab_size is not None
    n = col.feature.vocab_size
    what = f"id beyond the vocabulary (vocab_size {n}: ids must lie in [0, {n}))"
    return _problem(pc.greater_equal(arr, n), arr, what)


def _check_finite(arr: pa.Array, col: Column) -> Problem | None:
    """Dense values feed an MLP directly: one NaN/inf poisons every gradient."""
    missing = _check_present(arr, col)
    if pa.types.is_integer(arr.type):
        return missing
    inf = _problem(pc.is_inf(arr), arr, "infinite value")
    return _earliest(missing, inf)


def _check_binary(arr: pa.Array, col: Column) -> Problem | None:
    """Labels are click/purchase outcomes: exactly 0 or 1 (bool counts)."""
    missing = _check_present(arr, col)
    if pa.types.is_boolean(arr.type):
        return missing
    other = pc.and_(pc.not_equal(arr, 0), pc.not_equal(arr, 1))
    return _earliest(missing, _problem(other, arr, "label must be 0 or 1"))


def _check_probability(arr: pa.Array, col: Column) -> Problem | None:
    missing = _check_present(arr, col)
    out = pc.or_(pc.less(arr, 0), pc.greater(arr, 1))
    return _earliest(missing, _problem(out, arr, "oracle probability outside [0, 1]"))


def _check_fits_int64(arr: pa.Array, col: Column) -> Problem | None:
    """Times are compared as int64 ticks: an unsigned value past int64 has no tick."""
    if arr.type != pa.uint64():
        return None
    limit = np.iinfo(np.int64).max
    beyond = pc.greater(arr, pa.scalar(limit, pa.uint64()))
    return _problem(beyond, arr, f"time value beyond int64 (max {limit})")


def _check_list_present(arr: pa.Array, col: Column) -> Problem | None:
    i = _first_true(arr.is_null())
    if i is None:
        return None
    return Problem(i, "missing list (null); write an empty list for no values")


def _check_list_length(arr: pa.Array, col: Column) -> Problem | None:
    """Longer lists would be cut silently; ``truncate: true`` makes that explicit."""
    assert col.feature is not None and col.feature.max_len is not None
    if col.feature.truncate:
        return None
    m = col.feature.max_len
    lengths = pc.list_value_length(arr)
    i = _first_true(pc.greater(lengths, m))
    if i is None:
        return None
    return Problem(
        i,
        f"list of {lengths[i].as_py()} values is longer than max_len {m} "
        f"(declare truncate: true to keep the last {m})",
    )


def _elements(*checks: Check) -> Check:
    """Run scalar checks on a list column's elements; report the row holding the list."""

    def check(arr: pa.Array, col: Column) -> Problem | None:
        values = _plain(pc.list_flatten(arr))
        first = _earliest(*(c(values, col) for c in checks))
        if first is None:
            return None
        row = pc.list_parent_indices(arr)[first.row].as_py()
        return Problem(row, f"list element: {first.what}", first.value)

    return check


_VALUE_CHECKS: dict[Role, tuple[Check, ...]] = {
    Role.ID: (_check_present, _check_not_negative, _check_in_vocab),
    Role.HASHED: (_check_present,),
    Role.ID_LIST: (
        _check_list_present,
        _check_list_length,
        _elements(_check_present, _check_not_negative, _check_in_vocab),
    ),
    Role.HASHED_LIST: (_check_list_present, _check_list_length, _elements(_check_present)),
    Role.DENSE: (_check_finite,),
    Role.LABEL: (_check_binary,),
    Role.ORACLE: (_check_probability,),
    Role.TIME: (_check_present, _check_fits_int64),
    Role.AVAILABILITY: (_check_fits_int64,),  # null = unbounded; the window checks below
}


# ---- check 7: availability windows -------------------------------------------------


def _window_checks(schema: Schema) -> tuple[RowCheck, ...]:
    """Corpus rows: a window with both bounds must be non-empty (``from < to``)."""
    spec = schema.availability
    if len(spec) < 2:
        return ()
    end = Column(spec["to"], Role.AVAILABILITY)

    def check(batch: pa.RecordBatch) -> tuple[Problem, Column] | None:
        lo = ticks(batch.column(spec["from"]), OPEN_START)
        hi = ticks(batch.column(spec["to"]), OPEN_END)
        i = _first_true(lo >= hi)
        if i is None:
            return None
        what = f"empty availability window: {spec['to']} must be after {spec['from']} ({lo[i]})"
        return Problem(i, what, int(hi[i])), end

    return (check,)


def _in_window(schema: Schema, windows: ItemWindows) -> RowCheck:
    """Split rows: the row's time lies in its item's window."""
    time = Column(schema.time, Role.TIME)
    where = f"{schema.root / schema.files[ITEMS]} columns " + "/".join(schema.availability.values())

    def check(batch: pa.RecordBatch) -> tuple[Problem, Column] | None:
        items = ticks(batch.column(schema.item_id), 0)
        t = ticks(batch.column(schema.time), 0)
        items = np.clip(items, 0, len(windows.start) - 1)  # bad ids: the id checks' business
        i = _first_true((t < windows.start[items]) | (t >= windows.end[items]))
        if i is None:
            return None
        lo, hi = windows.start[items[i]], windows.end[items[i]]
        shown = f"[{'-inf' if lo == OPEN_START else lo}, {'inf' if hi == OPEN_END else hi})"
        what = (
            f"item {int(items[i])} is not available at this time: its window is {shown} "
            f"({where}); a logged row must lie inside its item's window"
        )
        return Problem(i, what, int(t[i])), time

    return check


# ---- check 5: the item corpus ----------------------------------------------------


class _ItemCorpus:
    """Item ids of the corpus as a bitmap over [0, vocab_size).

    The item id has a vocabulary (the schema requires it), and its embedding table
    already holds vocab_size x dim floats, so a vocab_size-byte bitmap is small
    next to the model and makes membership one numpy gather per batch.
    """

    def __init__(self, schema: Schema) -> None:
        vocab = schema.feature(schema.item_id).vocab_size
        assert vocab is not None
        self.vocab = vocab
        self.seen = np.zeros(vocab, dtype=bool)
        self.where = schema.root / schema.files[ITEMS]

    def _ids(self, arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
        """(ids, valid): ids with null/out-of-range entries set to 0 and masked out;
        those entries are other checks' business."""
        valid = pc.fill_null(
            pc.and_(pc.greater_equal(arr, 0), pc.less(arr, self.vocab)), False
        ).to_numpy(zero_copy_only=False)
        ids = pc.fill_null(arr, 0).to_numpy(zero_copy_only=False).astype(np.int64)
        return np.where(valid, ids, 0), valid

    def add(self, arr: pa.Array, col: Column) -> Problem | None:
        """Record corpus ids; a repeated id (in an earlier batch or this one) is an error."""
        ids, valid = self._ids(arr)
        dup = valid & self.seen[ids]
        pos = np.flatnonzero(valid)
        _, first_pos = np.unique(ids[pos], return_index=True)
        repeat = np.ones(len(pos), dtype=bool)
        repeat[first_pos] = False
        dup[pos[repeat]] = True
        self.seen[ids[valid]] = True
        i = _first_true(dup)
        return (
            None if i is None else Problem(i, "duplicate item id in the item corpus", int(ids[i]))
        )

    def check_known(self, arr: pa.Array, col: Column) -> Problem | None:
        ids, valid = self._ids(arr)
        i = _first_true(valid & ~self.seen[ids])
        if i is None:
            return None
        return Problem(i, f"item id not in the item corpus ({self.where})", int(ids[i]))


# ---- helpers ---------------------------------------------------------------------


def _columns(schema: Schema, names: Iterable[str]) -> list[Column]:
    """Columns with their roles, in the order given."""
    roles: dict[str, Column] = {
        f.name: Column(f.name, _feature_role(f), f) for f in schema.features
    }
    for c in schema.labels:
        roles[c] = Column(c, Role.LABEL)
    for c in schema.oracle.values():
        roles[c] = Column(c, Role.ORACLE)
    roles[schema.time] = Column(schema.time, Role.TIME)
    for c in schema.availability.values():
        roles[c] = Column(c, Role.AVAILABILITY)
    return [roles[n] for n in names]


def _feature_role(f: Feature) -> Role:
    if f.kind == Kind.DENSE:
        return Role.DENSE
    if f.is_list:
        return Role.HASHED_LIST if f.hashed else Role.ID_LIST
    return Role.HASHED if f.hashed else Role.ID


def _unwrap(t: pa.DataType) -> pa.DataType:
    """A dictionary-encoded column (pandas categorical) is checked by its values."""
    return t.value_type if pa.types.is_dictionary(t) else t


def _plain(arr: pa.Array) -> pa.Array:
    return arr.dictionary_decode() if pa.types.is_dictionary(arr.type) else arr


def _first_true(mask: pa.Array | np.ndarray) -> int | None:
    """Index of the first True (nulls count as False), or None. Vectorised."""
    if isinstance(mask, np.ndarray):
        hits = np.flatnonzero(mask)
        return int(hits[0]) if len(hits) else None
    i = pc.index(pc.fill_null(mask, False), True).as_py()
    return None if i < 0 else i


def _problem(mask: pa.Array, arr: pa.Array, what: str) -> Problem | None:
    i = _first_true(mask)
    return None if i is None else Problem(i, what, arr[i].as_py())


def _earliest(*problems: Problem | None) -> Problem | None:
    found = [p for p in problems if p is not None]
    return min(found, key=lambda p: p.row) if found else None
