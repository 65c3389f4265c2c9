"""How often the candidate's id occurs in a behaviour sequence (torch only)."""

from __future__ import annotations

import torch
from torch import nn


class SequenceMatch(nn.Module):
    """Exact id-match statistics of a candidate against a sequence sharing its table.

    For (``hist_cats``, ``category_l2``): how many of the user's recent clicks fall
    in the candidate's category; for (``hist_items``, ``item_id``): whether the
    user clicked this very item before. Industrial rankers feed such counts as
    hand-made cross features; here they come from the schema's shared tables
    (see :func:`~ranking.models.dlrm.attention_pairs`). An embedding dot product
    can only approximate an exact match, and on sparse histories learns it slowly.

    Example:
        >>> m = SequenceMatch()
        >>> m(torch.tensor([3, 4]), torch.tensor([[3, 1, 3, -1], [-1, -1, -1, -1]]))
        tensor([[1.0986, 0.6667],
                [0.0000, 0.0000]])

    Shapes: candidate int64 [B], sequence int64 [B, L] (-1 padded) -> float32 [B, 2]:
    ``log1p(count)`` and ``count / length`` (0 for an empty sequence).
    """

    def forward(self, candidate: torch.Tensor, sequence: torch.Tensor) -> torch.Tensor:
        valid = sequence >= 0
        hits = ((sequence == candidate.unsqueeze(1)) & valid).sum(dim=1).float()
        length = valid.sum(dim=1).float().clamp(min=1.0)
        return torch.stack([torch.log1p(hits), hits / length], dim=1)
