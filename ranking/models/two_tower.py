"""Two-tower retrieval model: user tower and item tower over shared tables."""

from __future__ import annotations

import torch
from torch import nn

from ranking.data.batch import Batch
from ranking.models.tower_head import TowerHead
from ranking.modules.embedding import ebc_from_schema, feature_dims
from ranking.schema import Schema, Side


class TwoTower(nn.Module):
    """User and item towers built from the schema's sides.

    One EmbeddingBagCollection holds the tables of both sides, so a table
    shared by an item feature and a user behaviour sequence (``table: item_id``)
    is one torchrec table. Context-side features are not used: retrieval runs
    before any context (slot, position) exists.

    Args:
        schema: dataset schema.
        hidden: hidden sizes of each tower's MLP.
        out_dim: embedding size D.
        normalize: L2-normalise both towers' outputs.

    Example:
        >>> model = TwoTower(schema, hidden=[64], out_dim=32)   # doctest: +SKIP
        >>> u, v = model(batch)                                   # [B, 32], [B, 32]

    Shapes: Batch of B rows -> (user [B, D], item [B, D]).
    """

    def __init__(
        self, schema: Schema, hidden: list[int], out_dim: int, normalize: bool = True
    ) -> None:
        super().__init__()
        user, item = schema.sparse(Side.USER), schema.sparse(Side.ITEM)
        self.sparse = ebc_from_schema(schema, user + item)
        dims = feature_dims(self.sparse)
        self.user_tower = TowerHead(
            [f.name for f in user], dims, len(schema.dense(Side.USER)), hidden, out_dim, normalize
        )
        self.item_tower = TowerHead(
            [f.name for f in item], dims, len(schema.dense(Side.ITEM)), hidden, out_dim, normalize
        )
        self.out_dim = out_dim

    def pooled(self, batch: Batch) -> dict[str, torch.Tensor]:
        return self.sparse(batch.sparse).to_dict()

    def encode_users(self, batch: Batch) -> torch.Tensor:
        """[B, D] user embeddings (item-side keys of the batch may be empty)."""
        return self.user_tower(self.pooled(batch), batch.dense[Side.USER])

    def encode_items(self, batch: Batch) -> torch.Tensor:
        """[B, D] item embeddings (user-side keys of the batch may be empty)."""
        return self.item_tower(self.pooled(batch), batch.dense[Side.ITEM])

    def forward(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = self.pooled(batch)
        return (
            self.user_tower(pooled, batch.dense[Side.USER]),
            self.item_tower(pooled, batch.dense[Side.ITEM]),
        )
