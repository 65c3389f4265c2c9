"""The one exception bad input data raises, and a guard that turns it into an exit code.

Bad data must stop a job before training with one message a person can act on:
which file, which column, which row, what is wrong and the offending value.
Carrying those as attributes (not only in the text) lets tests and callers check
them without parsing the message.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from ranking.schema import SchemaError

#: Exit status of a command that stopped on bad input (argparse uses 2 for bad usage too).
EXIT_BAD_INPUT = 2

#: Stands for "no offending value" (None is a value: a null).
NO_VALUE: Any = object()

F = TypeVar("F", bound=Callable[..., Any])


class DataError(ValueError):
    """A dataset file breaks the schema contract.

    The message reads ``<file>, column '<column>', row <row>: <problem> (value: <value>)``,
    leaving out the parts that do not apply (a missing file has no column or row).

    Attributes:
        file: path of the offending file (or split folder).
        column: the column at fault, or None for file-level problems.
        row: 0-based row index *within that file* (the CSV header is not a row),
            or None when the problem is not tied to a row (e.g. a column's dtype).
        problem: what is wrong, in words.
        value: the offending value when there is one (otherwise absent: ``has_value``).
    """

    def __init__(
        self,
        problem: str,
        file: str | Path = "",
        column: str | None = None,
        row: int | None = None,
        value: Any = NO_VALUE,
    ) -> None:
        self.problem = problem
        self.file = str(file)
        self.column = column
        self.row = row
        self.value = value
        super().__init__(self._message())

    @property
    def has_value(self) -> bool:
        return self.value is not NO_VALUE

    def _message(self) -> str:
        where = [p for p in (self.file, self._column_part(), self._row_part()) if p]
        text = f"{', '.join(where)}: {self.problem}" if where else self.problem
        if self.has_value:
            text += f" (value: {self.value!r})"
        return text

    def _column_part(self) -> str:
        return f"column {self.column!r}" if self.column is not None else ""

    def _row_part(self) -> str:
        return f"row {self.row}" if self.row is not None else ""

    def __reduce__(self) -> tuple[Any, ...]:
        # Keep the attributes across pickling (DataLoader workers, multiprocessing).
        return (type(self), (self.problem, self.file, self.column, self.row, self.value))


class ConfigError(ValueError):
    """The job's configuration asks for something the dataset cannot give (a stage
    without the labels it needs, a task that is not a label)."""


#: the errors main_guard turns into ``error: <message>``, exit 2
GUARDED = (DataError, SchemaError, ConfigError)


def main_guard(fn: F) -> F:
    """Wrap a command's main so bad input ends as ``error: <message>`` on stderr, exit 2.

    A traceback through pyarrow internals hides the one line a user needs. Apply it
    *inside* ``@hydra.main`` (Hydra reports ordinary exceptions itself, but lets
    ``SystemExit`` through)::

        @hydra.main(config_path=..., config_name="train", version_base=None)
        @main_guard
        def main(cfg): ...
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except GUARDED as e:
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(EXIT_BAD_INPUT) from None

    return wrapper  # type: ignore[return-value]
