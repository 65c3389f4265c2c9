"""Dataset schema: every column of a dataset directory with its role.

The schema file (``schema.yaml`` in the dataset directory) is the only place
feature names live. Models, pipelines and exports read sides, kinds and tables
from it; no Python module names a feature.

Layout of the YAML file::

    name: synthetic_interest_ecommerce
    ids: {user: user_id, item: item_id}      # id columns (also features, see below)
    time: ts                                   # int64 event time, orders the log
    labels: [click, purchase]                  # 0/1 columns; task names = column names
    oracle: {click: p_click, purchase: p_purchase}   # true probabilities, never features
    ignore: [policy, propensity]               # columns present but not used
    availability: {from: available_from, to: available_to}   # optional, item corpus
    files: {train: train, valid: valid, test: test, items: items.parquet}
    features:
      user_id:   {side: user, kind: categorical, vocab_size: 5000, dim: 16}
      item_id:   {side: item, kind: categorical, vocab_size: 3000, dim: 32}
      hist_items: {side: user, kind: sequence, table: item_id, max_len: 20}
      brand:     {side: item, kind: categorical, hash_buckets: 1000, dim: 8}
      price:     {side: item, kind: dense, transform: log1p_standardize}

A split entry names a Parquet file (``train.parquet``) or a folder of Parquet
parts (``train/part-*.parquet``); ``.csv`` files are read too. ``items`` is the
item corpus: one row per candidate item with the item id and every item-side
feature.

``availability`` (optional) names item-corpus columns bounding when an item can
be shown, in the units of the time column: item i is a candidate at time t when
``from_i <= t < to_i``; a null bound (or an omitted key) is unbounded. A live
stream that has ended, or an item not released yet, is then never retrieved:
evaluation ranks the items available during the evaluated period, the oracle
too, and the serving bundle filters by request time
(:mod:`ranking.data.availability`). Every logged row must fall inside its
item's window (:mod:`ranking.data.validate`).

Feature fields:
  side        user | item | context
  kind        categorical (one id) | multi_hot (list of ids, unordered)
              | sequence (list of ids, most recent last) | dense (one float)
  vocab_size  ids must lie in [0, vocab_size): a bad id is an error
  hash_buckets  raw int or string values are hashed into [0, hash_buckets)
              with the stable hash in :mod:`ranking.hashing`
  dim         embedding dimension of the feature's table
  table       embedding table shared with another feature (its owner declares
              vocab_size/hash_buckets and dim; e.g. a behaviour sequence of item
              ids uses ``table: item_id``). Defaults to the feature's own name.
  pooling     mean | sum (how a multi-valued feature is pooled; default mean).
              Features that share a table must agree (a one-id categorical
              pools the same either way, so it takes the table's pooling)
  max_len     longest list allowed (multi_hot, sequence)
  truncate    keep the last ``max_len`` values instead of failing (default false)
  transform   dense only: none | log1p | standardize | log1p_standardize
              (standardisation statistics are computed on train only)
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

SCHEMA_FILE = "schema.yaml"
SPLITS = ("train", "valid", "test")


class SchemaError(ValueError):
    """The schema file itself is inconsistent (not the data)."""


class Side(enum.StrEnum):
    USER = "user"
    ITEM = "item"
    CONTEXT = "context"


class Kind(enum.StrEnum):
    CATEGORICAL = "categorical"
    MULTI_HOT = "multi_hot"
    SEQUENCE = "sequence"
    DENSE = "dense"


SPARSE_KINDS = (Kind.CATEGORICAL, Kind.MULTI_HOT, Kind.SEQUENCE)
LIST_KINDS = (Kind.MULTI_HOT, Kind.SEQUENCE)
TRANSFORMS = ("none", "log1p", "standardize", "log1p_standardize")


@dataclass(frozen=True)
class Feature:
    """One feature column as declared in the schema."""

    name: str
    side: Side
    kind: Kind
    table: str
    vocab_size: int | None = None
    hash_buckets: int | None = None
    dim: int | None = None
    pooling: str = "mean"
    max_len: int | None = None
    truncate: bool = False
    transform: str = "none"

    @property
    def is_sparse(self) -> bool:
        return self.kind in SPARSE_KINDS

    @property
    def is_list(self) -> bool:
        return self.kind in LIST_KINDS

    @property
    def hashed(self) -> bool:
        return self.hash_buckets is not None


@dataclass(frozen=True)
class Table:
    """An embedding table: rows, width and the features that look it up."""

    name: str
    num_rows: int
    dim: int
    features: tuple[str, ...]
    pooling: str = "mean"


@dataclass(frozen=True)
class Schema:
    """A parsed, internally consistent schema plus the directory it came from."""

    name: str
    root: Path
    user_id: str
    item_id: str
    time: str
    labels: tuple[str, ...]
    oracle: dict[str, str]
    ignore: tuple[str, ...]
    files: dict[str, str]
    features: tuple[Feature, ...]
    tables: dict[str, Table] = field(default_factory=dict)
    #: ``from`` / ``to`` -> item-corpus column of the availability window (either or
    #: both; empty: every item is always available)
    availability: dict[str, str] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    # ---- selection -------------------------------------------------------------
    def feature(self, name: str) -> Feature:
        for f in self.features:
            if f.name == name:
                return f
        raise KeyError(f"schema {self.name!r} has no feature {name!r}")

    def select(
        self, sides: tuple[Side, ...] | None = None, kinds: tuple[Kind, ...] | None = None
    ) -> list[Feature]:
        """Features on ``sides`` of ``kinds``, in schema order."""
        return [
            f
            for f in self.features
            if (sides is None or f.side in sides) and (kinds is None or f.kind in kinds)
        ]

    def sparse(self, *sides: Side) -> list[Feature]:
        return self.select(sides or None, SPARSE_KINDS)

    def dense(self, *sides: Side) -> list[Feature]:
        return self.select(sides or None, (Kind.DENSE,))

    def tables_for(self, features: list[Feature]) -> list[Table]:
        """Tables looked up by ``features`` (each table once, schema order), with
        their feature lists restricted to those features."""
        wanted = {f.name for f in features}
        out = []
        for t in self.tables.values():
            names = tuple(n for n in t.features if n in wanted)
            if names:
                out.append(Table(t.name, t.num_rows, t.dim, names, t.pooling))
        return out

    # ---- files -----------------------------------------------------------------
    def split_paths(self, split: str) -> list[Path]:
        """Parquet/CSV files of a split (or of ``items``), sorted by name."""
        if split not in self.files:
            raise SchemaError(f"{self.root / SCHEMA_FILE}: no file entry for {split!r}")
        p = self.root / self.files[split]
        if p.is_dir():
            parts = sorted(
                q for q in p.iterdir() if q.suffix in (".parquet", ".csv") and q.is_file()
            )
            return parts
        return [p]

    @property
    def data_columns(self) -> list[str]:
        """Columns every split file must hold (features, ids, time, labels, oracle)."""
        cols = [f.name for f in self.features]
        for c in (self.user_id, self.item_id, self.time, *self.labels, *self.oracle.values()):
            if c not in cols:
                cols.append(c)
        return cols

    @property
    def item_columns(self) -> list[str]:
        """Columns the item corpus must hold: item id and item-side features."""
        cols = [self.item_id] + [
            f.name for f in self.features if f.side == Side.ITEM and f.name != self.item_id
        ]
        return cols + [c for c in self.availability.values() if c not in cols]

    # ---- io --------------------------------------------------------------------
    @classmethod
    def load(cls, root: str | Path) -> Schema:
        """Read ``root/schema.yaml`` (or a schema file path) and check it."""
        path = Path(root)
        if path.is_dir():
            path = path / SCHEMA_FILE
        if not path.exists():
            raise SchemaError(f"{path}: schema file not found")
        with open(path) as fh:
            raw = yaml.safe_load(fh)
        return cls.from_dict(raw, path.parent, source=str(path))

    @classmethod
    def from_dict(cls, raw: dict[str, Any], root: str | Path, source: str = "schema") -> Schema:
        def need(key: str) -> Any:
            if key not in raw:
                raise SchemaError(f"{source}: missing top-level key {key!r}")
            return raw[key]

        ids = need("ids")
        feats_raw = need("features")
        if not isinstance(feats_raw, dict) or not feats_raw:
            raise SchemaError(f"{source}: 'features' must be a non-empty mapping")
        features = [_parse_feature(name, spec or {}, source) for name, spec in feats_raw.items()]
        tables = _build_tables(features, source)
        # Features that share a table inherit its size (so the pipeline can range-check).
        resolved = []
        for f in features:
            if f.is_sparse and f.vocab_size is None and f.hash_buckets is None:
                owner = next(
                    g
                    for g in features
                    if g.name in tables[f.table].features and (g.vocab_size or g.hash_buckets)
                )
                f = Feature(
                    **{
                        **f.__dict__,
                        "vocab_size": owner.vocab_size,
                        "hash_buckets": owner.hash_buckets,
                    }
                )
            resolved.append(f)
        files = dict(need("files"))
        for key in (*SPLITS, "items"):
            if key not in files:
                raise SchemaError(f"{source}: 'files' must name {key!r}")
        schema = cls(
            name=str(raw.get("name", Path(root).name)),
            root=Path(root),
            user_id=str(ids["user"]),
            item_id=str(ids["item"]),
            time=str(need("time")),
            labels=tuple(need("labels")),
            oracle=dict(raw.get("oracle") or {}),
            ignore=tuple(raw.get("ignore") or ()),
            files=files,
            features=tuple(resolved),
            tables=tables,
            availability=_parse_availability(raw.get("availability"), source),
            raw=raw,
        )
        _check_roles(schema, source)
        return schema

    def to_dict(self) -> dict[str, Any]:
        return self.raw


AVAILABILITY_KEYS = ("from", "to")


def _parse_availability(spec: Any, source: str) -> dict[str, str]:
    if spec is None:
        return {}
    where = f"{source}: availability"
    if not isinstance(spec, dict) or not spec:
        raise SchemaError(f"{where} must map 'from' and/or 'to' to item-corpus columns")
    unknown = set(spec) - set(AVAILABILITY_KEYS)
    if unknown:
        raise SchemaError(f"{where}: unknown keys {sorted(unknown)} (use 'from' and/or 'to')")
    out = {}
    for k in AVAILABILITY_KEYS:
        if k in spec:
            if not isinstance(spec[k], str) or not spec[k]:
                raise SchemaError(f"{where}: {k!r} must name a column, got {spec[k]!r}")
            out[k] = spec[k]
    if len(set(out.values())) < len(out):
        raise SchemaError(f"{where}: 'from' and 'to' must be different columns")
    return out


def _parse_feature(name: str, spec: dict[str, Any], source: str) -> Feature:
    where = f"{source}: feature {name!r}"
    known = {
        "side",
        "kind",
        "table",
        "vocab_size",
        "hash_buckets",
        "dim",
        "pooling",
        "max_len",
        "truncate",
        "transform",
    }
    unknown = set(spec) - known
    if unknown:
        raise SchemaError(f"{where}: unknown keys {sorted(unknown)}")
    try:
        side = Side(spec.get("side"))
        kind = Kind(spec.get("kind"))
    except ValueError as e:
        raise SchemaError(f"{where}: {e}") from None
    f = Feature(
        name=name,
        side=side,
        kind=kind,
        table=str(spec.get("table", name)),
        vocab_size=spec.get("vocab_size"),
        hash_buckets=spec.get("hash_buckets"),
        dim=spec.get("dim"),
        pooling=str(spec.get("pooling", "mean")),
        max_len=spec.get("max_len"),
        truncate=bool(spec.get("truncate", False)),
        transform=str(spec.get("transform", "none")),
    )
    if kind == Kind.DENSE:
        if f.transform not in TRANSFORMS:
            raise SchemaError(f"{where}: transform must be one of {TRANSFORMS}")
        if f.vocab_size or f.hash_buckets or f.dim:
            raise SchemaError(f"{where}: a dense feature has no vocab_size, hash_buckets or dim")
        return f
    if f.vocab_size is not None and f.hash_buckets is not None:
        raise SchemaError(f"{where}: give vocab_size or hash_buckets, not both")
    for key in ("vocab_size", "hash_buckets", "dim", "max_len"):
        v = getattr(f, key)
        if v is not None and (not isinstance(v, int) or v <= 0):
            raise SchemaError(f"{where}: {key} must be a positive integer, got {v!r}")
    if f.pooling not in ("sum", "mean"):
        raise SchemaError(f"{where}: pooling must be 'sum' or 'mean'")
    if f.is_list and f.max_len is None:
        raise SchemaError(f"{where}: a {kind} feature needs max_len")
    if not f.is_list and f.max_len is not None:
        raise SchemaError(f"{where}: max_len only applies to multi_hot and sequence features")
    return f


def _build_tables(features: list[Feature], source: str) -> dict[str, Table]:
    tables: dict[str, Table] = {}
    owners: dict[str, Feature] = {}
    for f in features:
        if not f.is_sparse:
            continue
        if f.vocab_size is not None or f.hash_buckets is not None:
            if f.table in owners:
                o = owners[f.table]
                if (o.vocab_size, o.hash_buckets) != (f.vocab_size, f.hash_buckets):
                    raise SchemaError(
                        f"{source}: features {o.name!r} and {f.name!r} share table "
                        f"{f.table!r} with different sizes"
                    )
            else:
                owners[f.table] = f
    for f in features:
        if not f.is_sparse:
            continue
        if f.table not in owners:
            raise SchemaError(
                f"{source}: feature {f.name!r} uses table {f.table!r} but no feature "
                "declares its vocab_size or hash_buckets"
            )
        o = owners[f.table]
        dim = f.dim or o.dim
        if dim is None:
            raise SchemaError(f"{source}: table {f.table!r} has no dim")
        if f.dim is not None and o.dim is not None and f.dim != o.dim:
            raise SchemaError(f"{source}: table {f.table!r} declared with dims {o.dim} and {f.dim}")
        t = tables.get(f.table)
        rows = o.vocab_size or o.hash_buckets
        names = (t.features if t else ()) + (f.name,)
        tables[f.table] = Table(f.table, int(rows), int(t.dim if t else dim), names)
    by_name = {f.name: f for f in features}
    for name, t in tables.items():
        # A one-id categorical pools identically under sum and mean, so only the
        # multi-valued features of a table decide its pooling.
        poolings = {by_name[n].pooling for n in t.features if by_name[n].is_list}
        if len(poolings) > 1:
            raise SchemaError(f"{source}: features of table {name!r} disagree on pooling")
        pooling = poolings.pop() if poolings else by_name[t.features[0]].pooling
        tables[name] = Table(t.name, t.num_rows, t.dim, t.features, pooling)
    return tables


def _check_roles(s: Schema, source: str) -> None:
    names = {f.name for f in s.features}
    for role, col in (("ids.user", s.user_id), ("ids.item", s.item_id)):
        if col not in names:
            raise SchemaError(f"{source}: {role} column {col!r} must also be declared as a feature")
        f = s.feature(col)
        if f.kind != Kind.CATEGORICAL or f.hashed:
            raise SchemaError(f"{source}: id column {col!r} must be a categorical with vocab_size")
    if s.feature(s.item_id).side != Side.ITEM or s.feature(s.user_id).side != Side.USER:
        raise SchemaError(f"{source}: the item id must be item-side and the user id user-side")
    if not s.labels:
        raise SchemaError(f"{source}: 'labels' must name at least one label column")
    roles = [*s.labels, *s.oracle.values(), *s.ignore, s.time, *s.availability.values()]
    for c in roles:
        if c in names:
            raise SchemaError(
                f"{source}: column {c!r} is a feature and also a "
                "label/oracle/ignored/time/availability column"
            )
    for task in s.oracle:
        if task not in s.labels:
            raise SchemaError(f"{source}: oracle entry {task!r} is not a label")
