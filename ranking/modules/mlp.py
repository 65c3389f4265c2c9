"""Multi-layer perceptron used by towers, dense arch and over arch."""

from __future__ import annotations

import torch
from torch import nn


class MLP(nn.Module):
    """Stack of Linear -> activation (-> dropout) layers.

    Args:
        in_dim: input width D_in.
        sizes: output width of each layer, e.g. ``[256, 64]``.
        final_activation: apply the activation after the last layer too (True for
            hidden representations, False for logits).
        dropout: dropout probability after each hidden activation.

    Example:
        >>> mlp = MLP(8, [16, 4], final_activation=False)
        >>> mlp(torch.randn(3, 8)).shape
        torch.Size([3, 4])

    Shapes: [B, D_in] -> [B, sizes[-1]] (``in_dim`` when ``sizes`` is empty).
    """

    def __init__(
        self,
        in_dim: int,
        sizes: list[int],
        final_activation: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        d = in_dim
        for i, size in enumerate(sizes):
            layers.append(nn.Linear(d, int(size)))
            last = i == len(sizes) - 1
            if not last or final_activation:
                layers.append(nn.ReLU())
                if dropout > 0 and not last:
                    layers.append(nn.Dropout(dropout))
            d = int(size)
        self.net = nn.Sequential(*layers)
        self.out_dim = d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
