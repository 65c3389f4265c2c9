"""torchrec embedding tables built from the schema (training side).

One :class:`~torchrec.EmbeddingBagCollection` holds every table a model looks
up; features that declare the same ``table`` share one torchrec table (e.g. the
candidate ``item_id`` and the ``hist_items`` behaviour sequence).
"""

from __future__ import annotations

import torch
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, PoolingType

from ranking.schema import Feature, Schema

_POOLING = {"sum": PoolingType.SUM, "mean": PoolingType.MEAN}


def ebc_from_schema(
    schema: Schema,
    features: list[Feature],
    dim: int | None = None,
    device: torch.device | str = "cpu",
) -> EmbeddingBagCollection:
    """An EmbeddingBagCollection over ``features``' tables.

    Args:
        schema: the dataset schema (table sizes, dims, pooling).
        features: sparse features the model looks up (any sides).
        dim: if given, every table uses this width instead of the schema's
            (DLRM's dot interaction needs one width).

    The output KeyedTensor has one [B, d_table] entry per feature name.
    """
    configs = [
        EmbeddingBagConfig(
            name=t.name,
            embedding_dim=int(dim or t.dim),
            num_embeddings=t.num_rows,
            feature_names=list(t.features),
            pooling=_POOLING[t.pooling],
        )
        for t in schema.tables_for(features)
    ]
    return EmbeddingBagCollection(tables=configs, device=torch.device(device))


def feature_dims(ebc: EmbeddingBagCollection) -> dict[str, int]:
    """Width of each feature's pooled output."""
    return {
        name: cfg.embedding_dim for cfg in ebc.embedding_bag_configs() for name in cfg.feature_names
    }
