"""The plain-torch head of one retrieval tower (torch only: the serving
predictors reuse it unchanged)."""

from __future__ import annotations

import torch
from torch import nn

from ranking.modules.mlp import MLP


class TowerHead(nn.Module):
    """One tower of a two-tower model.

    Concatenates the pooled embeddings of ``features`` (in that order) with the
    tower's dense features and maps them through an MLP to the output space.

    Args:
        features: sparse feature names of this side.
        dims: pooled width of each feature.
        dense_dim: number of dense features of this side (D_dense, may be 0).
        hidden: hidden layer sizes.
        out_dim: embedding size D.
        normalize: L2-normalise the output (cosine similarity retrieval).
        dropout: dropout after each hidden layer (training only).

    Shapes: ({name: [B, d_name]}, [B, D_dense]) -> [B, D].
    """

    def __init__(
        self,
        features: list[str],
        dims: dict[str, int],
        dense_dim: int,
        hidden: list[int],
        out_dim: int,
        normalize: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.features: list[str] = list(features)
        in_dim = sum(dims[f] for f in features) + dense_dim
        self.mlp = MLP(in_dim, [*hidden, out_dim], final_activation=False, dropout=dropout)
        self.normalize = normalize

    def forward(self, pooled: dict[str, torch.Tensor], dense: torch.Tensor) -> torch.Tensor:
        parts = [pooled[name] for name in self.features]
        parts.append(dense)
        out = self.mlp(torch.cat(parts, dim=1))
        if self.normalize:
            out = nn.functional.normalize(out, dim=1)
        return out
