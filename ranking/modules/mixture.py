"""Mixtures of experts as the ranker's over arch: MMoE and PLE, one mixture per task."""

from __future__ import annotations

import torch
from torch import nn

from ranking.modules.mlp import MLP


def _mix(logits: torch.Tensor, outputs: list[torch.Tensor]) -> torch.Tensor:
    """sum_e softmax(logits)_e outputs[e]: gate logits [B, E] and E x [B, H] -> [B, H]."""
    weights = torch.softmax(logits, dim=-1).unsqueeze(1)  # [B, 1, E]
    return torch.bmm(weights, torch.stack(outputs, dim=1)).squeeze(1)


class TaskExperts(nn.Module):
    """One task's own experts (K >= 0) and its gate over them and the S shared ones."""

    def __init__(self, experts: list[MLP], in_dim: int, shared: int) -> None:
        super().__init__()
        self.experts = nn.ModuleList(experts)
        self.gate = nn.Linear(in_dim, len(experts) + shared)


class ExtractionLayer(nn.Module):
    """One customized gate control (CGC) layer of PLE (Tang et al., RecSys 2020).

    There are S shared experts and K experts of each task's own. Task t's gate
    mixes its K experts and the S shared ones, over task t's input. Unless the
    layer is the last, a shared gate mixes all T K + S experts over the shared
    input, which gives the next layer's shared input. With K = 0 and one layer
    this is MMoE (Ma et al., KDD 2018): every task's gate mixes the same S experts.

    Args:
        in_dim: D, width of the inputs.
        sizes: hidden sizes of each expert MLP (H = ``sizes[-1]``).
        shared: S >= 0. task_experts: K >= 0. S + K must be >= 1.
        tasks: T >= 1.
        last: no shared gate (nothing reads a next shared input).
        dropout: dropout between each expert's layers.

    Shapes: (task inputs [B, T, D], shared input [B, D]) -> (task outputs
    [B, T, H], next shared input [B, H]; the shared input itself when ``last``).
    """

    def __init__(
        self,
        in_dim: int,
        sizes: list[int],
        shared: int,
        task_experts: int,
        tasks: int,
        last: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if shared < 0 or task_experts < 0 or shared + task_experts < 1 or tasks < 1:
            raise ValueError(
                f"ExtractionLayer: shared={shared}, task_experts={task_experts}, tasks={tasks}: "
                "need at least one expert per gate and one task"
            )

        def expert() -> MLP:
            return MLP(in_dim, list(sizes), dropout=dropout)

        self.shared = nn.ModuleList([expert() for _ in range(shared)])
        self.tasks = nn.ModuleList(
            [
                TaskExperts([expert() for _ in range(task_experts)], in_dim, shared)
                for _ in range(tasks)
            ]
        )
        # a list of at most one gate: TorchScript loops over it (none in the last layer)
        self.shared_gate = nn.ModuleList(
            [] if last else [nn.Linear(in_dim, tasks * task_experts + shared)]
        )
        self.out_dim = int(sizes[-1]) if sizes else in_dim

    def forward(
        self, task_x: torch.Tensor, shared_x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        common = [expert(shared_x) for expert in self.shared]
        mixed: list[torch.Tensor] = []
        every: list[torch.Tensor] = []
        for t, task in enumerate(self.tasks):
            x = task_x[:, t]
            own = [expert(x) for expert in task.experts]
            mixed.append(_mix(task.gate(x), own + common))
            every.extend(own)
        next_shared = shared_x
        for gate in self.shared_gate:
            next_shared = _mix(gate(shared_x), every + common)
        return torch.stack(mixed, dim=1), next_shared


class MixtureOfExperts(nn.Module):
    """The over arch as a mixture of experts with one gate per task: MMoE by
    default, PLE with ``task_experts`` (and ``levels``).

    MMoE: the shared over arch becomes E expert MLPs, and each task gets its own
    softmax gate over them. Tasks that disagree (click and purchase) can then
    weight the shared representations differently instead of competing for one:

        h_t(x) = sum_e softmax(W_t x + b_t)_e expert_e(x)

    PLE adds K experts of each task's own, and stacks ``levels`` such layers
    (:class:`ExtractionLayer`).

    Args:
        in_dim: D_in, width of the input (the interaction's output).
        sizes: hidden sizes of each expert (the over arch's, e.g. ``[256, 128]``).
        experts: E >= 0 shared experts.
        tasks: T, the number of gates.
        task_experts: K >= 0 experts of each task's own (PLE); E + K >= 1.
        levels: extraction layers (>= 1); layer l > 0 reads layer l-1's outputs.
        dropout: dropout between each expert's layers.

    Example:
        >>> moe = MixtureOfExperts(8, [16], experts=3, tasks=2)
        >>> moe(torch.randn(4, 8)).shape
        torch.Size([4, 2, 16])

    Shapes: [B, D_in] -> [B, T, H] (H = ``sizes[-1]``).
    """

    def __init__(
        self,
        in_dim: int,
        sizes: list[int],
        experts: int,
        tasks: int,
        task_experts: int = 0,
        levels: int = 1,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if levels < 1:
            raise ValueError(f"MixtureOfExperts: levels={levels}: at least 1")
        layers = []
        width = in_dim
        for level in range(levels):
            layer = ExtractionLayer(
                width, sizes, experts, task_experts, tasks, level == levels - 1, dropout
            )
            layers.append(layer)
            width = layer.out_dim
        self.layers = nn.ModuleList(layers)
        self.num_tasks = int(tasks)
        self.out_dim = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        task_x = x.unsqueeze(1).expand(-1, self.num_tasks, -1)
        shared_x = x
        for layer in self.layers:
            task_x, shared_x = layer(task_x, shared_x)
        return task_x
