"""Feature interactions between embedding vectors."""

from __future__ import annotations

import torch
from torch import nn


class DotInteraction(nn.Module):
    """DLRM pairwise dot interaction (Naumov et al., 2019).

    Takes F vectors of the same width D (the dense-arch output first, then one
    pooled embedding per sparse feature), returns the dense vector concatenated
    with the F*(F-1)/2 distinct pairwise dot products.

    Example:
        >>> inter = DotInteraction(num_vectors=3)
        >>> inter(torch.randn(2, 3, 4)).shape   # 4 + 3
        torch.Size([2, 7])

    Shapes: [B, F, D] -> [B, D + F*(F-1)/2].
    """

    def __init__(self, num_vectors: int) -> None:
        super().__init__()
        rows, cols = torch.triu_indices(num_vectors, num_vectors, offset=1)
        self.register_buffer("rows", rows, persistent=False)
        self.register_buffer("cols", cols, persistent=False)
        self.num_vectors = num_vectors

    def output_dim(self, dim: int) -> int:
        return dim + self.num_vectors * (self.num_vectors - 1) // 2

    def forward(self, vectors: torch.Tensor) -> torch.Tensor:
        gram = torch.bmm(vectors, vectors.transpose(1, 2))
        pairs = gram[:, self.rows, self.cols]
        return torch.cat([vectors[:, 0], pairs], dim=1)
