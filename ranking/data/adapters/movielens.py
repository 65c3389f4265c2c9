"""MovieLens (1M in GroupLens's ``::`` format, 100K in RecBole's atomic TSV) ->
a dataset directory, split by the published leave-last-out protocol.

Protocol (torch-rechub's MovieLens-1M retrieval table; ``../shared/data/README.md``):
every rating is an implicit positive (``click = 1``; the star rating is kept
as the ignored column ``rating``); each user's interactions are ordered by
timestamp, ties broken by line order in the ratings file (this decides the
held-out movie for 42 % of MovieLens-1M's users); the last one is the user's
test row, the one before it the valid row, the rest train. (torch-rechub
trains on all but the last: our train holds one interaction per user fewer,
0.6 % of the rows, so that valid is never test.) The item corpus is the movies
with at least one rating (3,706 of MovieLens-1M's 3,883), the corpus of the
published full-corpus Hit@100.

Columns of every row (one rating):

- user side: ``user_id``, ``gender`` (0 M, 1 F), ``age`` (the seven
  MovieLens-1M brackets: under 18, 18-24, 25-34, 35-44, 45-49, 50-55, 56+;
  MovieLens-100K's ages in years are put in the same brackets), ``occupation``
  (MovieLens-1M's codes 0-20; MovieLens-100K's names in sorted order), ``zip``
  (the zip code as text, hashed), ``hist_items``: the user's previous
  ``hist_len`` movies (strictly earlier in the order above, most recent last);
- item side: ``item_id`` (the dataset's movie id), ``genres`` (multi-hot,
  genre names in sorted order), ``year`` (release year in sorted order, 0 =
  unknown);
- ``ts`` (unix seconds), ``click`` (1), ``rating`` (1-5, ignored).

``users.parquet`` holds each user's state after the whole log (their last
``hist_len`` movies, the test one included): the snapshot a serving bundle
recommends from. The train rows are written in a seeded random order (the
loader's shuffle works within windows of consecutive rows); valid and test
in user order. Every label is 1, so this dataset trains the retrieval stage
only (``experiment=movielens_1m``): a ranker needs shown-and-not-clicked
impressions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from ranking.data.adapters.movielens_raw import (
    AGE_BRACKETS,
    FILES,
    GENDERS,
    ML1M_OCCUPATIONS,
    READERS,
    Raw,
)
from ranking.data.adapters.raw_csv import DATASET_FILES, ROW_GROUP_ROWS
from ranking.data.errors import DataError
from ranking.schema import Schema

INT_LIST = pa.list_(pa.int64())


def leave_last_out(user: np.ndarray, ts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The log order and each row's split.

    Args:
        user, ts: int64 [R] in file line order.
    Returns:
        order: int64 [R], row indices sorted by (user, ts, line).
        position: int64 [R], each sorted row's index within its user's sequence.
        split: int8 [R] per sorted row: 0 train, 1 valid (second last), 2 test (last).
    """
    order = np.lexsort((np.arange(len(user)), ts, user))
    u = user[order]
    starts = np.flatnonzero(np.r_[True, u[1:] != u[:-1]])
    counts = np.diff(np.r_[starts, len(u)])
    position = np.arange(len(u)) - np.repeat(starts, counts)
    n = np.repeat(counts, counts)  # the row's user's rating count
    from_end = n - position  # 1 = last
    split = np.zeros(len(u), np.int8)
    split[(from_end == 2) & (n >= 3)] = 1
    split[(from_end == 1) & (n >= 2)] = 2
    return order, position, split


def histories(items: np.ndarray, ends: np.ndarray, lengths: np.ndarray) -> pa.Array:
    """The windows ``items[end - length : end]``, one list per (end, length).

    Args:
        items: int64 [R] item ids in (user, ts, line) order.
        ends: int64 [Q] exclusive end of each window (row i's previous items: i;
            the state after row i: i + 1).
        lengths: int64 [Q] window lengths (at most the rows of the same user
            before ``end``, at most ``hist_len``).
    Returns:
        list<int64> [Q], most recent last.
    """
    offsets = np.r_[0, np.cumsum(lengths)]
    flat = np.repeat(ends - lengths - offsets[:-1], lengths) + np.arange(offsets[-1])
    return pa.ListArray.from_arrays(
        pa.array(offsets, pa.int32()), pa.array(items[flat], pa.int64())
    )


def _write(table: pa.Table, path: Path) -> None:
    pq.write_table(table, path, compression="snappy", row_group_size=ROW_GROUP_ROWS)


def write_movielens(
    source: str, raw_dir: str | Path, out: str | Path, hist_len: int = 50, seed: int = 0
) -> Schema:
    """Write the dataset directory ``out`` from the raw files at ``raw_dir``.

    Args:
        source: ``movielens-1m`` or ``movielens-100k``.
        hist_len: longest ``hist_items`` (torch-rechub's examples: 50).
        seed: the train rows' write order.
    """
    if source not in READERS:
        raise ValueError(f"unknown MovieLens source {source!r} (available: {sorted(READERS)})")
    raw_dir, out = Path(raw_dir), Path(out)
    ratings_file, users_file, items_file = (raw_dir / f for f in FILES[source])
    for f in (ratings_file, users_file, items_file):
        if not f.is_file():
            raise DataError(f"missing ({source} needs {', '.join(FILES[source])})", f)
    raw = READERS[source](raw_dir)

    user_row = _index(raw.users["user_ids"], raw.user, ratings_file, "user_id", users_file)
    item_row = _index(raw.item_ids, raw.item, ratings_file, "item_id", items_file)
    order, position, split = leave_last_out(raw.user, raw.ts)
    items_sorted = raw.item[order]
    u_rows, i_rows = pa.array(user_row[order]), pa.array(item_row[order])

    # one row per listed user / movie, taken by each rating's row
    profiles = pa.table(
        {
            "user_id": pa.array(raw.users["user_ids"]),
            "gender": pa.array(raw.users["gender"]),
            "age": pa.array(raw.users["age"]),
            "occupation": pa.array(raw.users["occupation"]),
            "zip": pa.array(raw.users["zip"].tolist(), pa.string()),
        }
    )
    movies = pa.table(
        {
            "item_id": pa.array(raw.item_ids),
            "genres": pa.array(raw.genres, INT_LIST),
            "year": pa.array(raw.year),
        }
    )
    rows = pa.Table.from_arrays(
        [
            *profiles.take(u_rows).columns,
            histories(items_sorted, np.arange(len(order)), np.minimum(position, hist_len)),
            *movies.take(i_rows).columns,
            pa.array(raw.ts[order]),
            pa.array(np.ones(len(order), np.int8)),
            pa.array(raw.rating[order].astype(np.int8)),
        ],
        names=[*profiles.column_names, "hist_items", *movies.column_names, "ts", "click", "rating"],
    )
    out.mkdir(parents=True, exist_ok=True)
    for code, name in enumerate(("train", "valid", "test")):
        idx = np.flatnonzero(split == code)
        if name == "train":
            idx = np.random.default_rng(seed).permutation(idx)
        _write(rows.take(pa.array(idx)), out / f"{name}.parquet")
    _write(movies.take(pa.array(np.unique(item_row))), out / "items.parquet")  # rated movies
    sorted_users = raw.user[order]
    last = np.flatnonzero(np.r_[sorted_users[1:] != sorted_users[:-1], True])
    after = histories(items_sorted, last + 1, np.minimum(position[last] + 1, hist_len))
    _write(
        profiles.take(u_rows.take(pa.array(last))).append_column("hist_items", after),
        out / "users.parquet",
    )  # each user's state after the log
    doc = schema_dict(raw, hist_len)
    doc["movielens"]["source"] = str(raw_dir)
    doc["movielens"]["rows"] = {
        name: int((split == code).sum()) for code, name in enumerate(("train", "valid", "test"))
    }
    (out / "schema.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return Schema.load(out)


def _index(ids: np.ndarray, values: np.ndarray, file: Path, column: str, table: Path) -> np.ndarray:
    """Row of each value in ``ids``; a value missing from ``ids``, or an id listed
    twice in ``table``, is an error."""
    sorter = np.argsort(ids, kind="stable")
    twice = np.flatnonzero(ids[sorter][1:] == ids[sorter][:-1])
    if len(twice):
        dup = sorter[twice + 1]  # rows of the second listings
        i = int(dup.min())
        raise DataError("id listed twice", table, column, i, int(ids[i]))
    pos = np.searchsorted(ids, values, sorter=sorter).clip(max=len(ids) - 1)
    rows = sorter[pos]
    bad = np.flatnonzero(ids[rows] != values)
    if len(bad):
        i = int(bad[0])
        raise DataError(f"not listed in {table.name}", file, column, i, int(values[i]))
    return rows


def schema_dict(raw: Raw, hist_len: int) -> dict[str, Any]:
    """The ``schema.yaml`` contents (see :mod:`ranking.schema`)."""
    user, item = {"side": "user"}, {"side": "item"}

    def cat(side: dict[str, str], vocab: int, dim: int) -> dict[str, Any]:
        return {**side, "kind": "categorical", "vocab_size": int(vocab), "dim": dim}

    return {
        "name": raw.name,
        "ids": {"user": "user_id", "item": "item_id"},
        "time": "ts",
        "labels": ["click"],
        "ignore": ["rating"],
        "files": dict(DATASET_FILES),
        "features": {
            "user_id": cat(user, raw.users["user_ids"].max() + 1, 32),
            "gender": cat(user, len(GENDERS), 4),
            "age": cat(user, len(AGE_BRACKETS) + 1, 4),
            "occupation": cat(user, len(raw.occupation_names or range(ML1M_OCCUPATIONS)), 8),
            "zip": {**user, "kind": "categorical", "hash_buckets": 4096, "dim": 8},
            "hist_items": {**user, "kind": "sequence", "table": "item_id", "max_len": hist_len},
            "item_id": cat(item, raw.item_ids.max() + 1, 32),
            "genres": {
                **item,
                "kind": "multi_hot",
                "vocab_size": len(raw.genre_names),
                "dim": 8,
                "max_len": len(raw.genre_names),
            },
            "year": cat(item, len(raw.year_values) + 1, 8),
        },
        # Not read by ranking.schema; documents the adapter's codes.
        "movielens": {
            "adapter": "ranking.data.adapters.movielens",
            "protocol": "leave-last-out: per user by (timestamp, line in the ratings file), "
            "the last rating is test, the second last valid, the rest train; every rating "
            "is a positive (click = 1); corpus = the movies with a rating",
            "genres": dict(enumerate(raw.genre_names)),
            "years": {i + 1: y for i, y in enumerate(raw.year_values)},
            "age": "0 under 18, 1 18-24, 2 25-34, 3 35-44, 4 45-49, 5 50-55, 6 56+",
            "gender": "0 M, 1 F",
            "occupation": dict(enumerate(raw.occupation_names))
            if raw.occupation_names
            else "MovieLens-1M codes (README)",
        },
    }
