"""Loaders that yield the same number of batches on every rank.

Sharded tables make every forward a collective (:mod:`ranking.lit.sharding`):
a rank that runs out of batches before the others would leave them waiting
forever. The split's rows are spread over ranks to within one row
(:mod:`ranking.data.dataset`), but the batch counts can still differ by one.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any


class EvenBatches:
    """Wraps a split's batch loader so every rank yields the same number of batches.

    ``mode="truncate"`` (train): stop at the shortest rank's count (with the
    train loader's drop_last every rank already yields as many). ``mode="pad"``
    (evaluation): run to the longest rank's count, a shorter rank repeating its
    last batch with ``padding=True``, which no metric counts. Every rank's count
    comes from the dataset's plan (:meth:`ParquetIterableDataset.rank_lengths`),
    so no collective is needed to agree on it.
    """

    def __init__(self, loader: Any, mode: str) -> None:
        if mode not in ("truncate", "pad"):
            raise ValueError(f"mode {mode!r}: truncate or pad")
        self.loader, self.mode = loader, mode

    def __len__(self) -> int:
        len(self.loader)  # resolves the dataset's rank and worker count
        counts = self.loader.dataset.rank_lengths()
        return min(counts) if self.mode == "truncate" else max(counts)

    def __iter__(self) -> Iterator[Any]:
        target = len(self)
        last, n = None, 0
        for batch in self.loader:
            if n == target:
                return
            yield batch
            last, n = batch, n + 1
        if n < target:
            if last is None:
                raise RuntimeError(
                    f"this rank holds no batch of {self.loader.dataset.split!r} while another "
                    "rank does: too few rows for the number of ranks"
                )
            for _ in range(target - n):
                yield last.padded()

    def __getattr__(self, name: str) -> Any:  # dataset, num_workers, ... of the loader
        if name == "loader":
            raise AttributeError(name)
        return getattr(self.loader, name)
