"""scripts/bench/latency.py runs end to end (a few requests, no eager, tiny corpus)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench" / "latency.py"


def test_latency_bench_smoke(bundle, tmp_path):
    args = ["--bundle", str(bundle), "--no-eager", "--corpus", "2000", "--requests", "20"]
    args += ["--warmup", "5", "--threads", "1", "--throughput-iters", "2"]
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ")]
    assert [r.split("|")[1].strip() for r in rows[1:]] == ["torchscript", "pt2"]
    assert "command: " in proc.stdout and "logical cores" in proc.stdout
