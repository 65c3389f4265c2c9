"""Chunked, byte-stable Parquet writing and the dataset's ``schema.yaml``.

Column types of every split file (``ROW_TYPES``): ids, categoricals and
``position`` int64; sequences list<int64>; dense features float32; labels int8
(0/1); oracle probabilities float32; ``ts`` int64 (unix seconds);
``propensity`` float64; ``policy`` int8 (0 = logging policy, 1 = uniform random
policy); ``day`` int32 (day index of the log); ``request_id`` int64 (one page
of results shown to one user; its rows share the user-side features).

Byte stability: pyarrow writes no timestamps; the footer holds the Arrow schema
and ``created_by`` (the pyarrow version), so the same seed, config and pyarrow
version give identical files. Each part is written from one contiguous table.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from ranking.data.synthetic.config import SyntheticConfig
from ranking.data.synthetic.simulate import StepLog
from ranking.data.synthetic.world import CHANNELS, CONTENT_TYPES, POLICIES, World

INT_LIST = pa.list_(pa.int64())
USER_TYPES: dict[str, pa.DataType] = {
    "user_id": pa.int64(),
    "age_bucket": pa.int64(),
    "gender": pa.int64(),
    "city_tier": pa.int64(),
    "device": pa.int64(),
    "activity": pa.int64(),
    "hist_items": INT_LIST,
    "hist_cats": INT_LIST,
    "hist_buy_products": INT_LIST,
    "user_click_count": pa.float32(),
}
ITEM_TYPES: dict[str, pa.DataType] = {
    "item_id": pa.int64(),
    "content_type": pa.int64(),
    "category_l1": pa.int64(),
    "category_l2": pa.int64(),
    "product_id": pa.int64(),
    "brand": pa.int64(),
    "merchant_id": pa.int64(),
    "creator_id": pa.int64(),
    "channel": pa.int64(),
    "price": pa.float32(),
    "creator_followers": pa.float32(),
}
ROW_TYPES: dict[str, pa.DataType] = {
    "request_id": pa.int64(),
    "ts": pa.int64(),
    "day": pa.int32(),
    "policy": pa.int8(),
    "propensity": pa.float64(),
    **USER_TYPES,
    **ITEM_TYPES,
    "position": pa.int64(),
    "click": pa.int8(),
    "purchase": pa.int8(),
    "p_click": pa.float32(),
    "p_purchase": pa.float32(),
}
ROW_SCHEMA = pa.schema([pa.field(k, v) for k, v in ROW_TYPES.items()])
USER_SCHEMA = pa.schema([pa.field(k, v) for k, v in USER_TYPES.items()])
ITEM_SCHEMA = pa.schema([pa.field(k, v) for k, v in ITEM_TYPES.items()])
COMPRESSION = "snappy"


def _table(
    schema: pa.Schema,
    columns: dict[str, np.ndarray],
    lists: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
) -> pa.Table:
    lists = lists or {}
    arrays = []
    for f in schema:
        if f.name in lists:
            off, vals = lists[f.name]
            arrays.append(
                pa.ListArray.from_arrays(pa.array(off, pa.int32()), pa.array(vals, pa.int64()))
            )
        else:
            arrays.append(pa.array(columns[f.name], type=f.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def step_table(log: StepLog) -> pa.Table:
    return _table(ROW_SCHEMA, log.columns, log.lists)


# Columns with (near-)unique values skip dictionary encoding: trying it costs a
# third of the write time for no size gain.
PLAIN_COLUMNS = (
    "request_id",
    "ts",
    "propensity",
    "p_click",
    "p_purchase",
    "hist_items",
    "hist_buy_products",
)


def write_parquet(table: pa.Table, path: Path) -> None:
    pq.write_table(
        table.combine_chunks(),
        path,
        compression=COMPRESSION,
        use_dictionary=[c for c in table.column_names if c not in PLAIN_COLUMNS],
        row_group_size=max(table.num_rows, 1),
    )


class PartWriter:
    """Buffers step tables of one split and writes ``part-NNNNN.parquet`` files of
    exactly ``chunk_rows`` rows (the last one shorter). Memory: at most one part
    plus one step of rows."""

    def __init__(self, folder: Path, chunk_rows: int, schema: pa.Schema = ROW_SCHEMA) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.chunk_rows = chunk_rows
        self.schema = schema
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self.n_parts = 0
        self.n_rows = 0

    def add(self, table: pa.Table) -> None:
        self._pending.append(table)
        self._pending_rows += table.num_rows
        while self._pending_rows >= self.chunk_rows:
            self._flush(self.chunk_rows)

    def _flush(self, n: int) -> None:
        t = pa.concat_tables(self._pending)
        write_parquet(t.slice(0, n), self.folder / f"part-{self.n_parts:05d}.parquet")
        self.n_parts += 1
        self.n_rows += n
        rest = t.slice(n)
        self._pending = [rest] if rest.num_rows else []
        self._pending_rows = rest.num_rows

    def close(self) -> None:
        if self._pending_rows or self.n_parts == 0:
            if not self._pending:
                self._pending = [self.schema.empty_table()]
            self._flush(self._pending_rows)


#: Item-corpus columns of the availability window (schema ``availability``), unix seconds.
AVAILABLE_FROM, AVAILABLE_TO = "available_from", "available_to"
OPEN_DAY = np.iinfo(np.int32).max  # World.item_to_day of an item that never ends


def availability_columns(world: World) -> dict[str, pa.Array]:
    """int64 [I] each: the start of the item's first and of its first unavailable day
    (``available_to`` null when it never ends), so ``world.available(day)`` holds
    exactly when the day's seconds lie in ``[available_from, available_to)``."""
    day = lambda d: world.config.start_ts + d.astype(np.int64) * 86_400  # noqa: E731
    to_day = world.item_to_day
    return {
        AVAILABLE_FROM: pa.array(day(world.item_from_day), pa.int64()),
        AVAILABLE_TO: pa.array(day(to_day), pa.int64(), mask=to_day >= OPEN_DAY),
    }


def write_items(path: Path, world: World) -> None:
    table = _table(ITEM_SCHEMA, world.item_features())
    for name, column in availability_columns(world).items():
        table = table.append_column(name, column)
    write_parquet(table, path)


def write_users(
    path: Path, columns: dict[str, np.ndarray], lists: dict[str, tuple[np.ndarray, np.ndarray]]
) -> None:
    write_parquet(_table(USER_SCHEMA, columns, lists), path)


def schema_dict(cfg: SyntheticConfig) -> dict[str, Any]:
    """The ``schema.yaml`` contents (see :mod:`ranking.schema`) for a config."""
    user = {"side": "user"}
    item = {"side": "item"}

    def cat(side: dict[str, str], vocab: int, dim: int) -> dict[str, Any]:
        return {**side, "kind": "categorical", "vocab_size": int(vocab), "dim": dim}

    dense = {"kind": "dense", "transform": "log1p_standardize"}
    features = {
        "user_id": cat(user, cfg.n_users, 16),
        "age_bucket": cat(user, 7, 8),
        "gender": cat(user, 3, 8),
        "city_tier": cat(user, 5, 8),
        "device": cat(user, 3, 8),
        "activity": cat(user, 4, 8),
        "hist_items": {**user, "kind": "sequence", "table": "item_id", "max_len": cfg.hist_len},
        "hist_cats": {**user, "kind": "sequence", "table": "category_l2", "max_len": cfg.hist_len},
        "hist_buy_products": {
            **user,
            "kind": "sequence",
            "table": "product_id",
            "max_len": cfg.buy_hist_len,
        },
        "user_click_count": {**user, **dense},
        "item_id": cat(item, cfg.n_items, 32),
        "content_type": cat(item, len(CONTENT_TYPES), 8),
        "category_l1": cat(item, cfg.n_cat_l1, 8),
        "category_l2": cat(item, cfg.n_cat_l2, 16),
        "product_id": cat(item, cfg.n_products, 16),
        "brand": {**item, "kind": "categorical", "hash_buckets": 4096, "dim": 8},
        "merchant_id": cat(item, cfg.n_merchants, 16),
        "creator_id": cat(item, cfg.n_creators, 16),
        "channel": cat(item, len(CHANNELS), 8),
        "price": {**item, **dense},
        "creator_followers": {**item, **dense},
        "position": {
            "side": "context",
            "kind": "categorical",
            "vocab_size": cfg.max_slots,
            "dim": 4,
        },
    }
    return {
        "name": "synthetic_interest_ecommerce",
        "ids": {"user": "user_id", "item": "item_id"},
        "time": "ts",
        "labels": ["click", "purchase"],
        "oracle": {"click": "p_click", "purchase": "p_purchase"},
        "ignore": ["request_id", "day", "policy", "propensity"],
        "files": {
            "train": "train",
            "valid": "valid",
            "test": "test",
            "items": "items.parquet",
            "users": "users.parquet",
        },
        "availability": {"from": AVAILABLE_FROM, "to": AVAILABLE_TO},
        "features": features,
        # Not read by ranking.schema; documents the generated columns.
        "synthetic": {
            "generator": "ranking.data.synthetic",
            "world": ["world.npz", "world.json"],
            "policy": {i: name for i, name in enumerate(POLICIES)},
            "propensity": "probability that the policy of the row (policy column) put "
            "this item in this slot given the items in the request's earlier slots: "
            "pi(i|u,day) / (1 - sum of pi over earlier slots' items); random policy "
            "1 / (items available that day - position)",
            "visibility": "sequence features and user_click_count use the user's events "
            "with ts strictly before the start of the impression's request (ts - position)",
            "p_purchase": "P(click and purchase)",
            "column_types": {k: str(v) for k, v in ROW_TYPES.items()},
        },
    }


def write_schema(path: Path, cfg: SyntheticConfig) -> None:
    path.write_text(yaml.safe_dump(schema_dict(cfg), sort_keys=False))
