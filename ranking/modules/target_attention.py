"""DIN-style target attention of a candidate over a behaviour sequence (Zhou et al., 2018)."""

from __future__ import annotations

import torch
from torch import nn

from ranking.modules.mlp import MLP


class TargetAttention(nn.Module):
    """Weight each element of a sequence by its relevance to the candidate, then sum.

    The activation unit scores element k against candidate q with an MLP over
    DIN's inputs ``[q, k, q - k, q * k]``. Its first layer is split by input,
    ``W_q q + W_k k + W_p (q * k)`` (the ``q - k`` block is linear in q and k, so
    it folds into W_q and W_k): the candidate part is computed once per row
    instead of once per element. As in DIN, the weights are not normalised
    (a softmax would erase how much of the history matches); padded elements get
    weight 0 and an empty sequence gives a zero vector.

    Args:
        dim: D, width of candidate and sequence embeddings.
        hidden: sizes of the activation unit's hidden layers (at least one).

    Example:
        >>> att = TargetAttention(dim=4, hidden=[8])
        >>> q, seq = torch.randn(2, 4), torch.randn(2, 5, 4)
        >>> mask = torch.tensor([[True] * 5, [True, True, False, False, False]])
        >>> att(q, seq, mask).shape
        torch.Size([2, 4])

    Shapes: candidate [B, D], sequence [B, L, D], mask [B, L] bool -> [B, D].
    """

    def __init__(self, dim: int, hidden: list[int]) -> None:
        super().__init__()
        if not hidden:
            raise ValueError("TargetAttention needs at least one hidden layer")
        h = int(hidden[0])
        self.query = nn.Linear(dim, h)
        self.key = nn.Linear(dim, h, bias=False)
        self.product = nn.Linear(dim, h, bias=False)
        self.score = MLP(h, [*hidden[1:], 1], final_activation=False)

    def forward(
        self, candidate: torch.Tensor, sequence: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        q = candidate.unsqueeze(1)  # [B, 1, D]
        hidden = self.query(q) + self.key(sequence) + self.product(q * sequence)
        weights = self.score(torch.relu(hidden)).squeeze(-1)  # [B, L]
        weights = weights * mask.to(weights.dtype)
        return torch.bmm(weights.unsqueeze(1), sequence).squeeze(1)
