"""Throughput and peak memory of the CSV adapters (``ranking-data
source=ali-ccp | open-bandit``) on generated files in the dataset's layout,
against reading the same files with ``pandas.read_csv`` (how torch-rechub's
Ali-CCP example and the Open Bandit Pipeline load them), in the same run,
alternating, each measurement in a fresh process (peak RSS is the process's own).

- ``ali-ccp``: torch-rechub's processed layout; random label-encoded ids
  (400,000 users and items, 1,000 values per other field, 4 % clicks, 5 % of
  clicks bought). Random item attributes make almost every line disagree with
  its item's first line (the adapter's bookkeeping of that at its most).
- ``open-bandit``: the release's layout for the campaign ``all`` (80 items,
  the sample's ``item_context.csv`` files), both policies, ``--lines`` split
  evenly, seven days; 5 % of the affinities non-zero, 0.5 % clicks.

Usage::

    .venv/bin/python scripts/bench/adapters.py --dataset ali-ccp [--lines 3000000] [--repeats 3]
    .venv/bin/python scripts/bench/adapters.py --dataset open-bandit --lines 2000000
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
from machine import cpu_model  # scripts/bench/machine.py (this script's folder)

from ranking.data.adapters.ali_ccp import RAW_COLUMNS

SAMPLE = Path(__file__).resolve().parents[3] / "shared" / "data" / "open-bandit-zozotown"
MEASURE = """
import json, resource, sys, time
t = time.perf_counter()
{body}
print(json.dumps({{"s": time.perf_counter() - t,
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""
ADAPTER = {
    "ali-ccp": "from ranking.data.adapters.ali_ccp import write_ali_ccp\n"
    "write_ali_ccp(sys.argv[1], sys.argv[2])",
    "open-bandit": "from ranking.data.adapters.open_bandit import write_open_bandit\n"
    "write_open_bandit(sys.argv[1], sys.argv[2], 'all')",
}
PANDAS = {
    "ali-ccp": "import pandas as pd\n"
    "f = [pd.read_csv(f'{sys.argv[1]}/ali_ccp_{s}.csv') for s in ('train', 'val', 'test')]",
    "open-bandit": "import pandas as pd\n"
    "f = [pd.read_csv(f'{sys.argv[1]}/{p}/all/all.csv') for p in ('random', 'bts')]",
}


def write(table: dict, path: Path) -> None:
    pacsv.write_csv(pa.table(table), path, pacsv.WriteOptions(quoting_style="none"))


def generate_ali_ccp(folder: Path, lines: int, rng: np.random.Generator) -> None:
    """train / val / test files of 4/6, 1/6 and 1/6 of ``lines``."""
    for name, n in (("train", lines * 4 // 6), ("val", lines // 6), ("test", lines // 6)):
        click = (rng.random(n) < 0.04).astype(np.int64)
        cols = {"click": click, "purchase": click * (rng.random(n) < 0.05)}
        for c in RAW_COLUMNS[2:]:
            if c.startswith("D"):
                cols[c] = np.round(rng.random(n), 4)
            else:
                cols[c] = rng.integers(0, 400_000 if c in ("101", "205") else 1_000, n)
        write(cols, folder / f"ali_ccp_{name}.csv")


def generate_open_bandit(folder: Path, lines: int, rng: np.random.Generator) -> None:
    start = np.datetime64("2019-11-24T00:00:00", "us").astype(np.int64)
    for policy in ("random", "bts"):
        d = folder / policy / "all"
        d.mkdir(parents=True)
        shutil.copy(SAMPLE / policy / "all" / "item_context.csv", d / "item_context.csv")
        n = lines // 2
        cols = {
            "": np.arange(n),
            "timestamp": pa.array(
                np.sort(start + rng.integers(0, 7 * 86_400 * 10**6, n)),
                pa.timestamp("us", tz="UTC"),
            ),
            "item_id": rng.integers(0, 80, n),
            "position": rng.integers(1, 4, n),
            "click": (rng.random(n) < 0.005).astype(np.int64),
            "propensity_score": np.full(n, 0.0125),
        }
        for i in range(4):
            cols[f"user_feature_{i}"] = pa.array([f"h{i}_{v}" for v in rng.integers(0, 8, n)])
        for j in range(80):
            cols[f"user-item_affinity_{j}"] = np.where(
                rng.random(n) < 0.05, rng.random(n).round(4), 0.0
            )
        write(cols, d / "all.csv")


def run(code: str, *args: str) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", MEASURE.format(body=code), *args],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", choices=sorted(ADAPTER), default="ali-ccp")
    ap.add_argument("--lines", type=int, default=3_000_000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw"
        raw.mkdir()
        generate = {"ali-ccp": generate_ali_ccp, "open-bandit": generate_open_bandit}
        generate[args.dataset](raw, args.lines, np.random.default_rng(0))
        mb = sum(p.stat().st_size for p in raw.rglob("*.csv")) / 2**20
        results: dict[str, list[dict[str, float]]] = {"adapter": [], "pandas": []}
        for i in range(args.repeats):  # alternate, so both see the same machine load
            out = str(Path(tmp) / f"out{i}")
            results["adapter"].append(run(ADAPTER[args.dataset], str(raw), out))
            results["pandas"].append(run(PANDAS[args.dataset], str(raw)))
    print(
        f"machine: {cpu_model()}, {os.cpu_count()} cores; {args.dataset}, {args.lines:,} "
        f"lines, {mb:.0f} MB of CSV; {args.repeats} repeats, each in a fresh process"
    )
    med = {}
    for name, rs in results.items():
        s = sorted(r["s"] for r in rs)
        rss = sorted(r["rss_mb"] for r in rs)
        med[name] = float(np.median(s))
        print(
            f"{name:8s} median {med[name]:6.1f} s (min {s[0]:.1f}, max {s[-1]:.1f}); "
            f"{args.lines / med[name] / 1e3:,.0f}k lines/s; peak RSS median {np.median(rss):,.0f} MB"
        )
    print(f"adapter / pandas.read_csv time: {med['adapter'] / med['pandas']:.2f}")


if __name__ == "__main__":
    main()
