"""Throughput and peak memory of the Ali-CCP adapter (``ranking-data
source=ali-ccp``) on generated files in torch-rechub's layout, against reading
the same files with ``pandas.read_csv`` (how torch-rechub's Ali-CCP example
loads them), in the same run.

The files hold random label-encoded ids (400,000 users and items, 1,000 values
per other field, 4 % clicks, 5 % of clicks bought); the adapter's work does not
depend on the values, except that random item attributes make almost every line
disagree with its item's first line (the warning's bookkeeping at its most).
Each measurement runs in a fresh process (peak RSS is the process's own).

Usage::

    .venv/bin/python scripts/bench/ali_ccp_adapter.py [--lines 3000000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
from machine import cpu_model  # scripts/bench/machine.py (this script's folder)

from ranking.data.adapters.ali_ccp import RAW_COLUMNS as HEADER

ADAPTER = """
import json, resource, sys, time
from ranking.data.adapters.ali_ccp import write_ali_ccp
t = time.perf_counter()
write_ali_ccp(sys.argv[1], sys.argv[2])
print(json.dumps({"s": time.perf_counter() - t,
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""
PANDAS = """
import json, resource, sys, time
import pandas as pd
t = time.perf_counter()
frames = [pd.read_csv(f"{sys.argv[1]}/ali_ccp_{s}.csv") for s in ("train", "val", "test")]
print(json.dumps({"s": time.perf_counter() - t,
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def generate(folder: Path, lines: int, seed: int = 0) -> None:
    """train / val / test files of 4/6, 1/6 and 1/6 of ``lines``."""
    rng = np.random.default_rng(seed)
    for name, n in (("train", lines * 4 // 6), ("val", lines // 6), ("test", lines // 6)):
        click = (rng.random(n) < 0.04).astype(np.int64)
        cols = {"click": click, "purchase": click * (rng.random(n) < 0.05)}
        for c in HEADER[2:]:
            if c.startswith("D"):
                cols[c] = np.round(rng.random(n), 4)
            else:
                cols[c] = rng.integers(0, 400_000 if c in ("101", "205") else 1_000, n)
        table = pa.table({c: cols[c] for c in HEADER})
        pacsv.write_csv(
            table,
            folder / f"ali_ccp_{name}.csv",
            pacsv.WriteOptions(quoting_style="none"),
        )


def run(code: str, *args: str) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lines", type=int, default=3_000_000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw"
        raw.mkdir()
        generate(raw, args.lines)
        mb = sum(p.stat().st_size for p in raw.iterdir()) / 2**20
        results: dict[str, list[dict[str, float]]] = {"adapter": [], "pandas": []}
        for i in range(args.repeats):  # alternate, so both see the same machine load
            results["adapter"].append(run(ADAPTER, str(raw), str(Path(tmp) / f"out{i}")))
            results["pandas"].append(run(PANDAS, str(raw)))
    print(
        f"machine: {cpu_model()}, {os.cpu_count()} cores; {args.lines:,} lines, "
        f"{mb:.0f} MB of CSV; {args.repeats} repeats, each in a fresh process"
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
