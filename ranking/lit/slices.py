"""Evaluation slices of a split: its rows where a column equals a value (the
synthetic log's random-exposure rows, ``policy == 1``; Open Bandit's uniform-random
policy), evaluated again under their own stage name (``test_random/...``)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from ranking.data.files import file_columns
from ranking.schema import Schema

log = logging.getLogger("ranking")


def split_has_column(schema: Schema, split: str, column: str) -> bool:
    """Whether the split's files hold ``column``: True if all do, False if none
    does; a split where only some do is refused, naming the first file without it."""
    paths = schema.split_paths(split)
    held = [column in file_columns(p) for p in paths]
    if any(held) and not all(held):
        raise ValueError(
            f"{paths[held.index(False)]}: no column {column!r}, which other "
            f"{split} files hold (the slice on it needs every file)"
        )
    return bool(paths) and all(held)


def present_slices(
    schema: Schema, split: str, slices: dict[str, dict[str, Any]], who: str
) -> Iterator[tuple[str, str, float]]:
    """``(stage, column, value)`` of each slice whose column the split's files hold;
    the others are skipped with a log line naming ``who`` (the stage evaluating)."""
    for stage, spec in slices.items():
        column, value = str(spec["column"]), float(spec["value"])
        if not split_has_column(schema, split, column):
            log.warning(
                "%s: no %s file has a column %r; the slice %s is skipped",
                who,
                split,
                column,
                stage,
            )
            continue
        yield stage, column, value
