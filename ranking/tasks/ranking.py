"""Ranking objective: one binary cross-entropy per task, weighted.

Every task is supervised on every impression. For an ESMM task the model's
logit is that of the joint probability (pCTCVR = pCTR x pCVR, see
:class:`~ranking.modules.task_heads.TaskHeads`) and its label column is the
joint outcome (``purchase`` = clicked and purchased in the synthetic data), so
the loss needs no special case and no row is dropped.
"""

from __future__ import annotations

import torch
from torch import nn


class RankingTask(nn.Module):
    """Weighted sum of per-task BCE losses on all impressions.

    Args:
        tasks: label columns, in the model's logit order.
        weights: loss weight per task (default 1 each).

    Shapes: logits [B, T], labels {task: [B]} -> (scalar, {task: scalar}).
    """

    def __init__(self, tasks: list[str], weights: dict[str, float] | None = None) -> None:
        super().__init__()
        self.tasks = list(tasks)
        self.weights = {t: float((weights or {}).get(t, 1.0)) for t in self.tasks}

    def loss(
        self, logits: torch.Tensor, labels: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        per_task = {
            t: nn.functional.binary_cross_entropy_with_logits(logits[:, i], labels[t])
            for i, t in enumerate(self.tasks)
        }
        total = sum(self.weights[t] * v for t, v in per_task.items())
        return total, per_task

    @staticmethod
    def probabilities(logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits)
