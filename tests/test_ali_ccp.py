"""The Ali-CCP adapter (torch-rechub's processed CSV layout): every written column
of hand-written files by hand, streaming across blocks, bad input, and
torch-rechub's real 200-row sample in ``../shared/data`` read independently with
the csv module."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from ranking.data.adapters.ali_ccp import DENSE, FIELDS, write_ali_ccp
from ranking.data.errors import DataError
from ranking.data.validate import validate_dataset
from ranking.schema import Side

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SAMPLE = SHARED / "samples" / "ali_ccp"
# the sample's header order (not the adapter's): columns are read by name
HEADER = [
    "click",
    "purchase",
    "101",
    "121",
    "122",
    "124",
    "125",
    "126",
    "127",
    "128",
    "129",
    "205",
    "206",
    "207",
    "210",
    "216",
    "508",
    "509",
    "702",
    "853",
    "301",
    "109_14",
    "110_14",
    "127_14",
    "150_14",
    "D109_14",
    "D110_14",
    "D127_14",
    "D150_14",
    "D508",
    "D509",
    "D702",
    "D853",
]


def line(click=0, purchase=0, user=1, item=3, category=2, cross=0, weight=0.25, **fields) -> dict:
    """One raw line: every sparse field 1 and every dense field 0.5 unless given."""
    row = {c: "0.5" if c in DENSE else "1" for c in HEADER}
    row.update({"click": str(click), "purchase": str(purchase), "101": str(user), "205": str(item)})
    row.update({"206": str(category), "508": str(cross), "D109_14": str(weight)})
    row.update({k: str(v) for k, v in fields.items()})
    return row


# user 1 clicks item 3 and buys it; item 7's category is 4 on its first line and 5
# on a later one (the warning); user 2's weight is 0.75.
LINES = {
    "train": [
        line(click=1, purchase=1),
        line(item=7, category=4, cross=6),
        line(user=2, item=3, weight=0.75, **{"301": 2}),
    ],
    "val": [line(user=2, item=9, category=8, weight=0.75), line(item=7, category=5)],
    "test": [line(click=1, user=2, item=7, category=4, weight=0.75), line(user=5, item=3)],
}


def write_raw(folder: Path, lines: dict[str, list[dict]] | None = None, suffix: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in (lines or LINES).items():
        with open(folder / f"ali_ccp_{name}{suffix}.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else HEADER)
            w.writeheader()
            w.writerows(rows)
    return folder


def test_every_column_of_a_hand_written_dataset(tmp_path, caplog):
    raw = write_raw(tmp_path / "raw")
    with caplog.at_level(logging.WARNING, logger="ranking"):
        schema = write_ali_ccp(raw, tmp_path / "ds")
    out = tmp_path / "ds"
    validate_dataset(schema)
    train = pq.read_table(out / "train.parquet").to_pylist()
    assert [r["ts"] for r in train] == [0, 1, 2]
    assert [(r["user_id"], r["item_id"], r["click"], r["purchase"]) for r in train] == [
        (1, 3, 1, 1),
        (1, 7, 0, 0),
        (2, 3, 0, 0),
    ]
    assert [r["category"] for r in train] == [2, 4, 2]
    assert [r["user_category_x_category"] for r in train] == [0, 6, 0]
    assert [r["scenario"] for r in train] == [1, 1, 2]
    assert [r["user_category_weight"] for r in train] == [0.25, 0.25, 0.75]
    assert train[0]["user_intention_x_intention_value"] == 0.5
    assert [r["ts"] for r in pq.read_table(out / "valid.parquet").to_pylist()] == [3, 4]
    test = pq.read_table(out / "test.parquet").to_pylist()
    assert [(r["ts"], r["user_id"], r["click"]) for r in test] == [(5, 2, 1), (6, 5, 0)]
    # the corpus: every item once, with its first line's fields (item 7: category 4)
    items = pq.read_table(out / "items.parquet").to_pylist()
    assert [(r["item_id"], r["category"], r["shop"]) for r in items] == [
        (3, 2, 1),
        (7, 4, 1),
        (9, 8, 1),
    ]
    assert sorted(items[0]) == sorted(["item_id", "category", "shop", "intention", "brand"])
    users = pq.read_table(out / "users.parquet").to_pylist()
    assert [(r["user_id"], r["user_category_weight"]) for r in users] == [
        (1, 0.25),
        (2, 0.75),
        (5, 0.25),
    ]
    assert "scenario" not in users[0] and "category" not in users[0]
    # item 7's second line (valid, line 1) disagrees on its category
    warned = [r.getMessage() for r in caplog.records if "ali-ccp" in r.getMessage()]
    assert len(warned) == 1
    assert "1 lines of 1 items" in warned[0] and "ali_ccp_val.csv, line 1" in warned[0]
    assert "column 'category', item_id 7" in warned[0]
    # the schema: vocabularies = largest id + 1, sides as documented
    assert schema.labels == ("click", "purchase")
    assert schema.feature("user_id").vocab_size == 6
    assert schema.feature("item_id").vocab_size == 10
    assert schema.feature("category").vocab_size == 9
    assert schema.feature("scenario").vocab_size == 3
    assert schema.feature("scenario").side == Side.CONTEXT
    assert schema.feature("user_category").side == Side.USER
    assert schema.feature("brand").side == Side.ITEM
    assert schema.feature("user_brand_x_brand_value").side == Side.CONTEXT
    doc = schema.raw["ali_ccp"]
    assert doc["fields"]["user_category"] == "109_14" and doc["fields"]["item_id"] == "205"
    assert doc["rows"]["train"] == {"rows": 3, "click": 1, "purchase": 1}


def test_streamed_blocks_keep_line_numbers(tmp_path):
    """Small parse blocks: several batches per file; the tables and a bad line's
    number are the same as read at once."""
    many = [line(user=u % 7, item=u % 11, click=int(u % 3 == 0)) for u in range(40)]
    lines = {"train": many, "val": many[:5], "test": many[:5]}
    whole = write_ali_ccp(write_raw(tmp_path / "raw", lines), tmp_path / "a")
    blocks = write_ali_ccp(tmp_path / "raw", tmp_path / "b", block_size=1024)
    for name in ("train", "items", "users"):
        a = pq.read_table(whole.root / f"{name}.parquet")
        b = pq.read_table(blocks.root / f"{name}.parquet")
        assert a.equals(b), name
    assert pq.ParquetFile(blocks.root / "train.parquet").metadata.num_row_groups > 1
    lines["train"][33]["205"] = "-4"
    write_raw(tmp_path / "raw", lines)
    with pytest.raises(DataError) as e:
        write_ali_ccp(tmp_path / "raw", tmp_path / "c", block_size=1024)
    assert (e.value.column, e.value.row, e.value.value) == ("205", 33, -4)


def _bad(row: int, **fields) -> dict[str, list[dict]]:
    lines = {k: [dict(r) for r in v] for k, v in LINES.items()}
    lines["train"][row].update({k: str(v) for k, v in fields.items()})
    return lines


@pytest.mark.parametrize(
    "fields, column, row, problem",
    [
        ({"205": "x"}, "205", 1, "not an integer"),
        ({"D509": "high"}, "D509", 2, "not a number"),
        ({"206": ""}, "206", 1, "empty field"),
        ({"101": -1}, "101", 2, "negative id"),
        ({"click": 2}, "click", 1, "label is not 0 or 1"),
        ({"purchase": 1}, "purchase", 2, "a purchase without a click"),
        ({"D508": "nan"}, "D508", 1, "not a finite float32"),
        ({"D702": "1e39"}, "D702", 2, "not a finite float32"),  # finite in float64 only
        ({"205": "99999999999999999999"}, "205", 1, "not an integer"),  # beyond int64
        ({"207": 1 << 40}, "207", 0, "not label-encoded"),
    ],
)
def test_bad_values_name_file_column_and_line(tmp_path, fields, column, row, problem):
    raw = write_raw(tmp_path / "raw", _bad(row, **fields))
    with pytest.raises(DataError) as e:
        write_ali_ccp(raw, tmp_path / "ds")
    assert e.value.file.endswith("ali_ccp_train.csv")
    assert (e.value.column, e.value.row) == (column, row)
    assert problem in e.value.problem


def test_bad_layout_is_a_clear_error(tmp_path):
    lines = {k: [dict(r) for r in v] for k, v in LINES.items()}
    for r in lines["val"]:
        del r["702"]
    with pytest.raises(DataError, match="column '702': missing from the header"):
        write_ali_ccp(write_raw(tmp_path / "a", lines), tmp_path / "ds")
    lines = {k: [dict(r) | {"price": "3"} for r in v] for k, v in LINES.items()}
    with pytest.raises(DataError, match="column 'price': not a column of the Ali-CCP layout"):
        write_ali_ccp(write_raw(tmp_path / "b", lines), tmp_path / "ds")
    raw = write_raw(tmp_path / "c")
    text = (raw / "ali_ccp_test.csv").read_text().splitlines()
    (raw / "ali_ccp_test.csv").write_text("\n".join([*text, "0,0,1"]) + "\n")
    with pytest.raises(DataError) as e:
        write_ali_ccp(raw, tmp_path / "ds")
    assert e.value.row == 2 and "expected 33 fields, found 3" in e.value.problem
    (raw / "ali_ccp_test.csv").unlink()
    with pytest.raises(DataError, match="ali_ccp_test.csv: missing"):
        write_ali_ccp(raw, tmp_path / "ds")
    write_raw(raw, {"test": LINES["test"]}, suffix="_sample")
    write_ali_ccp(raw, tmp_path / "ds")  # the sample's names are read too
    write_raw(raw, {"test": LINES["test"]})
    with pytest.raises(DataError, match="both ali_ccp_test.csv and ali_ccp_test_sample.csv"):
        write_ali_ccp(raw, tmp_path / "ds2")


requires_sample = pytest.mark.skipif(
    not (SAMPLE / "ali_ccp_train_sample.csv").exists(),
    reason="../shared/data/samples/ali_ccp is absent (torch-rechub's Ali-CCP sample)",
)


@requires_sample
def test_real_sample_against_an_independent_reading(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="ranking"):
        schema = write_ali_ccp(SAMPLE, tmp_path / "ds")
    validate_dataset(schema)
    first: dict[str, tuple] = {}
    differing, differing_items, n = 0, set(), {}
    attrs = ["206", "207", "210", "216"]
    top = dict.fromkeys(FIELDS, 0)
    for name, split in (("train", "train"), ("val", "valid"), ("test", "test")):
        with open(SAMPLE / f"ali_ccp_{name}_sample.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        n[split] = (len(rows), sum(int(r["click"]) for r in rows))
        for r in rows:
            values = tuple(int(r[c]) for c in attrs)
            if first.setdefault(r["205"], values) != values:
                differing += 1
                differing_items.add(r["205"])
            for c in FIELDS:
                top[c] = max(top[c], int(r[c]))
        got = pq.read_table(schema.root / f"{split}.parquet")
        assert got.num_rows == len(rows)
        np.testing.assert_array_equal(
            got.column("item_id").to_numpy(), [int(r["205"]) for r in rows]
        )
        np.testing.assert_allclose(
            got.column("user_brand_x_brand_value").to_numpy(),
            [float(r["D702"]) for r in rows],
            rtol=1e-6,
        )
    assert n == {"train": (100, 7), "valid": (50, 3), "test": (50, 2)}
    items = pq.read_table(schema.root / "items.parquet").to_pylist()
    assert len(items) == len(first) == 120
    for r in items:
        assert (
            tuple(r[c] for c in ("category", "shop", "intention", "brand"))
            == first[str(r["item_id"])]
        )
    for raw, (name, _) in FIELDS.items():
        assert schema.feature(name).vocab_size == top[raw] + 1
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert f"{differing} lines of {len(differing_items)} items" in warned
    assert differing_items == {"0", "39"}  # item 0: the dataset's fold of rare items


@pytest.mark.slow
@requires_sample
def test_sample_trains_the_multi_task_ranker_by_cli(tmp_path):
    """The commands a user runs: the adapter, then ``ranking-train experiment=ali_ccp``
    (ranking only: click and ESMM purchase, evaluated on the sample's test file)."""
    from tests.test_cli import cli

    made = cli("ranking-data", "source=ali-ccp", f"raw={SAMPLE}", cwd=tmp_path)
    assert made.returncode == 0, made.stderr[-3000:]
    assert (tmp_path / "data" / "ali-ccp" / "schema.yaml").exists()
    trained = cli(
        "ranking-train",
        "experiment=ali_ccp",
        "mlflow.enabled=false",
        "trainer.enable_progress_bar=false",
        cwd=tmp_path,
    )
    assert trained.returncode == 0, trained.stderr[-3000:]
    metrics = json.loads((tmp_path / "runs" / "latest" / "metrics.json").read_text())
    for task in ("click", "purchase"):
        assert 0.0 <= metrics[f"test/auc/{task}"] <= 1.0
        assert metrics[f"test/logloss/{task}"] > 0
    assert not any(k.startswith("test/recall") for k in metrics)  # no retrieval stage
    assert not (tmp_path / "runs" / "latest" / "bundle").exists()


def test_blank_lines_duplicate_columns_and_an_empty_last_block(tmp_path):
    raw = write_raw(tmp_path / "raw")
    path = raw / "ali_ccp_train.csv"
    lines = path.read_text().splitlines()
    # a blank line is named with its own line number, not hidden by a later bad field
    path.write_text("\n".join([lines[0], lines[1], "", *lines[2:]]) + "\n")
    with pytest.raises(DataError) as e:
        write_ali_ccp(raw, tmp_path / "a")
    assert (e.value.row, e.value.problem) == (1, "empty field")  # the blank line itself
    path.write_text("\n".join([lines[0] + ",click", *(x + ",0" for x in lines[1:])]) + "\n")
    with pytest.raises(DataError, match="column 'click': named twice in the header"):
        write_ali_ccp(raw, tmp_path / "b")
    # block sizes around the file's end: the reader may yield an empty last block
    write_raw(raw)
    for size in range(200, 400, 7):
        schema = write_ali_ccp(raw, tmp_path / f"c{size}", block_size=size)
        assert pq.read_table(schema.root / "train.parquet").num_rows == 3


def test_the_warning_names_the_earliest_disagreeing_line(tmp_path, caplog):
    """Item 7's category differs on valid line 1 and its shop on valid line 0: the
    warning names line 0 (the earliest), not the first column's line."""
    lines = {k: [dict(r) for r in v] for k, v in LINES.items()}
    lines["val"][0].update({"205": "7", "206": "4", "207": "9"})
    with caplog.at_level(logging.WARNING, logger="ranking"):
        write_ali_ccp(write_raw(tmp_path / "raw", lines), tmp_path / "ds")
    assert "ali_ccp_val.csv, line 0, column 'shop', item_id 7" in caplog.text


def test_row_groups_are_the_loaders_shards():
    from ranking.data.adapters.raw_csv import ROW_GROUP_ROWS
    from ranking.data.dataset import DEFAULT_SHARD_ROWS

    assert ROW_GROUP_ROWS == DEFAULT_SHARD_ROWS  # kept apart so adapters skip torchrec
