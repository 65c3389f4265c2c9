"""Plain-torch serving predictors: flat tensor dict in, tensor out.

Each predictor is a :class:`PaddedEmbeddingBags` (weights copied out of the
torchrec tables) followed by the trained model's head, reused unchanged. They
script with ``torch.jit.script`` and load with plain torch or libtorch: no
torchrec, fbgemm or training code at load time.

Input names: one per sparse feature (``int64 [B]`` for categorical features,
``int64 [B, L]`` padded with -1 for multi_hot/sequence), plus ``dense_user``,
``dense_item`` and ``dense_context`` (``float32 [B, D_side]``, transformed).
"""

from __future__ import annotations

import torch
from torch import nn

from ranking.models.dlrm_head import DLRMHead
from ranking.models.tower_head import TowerHead
from ranking.modules.padded_bags import PaddedEmbeddingBags


class TowerPredictor(nn.Module):
    """One tower of the two-tower model. Output: embedding float32 [B, D]."""

    def __init__(self, bags: PaddedEmbeddingBags, head: TowerHead, dense_key: str) -> None:
        super().__init__()
        self.bags = bags
        self.head = head
        self.dense_key = dense_key

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.head(self.bags(inputs), inputs[self.dense_key])


class RankerPredictor(nn.Module):
    """The ranker. Output: probabilities float32 [B, T], one column per task."""

    def __init__(self, bags: PaddedEmbeddingBags, head: DLRMHead) -> None:
        super().__init__()
        self.bags = bags
        self.head = head

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        dense = torch.cat(
            [inputs["dense_user"], inputs["dense_item"], inputs["dense_context"]], dim=1
        )
        return torch.sigmoid(self.head(self.bags(inputs), dense))
