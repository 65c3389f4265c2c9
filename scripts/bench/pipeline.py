"""Throughput of the data pipeline: Parquet train split -> Batches, rows/s.

Iterates one shuffled train epoch through ``RecDataLoader`` with 0 workers (the
main process does everything) and with 2 worker processes, ``--repeats`` times
each (a different epoch each time, worker start-up included), and prints the
median and the min/max of rows/s, per loader and per worker process.

Data: ``--data DIR`` (any dataset directory), else the synthetic generator
(``ranking.data.synthetic``, quickstart size) into ``--out`` (default: a temp
folder), else, if that package is missing, a plain random dataset of a similar
shape written by this script. The output says which.

    .venv/bin/python scripts/bench/pipeline.py
    .venv/bin/python scripts/bench/pipeline.py --data data/synthetic --batch-size 4096
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import yaml

from ranking.data.convert import BatchConverter
from ranking.data.dataset import DEFAULT_SHARD_ROWS, ParquetIterableDataset, RecDataLoader
from ranking.data.stats import compute_dense_stats
from ranking.schema import Schema


def random_dataset(out: Path, rows: int, seed: int = 0) -> None:
    """A random dataset shaped like the synthetic one: ids, hashed strings, sequences,
    multi-hot, dense columns, two labels with oracle columns; 64k-row part files."""
    rng = np.random.default_rng(seed)
    n_users, n_items = 5000, 3000
    features = {
        "user_id": {"side": "user", "kind": "categorical", "vocab_size": n_users, "dim": 16},
        "user_city": {"side": "user", "kind": "categorical", "hash_buckets": 1000, "dim": 8},
        "user_age": {"side": "user", "kind": "dense", "transform": "standardize"},
        "hist_items": {
            "side": "user",
            "kind": "sequence",
            "table": "item_id",
            "max_len": 20,
            "truncate": True,
        },
        "hist_cats": {"side": "user", "kind": "sequence", "table": "cat", "max_len": 20},
        "item_id": {"side": "item", "kind": "categorical", "vocab_size": n_items, "dim": 16},
        "cat": {"side": "item", "kind": "categorical", "vocab_size": 200, "dim": 8},
        "brand": {"side": "item", "kind": "categorical", "hash_buckets": 1000, "dim": 8},
        "tags": {"side": "item", "kind": "multi_hot", "vocab_size": 100, "max_len": 5, "dim": 8},
        "price": {"side": "item", "kind": "dense", "transform": "log1p_standardize"},
        "item_ctr": {"side": "item", "kind": "dense", "transform": "standardize"},
        "position": {"side": "context", "kind": "categorical", "vocab_size": 10, "dim": 4},
        "hour": {"side": "context", "kind": "categorical", "vocab_size": 24, "dim": 4},
    }
    schema = {
        "name": "bench_random",
        "ids": {"user": "user_id", "item": "item_id"},
        "time": "ts",
        "labels": ["click", "purchase"],
        "oracle": {"click": "p_click", "purchase": "p_purchase"},
        "files": {"train": "train", "valid": "valid", "test": "test", "items": "items.parquet"},
        "features": features,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "schema.yaml").write_text(yaml.safe_dump(schema, sort_keys=False))

    def lists(n: int, max_len: int, high: int) -> pa.Array:
        lengths = rng.integers(0, max_len + 1, n)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
        return pa.ListArray.from_arrays(
            pa.array(offsets), pa.array(rng.integers(0, high, offsets[-1]))
        )

    cities = np.array([f"city_{i}" for i in range(300)])
    items = pa.table(
        {
            "item_id": np.arange(n_items),
            "cat": rng.integers(0, 200, n_items),
            "brand": rng.integers(0, 10**9, n_items),
            "tags": lists(n_items, 5, 100),
            "price": np.exp(rng.normal(3, 1, n_items)),
            "item_ctr": rng.uniform(0, 0.1, n_items),
        }
    )
    pq.write_table(items, out / "items.parquet")
    part_rows = 65_536
    for split, n in (("train", rows), ("valid", rows // 5), ("test", rows // 5)):
        (out / split).mkdir(exist_ok=True)
        for i, a in enumerate(range(0, n, part_rows)):
            m = min(part_rows, n - a)
            it = items.take(pa.array(rng.integers(0, n_items, m)))
            t = pa.table(
                {
                    "user_id": rng.integers(0, n_users, m),
                    "user_city": rng.choice(cities, m),
                    "user_age": rng.normal(35, 10, m),
                    "hist_items": lists(m, 30, n_items),  # longer than max_len: truncated
                    "hist_cats": lists(m, 20, 200),
                    **{c: it.column(c) for c in items.column_names},
                    "position": rng.integers(0, 10, m),
                    "hour": rng.integers(0, 24, m),
                    "ts": np.arange(a, a + m),
                    "click": rng.integers(0, 2, m),
                    "purchase": rng.integers(0, 2, m),
                    "p_click": rng.uniform(0, 1, m),
                    "p_purchase": rng.uniform(0, 1, m),
                }
            )
            pq.write_table(t, out / split / f"part-{i:05d}.parquet", row_group_size=16_384)


def prepare_data(args: argparse.Namespace) -> tuple[Path, str]:
    if args.data:
        return Path(args.data), f"given directory {args.data}"
    out = Path(args.out or tempfile.mkdtemp(prefix="bench_pipeline_")) / "data"
    try:
        from ranking.data.synthetic import SyntheticConfig, generate
    except ImportError:
        random_dataset(out, args.rows)
        return out, f"random dataset written by this script ({args.rows} train rows), {out}"
    generate(out, SyntheticConfig())
    return out, f"ranking.data.synthetic generate(SyntheticConfig()) (quickstart size), {out}"


def one_epoch(ds: ParquetIterableDataset, workers: int, epoch: int) -> tuple[int, float, float]:
    """Rows, seconds for the epoch (worker start-up included), seconds to the first batch."""
    loader = RecDataLoader(ds, num_workers=workers, epoch_fn=lambda: epoch)
    rows = 0
    t0 = time.perf_counter()
    first = None
    for batch in loader:
        rows += len(batch)
        if first is None:
            first = time.perf_counter() - t0
    return rows, time.perf_counter() - t0, first or 0.0


def raw_read_epoch(schema: Schema, columns: list[str], batch_size: int) -> tuple[int, float]:
    """Reference: pyarrow reads the same columns of the train split and hands every
    column to numpy (list columns flattened), no conversion. Rows, seconds."""
    rows = 0
    t0 = time.perf_counter()
    for path in schema.split_paths("train"):
        for rb in pq.ParquetFile(path).iter_batches(batch_size=batch_size, columns=columns):
            for col in rb.columns:
                arr = col.flatten() if pa.types.is_list(col.type) else col
                arr.to_numpy(zero_copy_only=False)
            rows += rb.num_rows
    return rows, time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", help="dataset directory (default: generate one)")
    p.add_argument("--out", help="where to generate the dataset (default: a temp folder)")
    p.add_argument(
        "--rows", type=int, default=300_000, help="train rows of the fallback random dataset"
    )
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--shard-rows", type=int, default=DEFAULT_SHARD_ROWS)
    args = p.parse_args()

    command = shlex.join([sys.executable, *sys.argv])
    root, source = prepare_data(args)
    schema = Schema.load(root)
    t0 = time.perf_counter()
    stats = compute_dense_stats(schema)
    stats_s = time.perf_counter() - t0
    conv = BatchConverter(schema, stats)
    ds = ParquetIterableDataset(
        schema, "train", conv, args.batch_size, shuffle=True, seed=0, shard_rows=args.shard_rows
    )
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"command: {command}")
    print(f"data: {source}")
    print(
        f"train: {ds.num_rows} rows, {len(schema.split_paths('train'))} files, {len(ds.shards)} shards; "
        f"{len(conv.keys)} sparse keys, {len(schema.dense())} dense; batch {args.batch_size}"
    )
    print(
        f"cores: {cores}, torch threads: {torch.get_num_threads()}, pyarrow threads: {pa.cpu_count()}"
    )
    print(f"dense stats over train: {stats_s:.2f} s ({ds.num_rows / stats_s:,.0f} rows/s)")
    for workers in args.workers:
        rates, firsts, steady, ratios = [], [], [], []
        for r in range(args.repeats):
            raw_rows, raw_secs = raw_read_epoch(schema, conv.columns, args.batch_size)
            rows, secs, first = one_epoch(ds, workers, epoch=r)
            ratios.append((rows / secs) / (raw_rows / raw_secs))
            assert rows == ds.num_rows, (rows, ds.num_rows)
            rates.append(rows / secs)
            firsts.append(first)
            steady.append((rows - args.batch_size) / (secs - first))
        per = max(1, workers)
        med, lo, hi = statistics.median(rates), min(rates), max(rates)
        print(
            f"num_workers={workers}: {med:,.0f} rows/s (min {lo:,.0f}, max {hi:,.0f}, {args.repeats} epochs); "
            f"per worker process: {med / per:,.0f} rows/s; first batch after "
            f"{statistics.median(firsts):.2f} s; after it {statistics.median(steady):,.0f} rows/s; "
            f"vs raw pyarrow read of the same columns (same run): x{statistics.median(ratios):.2f} "
            f"(min {min(ratios):.2f}, max {max(ratios):.2f})"
        )


if __name__ == "__main__":
    main()
