"""Uniform samples of the item corpus as Batches (mixed negative sampling).

Mixed negative sampling (Yang et al., WWW 2020) adds items drawn uniformly from
the whole corpus to the in-batch negatives, so items that are rarely or never
clicked still appear as negatives and the item tower learns about them. The
sampler keeps the corpus's item-side columns in memory (pyarrow, one row per
item: ~100 MB for 1M items with a dozen features) and converts the drawn rows
with the same :class:`~ranking.data.convert.BatchConverter` as the corpus
loader, so a sampled item gets the embedding it gets everywhere else.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from ranking.data.batch import Batch
from ranking.data.convert import BatchConverter
from ranking.data.dataset import concat_rows
from ranking.data.files import csv_column_types, iter_record_batches
from ranking.schema import Schema, Side


class CorpusSampler:
    """Draws corpus items uniformly (with replacement).

    Args:
        schema: dataset schema (``files.items`` names the corpus).
        converter: the data module's converter.

    Example::

        sampler = CorpusSampler(dm.schema, dm.converter)
        batch = sampler.sample(512, np.random.default_rng(0))  # corpus Batch of 512 items
        log_q = -np.log(sampler.num_items)                      # each draw's probability
    """

    def __init__(self, schema: Schema, converter: BatchConverter) -> None:
        self.converter = converter
        columns = converter.side_columns(Side.ITEM)
        types = csv_column_types(schema)
        chunks = [
            _decoded(rb)
            for path in schema.split_paths("items")
            for _, rb in iter_record_batches(path, columns, 1 << 16, types)
        ]
        if not chunks:
            raise ValueError(f"{schema.root}: the item corpus is empty")
        self.table = concat_rows(chunks).combine_chunks()
        self.num_items = self.table.num_rows

    def sample(self, n: int, rng: np.random.Generator) -> Batch:
        """A corpus Batch of ``n`` items drawn uniformly with replacement."""
        rows = rng.integers(0, self.num_items, size=n)
        return self.converter.convert_items(self.table.take(pa.array(rows)))


def _decoded(rb: pa.RecordBatch) -> pa.Table:
    """Dictionary columns decoded, so chunks of different files concatenate."""
    cols = [c.dictionary_decode() if pa.types.is_dictionary(c.type) else c for c in rb.columns]
    return pa.Table.from_arrays(cols, names=rb.schema.names)
