"""torchrec DistributedModelParallel inside Lightning: sharded tables, sharded checkpoints.

Lightning has no torchrec strategy. :class:`TorchrecStrategy` is a DDPStrategy
(process group, launcher, rank and device bookkeeping as usual) that does not
wrap the LightningModule in DDP: the module's ``configure_model`` hands its
model to :meth:`TorchrecStrategy.shard`, which builds a
:class:`~torchrec.distributed.DistributedModelParallel` over it. DMP replaces
the model's embedding collection in place by its sharded version (each table
table-wise on one rank or column-wise split across ranks; torchrec offers
row-wise and replicated ``data_parallel`` tables on CUDA, see
:func:`table_constraints`) and wraps the rest in DDP itself, so the dense
gradients are all-reduced and the tables' fused optimiser runs on each shard.
The training step calls the DMP wrapper (:attr:`FusedTables.net`); evaluation
code may call the model's own methods (every rank calls them equally often).

Lockstep: every forward through a sharded table is a collective (the ids go to
the ranks holding their rows), so every rank must run the same number of
batches. :class:`~ranking.data.even_batches.EvenBatches` (used by the data
module whenever there is more than one rank) truncates the train loaders to the
shortest rank's batch count and pads evaluation loaders to the longest one's
with copies flagged ``Batch.padding`` (no metric counts them), so nothing is
dropped from evaluation and nothing waits forever. Evaluation metrics are then
gathered over the ranks (:func:`gathered`): each rank read its part of the rows.

Checkpoints (:func:`save_sharded_checkpoint`): a directory, not a file. The
model's state (sharded tables as ShardedTensors) and the fused optimiser's go
through ``torch.distributed.checkpoint`` (each rank writes its own shards);
the rest of Lightning's checkpoint (dense optimiser, loops, epoch) is
replicated and rank 0 writes it as ``meta.pt``. ``resume=`` reads it back into
the sharded model (:meth:`TorchrecStrategy.load_checkpoint`);
:func:`load_model_state` reads it into an unsharded model in a single process
(DCP reshards on load): how ``ranking-eval`` and ``ranking-export`` get a
single-machine model out of a sharded run.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from pytorch_lightning.strategies import DDPStrategy
from pytorch_lightning.trainer.states import TrainerFn

from ranking.lit.fused_tables import SPARSE_STATE_KEY
from ranking.modules.fused_embedding import fused_optimizer

log = logging.getLogger("ranking")

META_FILE = "meta.pt"
#: Checkpoint entries written through torch.distributed.checkpoint (sharded state).
SHARDED_KEYS = ("state_dict", SPARSE_STATE_KEY)
SHARDING_TYPES = ("table_wise", "row_wise", "column_wise", "data_parallel")


class TorchrecStrategy(DDPStrategy):
    """DDP processes whose model is sharded by torchrec's DMP (no Lightning DDP wrap).

    Args:
        sharding_types: one sharding type for every table (``table_wise``,
            ``row_wise``, ``column_wise``, ``data_parallel``), a mapping table name ->
            type (tables not named: ``table_wise``), or None: torchrec's planner
            chooses each table's type and placement. Table-wise tables are spread
            over the ranks by the planner.
        **kwargs: DDPStrategy's (``process_group_backend``: gloo on CPU, nccl on CUDA).
    """

    strategy_name = "torchrec"

    def __init__(self, sharding_types: str | dict[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        named = sharding_types.values() if isinstance(sharding_types, dict) else [sharding_types]
        bad = [t for t in named if t is not None and t not in SHARDING_TYPES]
        if bad:
            raise ValueError(f"sharding types {bad}: choose among {list(SHARDING_TYPES)}")
        self.sharding_types = sharding_types
        #: table -> (sharding type, ranks) of the last model sharded
        self.placements: dict[str, tuple[str, list[int]]] = {}

    # ---- the model -----------------------------------------------------------------
    def shard(self, model: torch.nn.Module) -> torch.nn.Module:
        """DMP over ``model`` (its embedding collections sharded in place)."""
        dmp, self.placements = shard_model(
            model, self.sharding_types, self.root_device, self.num_processes
        )
        if self.is_global_zero:
            log.info(
                "sharding: %s",
                ", ".join(
                    f"{t} {kind} on ranks {ranks}" for t, (kind, ranks) in self.placements.items()
                ),
            )
        return dmp

    def _setup_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return model  # DMP (built in configure_model) already syncs the dense gradients

    def setup(self, trainer: Any) -> None:
        # DDPStrategy.setup without the DDP wrap and without broadcasting the module's
        # state from rank 0 (DMP broadcast the dense part; the tables are sharded).
        assert self.accelerator is not None and self.model is not None
        self.accelerator.setup(trainer)
        self.model_to_device()
        if trainer.state.fn == TrainerFn.FITTING:
            self.setup_optimizers(trainer)
        self.setup_precision_plugin()

    # ---- checkpoints ---------------------------------------------------------------
    def save_checkpoint(
        self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any = None
    ) -> None:
        save_sharded_checkpoint(checkpoint, Path(filepath), self.global_rank)

    def remove_checkpoint(self, filepath: Any) -> None:
        if self.is_global_zero:
            shutil.rmtree(filepath, ignore_errors=True)

    def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> Any:
        """Resume: every rank reads its shards into the sharded model's own tensors
        (the model was sharded in ``configure_model``, before Lightning restores)."""
        import torch.distributed.checkpoint as dcp

        path = Path(checkpoint_path)
        if not is_sharded_checkpoint(path):
            raise ValueError(
                f"{path}: not a sharded checkpoint directory (a sharded run resumes from a "
                "sharded run's checkpoints)"
            )
        module = self.lightning_module
        state: dict[str, Any] = {"state_dict": module.state_dict()}
        if module.model.fused:
            state[SPARSE_STATE_KEY] = fused_optimizer(module.model.sparse).state_dict()
        dcp.load(state, checkpoint_id=str(path))
        meta = torch.load(path / META_FILE, map_location="cpu", weights_only=False)
        return {**meta, **state}


def shard_model(
    model: torch.nn.Module,
    types: str | dict[str, str] | None,
    device: torch.device,
    local_world_size: int,
) -> tuple[torch.nn.Module, dict[str, tuple[str, list[int]]]]:
    """(DMP over ``model``, table -> (sharding type, ranks)) in the current process
    group; ``types`` as :class:`TorchrecStrategy`'s ``sharding_types``."""
    from torchrec.distributed import DistributedModelParallel
    from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
    from torchrec.distributed.fused_embeddingbag import FusedEmbeddingBagCollectionSharder
    from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology
    from torchrec.distributed.types import ShardingEnv

    # its first forward logs every batch feature a module does not look up
    logging.getLogger("torchrec.sparse.jagged_tensor_validator").setLevel(logging.WARNING)
    sharders = [FusedEmbeddingBagCollectionSharder(), EmbeddingBagCollectionSharder()]
    group = dist.group.WORLD
    world_size = dist.get_world_size(group)
    topology = Topology(
        world_size=world_size, compute_device=device.type, local_world_size=local_world_size
    )
    dims = {c.name: c.embedding_dim for c in model.sparse.embedding_bag_configs()}
    constraints = table_constraints(dims, types, device.type, world_size)
    planner = EmbeddingShardingPlanner(topology=topology, constraints=constraints)
    plan = planner.collective_plan(model, sharders, group)
    initial = {k: v.detach().clone() for k, v in model.sparse.state_dict().items()}
    dmp = DistributedModelParallel(
        model,
        env=ShardingEnv.from_process_group(group),
        device=device,
        plan=plan,
        sharders=sharders,
    )
    copy_into_shards(model.sparse, initial)
    return dmp, placements(plan)


def copy_into_shards(sharded: torch.nn.Module, full: dict[str, torch.Tensor]) -> None:
    """Write the full tables ``full`` (state-dict key -> [rows, dim]) into this rank's
    shards of ``sharded``. DMP builds its shards with fresh weights; this keeps the
    model's own initialisation, so a sharded run starts where one process starts."""
    from torch.distributed._shard.sharded_tensor import ShardedTensor

    with torch.no_grad():
        for key, value in sharded.state_dict().items():
            if not isinstance(value, ShardedTensor):
                continue
            for shard in value.local_shards():
                (r, c), (h, w) = shard.metadata.shard_offsets, shard.metadata.shard_sizes
                shard.tensor.copy_(full[key][r : r + h, c : c + w])


def table_constraints(
    dims: dict[str, int], types: str | dict[str, str] | None, device_type: str, ranks: int
) -> dict[str, Any]:
    """torchrec planner constraints per table (name -> width) for ``types`` (see
    :class:`TorchrecStrategy`) on ``device_type`` over ``ranks`` ranks."""
    from torchrec.distributed.planner.types import ParameterConstraints

    tables = list(dims)
    if isinstance(types, dict):
        unknown = sorted(set(types) - set(tables))
        if unknown:
            raise ValueError(f"sharding types name tables {unknown}; the model's are {tables}")
        chosen = {t: types.get(t, "table_wise") for t in tables}
    else:
        chosen = {t: types for t in tables} if types else {}
    allowed = list(SHARDING_TYPES)
    if device_type == "cpu":
        # torchrec 1.8 on CPU: a replicated fused table gets a DDP given
        # device_ids=[cpu], which DDP refuses; row-wise is offered on CUDA only (forced
        # through a sharder that allows it, its test metrics did not match its own
        # checkpoint's: docs/benchmarks.md). Table- and column-wise are exact.
        allowed = ["table_wise", "column_wise"]
        refused = sorted({k for k in chosen.values() if k not in allowed})
        if refused:
            raise ValueError(
                f"sharding types {refused}: on CPU torchrec shards fused tables "
                "table_wise or column_wise only"
            )
    return {
        t: ParameterConstraints(
            sharding_types=[chosen[t]] if t in chosen else allowed,
            # column-wise: one block of columns per rank (torchrec's default keeps a
            # narrow table whole), blocks a multiple of 4 wide for fbgemm
            min_partition=_column_block(dims[t], ranks),
        )
        for t in tables
    }


def _column_block(dim: int, ranks: int) -> int:
    """Width of one column-wise shard: dim / ranks rounded up to a multiple of 4."""
    width = -(-dim // ranks)  # ceil
    return min(dim, max(4, (width + 3) // 4 * 4))


def placements(plan: Any) -> dict[str, tuple[str, list[int]]]:
    """table -> (sharding type, ranks holding its shards) of a torchrec ShardingPlan."""
    out = {}
    for module_plan in plan.plan.values():
        for table, p in module_plan.items():
            out[table] = (p.sharding_type, sorted(set(p.ranks or [])))
    return out


def is_lead_process() -> bool:
    """True for the process that records and exports: global rank 0 as its launcher
    set it (Lightning's own launcher, torchrun, SLURM), or a process launched alone.
    Read from the environment, so it holds before any process group exists."""
    from lightning_fabric.utilities.rank_zero import _get_rank

    node = int(os.environ.get("NODE_RANK") or os.environ.get("GROUP_RANK") or 0)
    return (_get_rank() or 0) == 0 and ("RANK" in os.environ or node == 0)


def save_sharded_checkpoint(checkpoint: dict[str, Any], path: Path, rank: int) -> None:
    """Write Lightning's ``checkpoint`` dict as a directory (see the module docstring);
    called on every rank."""
    import torch.distributed.checkpoint as dcp

    if rank == 0 and path.is_dir():
        shutil.rmtree(path)
    elif rank == 0 and path.exists():
        path.unlink()
    dist.barrier()
    dcp.save({k: checkpoint[k] for k in SHARDED_KEYS if k in checkpoint}, checkpoint_id=str(path))
    if rank == 0:
        torch.save({k: v for k, v in checkpoint.items() if k not in SHARDED_KEYS}, path / META_FILE)
    dist.barrier()


def is_sharded_checkpoint(path: Path) -> bool:
    return path.is_dir() and (path / META_FILE).exists()


def load_model_state(module: torch.nn.Module, path: Path) -> None:
    """Load the model state of a sharded checkpoint directory into ``module``, an
    unsharded LightningModule in one process (full tables)."""
    import torch.distributed.checkpoint as dcp

    state = {"state_dict": module.state_dict()}
    # no_dist: this process alone, even where a process group exists (rank 0 of a run)
    dcp.load(state, checkpoint_id=str(path), no_dist=True)
    module.load_state_dict(state["state_dict"])


def _several_ranks() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gathered(metrics: Any) -> Any:
    """``metrics`` (an accumulator with ``merged``) over every rank's rows: each rank
    evaluated its own part of the split. Itself when there is one process."""
    if not _several_ranks():
        return metrics
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, metrics)
    return type(metrics).merged(parts)


def gathered_pairs(pairs: list[Any]) -> list[Any]:
    """Every rank's list of (user, item) pair arrays, concatenated (itself in one process)."""
    if not _several_ranks():
        return pairs
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, pairs)
    return [p for part in parts for p in part]
