"""Multi-gate mixture of experts: the ranker's over arch, one mixture per task."""

from __future__ import annotations

import torch
from torch import nn

from ranking.modules.mlp import MLP


class MixtureOfExperts(nn.Module):
    """MMoE (Ma et al., KDD 2018). The shared over arch becomes E expert MLPs, and
    each task gets its own softmax gate over them, so tasks that disagree (click
    and purchase) can weight the shared representations differently instead of
    competing for one:

        h_t(x) = sum_e softmax(W_t x + b_t)_e expert_e(x)

    Args:
        in_dim: D_in, width of the input (the interaction's output).
        sizes: hidden sizes of each expert (the over arch's, e.g. ``[256, 128]``).
        experts: E >= 1.
        tasks: T, the number of gates.
        dropout: dropout between each expert's layers.

    Example:
        >>> moe = MixtureOfExperts(8, [16], experts=3, tasks=2)
        >>> moe(torch.randn(4, 8)).shape
        torch.Size([4, 2, 16])

    Shapes: [B, D_in] -> [B, T, H] (H = ``sizes[-1]``); :meth:`weights`: [B, T, E].
    """

    def __init__(
        self, in_dim: int, sizes: list[int], experts: int, tasks: int, dropout: float = 0.0
    ) -> None:
        super().__init__()
        if experts < 1 or tasks < 1:
            raise ValueError(f"MixtureOfExperts: experts={experts}, tasks={tasks}: both >= 1")
        self.experts = nn.ModuleList(
            [MLP(in_dim, list(sizes), dropout=dropout) for _ in range(experts)]
        )
        self.gates = nn.Linear(in_dim, tasks * experts)
        self.num_experts = int(experts)
        self.num_tasks = int(tasks)
        self.out_dim = self.experts[0].out_dim

    def weights(self, x: torch.Tensor) -> torch.Tensor:
        """Each task's gate over the experts, [B, T, E] (rows sum to 1)."""
        logits = self.gates(x).reshape(x.shape[0], self.num_tasks, self.num_experts)
        return torch.softmax(logits, dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = torch.stack([expert(x) for expert in self.experts], dim=1)  # [B, E, H]
        return torch.bmm(self.weights(x), outputs)
