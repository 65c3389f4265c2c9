"""Ali-CCP (Alibaba Click and Conversion Prediction, the ESMM paper's dataset; Ma
et al., SIGIR 2018) in torch-rechub's processed CSV layout -> a dataset directory
for the multi-task ranker (``click``, ``purchase``).

Files read from ``raw``: ``ali_ccp_train.csv``, ``ali_ccp_val.csv`` and
``ali_ccp_test.csv`` (or torch-rechub's ``ali_ccp_<split>_sample.csv``, the
200-row sample in ``../shared/data/samples/ali_ccp``). Each has the header
``click, purchase``, 23 label-encoded sparse fields named by the dataset's field
ids and 8 dense fields (``D<field>``). The published split is kept: train, val ->
valid, test. Every field is renamed (``FIELDS``; the original id is kept in the
schema's ``ali_ccp.fields``):

- user side: ``user_id`` (101), the profile fields 121-129 (``user_profile``,
  ``user_group``, ``gender``, ``age``, ``consumption_1``, ``consumption_2``,
  ``occupation``, ``geography``), the user's behaviour fields 109_14, 110_14,
  127_14, 150_14 (``user_category``, ``user_shop``, ``user_brand``,
  ``user_intention``: one id each in this layout) and their dense weights;
- item side: ``item_id`` (205), ``category`` (206), ``shop`` (207),
  ``intention`` (210), ``brand`` (216);
- context (per impression): ``scenario`` (301), the user x item crosses 508,
  509, 702, 853 and their dense values.

Vocabulary sizes are the largest id over the three files plus one (the
files are label-encoded over all of them). Ali-CCP has no timestamps: ``ts`` is
the line's index over train, val and test in that order, so the log keeps the
files' order. The item corpus (``items.parquet``) and the user snapshot
(``users.parquet``) hold each item's and user's fields as on their first line;
the dataset's encoding folds rare ids into one (item 0 of the sample has 71
different attribute sets), so when an id's lines disagree the adapter warns with
the count and the first such line, and every row keeps its own values.

A line that cannot be parsed (a field that is not a number, a missing field), a
negative id, a NaN or infinite dense value, a label outside 0/1 or a purchase
without a click is a :class:`~ranking.data.errors.DataError` naming the file,
column and line (0-based, the header not counted); so is a missing or an
unexpected column.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
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
from ranking.data.errors import DataError
from ranking.schema import Schema

log = logging.getLogger("ranking")

SPLITS = {"train": "train", "val": "valid", "test": "test"}  # file name -> our split
LABELS = ("click", "purchase")

#: raw field -> (our column, side); sparse, label-encoded ids
FIELDS: dict[str, tuple[str, str]] = {
    "101": ("user_id", "user"),
    "121": ("user_profile", "user"),
    "122": ("user_group", "user"),
    "124": ("gender", "user"),
    "125": ("age", "user"),
    "126": ("consumption_1", "user"),
    "127": ("consumption_2", "user"),
    "128": ("occupation", "user"),
    "129": ("geography", "user"),
    "109_14": ("user_category", "user"),
    "110_14": ("user_shop", "user"),
    "127_14": ("user_brand", "user"),
    "150_14": ("user_intention", "user"),
    "205": ("item_id", "item"),
    "206": ("category", "item"),
    "207": ("shop", "item"),
    "210": ("intention", "item"),
    "216": ("brand", "item"),
    "301": ("scenario", "context"),
    "508": ("user_category_x_category", "context"),
    "509": ("user_shop_x_shop", "context"),
    "702": ("user_brand_x_brand", "context"),
    "853": ("user_intention_x_intention", "context"),
}
#: raw field -> (our column, side); floats
DENSE: dict[str, tuple[str, str]] = {
    "D109_14": ("user_category_weight", "user"),
    "D110_14": ("user_shop_weight", "user"),
    "D127_14": ("user_brand_weight", "user"),
    "D150_14": ("user_intention_weight", "user"),
    "D508": ("user_category_x_category_value", "context"),
    "D509": ("user_shop_x_shop_value", "context"),
    "D702": ("user_brand_x_brand_value", "context"),
    "D853": ("user_intention_x_intention_value", "context"),
}
RAW_COLUMNS = [*LABELS, *FIELDS, *DENSE]
TYPES = {
    **{c: pa.int64() for c in (*LABELS, *FIELDS)},
    **{c: pa.float64() for c in DENSE},
}
DIMS = {"user_id": 16, "item_id": 16}  # every other table: 8
MAX_ID = 1 << 31


def split_files(raw: Path) -> dict[str, Path]:
    """Our split -> its CSV file in ``raw`` (the full file or torch-rechub's sample)."""
    out = {}
    for name, split in SPLITS.items():
        found = [
            p
            for p in (raw / f"ali_ccp_{name}.csv", raw / f"ali_ccp_{name}_sample.csv")
            if p.is_file()
        ]
        if not found:
            raise DataError(
                f"missing (ali-ccp needs ali_ccp_{name}.csv or ali_ccp_{name}_sample.csv)",
                raw / f"ali_ccp_{name}.csv",
            )
        if len(found) > 1:
            raise DataError(f"both {found[0].name} and {found[1].name} exist; keep one", raw)
        out[split] = found[0]
    return out


@dataclass
class FirstValues:
    """Each id's column values on its first line, and the lines that disagree.

    ``values[c]`` is indexed by id (grown as ids arrive); ``known[id]`` says
    whether the id was seen, ``differs[id]`` whether a later line disagreed.
    """

    columns: list[str]
    values: dict[str, np.ndarray] = field(default_factory=dict)
    known: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    differs: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    differing_lines: int = 0
    first_difference: tuple[Path, int, str, int] | None = None  # file, line, column, id

    def update(self, ids: np.ndarray, cols: dict[str, np.ndarray], file: Path, line0: int) -> None:
        if len(ids) == 0:
            return
        top = int(ids.max()) + 1
        if top > len(self.known):
            size = max(top, 2 * len(self.known))
            grow = np.zeros(size - len(self.known), bool)
            self.known = np.concatenate([self.known, grow])
            self.differs = np.concatenate([self.differs, grow])
            for c in self.columns:
                old = self.values.get(c, np.zeros(0, cols[c].dtype))
                self.values[c] = np.concatenate([old, np.zeros(size - len(old), old.dtype)])
        new = np.flatnonzero(~self.known[ids])
        first_ids, first = np.unique(ids[new], return_index=True)
        for c in self.columns:
            self.values[c][first_ids] = cols[c][new[first]]
        self.known[first_ids] = True
        differs = np.zeros(len(ids), bool)
        first_bad: dict[str, int] = {}  # column -> its first disagreeing line in the block
        for c in self.columns:
            bad = self.values[c][ids] != cols[c]
            if bad.any():
                first_bad[c] = int(np.flatnonzero(bad)[0])
            differs |= bad
        if self.first_difference is None and first_bad:
            c = min(first_bad, key=lambda k: (first_bad[k], self.columns.index(k)))
            i = first_bad[c]
            self.first_difference = (file, line0 + i, c, int(ids[i]))
        self.differing_lines += int(differs.sum())
        self.differs[ids[differs]] = True

    def table(self, id_column: str) -> pa.Table:
        ids = np.flatnonzero(self.known)
        return pa.table({id_column: ids, **{c: self.values[c][ids] for c in self.columns}})

    def warn(self, what: str, id_column: str, table: str) -> None:
        if self.first_difference is None:
            return
        file, line, column, ident = self.first_difference
        log.warning(
            f"ali-ccp: {self.differing_lines} lines of {int(self.differs.sum())} {what}s hold "
            f"fields that differ from the {what}'s first line (first: {file}, line {line}, "
            f"column {column!r}, {id_column} {ident}); {table} takes each {what}'s first "
            "line and every row keeps its own values"
        )


def _read_batches(path: Path, block_size: int):
    """(first line, table) per block of ``path``; the header must be ``RAW_COLUMNS``."""
    header = checked_header(path, RAW_COLUMNS, "Ali-CCP")
    line = 0
    try:  # opening parses the first block already
        reader = pacsv.open_csv(
            path,
            read_options=pacsv.ReadOptions(block_size=block_size),
            # a blank line is a line (the errors' line numbers are the file's)
            parse_options=pacsv.ParseOptions(ignore_empty_lines=False),
            convert_options=pacsv.ConvertOptions(column_types=TYPES, null_values=[""]),
        )
        for batch in reader:
            if batch.num_rows == 0:  # the reader can yield an empty last block
                continue
            yield line, pa.Table.from_batches([batch])
            line += batch.num_rows
    except pa.ArrowInvalid as e:
        name_bad_field(path, header, TYPES)
        raise DataError(f"could not be parsed: {e}", path) from None


def _columns(path: Path, line0: int, t: pa.Table) -> dict[str, np.ndarray]:
    """The block's columns as numpy arrays, each value checked."""
    check_no_empty(path, t, RAW_COLUMNS, line0)
    cols = {c: t.column(c).to_numpy() for c in RAW_COLUMNS}

    def fail(problem: str, column: str, bad: np.ndarray, values: np.ndarray | None = None):
        fail_first(problem, path, column, bad, values, line0)

    for c in LABELS:
        v = cols[c]
        if ((v != 0) & (v != 1)).any():
            fail("label is not 0 or 1", c, (v != 0) & (v != 1), v)
    if ((cols["purchase"] == 1) & (cols["click"] == 0)).any():
        fail(
            "a purchase without a click", "purchase", (cols["purchase"] == 1) & (cols["click"] == 0)
        )
    for c in FIELDS:
        if (cols[c] < 0).any():
            fail("negative id", c, cols[c] < 0, cols[c])
        # per-id tables are sized by the largest id: the layout's ids are label-encoded
        if (cols[c] >= MAX_ID).any():
            fail(f"id of {MAX_ID} or more (not label-encoded)", c, cols[c] >= MAX_ID, cols[c])
    for c in DENSE:
        with np.errstate(over="ignore"):
            written = cols[c].astype(np.float32)  # as written: finite in float32 too
        if not np.isfinite(written).all():
            fail("not a finite float32", c, ~np.isfinite(written), cols[c])
    return cols


def write_ali_ccp(raw_dir: str | Path, out: str | Path, block_size: int = 16 << 20) -> Schema:
    """Write the dataset directory ``out`` from the Ali-CCP CSV files at ``raw_dir``.

    Args:
        block_size: bytes of CSV parsed at a time (the files are streamed).
    """
    raw_dir, out = Path(raw_dir), Path(out)
    files = split_files(raw_dir)
    names = {**{k: v[0] for k, v in FIELDS.items()}, **{k: v[0] for k, v in DENSE.items()}}
    user_cols = [n for n, s in (*FIELDS.values(), *DENSE.values()) if s == "user"]
    item_cols = [n for n, s in FIELDS.values() if s == "item"]
    users = FirstValues([c for c in user_cols if c != "user_id"])
    items = FirstValues([c for c in item_cols if c != "item_id"])
    top = dict.fromkeys(FIELDS, 0)  # largest id per field
    counts: dict[str, dict[str, int]] = {}
    out.mkdir(parents=True, exist_ok=True)
    ts = 0
    for split, path in files.items():
        n = {"rows": 0, "click": 0, "purchase": 0}
        writer = None
        try:
            for line0, t in _read_batches(path, block_size):
                cols = _columns(path, line0, t)
                for c in FIELDS:
                    top[c] = max(top[c], int(cols[c].max()))
                renamed = {names[c]: cols[c] for c in (*FIELDS, *DENSE)}
                users.update(renamed["user_id"], renamed, path, line0)
                items.update(renamed["item_id"], renamed, path, line0)
                rows = pa.table(
                    {
                        **{names[c]: cols[c] for c in FIELDS},
                        **{names[c]: cols[c].astype(np.float32) for c in DENSE},
                        "ts": np.arange(ts, ts + t.num_rows, dtype=np.int64),
                        **{c: cols[c].astype(np.int8) for c in LABELS},
                    }
                )
                if writer is None:
                    writer = pq.ParquetWriter(
                        out / f"{split}.parquet", rows.schema, compression="snappy"
                    )
                writer.write_table(rows, row_group_size=ROW_GROUP_ROWS)
                ts += t.num_rows
                n["rows"] += t.num_rows
                n["click"] += int(cols["click"].sum())
                n["purchase"] += int(cols["purchase"].sum())
        finally:
            if writer is not None:
                writer.close()
        if writer is None:
            raise DataError("no rows", path)
        counts[split] = n
    items.warn("item", "item_id", "items.parquet")
    users.warn("user", "user_id", "users.parquet")
    dense = {c for c, _ in DENSE.values()}
    user_table = users.table("user_id")
    user_table = pa.table(
        {c: user_table[c].cast(pa.float32()) if c in dense else user_table[c] for c in user_cols}
    )
    pq.write_table(items.table("item_id"), out / "items.parquet", row_group_size=ROW_GROUP_ROWS)
    pq.write_table(user_table, out / "users.parquet", row_group_size=ROW_GROUP_ROWS)
    doc = schema_dict({names[c]: top[c] + 1 for c in FIELDS})
    doc["ali_ccp"]["source"] = {split: str(p) for split, p in files.items()}
    doc["ali_ccp"]["rows"] = counts
    (out / "schema.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return Schema.load(out)


def schema_dict(vocab: dict[str, int]) -> dict[str, Any]:
    """The ``schema.yaml`` contents; ``vocab``: our sparse column -> vocabulary size."""
    features: dict[str, Any] = {}
    for name, side in FIELDS.values():
        features[name] = {
            "side": side,
            "kind": "categorical",
            "vocab_size": int(vocab[name]),
            "dim": DIMS.get(name, 8),
        }
    for name, side in DENSE.values():
        features[name] = {"side": side, "kind": "dense", "transform": "standardize"}
    return {
        "name": "ali_ccp",
        "ids": {"user": "user_id", "item": "item_id"},
        "time": "ts",
        "labels": list(LABELS),
        "files": dict(DATASET_FILES),
        "features": features,
        # Not read by ranking.schema; documents the adapter's mapping.
        "ali_ccp": {
            "adapter": "ranking.data.adapters.ali_ccp",
            "layout": "torch-rechub's processed CSV files (train, val, test)",
            "fields": {name: raw for raw, (name, _) in {**FIELDS, **DENSE}.items()},
            "ts": "line index over train, val and test in that order (no timestamps)",
        },
    }
