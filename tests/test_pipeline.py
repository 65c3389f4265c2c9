"""Parquet -> typed Batch: stats, conversion, sharding (exactly once), corpus, Lightning."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import pytorch_lightning as pl
import torch
import yaml
from torch.utils.data import DataLoader
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, PoolingType

from ranking.data.convert import BatchConverter, keep_last
from ranking.data.datamodule import RecDataModule
from ranking.data.dataset import (
    ItemCorpusDataset,
    ParquetIterableDataset,
    RecDataLoader,
    UserSnapshotDataset,
    pack,
    partition,
    plan_shards,
    unpack,
)
from ranking.data.errors import DataError
from ranking.data.stats import DenseStats, compute_dense_stats
from ranking.hashing import hash_int, hash_strings
from ranking.schema import Schema, Side

N_ITEMS = 50
SPLIT_ROWS = {"train": 3000, "valid": 500, "test": 400}
N_USERS = sum(SPLIT_ROWS.values())  # user_id is unique per impression: it names the row

SCHEMA = {
    "name": "tiny",
    "ids": {"user": "user_id", "item": "item_id"},
    "time": "ts",
    "labels": ["click", "purchase"],
    "oracle": {"click": "p_click", "purchase": "p_purchase"},
    "ignore": ["policy", "request"],
    "files": {
        "train": "train",
        "valid": "valid",
        "test": "test.parquet",
        "items": "items.parquet",
        "users": "users.parquet",
    },
    "features": {
        "user_id": {"side": "user", "kind": "categorical", "vocab_size": N_USERS, "dim": 8},
        "city": {"side": "user", "kind": "categorical", "hash_buckets": 17, "dim": 4},
        "age": {"side": "user", "kind": "dense", "transform": "standardize"},
        "hist_items": {
            "side": "user",
            "kind": "sequence",
            "table": "item_id",
            "max_len": 3,
            "truncate": True,
        },
        "item_id": {"side": "item", "kind": "categorical", "vocab_size": N_ITEMS, "dim": 8},
        "brand": {"side": "item", "kind": "categorical", "hash_buckets": 13, "dim": 4},
        "tags": {"side": "item", "kind": "multi_hot", "vocab_size": 10, "max_len": 4, "dim": 4},
        "kw": {"side": "item", "kind": "multi_hot", "hash_buckets": 11, "max_len": 3, "dim": 4},
        "price": {"side": "item", "kind": "dense", "transform": "log1p_standardize"},
        "pop": {"side": "item", "kind": "dense", "transform": "log1p"},
        "hour": {"side": "context", "kind": "categorical", "vocab_size": 24, "dim": 4},
        "score": {"side": "context", "kind": "dense", "transform": "none"},
    },
}
SPARSE_KEYS = ["user_id", "city", "hist_items", "item_id", "brand", "tags", "kw", "hour"]


def _lists(rng: np.random.Generator, n: int, max_len: int, draw) -> list[list]:
    return [list(draw(int(k))) for k in rng.integers(0, max_len + 1, n)]


def _items(rng: np.random.Generator) -> pa.Table:
    words = np.array(["red", "blue", "green", "big", "small", "sale"])
    return pa.table(
        {
            "item_id": np.arange(N_ITEMS, dtype=np.int64),
            "brand": rng.integers(-(10**12), 10**12, N_ITEMS),
            "tags": _lists(rng, N_ITEMS, 4, lambda k: rng.integers(0, 10, k).tolist()),
            "kw": _lists(rng, N_ITEMS, 3, lambda k: rng.choice(words, k).tolist()),
            "price": np.exp(rng.normal(3.0, 1.0, N_ITEMS)),
            "pop": rng.poisson(20, N_ITEMS).astype(np.int64),  # an integer dense column
        }
    )


def _users(rng: np.random.Generator) -> pa.Table:
    cities = np.array(["paris", "lyon", "nice", "lille", "brest"])
    return pa.table(
        {
            "user_id": np.arange(N_USERS, dtype=np.int64),
            "city": rng.choice(cities, N_USERS),
            "age": rng.normal(40.0, 12.0, N_USERS),
            # up to 6 values for max_len 3 (truncate: true)
            "hist_items": _lists(rng, N_USERS, 6, lambda k: rng.integers(0, N_ITEMS, k).tolist()),
        }
    )


def _impressions(
    rng: np.random.Generator, items: pa.Table, users: pa.Table, user_ids: np.ndarray
) -> pa.Table:
    n = len(user_ids)
    item_ids = rng.integers(0, N_ITEMS, n)
    it = items.take(pa.array(item_ids))
    us = users.take(pa.array(user_ids))
    p_click = rng.uniform(0, 1, n)
    cols = {c: us.column(c) for c in users.column_names}
    cols.update({c: it.column(c) for c in items.column_names})
    cols.update(
        {
            "hour": rng.integers(0, 24, n),
            "score": rng.normal(0, 1, n),
            "ts": 1_700_000_000 + user_ids,
            "click": (rng.uniform(0, 1, n) < p_click).astype(np.int64),
            "purchase": (rng.uniform(0, 1, n) < 0.1).astype(np.int64),
            "p_click": p_click,
            "p_purchase": np.full(n, 0.1),
            "policy": rng.choice(["logging", "random"], n),
            # a request: runs of 5 consecutive rows (a string key)
            "request": [f"r{u // 5}" for u in user_ids],
        }
    )
    return pa.table(cols)


def make_dataset(root: Path, test_csv: bool = False) -> dict[str, pa.Table]:
    """Write schema.yaml, split parts (several files and row-group sizes), items, users."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    schema = json.loads(json.dumps(SCHEMA))
    if test_csv:
        schema["files"]["test"] = "test.csv"
    (root / "schema.yaml").write_text(yaml.safe_dump(schema, sort_keys=False))
    items, users = _items(rng), _users(rng)
    # the corpus is written out of id order: the corpus reader must sort it
    pq.write_table(items.take(pa.array(rng.permutation(N_ITEMS))), root / "items.parquet")
    pq.write_table(users, root / "users.parquet", row_group_size=1000)
    tables: dict[str, pa.Table] = {"items": items, "users": users}
    start = 0
    for split, n in SPLIT_ROWS.items():
        t = _impressions(rng, items, users, np.arange(start, start + n))
        start += n
        tables[split] = t
        if split == "test":
            if test_csv:
                _write_csv(t, root / "test.csv")
            else:
                pq.write_table(t, root / "test.parquet", row_group_size=97)
            continue
        (root / split).mkdir()
        cuts = [0, n // 3, n // 2, n]  # three files of different sizes
        for i, (a, b) in enumerate(zip(cuts, cuts[1:], strict=False)):
            part = t.slice(a, b - a)
            if i == 1:  # other physical types in one file: int32 ids, dictionary strings
                part = part.set_column(
                    part.schema.get_field_index("hour"), "hour", part["hour"].cast(pa.int32())
                )
                part = part.set_column(
                    part.schema.get_field_index("city"), "city", part["city"].dictionary_encode()
                )
            pq.write_table(
                part, root / split / f"part-{i:03d}.parquet", row_group_size=[128, 300, 1000][i]
            )
    return tables


def _write_csv(t: pa.Table, path: Path) -> None:
    cols = {}
    for name in t.column_names:
        col = t.column(name)
        if pa.types.is_list(col.type):
            cols[name] = pa.array(["|".join(map(str, v)) for v in col.to_pylist()])
        else:
            cols[name] = col
    pacsv.write_csv(pa.table(cols), path)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Schema, dict[str, pa.Table]]:
    root = tmp_path_factory.mktemp("tiny")
    tables = make_dataset(root)
    return Schema.load(root), tables


@pytest.fixture(scope="module")
def converter(data) -> BatchConverter:
    schema, _ = data
    return BatchConverter(schema, compute_dense_stats(schema))


def _kjt_lists(kjt, key: str) -> list[list[int]]:
    jt = kjt[key]
    return [t.tolist() for t in torch.split(jt.values(), jt.lengths().tolist())]


# ---- stats ---------------------------------------------------------------------------


def test_dense_stats_are_train_only_numpy_moments(data) -> None:
    schema, tables = data
    stats = compute_dense_stats(schema, batch_rows=333)  # many batches: exercises the merge
    train = tables["train"]
    for name, log in (("age", False), ("price", True), ("pop", True), ("score", False)):
        x = train[name].to_numpy().astype(np.float64)
        x = np.log1p(x) if log else x
        assert stats[name].count == len(x)
        assert stats[name].mean == pytest.approx(np.mean(x), rel=1e-12, abs=1e-12)
        assert stats[name].std == pytest.approx(np.std(x), rel=1e-10)
    # valid rows differ, and are not part of the statistics
    both = np.concatenate([train["age"].to_numpy(), tables["valid"]["age"].to_numpy()])
    assert stats["age"].mean != pytest.approx(np.mean(both), rel=1e-9)


def test_dense_stats_json_round_trip_and_transforms(data) -> None:
    schema, _ = data
    stats = compute_dense_stats(schema)
    again = DenseStats.from_dict(json.loads(json.dumps(stats.to_dict())))
    assert again == stats
    x = np.array([0.0, 1.0, 9.0])
    m = stats["price"]
    expected = (np.log1p(x) - m.mean) / m.std
    np.testing.assert_allclose(again.apply("price", x), expected.astype(np.float32), rtol=1e-6)
    assert again.apply("price", x).dtype == np.float32
    const = DenseStats.from_dict(
        {
            "version": 1,
            "features": {"c": {"transform": "standardize", "mean": 2.0, "std": 0.0, "count": 3}},
        }
    )
    np.testing.assert_array_equal(const.apply("c", np.array([2.0, 3.0])), [0.0, 1.0])  # std 0 -> 1


# ---- conversion ------------------------------------------------------------------------


def _hand_rows() -> pa.Table:
    return pa.table(
        {
            "user_id": [0, 1, 2],
            "city": ["a", "b", "a"],
            "age": [30.0, 40.0, 50.0],
            "hist_items": [[1, 2, 3, 4, 5], [6], []],
            "item_id": [3, 4, 5],
            "brand": [10**12, -7, 10**12],
            "tags": [[1, 2], [], [3]],
            "kw": [["x"], ["y", "x"], []],
            "price": [0.0, 1.0, 9.0],
            "pop": [0, 1, 2],
            "hour": [0, 5, 23],
            "score": [0.5, -1.0, 2.0],
            "click": [1, 0, 1],
            "purchase": [0, 0, 1],
            "p_click": [0.1, 0.2, 0.3],
            "p_purchase": [0.0, 0.5, 1.0],
            "ts": [100, 200, 300],
        }
    )


def _hand_stats() -> DenseStats:
    feats = {
        "age": ("standardize", 40.0, 10.0),
        "price": ("log1p_standardize", 1.0, 2.0),
        "pop": ("log1p", 0.0, 1.0),
        "score": ("none", 0.0, 1.0),
    }
    return DenseStats.from_dict(
        {
            "version": 1,
            "features": {
                k: {"transform": t, "mean": m, "std": s, "count": 1}
                for k, (t, m, s) in feats.items()
            },
        }
    )


def test_convert_matches_hand_built_batch(data) -> None:
    schema, _ = data
    batch = BatchConverter(schema, _hand_stats()).convert(_hand_rows())
    kjt = batch.sparse
    assert kjt.keys() == SPARSE_KEYS
    assert kjt.values().dtype == torch.int64 and kjt.lengths().dtype == torch.int32
    city = hash_strings(["a", "b", "a"], 17).tolist()
    brand = hash_int(np.array([10**12, -7, 10**12]), 13).tolist()
    kw = hash_strings(["x", "y", "x"], 11).tolist()
    expected = {
        "user_id": [[0], [1], [2]],
        "city": [[c] for c in city],
        "hist_items": [[3, 4, 5], [6], []],  # truncate: the last 3 values
        "item_id": [[3], [4], [5]],
        "brand": [[b] for b in brand],
        "tags": [[1, 2], [], [3]],
        "kw": [[kw[0]], [kw[1], kw[2]], []],
        "hour": [[0], [5], [23]],
    }
    for key, lists in expected.items():
        assert _kjt_lists(kjt, key) == lists, key
    # the flat layout too: keys one after the other, rows within a key
    flat = [v for key in SPARSE_KEYS for row in expected[key] for v in row]
    assert kjt.values().tolist() == flat
    assert kjt.lengths().tolist() == [len(r) for key in SPARSE_KEYS for r in expected[key]]

    np.testing.assert_allclose(batch.dense["user"].numpy(), [[-1.0], [0.0], [1.0]])
    price = (np.log1p([0.0, 1.0, 9.0]) - 1.0) / 2.0
    np.testing.assert_allclose(
        batch.dense["item"].numpy(), np.stack([price, np.log1p([0, 1, 2])], 1), rtol=1e-6
    )
    np.testing.assert_allclose(batch.dense["context"].numpy(), [[0.5], [-1.0], [2.0]])
    assert all(v.dtype == torch.float32 for v in batch.dense.values())
    assert (
        batch.labels["click"].tolist() == [1.0, 0.0, 1.0]
        and batch.labels["click"].dtype == torch.float32
    )
    assert batch.oracle["purchase"].tolist() == [0.0, 0.5, 1.0]
    assert batch.user_ids.tolist() == [0, 1, 2] and batch.item_ids.tolist() == [3, 4, 5]
    assert batch.time.tolist() == [100, 200, 300] and batch.time.dtype == torch.int64


def test_convert_sliced_and_chunked_rows(data) -> None:
    schema, _ = data
    conv = BatchConverter(schema, _hand_stats())
    rows = _hand_rows()
    two = pa.concat_tables([rows.slice(1, 1), rows.slice(2, 1)])  # chunked, sliced lists
    b = conv.convert(two)
    assert _kjt_lists(b.sparse, "hist_items") == [[6], []]
    assert _kjt_lists(b.sparse, "kw") == [hash_strings(["y", "x"], 11).tolist(), []]
    assert conv.convert(rows.to_batches()[0].slice(0, 1)).item_ids.tolist() == [3]


def test_keep_last_and_too_long_lists(data) -> None:
    v, ln = keep_last(np.array([1, 2, 3, 4, 5, 6, 7, 8, 9]), np.array([5, 1, 0, 3], np.int32), 3)
    assert v.tolist() == [3, 4, 5, 6, 7, 8, 9] and ln.tolist() == [3, 1, 0, 3]
    schema, _ = data
    rows = _hand_rows()
    rows = rows.set_column(
        rows.schema.get_field_index("tags"), "tags", pa.array([[1], [1, 2, 3, 4, 5], []])
    )
    with pytest.raises(DataError, match="max_len 4") as e:  # tags has no truncate: never clipped
        BatchConverter(schema, _hand_stats()).convert(rows)
    assert e.value.column == "tags" and e.value.row == 1


def test_dense_of_a_split_uses_train_stats(data, converter) -> None:
    schema, tables = data
    stats = converter.stats
    ds = ParquetIterableDataset(schema, "valid", converter, batch_size=128)
    batches = list(ds)
    assert [len(b) for b in batches] == [128, 128, 128, 116]
    valid = tables["valid"]
    got = {s: torch.cat([b.dense[s] for b in batches]).numpy() for s in ("user", "item", "context")}
    age = (valid["age"].to_numpy() - stats["age"].mean) / stats["age"].std
    price = (np.log1p(valid["price"].to_numpy()) - stats["price"].mean) / stats["price"].std
    np.testing.assert_allclose(got["user"][:, 0], age, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["item"][:, 0], price, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["item"][:, 1], np.log1p(valid["pop"].to_numpy()), rtol=1e-6)
    np.testing.assert_allclose(got["context"][:, 0], valid["score"].to_numpy(), rtol=1e-6)
    # file order
    assert torch.cat([b.user_ids for b in batches]).tolist() == valid["user_id"].to_pylist()
    assert torch.cat([b.time for b in batches]).tolist() == valid["ts"].to_pylist()
    hist = [h[-3:] for h in valid["hist_items"].to_pylist()]
    assert [r for b in batches for r in _kjt_lists(b.sparse, "hist_items")] == hist


# ---- sharding ---------------------------------------------------------------------------


def test_shards_follow_row_groups(data) -> None:
    schema, _ = data
    shards = plan_shards(schema.split_paths("train"), shard_rows=256)
    assert sum(s.num_rows for s in shards) == SPLIT_ROWS["train"]
    for path in {s.path for s in shards}:
        mine = [s for s in shards if s.path == path]
        assert [s.start for s in mine] == list(np.cumsum([0] + [s.num_rows for s in mine[:-1]]))
        assert all(s.num_rows >= 256 for s in mine[:-1])  # only a file's last shard is short
    assert max(s.num_rows for s in shards) == 1000  # a 1000-row group is never split
    # the parts tile the laid-out rows exactly
    sizes, order = [s.num_rows for s in shards], np.random.default_rng(0).permutation(len(shards))
    rows = Counter()
    for p in range(6):
        for s, lo, hi in partition(sizes, order, 6, p):
            rows.update((s, r) for r in range(lo, hi))
    assert len(rows) == SPLIT_ROWS["train"] and set(rows.values()) == {1}


def _epoch_ids(ds_args: dict, epoch: int, num_workers: int = 2) -> dict[int, list[torch.Tensor]]:
    out = {}
    for rank in (0, 1):
        ds = ParquetIterableDataset(**ds_args, rank=rank, world_size=2)
        ds.set_epoch(epoch)
        loader = RecDataLoader(ds, num_workers=num_workers)
        out[rank] = [b.user_ids for b in loader]
        assert len(out[rank]) == len(loader)  # len is exact
    return out


def _train_args(schema: Schema, converter: BatchConverter, **overrides) -> dict:
    """Dataset arguments of the shuffled train split in batches of 64, shards of 256."""
    return dict(
        schema=schema,
        split="train",
        converter=converter,
        batch_size=64,
        shuffle=True,
        shard_rows=256,
        **overrides,
    )


def test_exactly_once_over_ranks_and_workers_and_epochs(data, converter) -> None:
    schema, tables = data
    args = _train_args(schema, converter, seed=7, buffer_shards=2)
    expected = sorted(tables["train"]["user_id"].to_pylist())
    orders = []
    for epoch in (0, 1):
        got = _epoch_ids(args, epoch)
        ids = [int(i) for rank in (0, 1) for b in got[rank] for i in b]
        assert sorted(ids) == expected  # every row exactly once
        sizes = [len(b) for rank in (0, 1) for b in got[rank]]
        assert sum(s < 64 for s in sizes) <= 4  # full batches but each worker's last
        rank_rows = [sum(len(b) for b in got[r]) for r in (0, 1)]
        assert abs(rank_rows[0] - rank_rows[1]) <= 1  # ranks in step
        orders.append(ids)
    assert orders[0] != orders[1]  # a new order each epoch
    again = _epoch_ids(args, 0)
    assert [int(i) for r in (0, 1) for b in again[r] for i in b] == orders[
        0
    ]  # same seed, same order
    other_seed = _epoch_ids({**args, "seed": 8}, 0, num_workers=0)
    assert [int(i) for r in (0, 1) for b in other_seed[r] for i in b] != orders[0]


def test_row_filter_yields_each_positive_exactly_once(data, converter) -> None:
    schema, tables = data
    train = tables["train"]
    positives = sorted(np.asarray(train["user_id"])[np.asarray(train["click"]) == 1].tolist())
    assert 0 < len(positives) < SPLIT_ROWS["train"]
    args = _train_args(schema, converter, seed=1, row_filter="click")
    got = _epoch_ids(args, epoch=0)  # 2 ranks x 2 workers; len(loader) checked inside
    ids = [int(i) for r in (0, 1) for b in got[r] for i in b]
    assert sorted(ids) == positives
    with pytest.raises(ValueError, match="row_filter"):
        ParquetIterableDataset(schema, "train", converter, 64, row_filter="price")


def test_group_helpers_against_loops() -> None:
    from ranking.data.groups import group_permutation, groups_holding

    rng = np.random.default_rng(0)
    for _ in range(20):
        n = int(rng.integers(0, 40))
        raw = rng.integers(0, 6, n).tolist()
        keys = [None if k == 0 else f"k{k}" for k in raw]  # strings, and nulls
        marked = rng.uniform(size=n) < 0.2
        order = group_permutation(pa.array(keys, pa.string()), rng)
        assert sorted(order.tolist()) == list(range(n))
        # each key's rows are one block, in their original order; a null is its own block
        blocks = []
        for i in order.tolist():
            key = keys[i] if keys[i] is not None else ("null", i)
            if not blocks or blocks[-1][0] != key:
                blocks.append((key, []))
            blocks[-1][1].append(i)
        assert len({b[0] for b in blocks}) == len(blocks)
        assert all(b[1] == sorted(b[1]) for b in blocks)
        # a group: every row of one (non-null) key, wherever it lies; a null: itself
        held = {keys[i] for i in range(n) if marked[i] and keys[i] is not None}
        want = [bool(marked[i]) or (keys[i] is not None and keys[i] in held) for i in range(n)]
        assert groups_holding(pa.array(keys, pa.string()), marked).tolist() == want


def test_group_by_shuffles_requests_whole(data, converter) -> None:
    schema, tables = data
    args = _train_args(schema, converter, seed=3, buffer_shards=2, group_by="request")
    expected = sorted(tables["train"]["user_id"].to_pylist())
    orders, per_batch = [], []
    for epoch in (0, 1):
        got = _epoch_ids(args, epoch)  # 2 ranks x 2 workers; len(loader) checked inside
        batches = [b.tolist() for r in (0, 1) for b in got[r]]
        ids = [i for b in batches for i in b]
        assert sorted(ids) == expected  # every row exactly once
        batch_of = {}
        for n, b in enumerate(batches):
            # a request's rows follow each other (user_id names the row)
            runs = np.split(np.asarray(b), np.flatnonzero(np.diff(np.asarray(b) // 5)) + 1)
            assert len({int(run[0]) // 5 for run in runs}) == len(runs)  # no request twice
            for i in b:
                batch_of.setdefault(i // 5, set()).add(n)
        # a request leaves its batch only where a batch, a chunk (256 rows), a file
        # or a worker's part ends inside it
        split = sum(len(v) > 1 for v in batch_of.values())
        assert split <= len(batches) + SPLIT_ROWS["train"] // 256 + 3 + 4
        assert split < 0.2 * len(batch_of)
        orders.append(ids)
        per_batch.append(sum(len(set(i // 5 for i in b)) for b in batches))
    assert orders[0] != orders[1]
    plain = _epoch_ids({**args, "group_by": None}, 0)
    # a row shuffle scatters requests: about twice as many requests per batch
    assert per_batch[0] < 0.5 * sum(
        len(np.unique(b.numpy() // 5)) for r in (0, 1) for b in plain[r]
    )


def test_positive_groups_only_keeps_the_others_of_requests_with_a_positive(data, converter) -> None:
    schema, tables = data
    args = _train_args(schema, converter, seed=1, group_by="request", positive_groups_only=True)
    ds = ParquetIterableDataset(**args, row_filter=("purchase", 1.0, 1.0))
    # brute force: a row stays if it is a purchase or its request (its rows within
    # one shard) holds a purchase
    want = []
    for shard in ds.shards:
        t = pq.read_table(shard.path, columns=["user_id", "purchase", "request"])
        t = t.slice(shard.start, shard.num_rows)
        users, bought, reqs = (t[c].to_pylist() for c in ("user_id", "purchase", "request"))
        with_one = {r for r, c in zip(reqs, bought, strict=True) if c == 1}
        want += [u for u, r in zip(users, reqs, strict=True) if r in with_one]
    train = tables["train"]
    assert len(want) < 0.9 * train.num_rows  # requests without a purchase exist
    got = _epoch_ids({**args, "row_filter": ("purchase", 1.0, 1.0)}, epoch=0)
    ids = sorted(int(i) for r in (0, 1) for b in got[r] for i in b)
    assert ids == sorted(want)
    assert ds.num_rows == len(want)
    half = _epoch_ids({**args, "row_filter": ("purchase", 1.0, 0.5)}, epoch=0)
    ids_half = {int(i) for r in (0, 1) for b in half[r] for i in b}
    positives = set(np.asarray(train["user_id"])[np.asarray(train["purchase"]) == 1].tolist())
    assert positives <= ids_half <= set(want)
    assert 0.3 < len(ids_half - positives) / len(set(want) - positives) < 0.7
    for bad in (
        {},  # no group_by, no filter
        {"group_by": "request"},  # no filter
        {"group_by": "request", "row_filter": "purchase"},  # no other rows to keep
        {"group_by": "request", "row_filter": ("purchase", 1.0, 0.0)},
    ):
        with pytest.raises(ValueError, match="positive_groups_only"):
            ParquetIterableDataset(schema, "train", converter, 64, positive_groups_only=True, **bad)
    with pytest.raises(DataError, match="hist_items.*group_by needs scalar keys"):
        ParquetIterableDataset(schema, "train", converter, 64, shuffle=True, group_by="hist_items")


def test_eval_split_is_unshuffled_and_complete_with_workers(data, converter) -> None:
    schema, tables = data
    ds = ParquetIterableDataset(schema, "test", converter, batch_size=50, shard_rows=100)
    ids = [int(i) for b in DataLoader(ds, batch_size=None, num_workers=2) for i in b.user_ids]
    assert sorted(ids) == tables["test"]["user_id"].to_pylist()


def test_drop_last_gives_every_rank_the_same_full_batches(data, converter) -> None:
    schema, _ = data
    counts = []
    for rank in (0, 1):
        ds = ParquetIterableDataset(
            schema,
            "train",
            converter,
            64,
            shuffle=True,
            rank=rank,
            world_size=2,
            drop_last=True,
            shard_rows=256,
        )
        loader = RecDataLoader(ds, num_workers=2)
        sizes = [len(b) for b in loader]
        assert set(sizes) == {64} and len(sizes) == len(loader)
        counts.append(len(sizes))
    assert counts[0] == counts[1] == 2 * ((SPLIT_ROWS["train"] // 4) // 64)


def test_rank_defaults_to_torch_distributed(data, converter, monkeypatch) -> None:
    schema, _ = data
    import torch.distributed as dist

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_rank", lambda: 1)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    ds = ParquetIterableDataset(schema, "valid", converter, 100)
    assert (ds.rank, ds.world_size) == (1, 2)
    assert sum(len(b) for b in ds) == SPLIT_ROWS["valid"] // 2
    explicit = ParquetIterableDataset(schema, "valid", converter, 100, rank=0, world_size=1)
    assert (explicit.rank, explicit.world_size) == (0, 1)


def test_pack_round_trip(data, converter) -> None:
    schema, _ = data
    b = next(iter(ParquetIterableDataset(schema, "valid", converter, 64)))
    u = unpack(pack(b))
    assert u.sparse.keys() == b.sparse.keys() and len(u) == 64
    assert torch.equal(u.sparse.values(), b.sparse.values()) and torch.equal(
        u.sparse.lengths(), b.sparse.lengths()
    )
    assert u.sparse.lengths().dtype == torch.int32
    for group in ("dense", "labels", "oracle"):
        got, want = getattr(u, group), getattr(b, group)
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    assert torch.equal(u.user_ids, b.user_ids) and torch.equal(u.item_ids, b.item_ids)
    assert torch.equal(u.time, b.time)
    corpus = next(iter(ItemCorpusDataset(schema, converter, batch_size=8)))
    assert unpack(pack(corpus)).time is None


def test_csv_split_reads_like_parquet(tmp_path: Path) -> None:
    make_dataset(tmp_path, test_csv=True)
    schema = Schema.load(tmp_path)
    conv = BatchConverter(schema, compute_dense_stats(schema))
    csv_batches = list(ParquetIterableDataset(schema, "test", conv, batch_size=100))
    ref = make_dataset(tmp_path / "ref")["test"]
    want = conv.convert(ref)
    assert torch.equal(torch.cat([b.user_ids for b in csv_batches]), want.user_ids)
    got = [r for b in csv_batches for r in _kjt_lists(b.sparse, "kw")]
    assert got == _kjt_lists(want.sparse, "kw")
    # requests with a purchase, shuffled request by request, from CSV (one shard)
    grouped = ParquetIterableDataset(
        schema,
        "test",
        conv,
        batch_size=64,
        shuffle=True,
        row_filter=("purchase", 1.0, 1.0),
        group_by="request",
        positive_groups_only=True,
    )
    ids = sorted(int(i) for b in grouped for i in b.user_ids)
    reqs, users = ref["request"].to_pylist(), ref["user_id"].to_pylist()
    bought = {r for r, p in zip(reqs, ref["purchase"].to_pylist(), strict=True) if p}
    want_ids = [u for u, r in zip(users, reqs, strict=True) if r in bought]
    assert ids == sorted(want_ids) and len(ids) == grouped.num_rows


# ---- corpus and users -------------------------------------------------------------------


def _item_ebc(schema: Schema) -> EmbeddingBagCollection:
    torch.manual_seed(0)
    tables = schema.tables_for(schema.sparse(Side.ITEM))
    return EmbeddingBagCollection(
        tables=[
            EmbeddingBagConfig(
                name=t.name,
                embedding_dim=t.dim,
                num_embeddings=t.num_rows,
                feature_names=list(t.features),
                pooling=PoolingType.MEAN if t.pooling == "mean" else PoolingType.SUM,
            )
            for t in tables
        ]
    )


@pytest.mark.parametrize("num_workers", [0, 2])
def test_item_corpus_in_id_order_with_zero_length_other_sides(data, converter, num_workers) -> None:
    schema, tables = data
    loader = RecDataLoader(
        ItemCorpusDataset(schema, converter, batch_size=16), num_workers=num_workers
    )
    batches = list(loader)
    assert [len(b) for b in batches] == [16, 16, 16, 2] and len(loader) == 4
    assert torch.cat([b.item_ids for b in batches]).tolist() == list(range(N_ITEMS))
    b = batches[0]
    assert b.sparse.keys() == SPARSE_KEYS
    for f in schema.sparse():
        lengths = b.sparse[f.name].lengths()
        if f.side == Side.ITEM:
            assert lengths.sum() > 0
        else:
            assert lengths.tolist() == [0] * 16, f.name
    assert b.dense["user"].shape == (16, 1) and not b.dense["user"].any()
    assert b.dense["context"].shape == (16, 1) and not b.dense["context"].any()
    assert b.labels == {} and b.user_ids.tolist() == [-1] * 16 and b.time is None


def test_item_embedding_same_from_corpus_and_impressions(data, converter) -> None:
    schema, _ = data
    ebc = _item_ebc(schema)  # item features only; the KJT carries every key
    corpus = list(ItemCorpusDataset(schema, converter, batch_size=N_ITEMS))[0]
    impressions = next(iter(ParquetIterableDataset(schema, "valid", converter, batch_size=200)))
    with torch.no_grad():
        from_corpus = ebc(corpus.sparse).values()
        from_log = ebc(impressions.sparse).values()
    assert from_log.shape == (200, 8 + 4 + 4 + 4)
    np.testing.assert_array_equal(from_log.numpy(), from_corpus[impressions.item_ids].numpy())


def test_users_snapshot(data, converter) -> None:
    schema, tables = data
    batches = list(UserSnapshotDataset(schema, converter, batch_size=1000))
    assert torch.cat([b.user_ids for b in batches]).tolist() == list(range(N_USERS))
    b = batches[0]
    assert b.item_ids.tolist() == [-1] * 1000
    assert b.sparse["item_id"].lengths().sum() == 0 and b.sparse["hour"].lengths().sum() == 0
    hist = [h[-3:] for h in tables["users"]["hist_items"].to_pylist()[:1000]]
    assert _kjt_lists(b.sparse, "hist_items") == hist


# ---- Lightning ------------------------------------------------------------------------


class _Recorder(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.seen: dict[int, list[int]] = {}

    def training_step(self, batch, batch_idx):
        self.seen.setdefault(self.current_epoch, []).extend(batch.user_ids.tolist())
        return (self.w * batch.dense["context"].mean()).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


@pytest.mark.parametrize(("num_workers", "persistent"), [(0, False), (2, True)])
def test_datamodule_shuffles_per_epoch_under_lightning(data, num_workers, persistent) -> None:
    schema, tables = data
    dm = RecDataModule(
        schema.root,
        batch_size=256,
        num_workers=num_workers,
        seed=3,
        persistent_workers=persistent,
        shard_rows=256,
    )
    model = _Recorder()
    trainer = pl.Trainer(
        max_epochs=2,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    trainer.fit(model, datamodule=dm)
    assert (
        dm.validation_report is not None
        and dm.validation_report["rows"]["train"] == SPLIT_ROWS["train"]
    )
    expected = sorted(tables["train"]["user_id"].to_pylist())
    assert sorted(model.seen[0]) == expected and sorted(model.seen[1]) == expected
    assert model.seen[0] != model.seen[1]
    for epoch in (0, 1):  # the same order the dataset gives for that epoch
        dm.set_epoch(epoch)
        direct = [
            i
            for b in RecDataLoader(
                dm.train_dataloader().dataset, num_workers=num_workers, epoch_fn=lambda e=epoch: e
            )
            for i in b.user_ids.tolist()
        ]
        assert direct == model.seen[epoch]
    assert dm.state_dict()["dense_stats"] == compute_dense_stats(schema).to_dict()
    corpus = [i for b in dm.corpus_dataloader() for i in b.item_ids.tolist()]
    assert corpus == list(range(N_ITEMS))
