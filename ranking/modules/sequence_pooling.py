"""Attention pooling of behaviour sequences (torch only: training and serving share it).

Mean pooling treats every clicked item of a history alike. Attention pooling
learns which items of the sequence say most about the user (and, with the
recency embedding, how much the most recent ones count), with one or several
heads (several heads can keep several interests apart, as multi-interest
retrieval models do with self-attentive pooling).

Both the training model and the serving predictor hand the pooler the same
layout: the sequence's embeddings left-aligned, oldest first, as the padded
dense form of a jagged list ([B, L, D], rows past the list's length are
invalid), so the plain-torch export reproduces the torchrec model exactly.
"""

from __future__ import annotations

import torch
from torch import nn


class AttentionPooling(nn.Module):
    """Multi-head additive self-attention pooling over a padded sequence.

    ``score[b, l, h] = w_h . tanh(W e[b, l] + r[recency(b, l)])``, softmax over the
    valid positions of row b; head h pools ``sum_l a[b, l, h] e[b, l]``; the heads
    are concatenated. ``recency`` is 0 for the most recent valid item. An empty
    sequence pools to zeros (as mean pooling does).

    Args:
        dim: item embedding width D.
        max_len: longest sequence L (size of the recency table).
        heads: attention heads H.
        hidden: width of the scoring layer.

    Example:
        >>> pool = AttentionPooling(dim=8, max_len=5, heads=2)
        >>> emb, valid = torch.randn(3, 5, 8), torch.tensor([[1, 1, 0, 0, 0]] * 3).bool()
        >>> pool(emb, valid).shape
        torch.Size([3, 16])

    Shapes: emb [B, L, D], valid bool [B, L] (left-aligned) -> [B, H * D].
    """

    def __init__(self, dim: int, max_len: int, heads: int = 1, hidden: int = 32) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, hidden)
        self.recency = nn.Embedding(max_len, hidden)
        self.score = nn.Linear(hidden, heads, bias=False)
        self.heads = heads
        self.dim = dim
        nn.init.zeros_(self.recency.weight)  # starts as content-only attention

    @property
    def out_dim(self) -> int:
        return self.heads * self.dim

    def forward(self, emb: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        length = emb.shape[1]
        count = valid.sum(dim=1, keepdim=True)  # [B, 1]
        recency = (count - 1 - torch.arange(length, device=emb.device)).clamp(min=0)
        hidden = torch.tanh(self.proj(emb) + self.recency(recency))
        scores = self.score(hidden)  # [B, L, H]
        scores = scores.masked_fill(~valid.unsqueeze(-1), -1e9)
        weights = torch.softmax(scores, dim=1) * valid.unsqueeze(-1).to(emb.dtype)
        pooled = torch.einsum("blh,bld->bhd", weights, emb)
        return pooled.reshape(emb.shape[0], self.heads * self.dim)


class AttentiveBag(nn.Module):
    """Serving lookup of one attention-pooled sequence feature.

    Shapes: ids int64 [B, L] padded with -1 -> [B, H * D].
    """

    def __init__(self, weight: nn.Parameter, pooler: AttentionPooling) -> None:
        super().__init__()
        self.weight = weight
        self.pooler = pooler

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        valid = ids >= 0
        emb = nn.functional.embedding(ids.clamp(min=0), self.weight)
        emb = emb * valid.unsqueeze(-1).to(emb.dtype)
        return self.pooler(emb, valid)


class AttentiveBags(nn.Module):
    """Attention-pooled sequence features for serving, as a dict (like
    :class:`~ranking.modules.padded_bags.PaddedEmbeddingBags`).

    Args:
        tables: table name -> weight [rows, D] (copied; no gradient).
        features: (feature name, table name, pooler) in output order.

    Shapes: inputs[name] int64 [B, L] padded with -1 -> {name: [B, H * D]}.
    """

    def __init__(
        self,
        tables: dict[str, torch.Tensor],
        features: list[tuple[str, str, AttentionPooling]],
    ) -> None:
        super().__init__()
        weights = {
            name: nn.Parameter(w.detach().clone().float(), requires_grad=False)
            for name, w in tables.items()
        }
        self.names: list[str] = [f[0] for f in features]
        self.bags = nn.ModuleList(
            [AttentiveBag(weights[table], pooler) for _, table, pooler in features]
        )

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for i, bag in enumerate(self.bags):
            name = self.names[i]
            out[name] = bag(inputs[name])
        return out


class MergedBags(nn.Module):
    """Two lookup modules' dicts as one (e.g. mean-pooled and attention-pooled features).

    Shapes: inputs -> {**first(inputs), **second(inputs)}.
    """

    def __init__(self, first: nn.Module, second: nn.Module) -> None:
        super().__init__()
        self.first = first
        self.second = second

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = self.first(inputs)
        extra: dict[str, torch.Tensor] = self.second(inputs)
        for name, value in extra.items():
            out[name] = value
        return out
