"""Learning-rate schedule shared by the dense optimiser and the fused tables."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class WarmupSchedule:
    """Multiplier of the base learning rate at optimiser step ``step`` (0-based).

    Linear warm-up from ``1 / warmup_steps`` to 1 over ``warmup_steps`` steps,
    then ``decay`` down to ``min_factor`` at ``total_steps``: ``cosine``,
    ``linear`` or ``constant`` (stay at 1); all of it times ``scale`` and
    ``offset`` steps on (a warm start continuing an earlier run's curve). A
    function of the step alone, so a resumed run (whose global step comes back
    from the checkpoint) follows the same curve as an uninterrupted one.

    Example:
        >>> s = WarmupSchedule(warmup_steps=10, total_steps=110, decay="linear", min_factor=0.0)
        >>> s(0), s(9), s(60), s(110)
        (0.1, 1.0, 0.5, 0.0)
    """

    warmup_steps: int = 0
    total_steps: int | None = None  # None until known: no decay yet
    decay: str = "cosine"
    min_factor: float = 0.0
    scale: float = 1.0  # multiplies the whole curve (a warm start's continued rate)
    offset: int = 0  # steps already taken (a warm start continuing an earlier warm-up)

    def __post_init__(self) -> None:
        if self.decay not in ("cosine", "linear", "constant"):
            raise ValueError(f"decay {self.decay!r}: choose cosine, linear or constant")

    def __call__(self, step: int) -> float:
        return self.scale * self._shape(step + self.offset)

    def _shape(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.decay == "constant" or self.total_steps is None:
            return 1.0
        span = max(self.total_steps - self.warmup_steps, 1)
        progress = min(max((step - self.warmup_steps) / span, 0.0), 1.0)
        if self.decay == "linear":
            shape = 1.0 - progress
        else:
            shape = 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.min_factor + (1.0 - self.min_factor) * shape
