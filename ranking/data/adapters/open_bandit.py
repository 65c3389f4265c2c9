"""Open Bandit Dataset (ZOZOTOWN fashion e-commerce; Saito et al., NeurIPS 2021
datasets track) -> a dataset directory: one campaign's impressions under the
uniform-random and the Bernoulli Thompson Sampling (bts) logging policies, in
one log with a ``policy`` column (1 = random), split by day.

Files read from ``raw`` (the release's layout, also that of the sample in
``../shared/data/open-bandit-zozotown``): ``<policy>/<campaign>/<campaign>.csv``
(one row per impression: ``timestamp``, ``item_id``, ``position`` 1-3,
``click``, ``propensity_score``, hashed ``user_feature_0..3``,
``user-item_affinity_<j>`` for each item j) and
``<policy>/<campaign>/item_context.csv`` (``item_id``, ``item_feature_0`` a
number, hashed ``item_feature_1..3``). The leading unnamed column of both is a
row index and is not read.

Columns written:

- user side: ``user_id`` (the combination of the four user features: the
  dataset has no user id, so a "user" is a feature profile), ``user_feature_0..3``
  (codes of the hashed values, sorted), ``affinity_<j>`` (dense);
- item side: ``item_id``, ``item_price`` (``item_feature_0``), ``item_feature_1..3``
  (codes);
- context: ``position`` (0-2 for slots 1-3);
- ``ts`` (microseconds since the epoch, UTC), ``click``, ``policy`` (1 random,
  0 bts; the default ``test_random`` retrieval slice reads it) and
  ``propensity`` (the logging policy's probability of the shown item; ignored
  by training, kept for off-policy estimators).

The two policies' ``item_context.csv`` hash the categorical item features with
different salts (the same item has different strings in each file, found by
reading the sample); both induce the same partition of the items, which the
adapter checks (and the prices): codes come from the first policy's file. The
days (UTC) are split in order: the last ``test_days`` are test, the
``valid_days`` before them valid, the rest train. ``users.parquet`` holds each
profile's user-side fields on its last row; ``items.parquet`` the campaign's
items.

A field that is not a number, an empty field, an item not in
``item_context.csv``, a position below 1, a click not 0/1, a propensity outside
(0, 1], a missing or unexpected column or file is a
:class:`~ranking.data.errors.DataError` naming the file, column and line (0-based,
the header not counted).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import yaml

from ranking.data.adapters.raw_csv import (
    DATASET_FILES,
    ROW_GROUP_ROWS,
    check_no_empty,
    checked_header,
    fail_first,
    name_bad_field,
)
from ranking.data.errors import ConfigError, DataError
from ranking.schema import Schema

POLICIES = {"random": 1, "bts": 0}
CAMPAIGNS = ("all", "men", "women")
USER_FEATURES = [f"user_feature_{i}" for i in range(4)]
ITEM_CODES = [f"item_feature_{i}" for i in (1, 2, 3)]
DAY_US = 86_400 * 10**6
WRITE_ROWS = 1 << 20  # rows gathered at a time when writing a split


def _read(path: Path, types: dict[str, pa.DataType], header: list[str]) -> pa.Table:
    """``path`` with ``header`` (the unnamed index column aside) typed by ``types``;
    a missing or unexpected column, an unparsable or empty field is an error."""
    got = checked_header(path, header, "Open Bandit", skip=("",))
    try:
        t = pacsv.read_csv(
            path,
            # a blank line is a line (the errors' line numbers are the file's)
            parse_options=pacsv.ParseOptions(ignore_empty_lines=False),
            convert_options=pacsv.ConvertOptions(
                column_types=types,
                include_columns=header,
                null_values=[""],
                strings_can_be_null=True,
            ),
        )
    except pa.ArrowInvalid as e:
        name_bad_field(path, got, types)
        raise DataError(f"could not be parsed: {e}", path) from None
    check_no_empty(path, t, header)
    return t


def _codes(values: np.ndarray) -> tuple[np.ndarray, list[str]]:
    names, codes = np.unique(values, return_inverse=True)
    return codes.astype(np.int64), names.tolist()


def _dict_codes(col: pa.ChunkedArray) -> tuple[np.ndarray, list[str]]:
    """int64 [R] codes (the index in the sorted distinct values) of a
    dictionary-encoded string column, and those values."""
    col = col.unify_dictionaries()  # one dictionary shared by every chunk
    if col.num_chunks == 0:
        return np.zeros(0, np.int64), []
    values = np.asarray(col.chunk(0).dictionary.to_pylist(), dtype=object)
    names, remap = np.unique(values, return_inverse=True)
    indices = np.concatenate([c.indices.to_numpy(zero_copy_only=False) for c in col.chunks])
    return remap.reshape(-1)[indices].astype(np.int64), names.tolist()


def read_items(path: Path) -> pa.Table:
    """``item_context.csv``: ids 0..N-1, each once, in order."""
    header = ["item_id", "item_feature_0", *ITEM_CODES]
    types = {"item_id": pa.int64(), "item_feature_0": pa.float64()}
    t = _read(path, {**types, **dict.fromkeys(ITEM_CODES, pa.string())}, header)
    ids = t.column("item_id").to_numpy()
    fail_first(
        "item ids must be 0, 1, ... in order", path, "item_id", ids != np.arange(len(ids)), ids
    )
    price = t.column("item_feature_0").to_numpy()
    fail_first("not a finite number", path, "item_feature_0", ~np.isfinite(price), price)
    return t


def _same_items(first: pa.Table, other: pa.Table, path: Path) -> None:
    """``other`` (another policy's item_context.csv) must give every item the same
    price and split the items into the same groups per hashed feature."""
    a, b = first.column("item_feature_0").to_numpy(), other.column("item_feature_0").to_numpy()
    if len(a) != len(b):
        raise DataError(f"lists {len(b)} items, the first policy's file {len(a)}", path)
    fail_first("price differs from the first policy's file", path, "item_feature_0", a != b, b)
    for c in ITEM_CODES:
        x = _codes(first.column(c).to_numpy(zero_copy_only=False))[0]
        y = _codes(other.column(c).to_numpy(zero_copy_only=False))[0]
        # same partition: each code of x meets one code of y and back
        pairs = np.unique(np.stack([x, y], 1), axis=0)
        if not (len(pairs) == len(np.unique(x)) == len(np.unique(y))):
            to_y: dict[int, int] = {}
            to_x: dict[int, int] = {}
            for i, (u, v) in enumerate(zip(x.tolist(), y.tolist(), strict=True)):
                if to_y.setdefault(u, v) != v or to_x.setdefault(v, u) != u:
                    raise DataError(
                        "groups the items differently from the first policy's file",
                        path,
                        c,
                        i,
                        other.column(c)[i].as_py(),
                    )
            raise DataError("groups the items differently from the first policy's file", path, c)


def read_log(path: Path, n_items: int) -> pa.Table:
    """One policy's impressions, every value checked."""
    affinity = [f"user-item_affinity_{j}" for j in range(n_items)]
    header = [
        "timestamp",
        "item_id",
        "position",
        "click",
        "propensity_score",
        *USER_FEATURES,
        *affinity,
    ]
    types: dict[str, pa.DataType] = {
        "timestamp": pa.timestamp("us", tz="UTC"),
        "item_id": pa.int64(),
        "position": pa.int64(),
        "click": pa.int64(),
        "propensity_score": pa.float64(),
        # dictionary-encoded while parsed: four hashes per row as small ints
        **dict.fromkeys(USER_FEATURES, pa.dictionary(pa.int32(), pa.string())),
        **dict.fromkeys(affinity, pa.float32()),
    }
    t = _read(path, types, header)
    item = t.column("item_id").to_numpy()
    fail_first("not in item_context.csv", path, "item_id", (item < 0) | (item >= n_items), item)
    pos = t.column("position").to_numpy()
    fail_first("position below 1", path, "position", pos < 1, pos)
    click = t.column("click").to_numpy()
    fail_first("label is not 0 or 1", path, "click", (click != 0) & (click != 1), click)
    p = t.column("propensity_score").to_numpy()
    fail_first("propensity outside (0, 1]", path, "propensity_score", ~((p > 0) & (p <= 1)), p)
    for c in affinity:
        v = t.column(c).to_numpy()
        fail_first("not a finite number", path, c, ~np.isfinite(v), v)
    return t


def write_open_bandit(
    raw_dir: str | Path,
    out: str | Path,
    campaign: str = "all",
    policies: tuple[str, ...] = ("random", "bts"),
    valid_days: int = 1,
    test_days: int = 1,
) -> Schema:
    """Write the dataset directory ``out`` from one campaign of the release at ``raw_dir``.

    Args:
        campaign: ``all``, ``men`` or ``women``.
        policies: the logging policies to read (``random``, ``bts``), in one log.
        valid_days, test_days: days (UTC) at the end of the log held out.
    """
    raw_dir, out = Path(raw_dir), Path(out)
    if campaign not in CAMPAIGNS:
        raise ConfigError(f"unknown campaign {campaign!r} (available: {', '.join(CAMPAIGNS)})")
    if (
        not policies
        or any(p not in POLICIES for p in policies)
        or len(set(policies)) < len(policies)
    ):
        raise ConfigError(
            f"policies must be distinct names among {list(POLICIES)}, got {list(policies)}"
        )
    if valid_days < 0 or test_days < 1:
        raise ConfigError(f"need valid_days >= 0 and test_days >= 1, got {valid_days}, {test_days}")
    folders = {p: raw_dir / p / campaign for p in policies}
    items = read_items(folders[policies[0]] / "item_context.csv")
    for p in policies[1:]:
        _same_items(
            items, read_items(folders[p] / "item_context.csv"), folders[p] / "item_context.csv"
        )
    n_items = items.num_rows
    logs = []
    for p in policies:
        t = read_log(folders[p] / f"{campaign}.csv", n_items)
        logs.append(
            t.append_column(
                "policy", pa.array(np.full(t.num_rows, POLICIES[p], np.int8))
            ).append_column("line", pa.array(np.arange(t.num_rows)))
        )
    log = pa.concat_tables(logs)  # the policies' tables, not copied
    ts = log.column("timestamp").cast(pa.int64()).to_numpy()
    policy = log.column("policy").to_numpy()
    # the log's order: by time, the random policy's row first on a tie, then by line
    order = np.lexsort((log.column("line").to_numpy(), -policy, ts))

    user_codes = {c: _dict_codes(log.column(c)) for c in USER_FEATURES}
    key = np.zeros(len(ts), np.int64)  # the four codes as one number, in tuple order
    for c in USER_FEATURES:
        key = key * len(user_codes[c][1]) + user_codes[c][0]
    profiles, user_id = np.unique(key, return_inverse=True)
    user_id = user_id.reshape(-1).astype(np.int64)
    item_codes = {c: _codes(items.column(c).to_numpy(zero_copy_only=False)) for c in ITEM_CODES}
    item_table = pa.table(
        {
            "item_id": items.column("item_id"),
            "item_price": items.column("item_feature_0").cast(pa.float32()),
            **{c: item_codes[c][0] for c in ITEM_CODES},
        }
    )
    item_rows = log.column("item_id").to_numpy()
    position = log.column("position").to_numpy() - 1
    click = log.column("click").to_numpy().astype(np.int8)
    propensity = log.column("propensity_score").to_numpy()

    def rows(idx: np.ndarray) -> pa.Table:
        """The written columns of the log's rows ``idx`` (a chunk at a time: the
        affinities are the bulk of the data)."""
        take = pa.array(idx, pa.int64())
        picked = item_table.take(pa.array(item_rows[idx], pa.int64()))
        return pa.table(
            {
                "user_id": user_id[idx],
                **{c: user_codes[c][0][idx] for c in USER_FEATURES},
                **{
                    f"affinity_{j}": log.column(f"user-item_affinity_{j}").take(take)
                    for j in range(n_items)
                },
                **dict(zip(item_table.column_names, picked.columns, strict=True)),
                "position": position[idx],
                "ts": ts[idx],
                "click": click[idx],
                "policy": policy[idx],
                "propensity": propensity[idx],
            }
        )

    day = ts // DAY_US
    days = np.unique(day)
    if len(days) < valid_days + test_days + 1:
        raise DataError(
            f"spans {len(days)} days; valid_days={valid_days} and test_days={test_days} "
            "leave no train day",
            folders[policies[0]] / f"{campaign}.csv",
            "timestamp",
        )
    split = np.zeros(len(ts), np.int8)
    split[day >= days[len(days) - test_days - valid_days]] = 1
    split[day >= days[len(days) - test_days]] = 2
    split = split[order]
    out.mkdir(parents=True, exist_ok=True)
    counts = {}
    for code, name in enumerate(("train", "valid", "test")):
        idx = order[split == code]
        with pq.ParquetWriter(out / f"{name}.parquet", rows(idx[:0]).schema) as writer:
            for start in range(0, len(idx), WRITE_ROWS):
                writer.write_table(
                    rows(idx[start : start + WRITE_ROWS]), row_group_size=ROW_GROUP_ROWS
                )
        counts[name] = {
            "rows": len(idx),
            "click": int(click[idx].sum()),
            "random_rows": int((policy[idx] == 1).sum()),
        }
    pq.write_table(item_table, out / "items.parquet")
    in_order = user_id[order]
    last = order[len(order) - 1 - np.unique(in_order[::-1], return_index=True)[1]]
    user_cols = ["user_id", *USER_FEATURES, *(f"affinity_{j}" for j in range(n_items))]
    pq.write_table(rows(last).select(user_cols), out / "users.parquet")
    doc = schema_dict(
        campaign,
        n_users=len(profiles),
        user_vocab={c: len(user_codes[c][1]) for c in USER_FEATURES},
        item_vocab={c: len(item_codes[c][1]) for c in ITEM_CODES},
        n_items=n_items,
        positions=int(position.max()) + 1,
    )
    doc["open_bandit"]["source"] = {p: str(f) for p, f in folders.items()}
    doc["open_bandit"]["rows"] = counts
    doc["open_bandit"]["days"] = {
        name: [str(np.datetime64(int(d), "D")) for d in days[sel]]
        for name, sel in (
            ("train", slice(0, len(days) - valid_days - test_days)),
            ("valid", slice(len(days) - valid_days - test_days, len(days) - test_days)),
            ("test", slice(len(days) - test_days, len(days))),
        )
    }
    (out / "schema.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return Schema.load(out)


def schema_dict(
    campaign: str,
    n_users: int,
    user_vocab: dict[str, int],
    item_vocab: dict[str, int],
    n_items: int,
    positions: int,
) -> dict[str, Any]:
    """The ``schema.yaml`` contents (see :mod:`ranking.schema`)."""

    def cat(side: str, vocab: int, dim: int = 8) -> dict[str, Any]:
        return {"side": side, "kind": "categorical", "vocab_size": int(vocab), "dim": dim}

    features: dict[str, Any] = {"user_id": cat("user", n_users, 16)}
    features.update({c: cat("user", v, 4) for c, v in user_vocab.items()})
    features.update({f"affinity_{j}": {"side": "user", "kind": "dense"} for j in range(n_items)})
    features["item_id"] = cat("item", n_items, 16)
    features["item_price"] = {"side": "item", "kind": "dense"}
    features.update({c: cat("item", v, 4) for c, v in item_vocab.items()})
    features["position"] = cat("context", positions, 4)
    return {
        "name": f"open_bandit_{campaign}",
        "ids": {"user": "user_id", "item": "item_id"},
        "time": "ts",
        "labels": ["click"],
        "ignore": ["policy", "propensity"],
        "files": dict(DATASET_FILES),
        "features": features,
        # Not read by ranking.schema; documents the adapter's codes.
        "open_bandit": {
            "adapter": "ranking.data.adapters.open_bandit",
            "campaign": campaign,
            "user_id": "the combination of user_feature_0..3 (the dataset has no user id)",
            "policy": "1 uniform random, 0 Bernoulli Thompson Sampling",
            "position": "slot - 1",
            "ts": "microseconds since 1970-01-01, UTC",
        },
    }
