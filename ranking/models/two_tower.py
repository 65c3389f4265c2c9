"""Two-tower retrieval model: user tower and item tower over shared tables."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from ranking.data.batch import Batch
from ranking.models.tower_head import TowerHead
from ranking.modules.fused_embedding import (
    feature_dims,
    is_fused,
    lookup,
    position_key,
    sparse_arch_from_schema,
)
from ranking.modules.sequence_pooling import AttentionPooling, TransformerPooling
from ranking.schema import Kind, Schema, Side

POOLINGS = ("mean", "attention", "transformer")


class TwoTower(nn.Module):
    """User and item towers built from the schema's sides.

    One EmbeddingBagCollection holds the tables of both sides, so a table
    shared by an item feature and a user behaviour sequence (``table: item_id``)
    is one torchrec table. Context-side features are not used: retrieval runs
    before any context (slot, position) exists.

    Sequence pooling: ``mean`` pools each user-side ``sequence`` feature in the
    collection (the schema's pooling). ``attention`` and ``transformer`` need the
    sequence's item embeddings unpooled: each position p of such a feature
    becomes a key ``name#p`` of the same table (a bag of at most one id, so its
    pooled output is that id's embedding, zeros past the list's end), and an
    :class:`~ranking.modules.sequence_pooling.AttentionPooling` or
    :class:`~ranking.modules.sequence_pooling.TransformerPooling` pools the
    [B, L, D] stack. The table stays one torchrec table (and shards like any other).

    Args:
        schema: dataset schema.
        hidden: hidden sizes of each tower's MLP.
        out_dim: embedding size D.
        normalize: L2-normalise both towers' outputs.
        sequence_pooling: ``mean`` (the table's own pooling: the schema's
            ``pooling``, mean unless it says sum), ``attention`` or ``transformer``
            (user-side sequences).
        attention_heads: heads of the attention pooling (its output is heads x
            D_table) or of the transformer's self-attention (they divide D_table).
        attention_hidden: width of the attention scoring layer.
        transformer_layers: encoder blocks of the transformer pooling.
        transformer_dropout: dropout inside the transformer's blocks.
        dropout: dropout after each hidden layer of both towers.
        id_dropout: in training, the share of rows whose user-id and item-id
            embeddings (the schema's id features) are zeroed, the whole vector
            at once and without rescaling (as in DropoutNet, Volkovs et al.,
            NeurIPS 2017). An id row of a user or item with few interactions
            is mostly noise; with its id missing, the tower must score the row
            from its other features (histories, category, product, creator),
            which generalise across ids. At evaluation and in serving every id
            embedding is present, as in the other share of training rows.
        bias_terms: give each user and each item a learned scalar offset
            (b_u, b_i) next to its embedding, so the score is
            ``e_u . e_i + b_i + b_u``. The towers' outputs carry them
            (``[e_u, 1, b_u]`` and ``[e_i, b_i, 1]``, see
            :class:`~ranking.models.tower_head.TowerHead`): D grows by 2, and the
            exported towers and an inner-product index rank by the full score
            unchanged. With normalised towers the embedding part stays on the
            unit sphere while b_i carries what is item-only (how clickable an
            item is wherever it is shown), which the cosine cannot hold without
            spending a direction of every embedding on it.
        sparse_optimizer: the tables' fused optimiser (torchrec / fbgemm, applied
            in the backward pass; see :mod:`ranking.modules.fused_embedding`),
            e.g. ``{"type": "sgd", "lr": 10.0}``; None: plain tables that the
            dense optimiser updates.

    Example:
        >>> model = TwoTower(schema, hidden=[64], out_dim=32)   # doctest: +SKIP
        >>> u, v = model(batch)                                   # [B, 32], [B, 32]

    Shapes: Batch of B rows -> (user [B, D], item [B, D]); D = ``out_dim`` (+ 2 with
    ``bias_terms``).
    """

    def __init__(
        self,
        schema: Schema,
        hidden: list[int],
        out_dim: int,
        normalize: bool = True,
        sequence_pooling: str = "mean",
        attention_heads: int = 1,
        attention_hidden: int = 32,
        transformer_layers: int = 2,
        transformer_dropout: float = 0.0,
        dropout: float = 0.0,
        id_dropout: float = 0.0,
        bias_terms: bool = False,
        sparse_optimizer: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 <= id_dropout < 1.0:
            raise ValueError(f"id_dropout must lie in [0, 1), got {id_dropout}")
        if sequence_pooling not in POOLINGS:
            raise ValueError(
                f"sequence_pooling must be one of {POOLINGS}, got {sequence_pooling!r}"
            )
        user, item = schema.sparse(Side.USER), schema.sparse(Side.ITEM)
        #: attention- or transformer-pooled features -> max_len
        self.attentive: dict[str, int] = {
            f.name: int(f.max_len)
            for f in user
            if sequence_pooling != "mean" and f.kind == Kind.SEQUENCE and f.max_len
        }
        # an attentive sequence is looked up once per position (keys name#p), not pooled
        self.sparse = sparse_arch_from_schema(
            schema,
            user + item,
            optimizer=sparse_optimizer,
            positions=self.attentive,
            pooled_sequences=False,
        )
        dims = feature_dims(self.sparse)
        poolers: dict[str, nn.Module] = {}
        for name, length in self.attentive.items():
            width = dims[position_key(name, 0)]
            if sequence_pooling == "attention":
                poolers[name] = AttentionPooling(width, length, attention_heads, attention_hidden)
            else:
                poolers[name] = TransformerPooling(
                    width, length, attention_heads, transformer_layers, transformer_dropout
                )
        self.poolers = nn.ModuleDict(poolers)
        for name, pooler in self.poolers.items():
            dims[name] = pooler.out_dim
        self.user_tower = TowerHead(
            [f.name for f in user],
            dims,
            len(schema.dense(Side.USER)),
            hidden,
            out_dim,
            normalize,
            dropout,
            "user" if bias_terms else "none",
        )
        self.item_tower = TowerHead(
            [f.name for f in item],
            dims,
            len(schema.dense(Side.ITEM)),
            hidden,
            out_dim,
            normalize,
            dropout,
            "item" if bias_terms else "none",
        )
        #: width of both towers' outputs (D, or D + 2 with bias terms)
        self.out_dim = self.user_tower.width
        self.id_dropout = float(id_dropout)
        names = {f.name for f in user + item}
        #: the schema's id features (user id, item id) that ``id_dropout`` masks
        self.id_features = [n for n in (schema.user_id, schema.item_id) if n in names]

    @property
    def fused(self) -> bool:
        """True when the tables carry their own (fused) optimiser."""
        return is_fused(self.sparse)

    def pooled(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Per feature [B, d_feature]: pooled embeddings (attention-pooled sequences included)."""
        if not self.attentive:
            return self._drop_ids(lookup(self.sparse, batch.sparse).to_dict())
        kjt, lengths = _spread_positions(batch.sparse, self.attentive)
        out = lookup(self.sparse, kjt).to_dict()
        for name, length in self.attentive.items():
            emb = torch.stack([out.pop(position_key(name, p)) for p in range(length)], dim=1)
            valid = torch.arange(length, device=emb.device) < lengths[name].unsqueeze(1)
            out[name] = self.poolers[name](emb, valid)
        return self._drop_ids(out)

    def _drop_ids(self, pooled: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Training only: zero each id feature's [B, d] embedding in a random
        ``id_dropout`` share of the rows (independently per feature)."""
        if not (self.training and self.id_dropout):
            return pooled
        for name in self.id_features:
            emb = pooled[name]
            keep = torch.rand(emb.shape[0], 1, device=emb.device) >= self.id_dropout
            pooled[name] = emb * keep.to(emb.dtype)
        return pooled

    def encode_users(self, batch: Batch) -> torch.Tensor:
        """[B, D] user embeddings (item-side keys of the batch may be empty)."""
        return self.user_tower(self.pooled(batch), batch.dense[Side.USER])

    def encode_items(self, batch: Batch) -> torch.Tensor:
        """[B, D] item embeddings (user-side keys of the batch may be empty)."""
        return self.item_tower(self.pooled(batch), batch.dense[Side.ITEM])

    def forward(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = self.pooled(batch)
        return (
            self.user_tower(pooled, batch.dense[Side.USER]),
            self.item_tower(pooled, batch.dense[Side.ITEM]),
        )


def _spread_positions(
    kjt: KeyedJaggedTensor, attentive: dict[str, int]
) -> tuple[KeyedJaggedTensor, dict[str, torch.Tensor]]:
    """Replace each attentive sequence key by one key per position.

    Position p of a list holds its p-th value (oldest first, as in the padded
    dense form); key ``name#p`` has length 1 where the list is longer than p,
    else 0. Returns the new KJT and each attentive feature's list lengths [B].
    """
    jts = kjt.to_dict()
    keys: list[str] = []
    values: list[torch.Tensor] = []
    lengths: list[torch.Tensor] = []
    seq_lengths: dict[str, torch.Tensor] = {}
    for name in kjt.keys():  # noqa: SIM118 (a KJT is not a dict)
        jt = jts[name]
        if name not in attentive:
            keys.append(name)
            values.append(jt.values())
            lengths.append(jt.lengths())
            continue
        length = attentive[name]
        ids = jt.to_padded_dense(desired_length=length, padding_value=-1)  # [B, L]
        valid_t = (ids >= 0).T  # [L, B], key-major like the KJT's values
        keys += [position_key(name, p) for p in range(length)]
        values.append(ids.T[valid_t])
        lengths.append(valid_t.reshape(-1).to(jt.lengths().dtype))
        seq_lengths[name] = jt.lengths().clamp(max=length)
    out = KeyedJaggedTensor(
        keys=keys,
        values=torch.cat(values),
        lengths=torch.cat(lengths),
        stride=kjt.stride(),
    )
    return out, seq_lengths
