"""DCN-v2 cross network (Wang et al., 2021), full-rank or low-rank."""

from __future__ import annotations

import torch
from torch import nn


class CrossInteraction(nn.Module):
    """Explicit feature crosses of the concatenated embedding vectors.

    ``x0`` is the F vectors (dense-arch output first, then one embedding per
    sparse feature, then attention outputs) flattened to width F*D. Each layer l
    computes ``x_{l+1} = x0 * (W_l x_l + b_l) + x_l``, so layer l holds
    polynomial crosses of degree l+1 with a residual path. With ``rank`` r,
    ``W_l = U_l V_l^T`` (F*D x r and r x F*D): the low-rank DCN-v2 variant,
    cheaper when r << F*D. The over arch (the "deep" part of the stacked
    DCN-v2) reads the last layer's output.

    Args:
        num_vectors: F.
        dim: D.
        num_layers: cross layers (0 passes x0 through).
        rank: None for full-rank ``W_l``; an int for the low-rank form.

    Example:
        >>> cross = CrossInteraction(num_vectors=3, dim=4, num_layers=2, rank=2)
        >>> cross(torch.randn(5, 3, 4)).shape
        torch.Size([5, 12])

    Shapes: [B, F, D] -> [B, F*D].
    """

    def __init__(self, num_vectors: int, dim: int, num_layers: int = 2, rank: int | None = None):
        super().__init__()
        width = num_vectors * dim
        self.output_dim = width
        self.layers = nn.ModuleList([CrossLayer(width, rank) for _ in range(num_layers)])

    def forward(self, vectors: torch.Tensor) -> torch.Tensor:
        x0 = vectors.flatten(1)
        x = x0
        for layer in self.layers:
            x = layer(x0, x)
        return x


class CrossLayer(nn.Module):
    """``x0 * (W x + b) + x`` with W full-rank ([N, N]) or ``U V^T`` (rank r).

    Shapes: x0 [B, N], x [B, N] -> [B, N].
    """

    def __init__(self, width: int, rank: int | None = None) -> None:
        super().__init__()
        if rank is None:
            self.down: nn.Module = nn.Identity()
            self.up = nn.Linear(width, width)
        else:
            self.down = nn.Linear(width, int(rank), bias=False)
            self.up = nn.Linear(int(rank), width)

    def forward(self, x0: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return x0 * self.up(self.down(x)) + x
