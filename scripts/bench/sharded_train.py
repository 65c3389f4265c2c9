"""Sharded ranker training: the Lightning strategy against a raw torchrec DMP loop, same run.

Two processes over gloo (``--ranks``), each training the quickstart DLRM ranker
(``conf/train.yaml`` plus ``--set`` overrides; the warm-up/decay schedule off,
so both ways run the same constant learning rates) on its own part of the
train split, read into memory beforehand, two ways, interleaved, ``--repeats``
times:

- ``TorchrecStrategy``: Lightning ``Trainer.fit`` of the stage's LightningModule
  with ``ranking.lit.sharding.TorchrecStrategy`` (what ``trainer=cpu_sharded``
  runs), the processes made by this script (Lightning sees them as launched
  externally).
- ``raw DMP loop``: the same model sharded by the same plan
  (:func:`ranking.lit.sharding.shard_model`), the torchrec examples' loop:
  ``loss = task(dmp(batch)); zero_grad(); backward(); step()``.

Both start from the same seed, so their loss trajectories must agree: the
script prints the largest difference of the per-step losses over every rank
and step, and rows/s over all ranks (median, min - max, ratio to the raw loop
in the same repeat).

    .venv/bin/python scripts/bench/sharded_train.py --data data/synthetic
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from ranking.cli import CONFIG_PATH  # noqa: E402
from scripts.bench.machine import cpu_model, print_ratio_table  # noqa: E402
from scripts.bench.train_throughput import InMemory, bench_trainer  # noqa: E402


class Steps(pl.Callback):
    """Each step's loss, and the wall time from step ``warmup`` to the last one."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.losses = warmup, []
        self.start = self.end = 0.0

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:  # noqa: ANN001
        if batch_idx == self.warmup:
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        self.losses.append(float(outputs["loss"]))
        self.end = time.perf_counter()


def _module(cfg, schema):  # noqa: ANN001, ANN202
    from ranking.pipeline import build_stage

    pl.seed_everything(cfg.seed, workers=True)
    return build_stage("ranking", cfg, schema)


def strategy_way(cfg, schema, batches: list, warmup: int, ranks: int) -> tuple[list, float]:  # noqa: ANN001
    from ranking.lit.sharding import TorchrecStrategy

    module = _module(cfg, schema)
    steps = Steps(warmup)
    trainer = bench_trainer(
        steps,
        strategy=TorchrecStrategy(sharding_types="table_wise", process_group_backend="gloo"),
        accelerator="cpu",
        devices=ranks,
    )
    trainer.fit(module, train_dataloaders=InMemory(batches))
    return steps.losses, steps.end - steps.start


def raw_way(cfg, schema, batches: list, warmup: int, ranks: int) -> tuple[list, float]:  # noqa: ANN001
    from ranking.lit.sharding import shard_model

    module = _module(cfg, schema)
    dmp, _ = shard_model(module.model, "table_wise", torch.device("cpu"), ranks)
    module.train()
    opt = module.optimizer_factory(module.dense_parameters())  # the tables' update is fused
    losses, start = [], 0.0
    for i, batch in enumerate(batches):
        if i == warmup:
            start = time.perf_counter()
        loss = module.task.loss(dmp(batch), batch.labels)[0]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss))
    return losses, time.perf_counter() - start


def worker(rank: int, args: argparse.Namespace, port: int, out: dict) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(args.ranks),
        NODE_RANK="0",
    )
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // args.ranks))
    dist.init_process_group("gloo", rank=rank, world_size=args.ranks)
    from hydra import compose, initialize_config_dir

    import ranking.cli  # noqa: F401  (registers the world config)
    from ranking.pipeline import stage_datamodule

    overrides = [f"data.path={args.data}", "ranking.optimizer.schedule=null", *args.set]
    with initialize_config_dir(config_dir=CONFIG_PATH, version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    dm = stage_datamodule("ranking", cfg, args.data)
    total = args.warmup + args.batches
    batches = []
    for batch in dm.train_dataloader():  # this rank's part of the split
        batches.append(batch)
        if len(batches) == total:
            break
    ways = {"TorchrecStrategy": strategy_way, "raw DMP loop": raw_way}
    results: dict[str, list] = {name: [] for name in ways}
    for _ in range(args.repeats):
        for name, fn in ways.items():
            results[name].append(fn(cfg, dm.schema, batches, args.warmup, args.ranks))
    rows = sum(len(b) for b in batches[args.warmup :])
    gathered: list = [None] * args.ranks
    dist.all_gather_object(gathered, {"results": results, "rows": rows})
    if rank == 0:
        out.update(ranks=gathered, batch=cfg.data.batch_size, threads=torch.get_num_threads())
    dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=Path("data/synthetic"))
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--batches", type=int, default=100, help="timed steps per measurement")
    ap.add_argument("--warmup", type=int, default=10, help="untimed steps first")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--port", type=int, default=29561)
    ap.add_argument("--set", nargs="*", default=[], help="ranking-train overrides")
    args = ap.parse_args()
    args.data = args.data.resolve()
    out = mp.Manager().dict()
    mp.spawn(worker, args=(args, args.port, out), nprocs=args.ranks)
    per_rank = out["ranks"]
    print(
        f"ranking stage on {args.data}: {args.ranks} ranks (gloo, {out['threads']} torch "
        f"threads each), batch {out['batch']} per rank, {args.batches} timed steps after "
        f"{args.warmup}, {args.repeats} repeats; {os.cpu_count()} cores ({cpu_model()}); "
        f"overrides {args.set}"
    )
    names = list(per_rank[0]["results"])
    rows = sum(r["rows"] for r in per_rank)
    diff = max(
        abs(a - b)
        for r in per_rank
        for rep in range(args.repeats)
        for a, b in zip(r["results"][names[0]][rep][0], r["results"][names[1]][rep][0], strict=True)
    )
    first = [r["results"][names[1]][0][0] for r in per_rank]

    print(
        f"loss trajectories: largest |strategy - raw| over {args.ranks} ranks x "
        f"{args.warmup + args.batches} steps x {args.repeats} repeats = {diff:.3g} "
        f"(raw loop, rank 0: step 0 {first[0][0]:.4f} -> last {first[0][-1]:.4f})"
    )
    # the slowest rank sets the pace of a synchronous step
    speed = {
        n: [rows / max(r["results"][n][rep][1] for r in per_rank) for rep in range(args.repeats)]
        for n in names
    }
    print_ratio_table(speed, "raw DMP loop", "median rows/s (all ranks)")


if __name__ == "__main__":
    main()
