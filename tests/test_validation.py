"""Dataset validation: a valid tiny dataset passes; each corruption names file, column, row."""

from __future__ import annotations

import math
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from ranking.data.availability import OPEN_END, OPEN_START, read_windows
from ranking.data.errors import EXIT_BAD_INPUT, DataError, main_guard
from ranking.data.files import iter_record_batches
from ranking.data.validate import validate_dataset
from ranking.schema import Schema, SchemaError

N = 8  # rows per split file

SCHEMA: dict[str, Any] = {
    "name": "tiny",
    "ids": {"user": "user_id", "item": "item_id"},
    "time": "ts",
    "labels": ["click", "purchase"],
    "oracle": {"click": "p_click", "purchase": "p_purchase"},
    "ignore": ["policy"],
    "files": {
        "train": "train.parquet",
        "valid": "valid.parquet",
        "test": "test",  # a folder of parts
        "items": "items.parquet",
    },
    "features": {
        "user_id": {"side": "user", "kind": "categorical", "vocab_size": 10, "dim": 4},
        "age": {"side": "user", "kind": "categorical", "vocab_size": 8, "dim": 4},
        "city": {"side": "user", "kind": "categorical", "hash_buckets": 16, "dim": 4},
        "user_tags": {
            "side": "user",
            "kind": "multi_hot",
            "vocab_size": 6,
            "dim": 4,
            "max_len": 3,
        },
        "hist_items": {"side": "user", "kind": "sequence", "table": "item_id", "max_len": 4},
        "item_id": {"side": "item", "kind": "categorical", "vocab_size": 12, "dim": 4},
        "brand": {"side": "item", "kind": "categorical", "hash_buckets": 32, "dim": 4},
        "price": {"side": "item", "kind": "dense", "transform": "log1p"},
        "hour": {"side": "context", "kind": "categorical", "vocab_size": 24, "dim": 4},
        "position": {"side": "context", "kind": "dense"},
    },
}

N_ITEMS = 12
BRANDS = ["acme", "zeta", "nova", "orbit"]


def items_columns() -> dict[str, list]:
    return {
        "item_id": list(range(N_ITEMS)),
        "brand": [BRANDS[i % 4] for i in range(N_ITEMS)],
        "price": [1.5 + i for i in range(N_ITEMS)],
        "title": [f"item {i}" for i in range(N_ITEMS)],  # undeclared: reported, not an error
    }


def split_columns(n: int = N, seed: int = 0) -> dict[str, list]:
    """n valid interaction rows; every value depends on the row so corruptions stand out."""
    r = [(i + seed) for i in range(n)]
    items = [(3 * i) % N_ITEMS for i in r]
    return {
        "user_id": [i % 10 for i in r],
        "age": [i % 8 for i in r],
        "city": [["paris", "lyon", "nice"][i % 3] for i in r],
        "user_tags": [[j % 6 for j in range(i % 4)] for i in r],  # lengths 0..3
        "hist_items": [[(i + j) % N_ITEMS for j in range(i % 5)] for i in r],  # 0..4
        "item_id": items,
        "brand": [BRANDS[it % 4] for it in items],
        "price": [1.5 + it for it in items],
        "hour": [i % 24 for i in r],
        "position": [float(i % 3) for i in r],
        "ts": [1_700_000_000 + 60 * i for i in r],
        "click": [i % 2 for i in r],
        "purchase": [int(i % 4 == 0) for i in r],
        "p_click": [0.1 * (i % 10) for i in r],
        "p_purchase": [0.01 * (i % 10) for i in r],
        "policy": ["random"] * n,
    }


def write_parquet(path: Path, cols: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(cols), path)
    return path


def write_csv(path: Path, cols: dict[str, list]) -> Path:
    """Lists as '|'-joined ids, None as an empty field (the CSV conventions of files.py)."""

    def cell(v: Any) -> str:
        if v is None:
            return ""
        if isinstance(v, list):
            return "|".join(str(x) for x in v)
        return str(v)

    names = list(cols)
    lines = [",".join(names)]
    lines += [",".join(cell(cols[c][i]) for c in names) for i in range(len(cols[names[0]]))]
    path.write_text("\n".join(lines) + "\n")
    return path


def write_schema(root: Path, schema: dict[str, Any]) -> None:
    (root / "schema.yaml").write_text(yaml.safe_dump(schema, sort_keys=False))


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A valid dataset: Parquet train/valid, a two-part test folder, an item corpus."""
    write_schema(tmp_path, SCHEMA)
    write_parquet(tmp_path / "items.parquet", items_columns())
    write_parquet(tmp_path / "train.parquet", split_columns())
    write_parquet(tmp_path / "valid.parquet", split_columns(seed=1))
    write_parquet(tmp_path / "test" / "part-0.parquet", split_columns(seed=2))
    write_parquet(tmp_path / "test" / "part-1.parquet", split_columns(seed=3))
    return tmp_path


#: The root fixture's split files; file i holds ``split_columns(seed=i)``.
SPLIT_FILES = ("train.parquet", "valid.parquet", "test/part-0.parquet", "test/part-1.parquet")


def with_values(cols: dict[str, list], column: str, **rows: Any) -> dict[str, list]:
    """Copy of ``cols`` with ``cols[column][i] = v`` for each ``r<i>=v``."""
    out = {k: list(v) for k, v in cols.items()}
    for key, value in rows.items():
        out[column][int(key.removeprefix("r"))] = value
    return out


def validate(root: Path, **kwargs: Any) -> dict[str, Any]:
    return validate_dataset(Schema.load(root), **kwargs)


def expect_error(
    root: Path, file: str, column: str | None, row: int | None, text: str, **kwargs: Any
) -> DataError:
    with pytest.raises(DataError) as info:
        validate(root, **kwargs)
    err = info.value
    msg = str(err)
    assert err.file.endswith(file), msg
    assert file in msg
    assert err.column == column, msg
    assert err.row == row, msg
    if column is not None:
        assert f"column {column!r}" in msg
    if row is not None:
        assert f"row {row}:" in msg
    assert re.search(text, msg), msg
    assert "object at" not in msg, msg  # no sentinel leaks into the message
    return err


# ---- the valid dataset --------------------------------------------------------------


def test_valid_dataset_passes(root: Path) -> None:
    report = validate(root)
    assert report["rows"] == {"train": N, "valid": N, "test": 2 * N}
    assert report["items"] == N_ITEMS
    assert report["undeclared_columns"] == {"items": ["title"]}


def test_valid_dataset_passes_with_small_batches(root: Path) -> None:
    assert validate(root, batch_rows=3)["rows"]["train"] == N


def test_valid_csv_split_passes(root: Path) -> None:
    write_csv(root / "train.csv", split_columns())
    write_schema(root, {**SCHEMA, "files": {**SCHEMA["files"], "train": "train.csv"}})
    (root / "train.parquet").unlink()
    assert validate(root, batch_rows=3)["rows"]["train"] == N


def test_csv_lists_and_empty_fields_are_read_as_lists(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "x.csv", {"a": [[1, 2], [], [3]], "b": ["x", "y", None]})
    types = {"a": pa.list_(pa.int64()), "b": pa.string()}
    [(offset, batch)] = list(iter_record_batches(path, ["a", "b"], 10, types))
    assert offset == 0
    assert batch.column("a").to_pylist() == [[1, 2], [], [3]]
    assert batch.column("b").to_pylist() == ["x", "y", None]


def test_record_batch_offsets_are_global_within_the_file(tmp_path: Path) -> None:
    cols = {"a": list(range(7))}
    for path in (write_parquet(tmp_path / "x.parquet", cols), write_csv(tmp_path / "x.csv", cols)):
        got = [(o, b.column("a").to_pylist()) for o, b in iter_record_batches(path, ["a"], 3)]
        assert got == [(0, [0, 1, 2]), (3, [3, 4, 5]), (6, [6])], path


def test_record_batches_name_a_missing_column(tmp_path: Path) -> None:
    # Parquet readers skip an unknown column silently; ours must not.
    path = write_parquet(tmp_path / "x.parquet", {"a": [1, 2]})
    with pytest.raises(DataError, match="column missing") as info:
        list(iter_record_batches(path, ["a", "b"]))
    assert (info.value.column, info.value.row) == ("b", None)
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(DataError, match="unsupported file type"):
        list(iter_record_batches(tmp_path / "x.json"))
    with pytest.raises(DataError, match="file not found"):
        list(iter_record_batches(tmp_path / "y.parquet"))


def test_empty_item_corpus(root: Path) -> None:
    pq.write_table(pa.table(items_columns()).slice(0, 0), root / "items.parquet")
    expect_error(root, "items.parquet", None, None, "the item corpus has no rows")


def test_validation_without_item_corpus(root: Path) -> None:
    (root / "items.parquet").unlink()
    report = validate(root, splits=("train",), check_items=False)
    assert report == {"rows": {"train": N}, "items": None, "undeclared_columns": {}}


def test_bool_labels_float_labels_and_dictionary_strings_pass(root: Path) -> None:
    cols = split_columns()
    table = pa.table(cols)
    table = table.set_column(
        table.schema.get_field_index("click"), "click", pa.array([bool(v) for v in cols["click"]])
    )
    purchase = pa.array([float(v) for v in cols["purchase"]])
    table = table.set_column(table.schema.get_field_index("purchase"), "purchase", purchase)
    city = pa.array(cols["city"]).dictionary_encode()
    table = table.set_column(table.schema.get_field_index("city"), "city", city)
    pq.write_table(table, root / "train.parquet")
    assert validate(root)["rows"]["train"] == N


def test_truncate_allows_long_lists(root: Path) -> None:
    cols = with_values(split_columns(), "hist_items", r5=[1, 2, 3, 4, 5, 6])
    write_parquet(root / "train.parquet", cols)
    features = {**SCHEMA["features"]}
    features["hist_items"] = {**features["hist_items"], "truncate": True}
    write_schema(root, {**SCHEMA, "features": features})
    validate(root)


# ---- check 1: columns the schema names ----------------------------------------------


def test_missing_feature_column_in_split(root: Path) -> None:
    cols = split_columns()
    del cols["age"]
    write_parquet(root / "train.parquet", cols)
    expect_error(root, "train.parquet", "age", None, r"column missing: .* categorical feature")


def test_missing_label_column_in_split(root: Path) -> None:
    cols = split_columns()
    del cols["purchase"]
    write_parquet(root / "valid.parquet", cols)
    expect_error(root, "valid.parquet", "purchase", None, "column missing: .*a label")


def test_missing_item_feature_in_corpus(root: Path) -> None:
    cols = items_columns()
    del cols["price"]
    write_parquet(root / "items.parquet", cols)
    expect_error(root, "items.parquet", "price", None, "column missing: .*item corpus")


# ---- check 2: dtypes ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("column", "values", "text"),
    [
        ("age", [str(i) for i in range(N)], r"type string, .* needs an integer type"),
        ("age", [float(i) for i in range(N)], r"type double, .*written as NaN"),
        ("user_tags", [[str(j)] for j in range(N)], "needs a list of integers"),
        ("hist_items", [1] * N, "needs a list of integers"),
        ("city", [0.5] * N, "needs an integer or string type"),
        ("price", ["cheap"] * N, "needs a numeric type"),
        ("click", ["yes"] * N, "needs an integer, bool or float type"),
        ("p_click", [0] * N, "needs a float type"),
        ("ts", [1.5] * N, "needs an integer or timestamp type"),
    ],
)
def test_wrong_dtype(root: Path, column: str, values: list, text: str) -> None:
    write_parquet(root / "train.parquet", {**split_columns(), column: values})
    expect_error(root, "train.parquet", column, None, text)


def test_timestamp_time_column_passes(root: Path) -> None:
    ts = pa.array(np.arange(N).astype("datetime64[s]"))
    for seed, split in enumerate(SPLIT_FILES):
        write_parquet(root / split, {**split_columns(seed=seed), "ts": ts})
    validate(root)


def test_hashed_values_must_be_one_kind_across_files(root: Path) -> None:
    # Corpus brands are strings; integers in a split would hash to other rows.
    write_parquet(root / "valid.parquet", {**split_columns(seed=1), "brand": list(range(N))})
    expect_error(root, "valid.parquet", "brand", None, r"integers here but strings in .*items")


# ---- check 3: nulls, NaN, negative ids ------------------------------------------------


def test_null_id(root: Path) -> None:
    write_parquet(root / "train.parquet", with_values(split_columns(), "user_id", r5=None))
    expect_error(root, "train.parquet", "user_id", 5, r"missing value \(null\)")


def test_negative_id_in_second_record_batch(root: Path) -> None:
    write_parquet(root / "train.parquet", with_values(split_columns(), "age", r5=-1))
    err = expect_error(root, "train.parquet", "age", 5, "negative id", batch_rows=2)
    assert err.value == -1
    assert "(value: -1)" in str(err)


def test_null_hashed_value(root: Path) -> None:
    write_parquet(root / "train.parquet", with_values(split_columns(), "city", r3=None))
    expect_error(root, "train.parquet", "city", 3, r"missing value \(null\)")


def test_negative_list_element(root: Path) -> None:
    write_parquet(root / "train.parquet", with_values(split_columns(), "user_tags", r2=[1, -4]))
    err = expect_error(root, "train.parquet", "user_tags", 2, "list element: negative id")
    assert err.value == -4


def test_null_list_element(root: Path) -> None:
    write_parquet(root / "train.parquet", with_values(split_columns(), "hist_items", r4=[1, None]))
    expect_error(root, "train.parquet", "hist_items", 4, r"list element: missing value")


def test_null_list(root: Path) -> None:
    write_parquet(root / "train.parquet", with_values(split_columns(), "user_tags", r6=None))
    expect_error(root, "train.parquet", "user_tags", 6, "missing list")


@pytest.mark.parametrize(
    ("value", "text"),
    [(math.nan, "NaN value"), (math.inf, "infinite value"), (None, "missing value")],
)
def test_bad_dense_value(root: Path, value: float | None, text: str) -> None:
    write_parquet(
        root / "test" / "part-1.parquet", with_values(split_columns(), "position", r3=value)
    )
    expect_error(root, "part-1.parquet", "position", 3, text)


def test_null_time(root: Path) -> None:
    write_parquet(root / "train.parquet", with_values(split_columns(), "ts", r7=None))
    expect_error(root, "train.parquet", "ts", 7, "missing value")


# ---- check 4: ids beyond the vocabulary ------------------------------------------------


def test_id_beyond_vocabulary(root: Path) -> None:
    write_parquet(root / "train.parquet", with_values(split_columns(), "hour", r4=24))
    err = expect_error(root, "train.parquet", "hour", 4, r"vocab_size 24")
    assert err.value == 24


def test_list_element_beyond_shared_vocabulary(root: Path) -> None:
    # hist_items shares item_id's table: its bound is item_id's vocab_size (12).
    cols = with_values(split_columns(), "hist_items", r6=[0, 3, 12])
    write_parquet(root / "train.parquet", cols)
    err = expect_error(root, "train.parquet", "hist_items", 6, r"list element: id beyond .* 12")
    assert err.value == 12


def test_first_bad_row_wins_across_columns(root: Path) -> None:
    cols = with_values(split_columns(), "hour", r6=99)
    cols = with_values(cols, "position", r4=math.nan)
    write_parquet(root / "train.parquet", cols)
    expect_error(root, "train.parquet", "position", 4, "NaN", batch_rows=3)


# ---- check 5: labels and oracle ------------------------------------------------------


@pytest.mark.parametrize(("value", "text"), [(2, "label must be 0 or 1"), (None, "missing")])
def test_bad_int_label(root: Path, value: int | None, text: str) -> None:
    write_parquet(root / "valid.parquet", with_values(split_columns(), "click", r3=value))
    expect_error(root, "valid.parquet", "click", 3, text)


def test_fractional_float_label(root: Path) -> None:
    cols = split_columns()
    cols["purchase"] = [float(v) for v in cols["purchase"]]
    write_parquet(root / "train.parquet", with_values(cols, "purchase", r5=0.5))
    err = expect_error(root, "train.parquet", "purchase", 5, "label must be 0 or 1")
    assert err.value == 0.5


@pytest.mark.parametrize("value", [1.5, -0.1, math.nan])
def test_oracle_outside_unit_interval(root: Path, value: float) -> None:
    write_parquet(root / "train.parquet", with_values(split_columns(), "p_click", r2=value))
    expect_error(root, "train.parquet", "p_click", 2, "oracle probability outside|NaN")


# ---- check 6: empty splits, missing files --------------------------------------------


def test_split_with_zero_rows(root: Path) -> None:
    empty = pa.table(split_columns()).slice(0, 0)
    pq.write_table(empty, root / "valid.parquet")
    expect_error(root, "valid.parquet", None, None, "split 'valid' has no rows")


def test_split_folder_without_files(root: Path) -> None:
    for p in (root / "test").iterdir():
        p.unlink()
    expect_error(root, "test", None, None, r"no \.parquet or \.csv file .*files\.test")


def test_missing_split_file(root: Path) -> None:
    (root / "valid.parquet").unlink()
    expect_error(root, "valid.parquet", None, None, r"valid file not found .*files\.valid")


def test_missing_item_corpus(root: Path) -> None:
    (root / "items.parquet").unlink()
    expect_error(root, "items.parquet", None, None, "items file not found")


def test_schema_problems_stay_schema_errors(root: Path) -> None:
    write_schema(root, {**SCHEMA, "labels": []})
    with pytest.raises(SchemaError):
        Schema.load(root)


# ---- check 7: item corpus ------------------------------------------------------------


def test_split_item_missing_from_corpus(root: Path) -> None:
    cols = items_columns()
    cols = {k: v[:-1] for k, v in cols.items()}  # drop item 11
    write_parquet(root / "items.parquet", cols)
    split = with_values(split_columns(), "item_id", r5=11)
    write_parquet(root / "train.parquet", split)
    err = expect_error(root, "train.parquet", "item_id", 5, "not in the item corpus", batch_rows=2)
    assert err.value == 11


def test_duplicate_item_id_across_record_batches(root: Path) -> None:
    cols = with_values(items_columns(), "item_id", r9=2)  # item 2 again, in batch 3
    write_parquet(root / "items.parquet", cols)
    err = expect_error(root, "items.parquet", "item_id", 9, "duplicate item id", batch_rows=4)
    assert err.value == 2


def test_duplicate_item_id_within_a_batch(root: Path) -> None:
    write_parquet(root / "items.parquet", with_values(items_columns(), "item_id", r3=1))
    expect_error(root, "items.parquet", "item_id", 3, "duplicate item id")


# ---- check 8: list length --------------------------------------------------------------


def test_list_longer_than_max_len(root: Path) -> None:
    cols = with_values(split_columns(), "hist_items", r5=[1, 2, 3, 4, 5])
    write_parquet(root / "train.parquet", cols)
    expect_error(root, "train.parquet", "hist_items", 5, r"list of 5 values .* max_len 4")


# ---- CSV files -----------------------------------------------------------------------


def use_csv_train(root: Path, cols: dict[str, list]) -> None:
    write_csv(root / "train.csv", cols)
    write_schema(root, {**SCHEMA, "files": {**SCHEMA["files"], "train": "train.csv"}})


def test_csv_unreadable_id_in_second_batch(root: Path) -> None:
    use_csv_train(root, with_values(split_columns(), "age", r5="x7"))
    err = expect_error(root, "train.csv", "age", 5, "cannot be read as int64", batch_rows=2)
    assert err.value == "x7"


def test_csv_unreadable_list_element(root: Path) -> None:
    use_csv_train(root, with_values(split_columns(), "user_tags", r3=[1, "b"]))
    expect_error(root, "train.csv", "user_tags", 3, "a list element cannot be read as int64")


def test_csv_empty_list_token_is_not_dropped(root: Path) -> None:
    use_csv_train(root, with_values(split_columns(), "hist_items", r6="1||2"))
    expect_error(root, "train.csv", "hist_items", 6, "list element cannot be read")


def test_csv_value_checks_apply(root: Path) -> None:
    use_csv_train(root, with_values(split_columns(), "click", r4=3))
    expect_error(root, "train.csv", "click", 4, "label must be 0 or 1", batch_rows=3)


def test_csv_empty_field_is_null(root: Path) -> None:
    use_csv_train(root, with_values(split_columns(), "user_id", r2=None))
    expect_error(root, "train.csv", "user_id", 2, "missing value")


def test_csv_ragged_row(root: Path) -> None:
    use_csv_train(root, split_columns())
    path = root / "train.csv"
    path.write_text(path.read_text() + "1,2\n")
    expect_error(root, "train.csv", None, None, "cannot read CSV file")


# ---- the error object and the CLI guard -----------------------------------------------


def test_data_error_survives_pickling() -> None:
    err = DataError("negative id", "/d/train.parquet", column="age", row=3, value=-1)
    back = pickle.loads(pickle.dumps(err))
    assert (back.file, back.column, back.row, back.value, str(back)) == (
        err.file,
        err.column,
        err.row,
        err.value,
        str(err),
    )
    assert str(err) == "/d/train.parquet, column 'age', row 3: negative id (value: -1)"


def test_main_guard_prints_error_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    @main_guard
    def main() -> None:
        raise DataError("label must be 0 or 1", "train.parquet", column="click", row=4, value=2)

    with pytest.raises(SystemExit) as info:
        main()
    assert info.value.code == EXIT_BAD_INPUT == 2
    assert capsys.readouterr().err.strip() == (
        "error: train.parquet, column 'click', row 4: label must be 0 or 1 (value: 2)"
    )


# ---- scale -------------------------------------------------------------------------------


def test_million_row_split_is_validated_in_batches(root: Path) -> None:
    """1M rows through every check; vectorised per batch, so this takes about a second."""
    n = 1_000_000
    rng = np.random.default_rng(0)
    i = np.arange(n)
    lengths = i % 5
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)

    def ids_list(vocab: int, lens: np.ndarray) -> pa.Array:
        off = np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)
        return pa.ListArray.from_arrays(off, rng.integers(0, vocab, off[-1]))

    items = rng.integers(0, N_ITEMS, n)
    cols = {
        "user_id": i % 10,
        "age": i % 8,
        "city": pa.array(np.array(["paris", "lyon", "nice"])[i % 3]),
        "user_tags": ids_list(6, i % 4),
        "hist_items": pa.ListArray.from_arrays(offsets, rng.integers(0, N_ITEMS, offsets[-1])),
        "item_id": items,
        "brand": pa.array(np.array(BRANDS)[items % 4]),
        "price": rng.random(n),
        "hour": i % 24,
        "position": rng.random(n),
        "ts": 1_700_000_000 + i,
        "click": rng.integers(0, 2, n),
        "purchase": rng.integers(0, 2, n),
        "p_click": rng.random(n),
        "p_purchase": rng.random(n),
    }
    write_parquet(root / "train.parquet", cols)
    assert validate(root, splits=("train",))["rows"] == {"train": n}

    cols["hist_items"] = ids_list(N_ITEMS + 1, lengths)  # some element will be == 12
    write_parquet(root / "train.parquet", cols)
    flat = cols["hist_items"].flatten().to_numpy()
    first_row = int(np.searchsorted(offsets, np.flatnonzero(flat >= N_ITEMS)[0], side="right") - 1)
    expect_error(root, "train.parquet", "hist_items", first_row, "beyond", splits=("train",))


# ---- check 7: availability windows ------------------------------------------------------

T0 = 1_700_000_000  # split_columns' first ts; row i of seed s is at T0 + 60 (i + s)


def with_windows(root: Path, start: list, end: list, schema_extra: Any = None) -> None:
    """The tiny dataset with ``availability`` declared and the corpus's windows set."""
    write_schema(root, {**SCHEMA, "availability": schema_extra or {"from": "from", "to": "to"}})
    write_parquet(root / "items.parquet", {**items_columns(), "from": start, "to": end})


def test_availability_windows_pass_and_are_read_by_item_id(root: Path) -> None:
    # Item 0 ends after every logged row; item 1 has no start; the rest are unbounded.
    start = [T0, None] + [None] * (N_ITEMS - 2)
    end = [T0 + 10_000, T0 + 10_000] + [None] * (N_ITEMS - 2)
    with_windows(root, start, end)
    report = validate(root)
    assert report["items"] == N_ITEMS
    assert report["undeclared_columns"]["items"] == ["title"]  # the window columns are declared
    windows = read_windows(Schema.load(root))
    assert windows.start[0] == T0 and windows.start[1] == OPEN_START
    assert windows.end[:2].tolist() == [T0 + 10_000] * 2 and windows.end[2] == OPEN_END
    assert windows.at(T0 + 10_000).tolist() == [False, False] + [True] * (N_ITEMS - 2)
    assert windows.during(T0 - 5, T0 - 1).tolist() == [False] + [True] * (N_ITEMS - 1)
    assert windows.during(T0 - 5, T0).all()


def test_only_one_bound_may_be_declared(root: Path) -> None:
    write_schema(root, {**SCHEMA, "availability": {"to": "to"}})
    write_parquet(root / "items.parquet", {**items_columns(), "to": [T0 + 10_000] * N_ITEMS})
    validate(root)
    windows = read_windows(Schema.load(root))
    assert (windows.start == OPEN_START).all() and (windows.end == T0 + 10_000).all()


def test_empty_availability_window(root: Path) -> None:
    start = [T0] * N_ITEMS
    end = with_values({"to": [T0 + 10_000] * N_ITEMS}, "to", r7=T0)["to"]
    with_windows(root, start, end)
    err = expect_error(root, "items.parquet", "to", 7, "empty availability window", batch_rows=3)
    assert err.value == T0


def test_logged_row_outside_its_items_window(root: Path) -> None:
    # train.parquet row 5 is at T0 + 300 and shows item (3 * 5) % 12 = 3.
    start = [T0] * N_ITEMS
    end = with_values({"to": [T0 + 10_000] * N_ITEMS}, "to", r3=T0 + 300)["to"]
    with_windows(root, start, end)
    err = expect_error(
        root, "train.parquet", "ts", 5, r"item 3 is not available .* is \[1700000000, 1700000300\)"
    )
    assert err.value == T0 + 300
    assert "items.parquet columns from/to" in str(err)


def test_availability_bound_of_a_wrong_type(root: Path) -> None:
    with_windows(root, [f"{i}" for i in range(N_ITEMS)], [None] * N_ITEMS)
    expect_error(root, "items.parquet", "from", None, "availability bound needs an integer")


def test_an_all_null_bound_is_unbounded(root: Path) -> None:
    with_windows(root, [T0] * N_ITEMS, [None] * N_ITEMS)  # Arrow type null
    validate(root)
    assert (read_windows(Schema.load(root)).end == OPEN_END).all()


def test_an_unsigned_bound_past_int64_is_reported(root: Path) -> None:
    start = pa.array([T0] * 4 + [2**63] + [T0] * (N_ITEMS - 5), type=pa.uint64())
    with_windows(root, start, [None] * N_ITEMS)
    err = expect_error(root, "items.parquet", "from", 4, "beyond int64")
    assert err.value == 2**63


def _timestamps(seconds: list[int], unit: str) -> pa.Array:
    scale = {"ms": 1_000, "us": 1_000_000}[unit]  # (Parquet stores seconds as ms)
    return pa.array([t * scale for t in seconds], type=pa.timestamp(unit))


def test_window_bounds_and_time_column_share_units(root: Path) -> None:
    # Compared tick for tick: seconds against milliseconds would pass an item released
    # years after its clicks. The corpus is read first, so the splits are reported.
    end = [T0 + 10_000] * N_ITEMS
    with_windows(root, _timestamps([T0] * N_ITEMS, "us"), _timestamps(end, "us"))
    expect_error(
        root, "train.parquet", "ts", None, "times are integers here but timestamps in us in"
    )
    for seed, split in enumerate(SPLIT_FILES):
        cols = split_columns(seed=seed)
        cols["ts"] = _timestamps(cols["ts"], "ms")
        write_parquet(root / split, cols)
    expect_error(root, "train.parquet", "ts", None, "timestamps in ms here but timestamps in us")
    with_windows(root, _timestamps([T0] * N_ITEMS, "ms"), _timestamps(end, "ms"))
    validate(root)
    assert (read_windows(Schema.load(root)).end == (T0 + 10_000) * 1_000).all()


@pytest.mark.parametrize(
    ("spec", "text"),
    [
        ({"from": "from", "until": "to"}, "unknown keys"),
        ({"from": "t", "to": "t"}, "different columns"),
        ({"from": "price"}, "is a feature and also"),
        ([], "must map"),
        ({"from": None}, "'from' must name a column, got None"),
    ],
)
def test_availability_schema_errors(root: Path, spec: Any, text: str) -> None:
    write_schema(root, {**SCHEMA, "availability": spec})
    with pytest.raises(SchemaError, match=text):
        Schema.load(root)


def test_csv_corpus_with_windows(root: Path) -> None:
    write_schema(
        root,
        {
            **SCHEMA,
            "availability": {"from": "from", "to": "to"},
            "files": {**SCHEMA["files"], "items": "items.csv"},
        },
    )
    cols = {**items_columns(), "from": [T0] * N_ITEMS, "to": [None] * (N_ITEMS - 1) + [T0 + 1]}
    write_csv(root / "items.csv", cols)
    # item 11's window ends at T0 + 1; no split row shows it (items are 3i mod 12)
    validate(root)
    windows = read_windows(Schema.load(root))
    assert windows.end[11] == T0 + 1 and windows.end[10] == OPEN_END
