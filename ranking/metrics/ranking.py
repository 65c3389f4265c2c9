"""Per-task ranking metrics: AUC, log loss, oracle AUC (synthetic data)."""

from __future__ import annotations

import torch
from torchmetrics.classification import BinaryAUROC


class RankingMetrics:
    """Accumulates predictions per task; ``compute()`` returns ``metric/task`` keys.

    - ``auc/<task>``: ROC AUC of the predicted probability (torchmetrics, exact).
    - ``logloss/<task>``: mean binary cross-entropy.
    - ``oracle_auc/<task>``: AUC of the true probability, when the data has it.
    """

    def __init__(self, tasks: list[str]) -> None:
        self.tasks = list(tasks)
        self.auc = {t: BinaryAUROC() for t in self.tasks}
        self.oracle_auc = {t: BinaryAUROC() for t in self.tasks}
        self.loss_sum = {t: 0.0 for t in self.tasks}
        self.count = 0
        self.has_oracle = False

    def update(
        self, probs: torch.Tensor, labels: dict[str, torch.Tensor], oracle: dict[str, torch.Tensor]
    ) -> None:
        """Args: probs [B, T], labels {task: [B]}, oracle {task: [B]} (may be empty)."""
        probs = probs.detach().float().cpu()
        for i, t in enumerate(self.tasks):
            y = labels[t].detach().cpu().long()
            p = probs[:, i]
            self.auc[t].update(p, y)
            eps = 1e-7
            pc = p.clamp(eps, 1 - eps)
            self.loss_sum[t] += float(-(y * pc.log() + (1 - y) * (1 - pc).log()).sum())
            if t in oracle:
                self.has_oracle = True
                self.oracle_auc[t].update(oracle[t].detach().float().cpu(), y)
        self.count += int(probs.shape[0])

    def compute(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for t in self.tasks:
            out[f"auc/{t}"] = float(self.auc[t].compute())
            out[f"logloss/{t}"] = self.loss_sum[t] / max(self.count, 1)
            if self.has_oracle:
                out[f"oracle_auc/{t}"] = float(self.oracle_auc[t].compute())
        return out
