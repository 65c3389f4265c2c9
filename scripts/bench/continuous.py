"""Continuous training: a log replayed day by day, warm start against retraining.

Cuts the train split of a dataset (default: the quickstart world, 10 train days)
into a base window (the first ``--base-days`` days) and one window per later
day (``ranking-data source=window``), then trains, with the same config and
seed, through the console commands:

- ``full``: every train day from scratch (the quickstart run);
- ``chain``: the base window from scratch, then each later day warm-started
  from the day before (``warm_start.run``, ``warm_start.expire_after``; ``--warm``
  adds overrides for those days, ``--chain`` names their runs);
- ``last day only``: the last day from scratch (what a day's data alone gives).

All three are tested on the same valid/test splits (the days after train); the
chain's last model and the last day's are evaluated again by ``ranking-eval``
against the full train split, so the tail (least exposed items in train) is
the same set for all three. Prints one markdown row per run (wall
time of its training command, test metrics) and the chain's per-day log lines.

    .venv/bin/python scripts/bench/continuous.py --data data/synthetic --work /tmp/continuous
    .venv/bin/python scripts/bench/continuous.py --data data/synthetic --work /tmp/continuous \
        --chain chain_r1 --warm retrieval.epochs=1
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).parent))
from machine import cpu_model  # noqa: E402

DAY = 86_400
METRICS = (
    "test/auc/click",
    "test_random/auc/click",
    "test/auc/purchase",
    "test/recall@100",
    "test/tail_recall@100",
    "test_random/recall@100",
)
BIN = Path(sys.executable).parent


def command(name: str, *args: str, cwd: Path) -> float:
    """Run a console command; its wall time in seconds."""
    print("$", name, " ".join(shlex.quote(a) for a in args), flush=True)
    t0 = time.perf_counter()
    res = subprocess.run([str(BIN / name), *args], cwd=cwd, capture_output=True, text=True)
    if res.returncode:
        sys.exit(f"{name} failed:\n{res.stderr[-4000:]}")
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("data/synthetic"))
    ap.add_argument("--work", type=Path, required=True, help="folder for windows and runs")
    ap.add_argument("--base-days", type=int, default=7)
    ap.add_argument("--expire-days", type=float, default=3.0)
    ap.add_argument(
        "--warm",
        action="append",
        default=[],
        metavar="OVERRIDE",
        help="a ranking-train override for the warm-started days only (repeatable)",
    )
    ap.add_argument("--chain", default="chain", help="name of the chain's runs (runs/<chain>_dayD)")
    ap.add_argument("overrides", nargs="*", help="extra ranking-train overrides for every run")
    args = ap.parse_args()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    data = args.data.resolve()
    times = pq.read_table(data / "train", columns=["ts"]).column(0).to_numpy()
    day0 = int(times.min()) // DAY * DAY
    days = (int(times.max()) - day0) // DAY + 1
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores; {len(times):,} train rows, {days} days")

    windows = {"base": (None, day0 + args.base_days * DAY)}
    windows |= {
        f"day{d}": (day0 + d * DAY, day0 + (d + 1) * DAY) for d in range(args.base_days, days)
    }
    for name, (lo, hi) in windows.items():
        if not (work / name / "schema.yaml").exists():
            bounds = [f"window.from={lo}" if lo is not None else "window.from=null"]
            bounds.append(f"window.to={hi}")
            command(
                "ranking-data", "source=window", f"raw={data}", *bounds, f"out={name}", cwd=work
            )

    common = ["mlflow.enabled=false", "stages=[retrieval,ranking]", *args.overrides]
    expire = int(args.expire_days * DAY)

    def train(run: str, path: Path, *extra: str) -> float:
        if (work / "runs" / run / "metrics.json").exists():
            print(f"(reusing {run})")
            return float("nan")
        return command(
            "ranking-train",
            f"data.path={path}",
            *common,
            *extra,
            f"hydra.run.dir=runs/{run}",
            cwd=work,
        )

    walls = {"full": train("full", data)}
    chain = [train("base", work / "base")]
    previous = "base"
    for d in range(args.base_days, days):
        run = f"{args.chain}_day{d}"
        chain.append(
            train(
                run,
                work / f"day{d}",
                f"warm_start.run=runs/{previous}",
                f"warm_start.expire_after={expire}",
                *args.warm,
            )
        )
        previous = run
    walls["chain"] = sum(chain)
    last = f"day{days - 1}"
    walls["last day only"] = train("last_day_only", work / last)
    results = {
        "full": work / "runs" / "full",
        "chain": work / "runs" / previous,
        "last day only": work / "runs" / "last_day_only",
    }
    # Test metrics under one protocol: the tail (and the exposure deciles) are defined by
    # train exposures, so the chain's and the last day's runs are evaluated again against
    # the full train split (their own runs define them by the last day's exposures).
    for name in ("chain", "last day only"):
        if not (results[name] / "eval_metrics.json").exists():
            command("ranking-eval", f"run={results[name]}", f"data_path={data}", cwd=work)
    print("\n| run | train wall s | " + " | ".join(METRICS) + " |")
    print("|---|---|" + "---|" * len(METRICS))
    for name, run in results.items():
        m = json.loads(
            (run / ("metrics.json" if name == "full" else "eval_metrics.json")).read_text()
        )
        cells = " | ".join(f"{m.get(k, float('nan')):.4f}" for k in METRICS)
        print(f"| {name} | {walls[name]:.0f} | {cells} |")
    print(f"\nchain per run (s): {', '.join(f'{w:.0f}' for w in chain)}")
    print("along the chain (each run's own test metrics):")
    for run in ["base"] + [f"{args.chain}_day{d}" for d in range(args.base_days, days)]:
        m = json.loads((work / "runs" / run / "metrics.json").read_text())
        print(f"  {run}: " + ", ".join(f"{k} {m.get(k, float('nan')):.4f}" for k in METRICS))
    for d in range(args.base_days, days):
        log = (work / "runs" / f"{args.chain}_day{d}" / "train.log").read_text().splitlines()
        for line in log:
            if "warm start from" in line:
                print(f"day {d}: {line.split('] ', 1)[-1]}")


if __name__ == "__main__":
    main()
