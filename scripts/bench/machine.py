"""What the benchmark scripts print about the machine they ran on."""

from __future__ import annotations

import platform
from pathlib import Path


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def print_ratio_table(results: dict[str, list[float]], reference: str, header: str) -> None:
    """A markdown table of rows/s per way (median, min - max) and each way's ratio
    to ``reference`` within the same repeat. ``header``: the rows/s column's title."""
    import statistics

    base = results[reference]
    print(f"\n| way | {header} | min - max | vs {reference} (same repeat): median (min - max) |")
    print("|---|---|---|---|")
    for name, values in results.items():
        ratios = [v / b for v, b in zip(values, base, strict=True)]
        print(
            f"| {name} | {statistics.median(values):,.0f} | {min(values):,.0f} - "
            f"{max(values):,.0f} | x{statistics.median(ratios):.2f} "
            f"({min(ratios):.2f} - {max(ratios):.2f}) |"
        )
