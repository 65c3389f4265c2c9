"""Lightning DataModule over a dataset directory (schema + Parquet splits + corpus).

``setup()`` loads the schema, validates the files (when
:mod:`ranking.data.validate` is available and ``validate=True``), computes dense
statistics on train (kept in memory as :attr:`RecDataModule.stats` and in the
checkpoint through ``state_dict``; never written into the dataset directory) and
builds the :class:`~ranking.data.convert.BatchConverter`.

Epoch-dependent shuffling: the train loader is a
:class:`~ranking.data.dataset.RecDataLoader` whose ``epoch_fn`` reads
``trainer.current_epoch`` each time Lightning creates the epoch's iterator (at
that moment the trainer already holds the new epoch, resumed runs included),
so no callback and no dataloader reload is needed, and it works with persistent
workers too (the epoch lives in shared memory).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from ranking.data.convert import BatchConverter
from ranking.data.dataset import (
    DEFAULT_BUFFER_SHARDS,
    DEFAULT_SHARD_ROWS,
    ItemCorpusDataset,
    ParquetIterableDataset,
    RecDataLoader,
    UserSnapshotDataset,
)
from ranking.data.even_batches import EvenBatches
from ranking.data.stats import DenseStats, compute_dense_stats
from ranking.schema import Schema


class RecDataModule(pl.LightningDataModule):
    """Train/valid/test loaders, the item corpus and the users snapshot of one dataset.

    Args:
        path: dataset directory (holding ``schema.yaml``) or a schema file.
        batch_size: train rows per batch.
        eval_batch_size: rows per batch for valid/test/corpus/users.
        num_workers: DataLoader worker processes per rank.
        seed: shuffling seed (with the epoch).
        validate: run :func:`ranking.data.validate.validate_dataset` in ``setup``.
        stats: dense statistics to use instead of computing them on train (e.g.
            the ones an export bundle or a checkpoint carries), as
            :class:`DenseStats` or its ``to_dict()``.
        drop_last: train only. True: equal full batches on every rank and worker
            (see :class:`ParquetIterableDataset`); False: every row exactly once;
            None (default): True when the trainer runs on more than one process,
            where a rank with one batch more than the others would wait forever
            in a collective.
        persistent_workers, pin_memory: passed to the DataLoaders.
        shard_rows, buffer_shards: see :class:`ParquetIterableDataset`.
        train_filter: a label column; the train loader yields only rows where it
            is 1 (retrieval learns from positives); or a ``row_filter`` tuple of
            :class:`ParquetIterableDataset` (e.g. ``("click", 1, 0.1)``: clicks
            plus 10% of the other rows). Valid/test, the corpus and the dense
            statistics are not filtered.
        train_group_by, train_positive_groups_only: the train loader's
            ``group_by`` and ``positive_groups_only`` (see
            :class:`ParquetIterableDataset`): shuffle a request's rows together,
            and keep the other rows of the filter only in requests with a positive.

    Example::

        dm = RecDataModule("data/synthetic", batch_size=1024)
        dm.setup()
        batch = next(iter(dm.train_dataloader()))  # a Batch of 1024 rows
    """

    def __init__(
        self,
        path: str | Path,
        batch_size: int = 1024,
        eval_batch_size: int = 4096,
        num_workers: int = 0,
        seed: int = 0,
        validate: bool = True,
        stats: DenseStats | dict[str, Any] | None = None,
        drop_last: bool | None = None,
        persistent_workers: bool = False,
        pin_memory: bool = False,
        shard_rows: int = DEFAULT_SHARD_ROWS,
        buffer_shards: int = DEFAULT_BUFFER_SHARDS,
        train_filter: str | tuple[str | float, ...] | None = None,
        train_group_by: str | None = None,
        train_positive_groups_only: bool = False,
    ) -> None:
        super().__init__()
        self.path = Path(path)
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.validate = validate
        self.drop_last = drop_last
        self.persistent_workers = persistent_workers and num_workers > 0
        self.pin_memory = pin_memory
        self.shard_rows = shard_rows
        self.buffer_shards = buffer_shards
        self.train_filter = train_filter
        self.train_group_by = train_group_by
        self.train_positive_groups_only = train_positive_groups_only
        self.schema: Schema | None = None
        self.stats: DenseStats | None = (
            DenseStats.from_dict(stats) if isinstance(stats, dict) else stats
        )
        self.converter: BatchConverter | None = None
        self.validation_report: dict[str, Any] | None = None
        self._epoch = 0  # used when no trainer is attached (see set_epoch)

    # ---- setup -------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        """Load schema, validate, compute train stats, build the converter (once)."""
        if self.converter is not None:
            return
        self.schema = Schema.load(self.path)
        if isinstance(self.train_filter, str) and self.train_filter not in self.schema.labels:
            raise ValueError(
                f"train_filter {self.train_filter!r} is not a label of the schema {self.schema.labels}"
            )
        if self.validate:
            self.validation_report = _validate(self.schema)
        if self.stats is None:
            self.stats = compute_dense_stats(self.schema)
        self.converter = BatchConverter(self.schema, self.stats)

    def state_dict(self) -> dict[str, Any]:
        return {"dense_stats": self.stats.to_dict()} if self.stats is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the stats a checkpoint was trained with (and rebuild the converter)."""
        if "dense_stats" in state_dict:
            self.use_stats(DenseStats.from_dict(state_dict["dense_stats"]))

    def use_stats(self, stats: DenseStats) -> None:
        """Standardise with ``stats`` from now on (a trained model's, a warm start's)."""
        self.stats = stats
        if self.schema is not None:
            self.converter = BatchConverter(self.schema, self.stats)

    # ---- epochs ------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Epoch for the next train iterator when no trainer is attached."""
        self._epoch = int(epoch)

    def current_epoch(self) -> int:
        trainer = self.trainer
        if trainer is None:
            return self._epoch
        # Epochs whose batches were all processed, as Lightning's own sampler epoch:
        # a run resumed from an end-of-epoch checkpoint builds its first iterator
        # before ``trainer.current_epoch`` (= completed epochs) catches up.
        return int(trainer.fit_loop.epoch_progress.current.processed)

    # ---- loaders -----------------------------------------------------------------
    def _ready(self) -> tuple[Schema, BatchConverter]:
        if self.schema is None or self.converter is None:
            self.setup()
        assert self.schema is not None and self.converter is not None
        return self.schema, self.converter

    def _loader(
        self, dataset: Any, epoch_fn: Any = None, even: str = "pad"
    ) -> RecDataLoader | EvenBatches:
        """A loader over ``dataset``; with more than one rank, one that yields the same
        number of batches on each (``even``: "truncate" for train, "pad" else)."""
        loader = RecDataLoader(
            dataset,
            num_workers=self.num_workers,
            epoch_fn=epoch_fn,
            persistent_workers=self.persistent_workers,
            pin_memory=self.pin_memory,
        )
        return EvenBatches(loader, even) if dataset.world_size > 1 else loader

    def split_dataset(
        self,
        split: str,
        shuffle: bool,
        batch_size: int,
        drop_last: bool = False,
        row_filter: str | tuple[str, float] | None = None,
        group_by: str | None = None,
        positive_groups_only: bool = False,
    ) -> ParquetIterableDataset:
        schema, converter = self._ready()
        return ParquetIterableDataset(
            schema,
            split,
            converter,
            batch_size,
            shuffle=shuffle,
            seed=self.seed,
            drop_last=drop_last,
            shard_rows=self.shard_rows,
            buffer_shards=self.buffer_shards,
            row_filter=row_filter,
            group_by=group_by,
            positive_groups_only=positive_groups_only,
        )

    def train_dataloader(self) -> RecDataLoader:
        drop_last = self.drop_last
        if drop_last is None:
            drop_last = self.trainer is not None and self.trainer.world_size > 1
        ds = self.split_dataset(
            "train",
            True,
            self.batch_size,
            drop_last,
            self.train_filter,
            self.train_group_by,
            self.train_positive_groups_only,
        )
        return self._loader(ds, epoch_fn=self.current_epoch, even="truncate")

    def val_dataloader(self) -> RecDataLoader:
        return self._loader(self.split_dataset("valid", False, self.eval_batch_size))

    def test_dataloader(self) -> RecDataLoader:
        return self._loader(self.split_dataset("test", False, self.eval_batch_size))

    def slice_dataloader(self, split: str, column: str, value: float) -> RecDataLoader:
        """An evaluation slice of ``split``: its rows where ``column == value``, in file
        order (e.g. the synthetic log's random-exposure rows, ``policy == 1``).

        ``column`` may be any column of the split files, also one the schema ignores.
        """
        ds = self.split_dataset(split, False, self.eval_batch_size, row_filter=(column, value))
        return self._loader(ds)

    def corpus_dataloader(self, rank: int = 0, world_size: int = 1) -> RecDataLoader:
        """The item corpus in item-id order (every item once; rank 0 of 1 by default)."""
        schema, converter = self._ready()
        return self._loader(
            ItemCorpusDataset(schema, converter, self.eval_batch_size, rank, world_size)
        )

    def users_dataloader(self, rank: int = 0, world_size: int = 1) -> RecDataLoader:
        """The users snapshot (``files.users``) in user-id order."""
        schema, converter = self._ready()
        return self._loader(
            UserSnapshotDataset(schema, converter, self.eval_batch_size, rank, world_size)
        )


def _validate(schema: Schema) -> dict[str, Any] | None:
    try:
        from ranking.data.validate import validate_dataset
    except ImportError:  # validation lands separately; the pipeline works without it
        return None
    return validate_dataset(schema)
