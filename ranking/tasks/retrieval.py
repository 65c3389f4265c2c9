"""Retrieval objective: in-batch sampled softmax over the two towers' outputs."""

from __future__ import annotations

import torch
from torch import nn


class RetrievalTask(nn.Module):
    """In-batch softmax: each positive (user, item) row's item is the target and
    the other rows' items are its negatives.

    Args:
        positive_label: label column that marks a positive interaction (rows
            with label 0 are impressions without interest; they are not
            retrieval positives and take no part in this loss).
        temperature: logits are ``u . v / temperature``.
        mask_accidental_hits: drop a negative that is the row's own positive item
            (the same item clicked by two users in the batch).

    Shapes: user [B, D], item [B, D], item_ids [B] -> scalar loss.
    """

    def __init__(
        self,
        positive_label: str = "click",
        temperature: float = 0.05,
        mask_accidental_hits: bool = True,
    ) -> None:
        super().__init__()
        self.positive_label = positive_label
        self.temperature = temperature
        self.mask_accidental_hits = mask_accidental_hits

    def positives(self, labels: dict[str, torch.Tensor]) -> torch.Tensor:
        """Bool [B]: rows that are retrieval positives."""
        return labels[self.positive_label] > 0.5

    def loss(self, user: torch.Tensor, item: torch.Tensor, item_ids: torch.Tensor) -> torch.Tensor:
        logits = user @ item.T / self.temperature  # [B, B]
        if self.mask_accidental_hits:
            same = item_ids.unsqueeze(0) == item_ids.unsqueeze(1)
            same.fill_diagonal_(False)
            logits = logits.masked_fill(same, torch.finfo(logits.dtype).min)
        target = torch.arange(user.shape[0], device=user.device)
        return nn.functional.cross_entropy(logits, target)
