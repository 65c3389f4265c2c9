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
from ranking.modules.padded_sequence import PaddedSequences


class TowerPredictor(nn.Module):
    """One tower of the two-tower model. Output: embedding float32 [B, D].

    ``bags`` maps the inputs to the head's pooled features: a
    :class:`PaddedEmbeddingBags`, or with attention-pooled sequences a
    :class:`~ranking.modules.sequence_pooling.MergedBags` of it and the
    attentive lookups.
    """

    def __init__(self, bags: nn.Module, head: TowerHead, dense_key: str) -> None:
        super().__init__()
        self.bags = bags
        self.head = head
        self.dense_key = dense_key

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.head(self.bags(inputs), inputs[self.dense_key])


class RankerPredictor(nn.Module):
    """The ranker. Output: probabilities float32 [B, T], one column per task, in
    the manifest's ``tasks`` order; an ESMM task's column is the joint
    probability (``purchase``: P(click and purchase) = pCTR x pCVR).

    ``sequences`` looks up, unpooled, the behaviour sequences the head's target
    attention reads (none when attention is off).
    """

    def __init__(
        self, bags: PaddedEmbeddingBags, head: DLRMHead, sequences: PaddedSequences
    ) -> None:
        super().__init__()
        self.bags = bags
        self.head = head
        self.sequences = sequences

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        dense = torch.cat(
            [inputs["dense_user"], inputs["dense_item"], inputs["dense_context"]], dim=1
        )
        return torch.sigmoid(self.head(self.bags(inputs), self.sequences(inputs), inputs, dense))
