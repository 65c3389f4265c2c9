"""The recall-by-popularity-decile table (:func:`ranking.metrics.retrieval.recall_by_decile`)
as a bar chart, for the MLflow run beside the table.

matplotlib (a dependency of MLflow too) is imported here only, and the figure is
drawn with its object API (no pyplot), so no display, backend or global figure
state is touched.
"""

from __future__ import annotations

import math
from typing import Any


def decile_figure(table: dict[str, list], title: str) -> Any:
    """A matplotlib Figure: one bar per popularity decile (0 = least exposed in
    train), its height the decile's pooled ``recall@k``; each bar is labelled
    with the decile's positives. A decile without positives (NaN recall) gets no
    bar and the label "no positives".

    Args:
        table: columns ``decile``, ``positives`` and one ``recall@k`` (as
            returned by :func:`ranking.metrics.retrieval.recall_by_decile`).
        title: the figure's title (e.g. the stage).

    Returns: the Figure (made without pyplot: no backend or global state).
    """
    from matplotlib.figure import Figure

    recall_key = next(k for k in table if k.startswith("recall@"))
    deciles = [int(d) for d in table["decile"]]
    recall = [float(r) for r in table[recall_key]]
    heights = [0.0 if math.isnan(r) else r for r in recall]
    fig = Figure(figsize=(7, 3.5))
    ax = fig.subplots()
    bars = ax.bar(deciles, heights, color="#4c72b0")
    for bar, r, n in zip(bars, recall, table["positives"], strict=True):
        label = "no positives" if math.isnan(r) else f"{int(n):,}"
        ax.annotate(
            label,
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
            fontsize=7,
        )
    ax.set_xticks(deciles)
    ax.set_xlabel("item popularity decile by train exposures (0 = least exposed)")
    ax.set_ylabel(recall_key)
    ax.set_ylim(0, max([*heights, 0.01]) * 1.15)
    ax.set_title(f"{title}: {recall_key} by popularity decile (bar labels: positives)")
    fig.tight_layout()
    return fig


def log_decile_figure(
    client: Any, run_id: str, table: dict[str, list], title: str, artifact_file: str
) -> None:
    """Draw :func:`decile_figure` and log it to ``run_id`` as ``artifact_file``
    (a ``.png``) with the MLflow ``client``."""
    client.log_figure(run_id, decile_figure(table, title), artifact_file)
