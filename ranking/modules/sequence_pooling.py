"""Attention and transformer pooling of behaviour sequences (torch only: training
and serving share them).

Mean pooling treats every clicked item of a history alike. Attention pooling
learns which items of the sequence say most about the user (and, with the
recency embedding, how much the most recent ones count), with one or several
heads (several heads can keep several interests apart, as multi-interest
retrieval models do with self-attentive pooling). Transformer pooling encodes
the sequence with self-attention blocks, each item read in the context of the
others and of its recency, and the user is the encoding of the most recent
item (as SASRec, Kang and McAuley, ICDM 2018, reads the next item from it):
order matters, not only which items were seen.

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


class TransformerPooling(nn.Module):
    """Self-attention encoder over a padded sequence; the output is the encoded
    most recent item.

    ``x[b, l] = e[b, l] + r[recency(b, l)]`` (``recency`` 0 for the most recent
    valid item), then ``layers`` pre-norm :class:`torch.nn.TransformerEncoderLayer`
    blocks (``heads`` heads, feed-forward ``ff_mult * D``) with the invalid
    positions masked as keys, a final LayerNorm, and row b's output is its
    position ``count_b - 1``. Attention is not causal: the most recent position
    reads every valid one either way, and only it is output. An empty sequence
    pools to zeros (as mean pooling does).

    Args:
        dim: item embedding width D (divisible by ``heads``).
        max_len: longest sequence L (size of the recency table).
        heads: attention heads.
        layers: encoder blocks.
        dropout: dropout inside the blocks (attention weights, feed-forward),
            training only.
        ff_mult: feed-forward width as a multiple of D.

    Example:
        >>> pool = TransformerPooling(dim=8, max_len=5, heads=2)
        >>> emb, valid = torch.randn(3, 5, 8), torch.tensor([[1, 1, 0, 0, 0]] * 3).bool()
        >>> pool(emb, valid).shape
        torch.Size([3, 8])

    Shapes: emb [B, L, D], valid bool [B, L] (left-aligned) -> [B, D].
    """

    def __init__(
        self,
        dim: int,
        max_len: int,
        heads: int = 1,
        layers: int = 2,
        dropout: float = 0.0,
        ff_mult: int = 4,
    ) -> None:
        super().__init__()
        if heads < 1 or dim % heads:
            raise ValueError(f"transformer pooling: {heads} heads do not divide the width {dim}")
        if layers < 1:
            raise ValueError(f"transformer pooling needs at least one layer, got {layers}")
        self.recency = nn.Embedding(max_len, dim)
        nn.init.normal_(self.recency.weight, std=0.02)
        self.blocks = nn.ModuleList(
            [
                nn.TransformerEncoderLayer(
                    dim, heads, ff_mult * dim, dropout, batch_first=True, norm_first=True
                )
                for _ in range(layers)
            ]
        )
        self.norm = nn.LayerNorm(dim)
        self.dim = dim

    @property
    def out_dim(self) -> int:
        return self.dim

    def forward(self, emb: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        batch, length = emb.shape[0], emb.shape[1]
        count = valid.sum(dim=1, keepdim=True)  # [B, 1]
        recency = (count - 1 - torch.arange(length, device=emb.device)).clamp(min=0)
        x = emb + self.recency(recency)
        filled = count > 0  # [B, 1]
        # an empty row gets one key (its first position), so no softmax row is all
        # masked (NaN); its output is zeroed below
        first = torch.arange(length, device=emb.device).unsqueeze(0) == 0
        keys = valid | (first & ~filled)
        for block in self.blocks:
            x = block(x, src_key_padding_mask=~keys)
        x = self.norm(x)
        last = (count - 1).clamp(min=0).unsqueeze(-1).expand(batch, 1, self.dim)
        out = x.gather(1, last).squeeze(1)
        return out * filled.to(out.dtype)


class AttentiveBag(nn.Module):
    """Serving lookup of one attention- or transformer-pooled sequence feature.

    Shapes: ids int64 [B, L] padded with -1 -> [B, H * D].
    """

    def __init__(self, weight: nn.Parameter, pooler: nn.Module) -> None:
        super().__init__()
        self.weight = weight
        self.pooler = pooler

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        valid = ids >= 0
        emb = nn.functional.embedding(ids.clamp(min=0), self.weight)
        emb = emb * valid.unsqueeze(-1).to(emb.dtype)
        return self.pooler(emb, valid)


class AttentiveBags(nn.Module):
    """Attention- or transformer-pooled sequence features for serving, as a dict (like
    :class:`~ranking.modules.padded_bags.PaddedEmbeddingBags`).

    Args:
        tables: table name -> weight [rows, D] (copied; no gradient).
        features: (feature name, table name, pooler) in output order.

    Shapes: inputs[name] int64 [B, L] padded with -1 -> {name: [B, H * D]}.
    """

    def __init__(
        self,
        tables: dict[str, torch.Tensor],
        features: list[tuple[str, str, nn.Module]],
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
