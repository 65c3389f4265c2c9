"""The Open Bandit adapter: every written column of hand-written files by hand,
the two policies' differently salted item files, bad input, and the real sample
in ``../shared/data`` read independently with the csv module."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from ranking.data.adapters.open_bandit import write_open_bandit
from ranking.data.errors import DataError
from ranking.data.validate import validate_dataset
from ranking.schema import Side

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SAMPLE = SHARED / "open-bandit-zozotown"
LOG_HEADER = [
    "",
    "timestamp",
    "item_id",
    "position",
    "click",
    "propensity_score",
    *[f"user_feature_{i}" for i in range(4)],
    *[f"user-item_affinity_{j}" for j in range(3)],
]
# three items; item features 1-3 hashed with a different salt per policy, the same groups
ITEMS = {
    "random": [
        ["0", "0", "-0.5", "aa", "gg", "mm"],
        ["1", "1", "0.25", "bb", "gg", "mm"],
        ["2", "2", "1.5", "aa", "hh", "mm"],
    ],
    "bts": [
        ["0", "0", "-0.5", "zz", "qq", "xx"],
        ["1", "1", "0.25", "yy", "qq", "xx"],
        ["2", "2", "1.5", "zz", "pp", "xx"],
    ],
}
DAY1, DAY2, DAY3 = "2019-11-24", "2019-11-25", "2019-11-26"


def impression(ts, item, position=1, click=0, p="0.3333", user=("u", "v", "w", "x"), aff=0.0):
    return ["0", ts, str(item), str(position), str(click), p, *user, str(aff), "0.0", "0.0"]


LOGS = {
    "random": [
        impression(f"{DAY1} 10:00:00.000001+00:00", 1, click=1, aff=0.5),
        impression(f"{DAY2} 09:00:00+00:00", 2, position=3, user=("u", "v", "w", "y")),
        impression(f"{DAY3} 08:00:00+00:00", 0, user=("t", "v", "w", "x")),
    ],
    "bts": [
        impression(f"{DAY1} 10:00:00.000001+00:00", 2, position=2, p="0.9"),  # ties random's
        impression(f"{DAY1} 23:59:59+00:00", 0, click=1, p="0.05", aff=0.25),
        impression(f"{DAY3} 07:00:00+00:00", 1, p="0.5", user=("u", "v", "w", "y")),
    ],
}


def write_raw(
    root: Path, logs: dict | None = None, items: dict | None = None, campaign: str = "men"
) -> Path:
    for policy in ("random", "bts"):
        folder = root / policy / campaign
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / f"{campaign}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(LOG_HEADER)
            w.writerows((logs or LOGS)[policy])
        with open(folder / "item_context.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["", "item_id", "item_feature_0", *[f"item_feature_{i}" for i in (1, 2, 3)]])
            w.writerows((items or ITEMS)[policy])
    return root


def test_every_column_of_a_hand_written_dataset(tmp_path):
    schema = write_open_bandit(write_raw(tmp_path / "raw"), tmp_path / "ds", campaign="men")
    validate_dataset(schema)
    out = tmp_path / "ds"
    train = pq.read_table(out / "train.parquet").to_pylist()
    # three days: day 1 train, day 2 valid, day 3 test; ties: the random row first
    assert [(r["policy"], r["item_id"]) for r in train] == [(1, 1), (0, 2), (0, 0)]
    assert [r["ts"] for r in train] == [1574589600000001, 1574589600000001, 1574639999000000]
    assert [r["click"] for r in train] == [1, 0, 1]
    assert [r["position"] for r in train] == [0, 1, 0]
    assert [r["propensity"] for r in train] == [0.3333, 0.9, 0.05]
    assert [r["affinity_0"] for r in train] == [0.5, 0.0, 0.25]
    # profiles (u,v,w,x)=1, (u,v,w,y)=2, (t,v,w,x)=0 in sorted code order
    assert [r["user_id"] for r in train] == [1, 1, 1]
    assert [r["user_feature_0"] for r in train] == [1, 1, 1]  # t=0, u=1
    # item codes from the random file's strings: feature 1 aa=0, bb=1; feature 2 gg=0, hh=1
    assert [(r["item_feature_1"], r["item_feature_2"]) for r in train] == [(1, 0), (0, 1), (0, 0)]
    assert [r["item_price"] for r in train] == [0.25, 1.5, -0.5]
    valid = pq.read_table(out / "valid.parquet").to_pylist()
    assert [(r["user_id"], r["item_id"], r["position"]) for r in valid] == [(2, 2, 2)]
    test = pq.read_table(out / "test.parquet").to_pylist()
    assert [(r["policy"], r["user_id"], r["item_id"]) for r in test] == [(0, 2, 1), (1, 0, 0)]
    items = pq.read_table(out / "items.parquet").to_pylist()
    assert [(r["item_id"], r["item_feature_1"], r["item_feature_3"]) for r in items] == [
        (0, 0, 0),
        (1, 1, 0),
        (2, 0, 0),
    ]
    users = pq.read_table(out / "users.parquet").to_pylist()
    assert [(r["user_id"], r["user_feature_0"], r["user_feature_3"]) for r in users] == [
        (0, 0, 0),
        (1, 1, 0),
        (2, 1, 1),
    ]
    assert users[1]["affinity_0"] == 0.25  # profile 1's last row (bts, day 1, 23:59:59)
    assert schema.labels == ("click",)
    assert schema.feature("user_id").vocab_size == 3
    assert schema.feature("item_feature_2").vocab_size == 2
    assert schema.feature("position").side == Side.CONTEXT
    assert schema.feature("affinity_2").side == Side.USER
    assert schema.feature("item_price").side == Side.ITEM
    doc = schema.raw["open_bandit"]
    assert doc["days"] == {"train": [DAY1], "valid": [DAY2], "test": [DAY3]}
    assert doc["rows"]["test"] == {"rows": 2, "click": 0, "random_rows": 1}
    one = write_open_bandit(tmp_path / "raw", tmp_path / "ds1", "men", policies=("random",))
    assert pq.read_table(one.root / "train.parquet").column("policy").to_pylist() == [1]


def _copy(logs=None, items=None):
    return (
        {k: [list(r) for r in v] for k, v in (logs or LOGS).items()},
        {k: [list(r) for r in v] for k, v in (items or ITEMS).items()},
    )


@pytest.mark.parametrize(
    "policy, row, col, value, column, problem",
    [
        ("bts", 1, 2, "7", "item_id", "not in item_context.csv"),
        ("random", 2, 3, "0", "position", "position below 1"),
        ("bts", 0, 4, "2", "click", "label is not 0 or 1"),
        ("random", 1, 5, "0", "propensity_score", "propensity outside (0, 1]"),
        ("bts", 2, 10, "high", "user-item_affinity_0", "not a number"),
        ("random", 0, 2, "one", "item_id", "not an integer"),
        ("random", 1, 1, "yesterday", "timestamp", "not a timestamp"),
        ("bts", 1, 6, "", "user_feature_0", "empty field"),
    ],
)
def test_bad_log_values_name_file_column_and_line(
    tmp_path, policy, row, col, value, column, problem
):
    logs, items = _copy()
    logs[policy][row][col] = value
    with pytest.raises(DataError) as e:
        write_open_bandit(write_raw(tmp_path / "raw", logs, items), tmp_path / "ds", "men")
    assert e.value.file.endswith(f"{policy}/men/men.csv")
    assert (e.value.column, e.value.row) == (column, row)
    assert problem in e.value.problem


def test_item_files_must_agree(tmp_path):
    logs, items = _copy()
    items["bts"][2][4] = "qq"  # item 2 joins items 0 and 1 in feature 2's group
    with pytest.raises(DataError) as e:
        write_open_bandit(write_raw(tmp_path / "a", logs, items), tmp_path / "ds", "men")
    assert e.value.file.endswith("bts/men/item_context.csv")
    assert (e.value.column, e.value.row, e.value.value) == ("item_feature_2", 2, "qq")
    logs, items = _copy()
    items["bts"][1][2] = "0.3"
    with pytest.raises(DataError, match="column 'item_feature_0', row 1: price differs"):
        write_open_bandit(write_raw(tmp_path / "b", logs, items), tmp_path / "ds", "men")
    logs, items = _copy()
    items["random"][1][1] = "5"
    with pytest.raises(DataError, match="item ids must be 0, 1, ... in order"):
        write_open_bandit(write_raw(tmp_path / "c", logs, items), tmp_path / "ds", "men")


def test_bad_layout_is_a_clear_error(tmp_path):
    raw = write_raw(tmp_path / "raw")
    path = raw / "random" / "men" / "men.csv"
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0].replace(",click,", ",clicked,"), *lines[1:]]) + "\n")
    with pytest.raises(DataError, match="column 'click': missing from the header"):
        write_open_bandit(raw, tmp_path / "ds", "men")
    write_raw(raw)
    path.write_text("\n".join([lines[0] + ",extra", *(x + ",1" for x in lines[1:])]) + "\n")
    with pytest.raises(DataError, match="column 'extra': not a column of the Open Bandit"):
        write_open_bandit(raw, tmp_path / "ds", "men")
    path.write_text("\n".join([*lines, "0,2019-11-26 07:00:00+00:00,1"]) + "\n")
    with pytest.raises(DataError) as e:
        write_open_bandit(raw, tmp_path / "ds", "men")
    assert e.value.row == 3 and "expected 13 fields, found 3" in e.value.problem
    (raw / "bts" / "men" / "item_context.csv").unlink()
    with pytest.raises(DataError, match="bts/men/item_context.csv: missing"):
        write_open_bandit(raw, tmp_path / "ds", "men")
    write_raw(raw)
    logs, _ = _copy()
    for p in logs:
        for r in logs[p]:
            r[1] = f"{DAY1} 12:00:00+00:00"
    with pytest.raises(DataError, match="spans 1 days"):
        write_open_bandit(write_raw(tmp_path / "one_day", logs), tmp_path / "ds", "men")


@pytest.mark.skipif(
    not (SAMPLE / "random" / "all" / "all.csv").exists(),
    reason="../shared/data/open-bandit-zozotown is absent (the Open Bandit sample)",
)
@pytest.mark.parametrize("campaign", ["all", "men"])
def test_real_sample_against_an_independent_reading(tmp_path, campaign):
    schema = write_open_bandit(SAMPLE, tmp_path / "ds", campaign)
    validate_dataset(schema)
    profiles, days, clicks = set(), {}, {}
    for policy, code in (("random", 1), ("bts", 0)):
        with open(SAMPLE / policy / campaign / f"{campaign}.csv", newline="") as f:
            for r in csv.DictReader(f):
                profiles.add(tuple(r[f"user_feature_{i}"] for i in range(4)))
                key = (r["timestamp"][:10], code)
                days[key] = days.get(key, 0) + 1
                clicks[key] = clicks.get(key, 0) + int(r["click"])
    assert sum(days.values()) == 20_000
    last, before = sorted({d for d, _ in days})[-1], sorted({d for d, _ in days})[-2]
    test = pq.read_table(schema.root / "test.parquet")
    assert test.num_rows == days[(last, 1)] + days[(last, 0)]
    assert int(np.sum(test.column("policy").to_numpy())) == days[(last, 1)]
    assert int(np.sum(test.column("click").to_numpy())) == clicks[(last, 1)] + clicks[(last, 0)]
    valid = pq.read_table(schema.root / "valid.parquet")
    assert valid.num_rows == days[(before, 1)] + days[(before, 0)]
    assert schema.feature("user_id").vocab_size == len(profiles)
    n_items = {"all": 80, "men": 34}[campaign]
    assert pq.read_table(schema.root / "items.parquet").num_rows == n_items
    assert schema.feature(f"affinity_{n_items - 1}").side == Side.USER
    ts = np.concatenate(
        [
            pq.read_table(schema.root / f"{s}.parquet").column("ts").to_numpy()
            for s in ("train", "valid", "test")
        ]
    )
    assert (np.diff(ts) >= 0).all()


@pytest.mark.slow
@pytest.mark.skipif(
    not (SAMPLE / "random" / "men" / "men.csv").exists(),
    reason="../shared/data/open-bandit-zozotown is absent (the Open Bandit sample)",
)
def test_sample_trains_exports_and_serves_by_cli(tmp_path):
    """The commands a user runs: the adapter, ``ranking-train experiment=open_bandit``
    (towers, click ranker, bundle; the random-policy test rows as test_random),
    ``ranking-recommend`` on the bundle."""
    from tests.test_cli import cli

    made = cli("ranking-data", "source=open-bandit", f"raw={SAMPLE}", "campaign=men", cwd=tmp_path)
    assert made.returncode == 0, made.stderr[-3000:]
    trained = cli(
        "ranking-train",
        "experiment=open_bandit",
        "mlflow.enabled=false",
        "trainer.enable_progress_bar=false",
        cwd=tmp_path,
    )
    assert trained.returncode == 0, trained.stderr[-3000:]
    metrics = json.loads((tmp_path / "runs" / "latest" / "metrics.json").read_text())
    assert 0.0 <= metrics["test/auc/click"] <= 1.0
    assert 0.0 <= metrics["test_random/recall@10"] <= 1.0
    assert metrics["test/corpus_items"] == 34
    rec = cli(
        "ranking-recommend",
        "--bundle",
        str(tmp_path / "runs" / "latest" / "bundle"),
        "--users",
        "0",
        "3",
        "--top-n",
        "5",
        cwd=tmp_path,
    )
    assert rec.returncode == 0, rec.stderr[-3000:]
    lines = [json.loads(x) for x in rec.stdout.splitlines()]
    assert [len(x["items"]) for x in lines] == [5, 5]
    assert all(0 <= i < 34 for x in lines for i in x["items"])


def test_bad_options_are_config_errors(tmp_path):
    from ranking.data.errors import ConfigError

    raw = write_raw(tmp_path / "raw")
    for kwargs in ({"campaign": "kids"}, {"policies": ("random", "random")}, {"test_days": 0}):
        with pytest.raises(ConfigError):
            write_open_bandit(raw, tmp_path / "ds", **{"campaign": "men", **kwargs})
