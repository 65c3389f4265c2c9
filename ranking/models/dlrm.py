"""DLRM-style multi-task ranker: sparse arch, dense arch, target attention,
interaction (dot or DCN-v2), over arch, task heads (ESMM)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ranking.data.batch import Batch
from ranking.models.dlrm_head import DLRMHead
from ranking.modules.fused_embedding import (
    is_fused,
    lookup,
    sparse_arch_from_schema,
    split_positions,
    with_positions,
)
from ranking.schema import Kind, Schema, Side

DENSE_SIDES = (Side.USER, Side.ITEM, Side.CONTEXT)


def dense_input(dense: dict[str, torch.Tensor]) -> torch.Tensor:
    """Concatenate the per-side dense tensors in the fixed order user, item, context."""
    return torch.cat([dense[s] for s in DENSE_SIDES], dim=1)


def attention_pairs(schema: Schema, sequences: list[str] | None = None) -> list[tuple[str, str]]:
    """(sequence, candidate) pairs for target attention, read from the schema.

    A behaviour sequence pairs with every item-side categorical feature that
    shares its table (``hist_items`` with ``item_id`` when the schema says
    ``hist_items: {table: item_id}``): the candidate's row and the sequence's rows
    then live in one embedding space. ``sequences`` restricts the pairs to those
    sequences (each must have a candidate); None takes every pair.
    """
    pairs = [
        (s.name, c.name)
        for s in schema.select(kinds=(Kind.SEQUENCE,))
        for c in schema.select(sides=(Side.ITEM,), kinds=(Kind.CATEGORICAL,))
        if c.table == s.table
    ]
    if sequences is None:
        return pairs
    chosen = [p for p in pairs if p[0] in sequences]
    missing = set(sequences) - {s for s, _ in chosen}
    if missing:
        raise ValueError(
            f"attention sequences {sorted(missing)} share no table with an item-side "
            f"categorical feature (pairs the schema allows: {pairs})"
        )
    return chosen


class DLRM(nn.Module):
    """Multi-task ranker over every sparse and dense feature of the schema.

    Args:
        schema: dataset schema (all sides are used: user, item and context).
        tasks: task names (label columns), one logit each, in this order.
        embedding_dim: width D of every table (the interactions need one width;
            a multiple of 4 for the fused tables).
        dense_arch: hidden sizes of the bottom MLP (its output is D).
        over_arch: hidden sizes of the shared top MLP (of each expert, with ``experts``).
        experts: 0: one over arch shared by every task; E >= 1: a multi-gate mixture
            of E experts of that shape, one softmax gate per task (MMoE, see
            :class:`~ranking.modules.mixture.MixtureOfExperts`).
        task_experts: PLE: K experts of each task's own beside the shared ones.
        expert_levels: PLE: stacked extraction layers (1: CGC).
        esmm: conditional task -> parent task, e.g. ``{"purchase": "click"}``:
            the purchase output is pCTR x pCVR (see :class:`~ranking.modules.task_heads.TaskHeads`).
        interaction: ``dot`` (DLRM) or ``dcn`` (DCN-v2).
        dcn: options of the DCN-v2 interaction (``num_layers``, ``rank``).
        attention: add DIN target attention for each (sequence, candidate) pair
            of :func:`attention_pairs` (restricted to ``attention_sequences``).
        attention_arch: hidden sizes of the attention activation unit.
        match: add id-match counts of each pair of :func:`attention_pairs`
            (restricted to ``attention_sequences``) to the dense input.
        task_arch: hidden sizes of each task tower.
        dropout: dropout between the over arch's layers.
        sparse_optimizer: the fused optimiser of the tables, e.g.
            ``{"type": "rowwise_adagrad", "lr": 0.05}``; None for plain tables
            updated by the dense optimiser.

    Example:
        >>> model = DLRM(schema, ["click", "purchase"], 16, [64], [256, 128],
        ...              esmm={"purchase": "click"}, interaction="dcn")  # doctest: +SKIP
        >>> model(batch).shape
        torch.Size([B, 2])

    Shapes: Batch of B rows -> logits [B, T].
    """

    def __init__(
        self,
        schema: Schema,
        tasks: list[str],
        embedding_dim: int,
        dense_arch: list[int],
        over_arch: list[int],
        esmm: dict[str, str] | None = None,
        interaction: str = "dot",
        dcn: dict[str, Any] | None = None,
        attention: bool = False,
        attention_arch: list[int] | None = None,
        attention_sequences: list[str] | None = None,
        match: bool = False,
        task_arch: list[int] | None = None,
        dropout: float = 0.0,
        sparse_optimizer: dict[str, Any] | None = None,
        experts: int = 0,
        task_experts: int = 0,
        expert_levels: int = 1,
    ) -> None:
        super().__init__()
        features = schema.sparse()
        unknown = [t for t in tasks if t not in schema.labels]
        if unknown:
            raise ValueError(f"tasks {unknown} are not labels of the schema {schema.labels}")
        pairs = attention_pairs(schema, attention_sequences) if attention or match else []
        self.tasks = list(tasks)
        self.esmm = {c: p for c, p in (esmm or {}).items() if c in self.tasks}
        # Sequences looked up element by element (for attention): name -> max_len.
        self.positions: dict[str, int] = {
            s: int(schema.feature(s).max_len)
            for s in dict.fromkeys(s for s, _ in pairs)
            if attention
        }
        # Ids the head reads: padded sequences (attention masks, matches) and candidates.
        self.sequence_lengths = {s: int(schema.feature(s).max_len) for s, _ in pairs}
        self.candidate_ids = list(dict.fromkeys(c for _, c in pairs)) if match else []
        self.sparse = sparse_arch_from_schema(
            schema, features, embedding_dim, sparse_optimizer, self.positions
        )
        self.head = DLRMHead(
            [f.name for f in features],
            len(schema.dense()),
            embedding_dim,
            dense_arch,
            over_arch,
            self.tasks,
            interaction=interaction,
            interaction_options=dict(dcn or {}) if interaction == "dcn" else None,
            attention=pairs if attention else [],
            attention_arch=attention_arch,
            task_arch=task_arch,
            esmm=self.esmm,
            dropout=dropout,
            match=pairs if match else [],
            experts=experts,
            task_experts=task_experts,
            expert_levels=expert_levels,
        )

    @property
    def fused(self) -> bool:
        """True when the tables carry their own (fused) optimiser."""
        return is_fused(self.sparse)

    def head_inputs(
        self, batch: Batch
    ) -> tuple[
        dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor], torch.Tensor
    ]:
        """(pooled, sequences, ids, dense): what :class:`DLRMHead` takes."""
        kjt, padded = with_positions(batch.sparse, self.positions)
        for seq, length in self.sequence_lengths.items():
            if seq not in padded:
                jt = batch.sparse[seq]
                padded[seq] = jt.to_padded_dense(desired_length=length, padding_value=-1).long()
        for cand in self.candidate_ids:
            padded[cand] = batch.sparse[cand].values().long()
        pooled, sequences = split_positions(lookup(self.sparse, kjt), self.positions)
        return pooled, sequences, padded, dense_input(batch.dense)

    def forward(self, batch: Batch) -> torch.Tensor:
        return self.head(*self.head_inputs(batch))

    def output_columns(self) -> list[dict[str, Any]]:
        """What each output column is, for the bundle manifest (one entry per task,
        in output order). The conditional probabilities (pCVR) are not output:
        divide an ESMM column by its parent's column to get them."""
        out: list[dict[str, Any]] = []
        for i, t in enumerate(self.tasks):
            entry: dict[str, Any] = {"column": i, "task": t, "probability": f"P({t})"}
            chain = [t]
            while chain[-1] in self.esmm:
                chain.append(self.esmm[chain[-1]])
            if len(chain) > 1:
                ancestors = list(reversed(chain[1:]))
                entry["probability"] = f"P({' and '.join([*ancestors, t])})"
                entry["esmm"] = f"P({chain[1]}) x P({t} | {chain[1]})"
            out.append(entry)
        return out

    def own_logits(self, batch: Batch) -> torch.Tensor:
        """Each task tower's own logit [B, T]: for an ESMM task the conditional
        one (pCVR = P(purchase | click)), for the others the same as ``forward``."""
        return self.head.heads.own_logits(self.head.hidden(*self.head_inputs(batch)))
