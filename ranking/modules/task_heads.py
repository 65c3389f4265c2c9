"""Per-task output towers, with ESMM composition for conversion-style tasks."""

from __future__ import annotations

import torch
from torch import nn

from ranking.modules.mlp import MLP


def logit_of_product(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """logit(sigmoid(a) * sigmoid(b)), computed stably.

    sigmoid(a) sigmoid(b) / (1 - sigmoid(a) sigmoid(b)) = 1 / (e^-a + e^-b + e^-(a+b)),
    so the logit is ``-logsumexp(-a, -b, -a-b)``. A product of probabilities stays
    a logit, so losses (BCE with logits), metrics and the serving sigmoid treat an
    ESMM task like any other.
    """
    return -torch.logsumexp(torch.stack([-a, -b, -(a + b)], dim=-1), dim=-1)


class TaskHeads(nn.Module):
    """One small tower per task over the shared over-arch output; ESMM on request.

    ESMM (Ma et al., 2018): a task with a parent (``after={"purchase": "click"}``)
    has its tower predict the *conditional* probability (pCVR = P(purchase |
    click)); its output is the parent's probability times it (pCTCVR = pCTR x
    pCVR). Both outputs are supervised on every impression (click labels;
    click-and-purchase labels), so the conditional tower learns from the whole
    exposure space instead of clicked impressions only (no sample selection bias,
    ~13x more rows on the synthetic data). A parent may itself have a parent
    (click -> cart -> purchase) as long as it comes earlier in ``tasks``.

    Args:
        in_dim: width of the over-arch output.
        tasks: task names, in output order.
        hidden: hidden sizes of each task's tower (empty: one linear layer).
        after: conditional task -> its parent task (entries whose task is not in
            ``tasks`` are ignored).

    Example:
        >>> heads = TaskHeads(8, ["click", "purchase"], [], after={"purchase": "click"})
        >>> heads(torch.randn(3, 8)).shape
        torch.Size([3, 2])

    Shapes: [B, in_dim] or [B, T, in_dim] -> logits [B, T] (ESMM tasks: logit of the
    joint probability).
    """

    def __init__(
        self,
        in_dim: int,
        tasks: list[str],
        hidden: list[int] | None = None,
        after: dict[str, str] | None = None,
    ) -> None:
        super().__init__()
        # Entries for absent tasks are dropped, so one ESMM config serves a
        # single-task run (tasks=[click]) too; a present task needs its parent.
        after = {c: p for c, p in (after or {}).items() if c in tasks}
        for child, parent in after.items():
            if parent not in tasks:
                raise ValueError(
                    f"ESMM pair {child!r} after {parent!r}: both must be tasks {tasks}"
                )
            if tasks.index(parent) >= tasks.index(child):
                raise ValueError(f"ESMM: parent {parent!r} must come before {child!r} in {tasks}")
        self.tasks: list[str] = list(tasks)
        self.parents: list[int] = [tasks.index(after[t]) if t in after else -1 for t in tasks]
        self.towers = nn.ModuleList(
            [MLP(in_dim, [*(hidden or []), 1], final_activation=False) for _ in tasks]
        )

    def own_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Each tower's own logit [B, T] (conditional ones for ESMM tasks, e.g. pCVR),
        from the shared input [B, in_dim] or from one input per task [B, T, in_dim]
        (a mixture of experts' outputs)."""
        if x.dim() == 3:
            return torch.cat([tower(x[:, i]) for i, tower in enumerate(self.towers)], dim=1)
        return torch.cat([tower(x) for tower in self.towers], dim=1)

    def compose(self, own: torch.Tensor) -> torch.Tensor:
        """Own logits -> output logits: ESMM tasks become joint with their parent."""
        out: list[torch.Tensor] = []
        for i, parent in enumerate(self.parents):
            logit = own[:, i]
            if parent >= 0:
                logit = logit_of_product(out[parent], logit)
            out.append(logit)
        return torch.stack(out, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.compose(self.own_logits(x))
