"""Embedding tables whose optimiser runs inside the backward pass (training side).

torchrec's :class:`~torchrec.modules.fused_embedding_modules.FusedEmbeddingBagCollection`
puts every table of one pooling type into one fbgemm table-batched embedding
(TBE) kernel built with an optimiser: the backward pass computes each looked-up
row's gradient and applies the update (row-wise Adagrad by default) right there,
so a table never forms a dense gradient and the dense optimiser never sees it.
This works on CPU with fbgemm-gpu-cpu (``ComputeDevice.CPU``, ``EmbeddingLocation.HOST``);
no process group or DistributedModelParallel is needed for one process.

The tables keep the EmbeddingBagCollection's state-dict keys
(``embedding_bags.<table>.weight``, views of the kernel's weights), so export and
checkpoints read them the same way. The optimiser state (row-wise Adagrad: one
accumulator per row) lives in the kernel, outside ``state_dict()``: it is reached
through ``fused_optimizer()`` (a torchrec KeyedOptimizer), which the Lightning
module saves into and restores from the checkpoint.

Unpooled sequence lookups ("positional bags"): target attention needs one vector
per element of a behaviour sequence. Instead of a second (unpooled) table, which
could not share rows with the pooled one, :func:`with_positions` adds L keys
``<sequence>#0 .. <sequence>#L-1`` to the KeyedJaggedTensor, key j holding the
j-th id of each row as a bag of one (or an empty bag past the row's length). They
look up the sequence's own table, so the pooled output of key j *is* the row of
the j-th id (zeros when absent), and its gradient reaches the same fused update.
"""

from __future__ import annotations

from typing import Any

import torch
from fbgemm_gpu.tbe.config.optimizer_config import WeightDecayMode
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, PoolingType
from torchrec.modules.fused_embedding_modules import FusedEmbeddingBagCollection
from torchrec.optim import RowWiseAdagrad
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor

from ranking.schema import Feature, Schema

_POOLING = {"sum": PoolingType.SUM, "mean": PoolingType.MEAN}

# Optimisers fbgemm fuses into the TBE backward on CPU (name used in conf/optimizer/).
# fbgemm-gpu-cpu 1.8 has exact SGD, Adagrad and row-wise Adagrad on CPU; Adam and
# LAMB exist on CUDA only.
SPARSE_OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "rowwise_adagrad": RowWiseAdagrad,
    "adagrad": torch.optim.Adagrad,
    "sgd": torch.optim.SGD,
}


def position_key(sequence: str, j: int) -> str:
    """Name of the j-th element of ``sequence`` as a key of its own."""
    return f"{sequence}#{j}"


def table_configs(
    schema: Schema,
    features: list[Feature],
    dim: int | None = None,
    positions: dict[str, int] | None = None,
    pooled_sequences: bool = True,
) -> list[EmbeddingBagConfig]:
    """One EmbeddingBagConfig per table looked up by ``features`` (schema order).

    Args:
        dim: if given, every table uses this width instead of the schema's.
        positions: sequence feature -> L; adds the keys ``<sequence>#j`` (j < L)
            to the sequence's table (see the module docstring).
        pooled_sequences: False: a sequence in ``positions`` is looked up by its
            position keys only (they take its place), not also as a pooled bag.
    """
    positions = positions or {}
    configs = []
    for t in schema.tables_for(features):
        if pooled_sequences:
            names = list(t.features)
            for seq in t.features:
                names += [position_key(seq, j) for j in range(positions.get(seq, 0))]
        else:
            names = []
            for name in t.features:
                spread = [position_key(name, j) for j in range(positions.get(name, 0))]
                names += spread or [name]
        configs.append(
            EmbeddingBagConfig(
                name=t.name,
                embedding_dim=int(dim or t.dim),
                num_embeddings=t.num_rows,
                feature_names=names,
                pooling=_POOLING[t.pooling],
            )
        )
    return configs


def sparse_arch_from_schema(
    schema: Schema,
    features: list[Feature],
    dim: int | None = None,
    optimizer: dict[str, Any] | None = None,
    positions: dict[str, int] | None = None,
    pooled_sequences: bool = True,
) -> EmbeddingBagCollection | FusedEmbeddingBagCollection:
    """The model's embedding tables: fused with ``optimizer``, plain without.

    Args:
        optimizer: ``{"type": "rowwise_adagrad", "lr": 0.05, ...}`` (type from
            :data:`SPARSE_OPTIMIZERS`, the rest go to fbgemm's kernel, e.g.
            ``eps``, ``weight_decay`` with ``weight_decay_mode`` l2 or decouple). None: a plain EmbeddingBagCollection whose
            weights the dense optimiser updates (dense gradients; for comparison).
        positions, pooled_sequences: see :func:`table_configs`.
    """
    configs = table_configs(schema, features, dim, positions, pooled_sequences)
    return collection_from_configs(configs, optimizer)


def feature_dims(ebc: EmbeddingBagCollection | FusedEmbeddingBagCollection) -> dict[str, int]:
    """Width of each feature's pooled output."""
    return {
        name: cfg.embedding_dim for cfg in ebc.embedding_bag_configs() for name in cfg.feature_names
    }


def collection_from_configs(
    configs: list[EmbeddingBagConfig], optimizer: dict[str, Any] | None = None
) -> EmbeddingBagCollection | FusedEmbeddingBagCollection:
    """The tables of ``configs``: fused with ``optimizer`` (see
    :func:`sparse_arch_from_schema`), a plain EmbeddingBagCollection without."""
    # Grouped by pooling (mean tables first): the fused collection runs one kernel
    # per pooling type and concatenates their outputs group by group, but names its
    # output keys in table order (torchrec 1.8), so interleaved poolings would
    # mislabel the outputs.
    configs = sorted(configs, key=lambda c: c.pooling != PoolingType.MEAN)
    if optimizer is None:
        return EmbeddingBagCollection(tables=configs, device=torch.device("cpu"))
    bad = [c.name for c in configs if c.embedding_dim % 4]
    if bad:
        raise ValueError(
            f"fbgemm's fused tables need widths divisible by 4; tables {bad} are not "
            "(change their dim in the schema, or train with plain tables: a stage "
            "optimizer without `sparse`, e.g. optimizer@retrieval.optimizer=adam)"
        )
    kwargs = dict(optimizer)
    kind = kwargs.pop("type", "rowwise_adagrad")
    if "weight_decay_mode" in kwargs:  # "l2" | "decouple" | "none" in configs
        kwargs["weight_decay_mode"] = WeightDecayMode[str(kwargs["weight_decay_mode"]).upper()]
    if kind not in SPARSE_OPTIMIZERS:
        raise ValueError(f"sparse optimizer {kind!r}: choose one of {sorted(SPARSE_OPTIMIZERS)}")
    return FusedEmbeddingBagCollection(
        tables=configs,
        optimizer_type=SPARSE_OPTIMIZERS[kind],
        optimizer_kwargs=kwargs,
        device=torch.device("cpu"),
    )


def lookup(sparse: torch.nn.Module, kjt: KeyedJaggedTensor) -> KeyedTensor:
    """``sparse(kjt)``, also under inference mode for fused tables: fbgemm registers
    its fused CPU lookup for autograd dispatch only, which inference mode
    (Lightning's evaluation loops) skips, so it is lifted there (keeping no_grad)."""
    if torch.is_inference_mode_enabled() and is_fused(sparse):
        with torch.inference_mode(False), torch.no_grad():
            return sparse(kjt)
    return sparse(kjt)


def with_positions(
    kjt: KeyedJaggedTensor, positions: dict[str, int]
) -> tuple[KeyedJaggedTensor, dict[str, torch.Tensor]]:
    """Append the positional keys of each sequence in ``positions`` to ``kjt``.

    Returns the extended KJT and, per sequence, its ids padded with -1 to L
    (int64 [B, L], values left-aligned as in the batch: most recent last).
    """
    if not positions:
        return kjt, {}
    b = kjt.stride()
    keys = list(kjt.keys())
    values = [kjt.values()]
    lengths = [kjt.lengths()]
    padded: dict[str, torch.Tensor] = {}
    for seq, length in positions.items():
        ids = kjt[seq].to_padded_dense(desired_length=length, padding_value=-1).long()
        by_position = ids.t()  # [L, B]: key j's B bags are contiguous, as a KJT wants
        valid = by_position >= 0
        keys += [position_key(seq, j) for j in range(length)]
        values.append(by_position[valid].to(kjt.values().dtype))
        lengths.append(valid.reshape(-1).to(kjt.lengths().dtype))
        padded[seq] = ids
    out = KeyedJaggedTensor(
        keys=keys, values=torch.cat(values), lengths=torch.cat(lengths), stride=b
    )
    return out, padded


def split_positions(
    pooled: KeyedTensor, positions: dict[str, int]
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Pooled embeddings per schema feature ([B, D]) and per sequence ([B, L, D]).

    The positional keys of one sequence are consecutive in the output (they are
    consecutive in their table's feature list), so each sequence is one view.
    """
    values = pooled.values()
    offsets = pooled.offset_per_key()
    index = {k: i for i, k in enumerate(pooled.keys())}
    sequences: dict[str, torch.Tensor] = {}
    skip: set[str] = set()
    for seq, length in positions.items():
        first = index[position_key(seq, 0)]
        lo, hi = offsets[first], offsets[first + length]
        sequences[seq] = values[:, lo:hi].reshape(values.shape[0], length, -1)
        skip.update(position_key(seq, j) for j in range(length))
    flat = {
        k: values[:, offsets[i] : offsets[i + 1]]
        for i, k in enumerate(pooled.keys())
        if k not in skip
    }
    return flat, sequences


def is_fused(sparse: torch.nn.Module) -> bool:
    """True for tables that carry their optimiser: a FusedEmbeddingBagCollection,
    also once DistributedModelParallel has sharded it."""
    return isinstance(sparse, FusedEmbeddingBagCollection) or hasattr(sparse, "fused_optimizer")


def fused_optimizer(sparse: torch.nn.Module) -> Any:
    """The tables' fused optimiser (a torchrec KeyedOptimizer): a method of the
    fused collection, a property of its sharded version."""
    opt = sparse.fused_optimizer
    return opt() if callable(opt) else opt
