"""How many retrieval positives get a hard negative in their training batch.

``retrieval.task.hard_negatives`` uses, for each positive row, the non-clicked
impressions of the same user in the same batch. The train loader shuffles rows
(:class:`ranking.data.dataset.ParquetIterableDataset`), so this counts, over the
first ``--batches`` train batches, the share of positives whose user has at
least one non-clicked row in the batch.

Usage::

    .venv/bin/python scripts/bench/hard_negatives.py --data data/synthetic \\
        [--batch-size 1024] [--negative-share 1.0] [--batches 300]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ranking.data.datamodule import RecDataModule


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("data/synthetic"))
    parser.add_argument("--label", default="click")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--negative-share", type=float, default=1.0)
    parser.add_argument("--batches", type=int, default=300)
    args = parser.parse_args(argv)
    dm = RecDataModule(
        args.data,
        batch_size=args.batch_size,
        validate=False,
        train_filter=(args.label, 1.0, args.negative_share),
    )
    dm.setup()
    positives = with_hard = 0
    for n, batch in enumerate(dm.train_dataloader()):
        if n == args.batches:
            break
        keep = batch.labels[args.label] > 0.5
        users = batch.user_ids
        same = (users[keep].unsqueeze(1) == users[~keep].unsqueeze(0)).any(dim=1)
        positives += int(keep.sum())
        with_hard += int(same.sum())
    share = with_hard / max(positives, 1)
    print(f"{args.data}: {positives} positives, {with_hard} with a hard negative ({share:.3f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
