"""DLRM-style ranker: sparse arch, dense arch, dot interaction, over arch."""

from __future__ import annotations

import torch
from torch import nn

from ranking.data.batch import Batch
from ranking.models.dlrm_head import DLRMHead
from ranking.modules.embedding import ebc_from_schema
from ranking.schema import Schema, Side

DENSE_SIDES = (Side.USER, Side.ITEM, Side.CONTEXT)


def dense_input(dense: dict[str, torch.Tensor]) -> torch.Tensor:
    """Concatenate the per-side dense tensors in the fixed order user, item, context."""
    return torch.cat([dense[s] for s in DENSE_SIDES], dim=1)


class DLRM(nn.Module):
    """Multi-task DLRM over every sparse and dense feature of the schema.

    Args:
        schema: dataset schema (all sides are used: user, item and context).
        tasks: task names (label columns), one logit each, in this order.
        embedding_dim: width D of every table (the dot interaction needs one width).
        dense_arch: hidden sizes of the bottom MLP (its output is D).
        over_arch: hidden sizes of the top MLP (its output is T logits).

    Example:
        >>> model = DLRM(schema, ["click"], 16, [64], [128, 64])   # doctest: +SKIP
        >>> model(batch).shape
        torch.Size([B, 1])

    Shapes: Batch of B rows -> logits [B, T].
    """

    def __init__(
        self,
        schema: Schema,
        tasks: list[str],
        embedding_dim: int,
        dense_arch: list[int],
        over_arch: list[int],
    ) -> None:
        super().__init__()
        features = schema.sparse()
        self.tasks = list(tasks)
        self.sparse = ebc_from_schema(schema, features, dim=embedding_dim)
        self.head = DLRMHead(
            [f.name for f in features],
            len(schema.dense()),
            embedding_dim,
            dense_arch,
            over_arch,
            len(tasks),
        )

    def forward(self, batch: Batch) -> torch.Tensor:
        pooled = self.sparse(batch.sparse).to_dict()
        return self.head(pooled, dense_input(batch.dense))
