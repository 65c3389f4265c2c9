"""The plain-torch head of the DLRM ranker (torch only: the serving
predictors reuse it unchanged)."""

from __future__ import annotations

import torch
from torch import nn

from ranking.modules.interaction import DotInteraction
from ranking.modules.mlp import MLP


class DLRMHead(nn.Module):
    """Dense arch + interaction + over arch of a DLRM-style ranker.

    The dense features go through the bottom MLP to width D; together with the
    F pooled embeddings (all width D) they form F+1 vectors whose pairwise dot
    products (plus the dense vector) feed the top MLP, which emits one logit per
    task. With no dense features the bottom MLP sees a constant 1, i.e. learns a
    bias vector, so the interaction keeps its shape.

    Shapes: ({name: [B, D]}, [B, D_dense]) -> logits [B, T].
    """

    def __init__(
        self,
        features: list[str],
        dense_dim: int,
        embedding_dim: int,
        dense_arch: list[int],
        over_arch: list[int],
        num_tasks: int,
    ) -> None:
        super().__init__()
        self.features: list[str] = list(features)
        self.has_dense = dense_dim > 0
        self.dense_arch = MLP(max(dense_dim, 1), [*dense_arch, embedding_dim])
        self.interaction = DotInteraction(len(features) + 1)
        self.over_arch = MLP(
            self.interaction.output_dim(embedding_dim),
            [*over_arch, num_tasks],
            final_activation=False,
        )

    def forward(self, pooled: dict[str, torch.Tensor], dense: torch.Tensor) -> torch.Tensor:
        if not self.has_dense:
            dense = torch.ones(dense.shape[0], 1, dtype=dense.dtype, device=dense.device)
        vectors = [self.dense_arch(dense)]
        for name in self.features:
            vectors.append(pooled[name])
        return self.over_arch(self.interaction(torch.stack(vectors, dim=1)))
