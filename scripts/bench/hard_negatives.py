"""How many retrieval positives get a hard negative in their training batch.

``retrieval.task.hard_negatives`` uses, for each positive row, the non-clicked
impressions of the same user in the same batch. The train loader shuffles rows
one by one, or request by request with ``--group-by request_id``
(:class:`ranking.data.dataset.ParquetIterableDataset`), so this counts, over the
first ``--batches`` train batches, the positives per batch, the share of
positives whose user has at least one non-clicked row in the batch, and the
hard negatives per positive.

Usage::

    .venv/bin/python scripts/bench/hard_negatives.py --data data/synthetic \\
        [--batch-size 1024] [--negative-share 1.0] [--batches 300] \\
        [--group-by request_id [--positive-groups-only]]
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
    parser.add_argument("--group-by", default=None, help="e.g. request_id")
    parser.add_argument("--positive-groups-only", action="store_true")
    args = parser.parse_args(argv)
    dm = RecDataModule(
        args.data,
        batch_size=args.batch_size,
        validate=False,
        train_filter=(args.label, 1.0, args.negative_share),
        train_group_by=args.group_by,
        train_positive_groups_only=args.positive_groups_only,
    )
    dm.setup()
    positives = with_hard = hard = batches = 0
    for n, batch in enumerate(dm.train_dataloader()):
        if n == args.batches:
            break
        keep = batch.labels[args.label] > 0.5
        users = batch.user_ids
        same = users[keep].unsqueeze(1) == users[~keep].unsqueeze(0)  # [P, B - P]
        positives += int(keep.sum())
        with_hard += int(same.any(dim=1).sum())
        hard += int(same.sum())
        batches += 1
    share = with_hard / max(positives, 1)
    print(
        f"{args.data} group_by={args.group_by} positive_groups_only={args.positive_groups_only} "
        f"negative_share={args.negative_share}: {batches} batches of {args.batch_size} rows, "
        f"{positives / max(batches, 1):.1f} positives per batch, {with_hard} of {positives} "
        f"positives with a hard negative ({share:.3f}), "
        f"{hard / max(positives, 1):.2f} hard negatives per positive"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
