"""Ranker training throughput: ranking-train's path against a raw torchrec loop, same run.

Three ways to train the same DLRM ranker (the model as ``ranking-train``
builds it from ``conf/train.yaml`` plus ``--set`` overrides: torchrec fused
tables, dense AdamW) on the same train split, batch size and seed, timed over
``--batches`` steps after ``--warmup`` untimed ones, ``--repeats`` times each,
interleaved:

- ``ranking-train``'s loop: Lightning ``Trainer.fit`` of the stage's
  LightningModule over the datamodule (shuffled Parquet reading and batch
  conversion in the loop), without validation, MLflow logger or checkpoints
  (the training steps of the production path; Lightning's default
  ``log_every_n_steps``).
- ``lightning, batches in memory``: the same ``Trainer.fit`` over the batches
  read beforehand: Lightning's overhead without the data pipeline.
- ``raw torchrec loop``: the torchrec examples' loop over the batches in
  memory: ``loss = task(model(batch)); zero_grad(); backward(); step()``. The
  reference: what the model costs.

Prints rows/s (median, min - max) and each way's ratio to the raw loop
within each repeat (the machine is shared: compare within a run).

    OMP_NUM_THREADS=2 .venv/bin/python scripts/bench/train_throughput.py --data data/synthetic

(The ranking stage only: the retrieval module's step draws its sampled
negatives from the datamodule's corpus, which a loop without a trainer lacks.)
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import pytorch_lightning as pl
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from hydra import compose, initialize_config_dir  # noqa: E402

from ranking.cli import CONFIG_PATH  # noqa: E402
from ranking.pipeline import build_stage, stage_datamodule  # noqa: E402
from scripts.bench.machine import cpu_model, print_ratio_table  # noqa: E402


class StepClock(pl.Callback):
    """Wall time from the start of step ``warmup`` to the end of the last step."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.start = self.end = 0.0
        self.rows = 0

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:  # noqa: ANN001
        if batch_idx == self.warmup:
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        if batch_idx >= self.warmup:
            self.rows += len(batch)
            self.end = time.perf_counter()


def bench_trainer(callback: pl.Callback, **kwargs: object) -> pl.Trainer:
    """A Lightning trainer that only trains, one epoch: no validation, logger,
    checkpoints, progress bar or summary; ``callback`` times the steps."""
    return pl.Trainer(
        max_epochs=1,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[callback],
        **kwargs,
    )


class InMemory:
    """The batches as one iterable (a plain list would be a list of loaders)."""

    def __init__(self, batches: list) -> None:
        self.batches = batches

    def __iter__(self):  # noqa: ANN204
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def lightning(stage: str, cfg, data: Path, total: int, warmup: int, batches=None) -> float:
    """rows/s of Trainer.fit (over the datamodule, or over ``batches`` in memory)."""
    pl.seed_everything(cfg.seed, workers=True)
    dm = stage_datamodule(stage, cfg, data)
    module = build_stage(stage, cfg, dm.schema)
    clock = StepClock(warmup)
    trainer = bench_trainer(clock, limit_train_batches=total, accelerator="cpu", devices=1)
    if batches is None:
        trainer.fit(module, datamodule=dm)
    else:
        trainer.fit(module, train_dataloaders=InMemory(batches))
    return clock.rows / (clock.end - clock.start)


def raw_loop(stage: str, cfg, data: Path, batches: list, warmup: int) -> float:
    """rows/s of a plain loop over ``batches``: forward, loss, backward, step."""
    pl.seed_everything(cfg.seed, workers=True)
    dm = stage_datamodule(stage, cfg, data)
    module = build_stage(stage, cfg, dm.schema)
    module.train()
    opt = module.optimizer_factory(module.dense_parameters())  # the tables' update is fused
    rows, start = 0, 0.0
    for i, batch in enumerate(batches):
        if i == warmup:
            start = time.perf_counter()
        loss = module.task.loss(module.model(batch), batch.labels)[0]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= warmup:
            rows += len(batch)
    return rows / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=Path("data/synthetic"))
    ap.add_argument("--batches", type=int, default=150, help="timed steps per measurement")
    ap.add_argument("--warmup", type=int, default=10, help="untimed steps first")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--set", nargs="*", default=[], help="ranking-train overrides")
    args = ap.parse_args()

    with initialize_config_dir(config_dir=CONFIG_PATH, version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"data.path={args.data}", *args.set])
    total = args.warmup + args.batches
    dm = stage_datamodule("ranking", cfg, args.data)
    loader = dm.train_dataloader()
    batches = []
    for batch in loader:
        batches.append(batch)
        if len(batches) == total:
            break
    if len(batches) < total:
        raise SystemExit(f"the train split has {len(batches)} batches, fewer than {total}")
    rows = sum(len(b) for b in batches[args.warmup :])
    print(
        f"ranking stage on {args.data}: {args.batches} timed steps of batch "
        f"{cfg.data.batch_size} ({rows} rows) after {args.warmup}; torch threads "
        f"{torch.get_num_threads()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, "
        f"{os.cpu_count()} cores ({cpu_model()}); overrides {args.set}"
    )
    ways = {
        "ranking-train's loop (Lightning + datamodule)": lambda: lightning(
            "ranking", cfg, args.data, total, args.warmup
        ),
        "Lightning, batches in memory": lambda: lightning(
            "ranking", cfg, args.data, total, args.warmup, batches
        ),
        "raw torchrec loop, batches in memory": lambda: raw_loop(
            "ranking", cfg, args.data, batches, args.warmup
        ),
    }
    results: dict[str, list[float]] = {name: [] for name in ways}
    for r in range(args.repeats):
        for name, fn in ways.items():
            results[name].append(fn())
        print(f"repeat {r}: " + ", ".join(f"{v[-1]:,.0f}" for v in results.values()), flush=True)
    print_ratio_table(results, "raw torchrec loop, batches in memory", "median rows/s")


if __name__ == "__main__":
    main()
