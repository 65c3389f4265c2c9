"""Plain-torch unpooled lookup of padded id sequences (serving side).

The counterpart of the "positional bags" of :mod:`ranking.modules.fused_embedding`:
there each element of a sequence is a one-id bag of the fused table (its row, or
zeros when absent); here the same rows come from ``nn.functional.embedding`` on
the copied weight, with zeros at padding. Imports torch only.
"""

from __future__ import annotations

import torch
from torch import nn

from ranking.modules.padded_bags import PaddedEmbeddingBags


class SequenceLookup(nn.Module):
    """One sequence: int64 [B, L] (-1 padded) -> float32 [B, L, D], zeros at padding."""

    def __init__(self, weight: nn.Parameter) -> None:
        super().__init__()
        self.weight = weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        mask = ids >= 0
        rows = nn.functional.embedding(ids.clamp(min=0), self.weight)
        return rows * mask.unsqueeze(-1).to(rows.dtype)


class PaddedSequences(nn.Module):
    """Unpooled embeddings of padded id sequences.

    Args:
        weights: per sequence feature, the weight [rows, D] of its table (shared
            with the pooled bags: pass the same Parameter, it is stored once).
        names: the sequence features, in the head's order.

    Shapes: inputs[name] int64 [B, L] padded with -1 (any L >= 0) ->
    {name: float32 [B, L, D]}.
    """

    def __init__(self, weights: list[nn.Parameter], names: list[str]) -> None:
        super().__init__()
        self.names: list[str] = list(names)
        self.lookups = nn.ModuleList([SequenceLookup(w) for w in weights])

    @classmethod
    def sharing(cls, bags: PaddedEmbeddingBags, names: list[str]) -> PaddedSequences:
        """Lookups of ``names`` that reuse the weights ``bags`` already holds for
        the same features (a sequence feature is also a pooled feature of the
        ranker), so the scripted file stores each table once."""
        weights = [bags.bags[bags.names.index(name)].weight for name in names]
        return cls(weights, names)

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        embeddings: dict[str, torch.Tensor] = {}
        for i, lookup in enumerate(self.lookups):
            name = self.names[i]
            embeddings[name] = lookup(inputs[name])
        return embeddings
