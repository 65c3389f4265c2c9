"""Throughput of the synthetic data generator, end to end, on one core.

Times ``ranking.data.synthetic.generate`` (world, simulation and Parquet
writing of every file) in this one process with every thread pool pinned to 1,
and prints impressions per second: the median and spread over the repeats,
after one untimed warm-up run (``--warmup 0`` counts the cold first run too).

    .venv/bin/python scripts/bench/generator.py                      # quickstart size
    .venv/bin/python scripts/bench/generator.py --preset benchmark   # synthetic_benchmark size
    .venv/bin/python scripts/bench/generator.py n_users=20000 n_days=30   # config overrides
"""

from __future__ import annotations

import os

# Pin thread pools before numpy / pyarrow load their libraries.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import shlex  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
from machine import cpu_model  # noqa: E402  (scripts/bench/machine.py)

from ranking.data.synthetic import SyntheticConfig, benchmark_config, generate  # noqa: E402
from ranking.data.synthetic.generate import STATS_JSON  # noqa: E402


def _parse_overrides(items: list[str]) -> dict[str, int | float]:
    out: dict[str, int | float] = {}
    for item in items:
        key, _, value = item.partition("=")
        out[key] = float(value) if any(ch in value for ch in ".eE") else int(value)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--preset", choices=("quickstart", "benchmark"), default="quickstart")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--warmup",
        type=int,
        default=1,
        help="untimed runs first (the first run in a process pays one-off page faults "
        "and lazy library initialisation; its time is printed but not counted)",
    )
    ap.add_argument("--out", default=None, help="scratch folder (default: a temporary one)")
    ap.add_argument("overrides", nargs="*", help="SyntheticConfig fields as key=value")
    args = ap.parse_args()

    pa.set_cpu_count(1)
    pa.set_io_thread_count(1)
    overrides = _parse_overrides(args.overrides)
    cfg = (
        benchmark_config(**overrides)
        if args.preset == "benchmark"
        else SyntheticConfig(**overrides)
    )

    print("command:", shlex.join([sys.executable, *sys.argv]))
    print(
        "threads: OMP/OPENBLAS/MKL/NUMEXPR_NUM_THREADS=1, "
        f"pyarrow cpu_count={pa.cpu_count()} io_threads={pa.io_thread_count()}, one process"
    )
    print(
        f"python {platform.python_version()}, numpy {np.__version__}, pyarrow {pa.__version__}, "
        f"cpu: {cpu_model()} ({os.cpu_count()} visible)"
    )
    print(f"preset: {args.preset}, overrides: {overrides or 'none'}")

    rates, times = [], []
    with tempfile.TemporaryDirectory(dir=args.out) as scratch:
        for r in range(args.warmup):
            t0 = time.perf_counter()
            generate(Path(scratch) / f"warmup{r}", cfg)
            print(f"warm-up {r}: {time.perf_counter() - t0:.2f} s (not counted)")
        for r in range(args.repeats):
            out = Path(scratch) / f"run{r}"
            t0 = time.perf_counter()
            generate(out, cfg)
            dt = time.perf_counter() - t0
            stats = json.loads((out / STATS_JSON).read_text())
            rows = sum(s["rows"] for s in stats.values())
            size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
            rates.append(rows / dt)
            times.append(dt)
            split_rows = ", ".join(f"{k} {v['rows']:,}" for k, v in stats.items())
            print(
                f"repeat {r}: {rows:,} impressions ({split_rows}) in {dt:.2f} s "
                f"= {rows / dt:,.0f} impressions/s, {size / 2**20:.1f} MiB on disk"
            )
    med = statistics.median(rates)
    print(
        f"impressions/s: median {med:,.0f}, min {min(rates):,.0f}, max {max(rates):,.0f} "
        f"(spread {(max(rates) - min(rates)) / med:.1%} of median) over {len(rates)} repeats; "
        f"generation time median {statistics.median(times):.2f} s"
    )


if __name__ == "__main__":
    main()
