"""Plain-torch pooled embedding lookups over padded id tensors (serving side).

The serving bundle must load without torchrec or fbgemm, so exported models
replace the torchrec EmbeddingBagCollection with this module: the same weights
(copied), the same pooling, inputs as flat tensors. Imports torch only.

Input convention per feature (the bundle manifest documents it):
  categorical: int64 [B] table rows
  multi_hot / sequence: int64 [B, L] table rows, padded with -1 (any L >= 0)
"""

from __future__ import annotations

import torch
from torch import nn


def with_oov_row(weight: torch.Tensor) -> torch.Tensor:
    """A float32 copy of ``weight`` [rows, D] with one zero row appended: [rows + 1, D]."""
    w = weight.detach().float()
    return torch.cat([w, w.new_zeros(1, w.shape[1])])


class FeatureBag(nn.Module):
    """Pooled lookup of one feature in a (possibly shared) weight matrix.

    Shapes: [B] or [B, L] int64 -> [B, D] float32. Padding (-1) contributes
    nothing; mean pooling divides by the number of valid ids (an empty list
    pools to zeros, as torchrec does).
    """

    def __init__(self, weight: nn.Parameter, is_list: bool, mean: bool) -> None:
        super().__init__()
        self.weight = weight
        self.is_list = is_list
        self.mean = mean

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if not self.is_list:
            return nn.functional.embedding(ids, self.weight)
        valid = ids >= 0
        rows = nn.functional.embedding(ids.clamp(min=0), self.weight)  # [B, L, D]
        pooled = (rows * valid.unsqueeze(-1).to(rows.dtype)).sum(dim=1)
        if self.mean:
            count = valid.sum(dim=1, keepdim=True).clamp(min=1).to(rows.dtype)
            pooled = pooled / count
        return pooled


class PaddedEmbeddingBags(nn.Module):
    """Pooled embeddings for a fixed list of features, as a dict.

    Args:
        tables: table name -> weight [rows, D] (copied; no gradient).
        features: (feature name, table name, is_list, pooling) in output order.

    Each copied weight gets one extra all-zero row, ``rows``: the
    out-of-vocabulary row that the serving guard
    (:mod:`ranking.serving.guards`) maps unknown one-id categoricals to. Valid
    ids never read it, so outputs equal the training model's.

    Shapes: inputs[name] as in the module docstring -> {name: [B, D_table]}.
    """

    def __init__(
        self,
        tables: dict[str, torch.Tensor],
        features: list[tuple[str, str, bool, str]],
    ) -> None:
        super().__init__()
        weights = {
            name: nn.Parameter(with_oov_row(w), requires_grad=False) for name, w in tables.items()
        }
        self.names: list[str] = [f[0] for f in features]
        self.bags = nn.ModuleList(
            [
                FeatureBag(weights[table], is_list, pooling == "mean")
                for _, table, is_list, pooling in features
            ]
        )

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for i, bag in enumerate(self.bags):
            name = self.names[i]
            out[name] = bag(inputs[name])
        return out
