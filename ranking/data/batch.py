"""The typed batch every model and task consumes."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor


@dataclass
class Batch:
    """One mini-batch of B rows (impressions, or items of the corpus).

    Attributes:
        sparse: KeyedJaggedTensor with one key per sparse feature of the schema
            (schema order); values are table rows (already hashed / range-checked),
            lengths are [B] per key (1 for categorical, 0..max_len for lists).
        dense: per side ("user", "item", "context"): float32 [B, D_side] of the
            transformed dense features of that side, in schema order (D_side may be 0).
        labels: per task (label column): float32 [B] in {0, 1}. Empty for corpus batches.
        user_ids: int64 [B] user id (-1 for corpus batches).
        item_ids: int64 [B] item id.
        oracle: per task: float32 [B] true probability (synthetic data only).
        time: int64 [B] event time of each row (None for corpus batches).
        padding: True for a repeated batch that only keeps sharded ranks in step
            (:class:`~ranking.data.even_batches.EvenBatches`): it runs through the model,
            no metric counts it.
    """

    sparse: KeyedJaggedTensor
    dense: dict[str, torch.Tensor]
    labels: dict[str, torch.Tensor]
    user_ids: torch.Tensor
    item_ids: torch.Tensor
    oracle: dict[str, torch.Tensor] = field(default_factory=dict)
    time: torch.Tensor | None = None
    padding: bool = False

    def __len__(self) -> int:
        return int(self.item_ids.shape[0])

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        mv = lambda d: {k: v.to(device, non_blocking=non_blocking) for k, v in d.items()}  # noqa: E731
        return Batch(
            sparse=self.sparse.to(torch.device(device), non_blocking=non_blocking),
            dense=mv(self.dense),
            labels=mv(self.labels),
            user_ids=self.user_ids.to(device, non_blocking=non_blocking),
            item_ids=self.item_ids.to(device, non_blocking=non_blocking),
            oracle=mv(self.oracle),
            time=None if self.time is None else self.time.to(device, non_blocking=non_blocking),
            padding=self.padding,
        )

    def padded(self) -> Batch:
        """This batch flagged as padding (same tensors)."""
        return dataclasses.replace(self, padding=True)
