"""The plain-torch head of the DLRM ranker (torch only: the serving
predictors reuse it unchanged)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ranking.modules.interaction import make_interaction
from ranking.modules.mixture import MixtureOfExperts
from ranking.modules.mlp import MLP
from ranking.modules.sequence_match import SequenceMatch
from ranking.modules.target_attention import TargetAttention
from ranking.modules.task_heads import TaskHeads


class DLRMHead(nn.Module):
    """Dense arch + target attention + interaction + over arch + task heads.

    The dense features (plus, with ``match``, two id-match statistics per
    (sequence, candidate) pair, see :class:`~ranking.modules.sequence_match.SequenceMatch`)
    go through the bottom MLP to width D. With the F pooled
    embeddings (all width D) and one target-attention output per (sequence,
    candidate) pair they form V = 1 + F + A vectors; the interaction (``dot``:
    DLRM pairwise dots, ``dcn``: DCN-v2 cross layers) turns them into one vector,
    the over arch (shared by all tasks) into a hidden representation, and one
    tower per task into a logit (ESMM tasks: the logit of the joint probability,
    see :class:`~ranking.modules.task_heads.TaskHeads`). With no dense features
    the bottom MLP sees a constant 1, i.e. learns a bias vector, so the
    interaction keeps its shape.

    Args:
        features: sparse feature names, in interaction order.
        dense_dim: D_dense, the number of dense inputs.
        embedding_dim: D.
        dense_arch: hidden sizes of the bottom MLP (its output is D).
        over_arch: hidden sizes of the shared top MLP.
        tasks: task names (output columns).
        interaction: ``dot`` or ``dcn``; ``interaction_options`` go to it
            (``dcn``: ``num_layers``, ``rank``).
        attention: (sequence, candidate) feature pairs; the candidate's pooled
            embedding attends over the sequence's unpooled embeddings.
        match: (sequence, candidate) pairs whose id-match counts join the dense input.
        attention_arch: hidden sizes of each attention's activation unit.
        task_arch: hidden sizes of each task tower.
        esmm: conditional task -> parent task.
        dropout: dropout between the over arch's layers.
        experts: 0: the over arch is shared by every task; E >= 1: it is a
            :class:`~ranking.modules.mixture.MixtureOfExperts` of E such MLPs with
            one gate per task (MMoE), and each task tower reads its own mixture.
        task_experts, expert_levels: PLE: K experts of each task's own beside the
            E shared ones, in ``expert_levels`` stacked extraction layers.

    Shapes: ({name: [B, D]}, {sequence: [B, L, D]}, {name: int64 ids}, [B, D_dense])
    -> logits [B, T]. ``ids`` holds each attention/match sequence padded with -1
    ([B, L]) and each match candidate ([B]).
    """

    def __init__(
        self,
        features: list[str],
        dense_dim: int,
        embedding_dim: int,
        dense_arch: list[int],
        over_arch: list[int],
        tasks: list[str],
        interaction: str = "dot",
        interaction_options: dict[str, Any] | None = None,
        attention: list[tuple[str, str]] | None = None,
        attention_arch: list[int] | None = None,
        task_arch: list[int] | None = None,
        esmm: dict[str, str] | None = None,
        dropout: float = 0.0,
        match: list[tuple[str, str]] | None = None,
        experts: int = 0,
        task_experts: int = 0,
        expert_levels: int = 1,
    ) -> None:
        super().__init__()
        attention = list(attention or [])
        self.features: list[str] = list(features)
        self.sequences: list[str] = [s for s, _ in attention]
        self.candidates: list[str] = [c for _, c in attention]
        match = list(match or [])
        self.match_sequences: list[str] = [s for s, _ in match]
        self.match_candidates: list[str] = [c for _, c in match]
        self.matchers = nn.ModuleList([SequenceMatch() for _ in match])
        self.has_dense = dense_dim + 2 * len(match) > 0
        self.dense_arch = MLP(max(dense_dim + 2 * len(match), 1), [*dense_arch, embedding_dim])
        self.attention = nn.ModuleList(
            [TargetAttention(embedding_dim, list(attention_arch or [64])) for _ in attention]
        )
        self.interaction = make_interaction(
            interaction,
            1 + len(self.features) + len(attention),
            embedding_dim,
            **(interaction_options or {}),
        )
        width = self.interaction.output_dim
        self.over_arch: nn.Module = (
            MixtureOfExperts(
                width,
                list(over_arch),
                experts,
                len(tasks),
                task_experts=task_experts,
                levels=expert_levels,
                dropout=dropout,
            )
            if experts or task_experts
            else MLP(width, list(over_arch), dropout=dropout)
        )
        self.heads = TaskHeads(self.over_arch.out_dim, list(tasks), task_arch, esmm)

    def hidden(
        self,
        pooled: dict[str, torch.Tensor],
        sequences: dict[str, torch.Tensor],
        ids: dict[str, torch.Tensor],
        dense: torch.Tensor,
    ) -> torch.Tensor:
        """The over-arch output the task towers read: [B, H], or one mixture per
        task [B, T, H] with experts."""
        parts = [dense]
        for i, matcher in enumerate(self.matchers):  # a ModuleList: TorchScript unrolls it
            seq, cand = self.match_sequences[i], self.match_candidates[i]
            parts.append(matcher(ids[cand], ids[seq]).to(dense.dtype))
        dense = torch.cat(parts, dim=1)
        if not self.has_dense:
            dense = torch.ones(dense.shape[0], 1, dtype=dense.dtype, device=dense.device)
        vectors = [self.dense_arch(dense)]
        for name in self.features:
            vectors.append(pooled[name])
        for i, att in enumerate(self.attention):
            seq = self.sequences[i]
            mask = ids[seq] >= 0
            vectors.append(att(pooled[self.candidates[i]], sequences[seq], mask))
        return self.over_arch(self.interaction(torch.stack(vectors, dim=1)))

    def forward(
        self,
        pooled: dict[str, torch.Tensor],
        sequences: dict[str, torch.Tensor],
        ids: dict[str, torch.Tensor],
        dense: torch.Tensor,
    ) -> torch.Tensor:
        return self.heads(self.hidden(pooled, sequences, ids, dense))
