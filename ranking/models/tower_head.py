"""The plain-torch head of one retrieval tower (torch only: the serving
predictors reuse it unchanged)."""

from __future__ import annotations

import torch
from torch import nn

from ranking.modules.mlp import MLP

BIAS_SLOTS = ("none", "user", "item")


class TowerHead(nn.Module):
    """One tower of a two-tower model.

    Concatenates the pooled embeddings of ``features`` (in that order) with the
    tower's dense features and maps them through an MLP to the output space.

    Args:
        features: sparse feature names of this side.
        dims: pooled width of each feature.
        dense_dim: number of dense features of this side (D_dense, may be 0).
        hidden: hidden layer sizes.
        out_dim: embedding size D.
        normalize: L2-normalise the output (cosine similarity retrieval).
        dropout: dropout after each hidden layer (training only).
        bias_slot: ``none``, or the side (``user`` / ``item``) of a tower whose
            output carries a learned scalar offset beside the embedding e:
            the user tower returns ``[e, 1, b_u]``, the item tower ``[e, b_i, 1]``,
            so their dot product is ``e_u . e_i + b_i + b_u`` (an inner-product
            index then ranks by it unchanged). The offsets come from one extra
            output unit of the MLP and are never normalised.

    Shapes: ({name: [B, d_name]}, [B, D_dense]) -> [B, D] (``D = out_dim``, plus 2
    with a bias slot: :attr:`width`).
    """

    def __init__(
        self,
        features: list[str],
        dims: dict[str, int],
        dense_dim: int,
        hidden: list[int],
        out_dim: int,
        normalize: bool = True,
        dropout: float = 0.0,
        bias_slot: str = "none",
    ) -> None:
        super().__init__()
        if bias_slot not in BIAS_SLOTS:
            raise ValueError(f"bias_slot must be one of {BIAS_SLOTS}, got {bias_slot!r}")
        self.features: list[str] = list(features)
        self.bias_slot = bias_slot
        with_bias = bias_slot != "none"
        in_dim = sum(dims[f] for f in features) + dense_dim
        self.mlp = MLP(
            in_dim, [*hidden, out_dim + int(with_bias)], final_activation=False, dropout=dropout
        )
        self.normalize = normalize
        #: output width: D, or D + 2 with a bias slot
        self.width = out_dim + 2 * int(with_bias)

    def forward(self, pooled: dict[str, torch.Tensor], dense: torch.Tensor) -> torch.Tensor:
        parts = [pooled[name] for name in self.features]
        parts.append(dense)
        out = self.mlp(torch.cat(parts, dim=1))
        if self.bias_slot == "none":
            if self.normalize:
                out = nn.functional.normalize(out, dim=1)
            return out
        emb, bias = out[:, :-1], out[:, -1:]
        if self.normalize:
            emb = nn.functional.normalize(emb, dim=1)
        one = torch.ones_like(bias)
        if self.bias_slot == "user":
            return torch.cat([emb, one, bias], dim=1)
        return torch.cat([emb, bias, one], dim=1)
