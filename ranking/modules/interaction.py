"""Feature interactions between embedding vectors, chosen by name.

Every interaction takes the F vectors of width D the ranker stacks (dense-arch
output first, then the sparse embeddings, then the attention outputs) and
returns one flat vector per row of width ``output_dim`` for the over arch.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ranking.modules.cross import CrossInteraction


class DotInteraction(nn.Module):
    """DLRM pairwise dot interaction (Naumov et al., 2019).

    Takes F vectors of the same width D (the dense-arch output first, then one
    pooled embedding per sparse feature), returns the dense vector concatenated
    with the F*(F-1)/2 distinct pairwise dot products.

    Example:
        >>> inter = DotInteraction(num_vectors=3, dim=4)
        >>> inter(torch.randn(2, 3, 4)).shape   # 4 + 3
        torch.Size([2, 7])

    Shapes: [B, F, D] -> [B, D + F*(F-1)/2].
    """

    def __init__(self, num_vectors: int, dim: int) -> None:
        super().__init__()
        rows, cols = torch.triu_indices(num_vectors, num_vectors, offset=1)
        self.register_buffer("rows", rows, persistent=False)
        self.register_buffer("cols", cols, persistent=False)
        self.num_vectors = num_vectors
        self.output_dim = dim + num_vectors * (num_vectors - 1) // 2

    def forward(self, vectors: torch.Tensor) -> torch.Tensor:
        gram = torch.bmm(vectors, vectors.transpose(1, 2))
        pairs = gram[:, self.rows, self.cols]
        return torch.cat([vectors[:, 0], pairs], dim=1)


INTERACTIONS = {"dot": DotInteraction, "dcn": CrossInteraction}


def make_interaction(kind: str, num_vectors: int, dim: int, **options: Any) -> nn.Module:
    """``dot`` (DLRM) or ``dcn`` (DCN-v2; options ``num_layers``, ``rank``).

    Options that belong to the other kind are an error, so a typo in a config
    override does not pass silently.
    """
    if kind not in INTERACTIONS:
        raise ValueError(f"interaction {kind!r}: choose one of {sorted(INTERACTIONS)}")
    return INTERACTIONS[kind](num_vectors, dim, **options)
