"""Build a synthetic dataset directory: world, item corpus, log splits, users, schema.

Layout written to ``out_dir``::

    schema.yaml          features, roles and files (ranking.schema format)
    train/ valid/ test/  part-NNNNN.parquet, one row per impression, by day
    items.parquet        item corpus: item_id + item-side features
    users.parquet        user_id + user-side features as of the end of the log
    world.npz, world.json  latent world (load_world) for the oracle
    stats.json           rows, clicks and purchases per split and policy

The directory is assembled in a sibling temporary folder and renamed at the
end, so a present ``schema.yaml`` means a complete dataset.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np

from ranking.data.synthetic.config import SyntheticConfig
from ranking.data.synthetic.simulate import Simulation, StepLog
from ranking.data.synthetic.world import WORLD_JSON, build_world
from ranking.data.synthetic.write import (
    PartWriter,
    step_table,
    write_items,
    write_schema,
    write_users,
)
from ranking.schema import SPLITS, Schema

log = logging.getLogger(__name__)
STATS_JSON = "stats.json"


def _check_target(out: Path) -> None:
    if out.exists() and (
        not out.is_dir() or (any(out.iterdir()) and not (out / WORLD_JSON).exists())
    ):
        raise FileExistsError(
            f"{out}: exists and is not a synthetic dataset directory; refusing to overwrite it"
        )


def _tally(step: StepLog) -> np.ndarray:
    """int64 [policy, (rows, clicks, purchases)] of one step."""
    c = step.columns
    out = np.zeros((2, 3), dtype=np.int64)
    for p in (0, 1):
        m = c["policy"] == p
        out[p] = (m.sum(), c["click"][m].sum(), c["purchase"][m].sum())
    return out


def generate(out_dir: str | Path, cfg: SyntheticConfig | None = None) -> Schema:
    """Write the synthetic dataset for ``cfg`` into ``out_dir`` and return its schema.

    Deterministic: the same config (seed included) gives byte-identical files.
    Replaces ``out_dir`` if it holds an earlier synthetic dataset; refuses any
    other non-empty directory.
    """
    cfg = cfg or SyntheticConfig()
    out = Path(out_dir)
    _check_target(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        world = build_world(cfg)
        world.save(tmp)
        write_items(tmp / "items.parquet", world)
        writers = {s: PartWriter(tmp / s, cfg.chunk_rows) for s in SPLITS}
        counts = {s: np.zeros((2, 3), dtype=np.int64) for s in SPLITS}
        sim = Simulation(world)
        for step in sim.steps():
            writers[step.split].add(step_table(step))
            counts[step.split] += _tally(step)
        for w in writers.values():
            w.close()
        write_users(tmp / "users.parquet", *sim.user_state())
        stats = {
            s: {
                "rows": int(counts[s][:, 0].sum()),
                "clicks": int(counts[s][:, 1].sum()),
                "purchases": int(counts[s][:, 2].sum()),
                "random_rows": int(counts[s][1, 0]),
                "random_clicks": int(counts[s][1, 1]),
                "parts": writers[s].n_parts,
            }
            for s in SPLITS
        }
        (tmp / STATS_JSON).write_text(json.dumps(stats, indent=1) + "\n")
        write_schema(tmp / "schema.yaml", cfg)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for s in SPLITS:
        st = stats[s]
        log.info(
            "synthetic %s: %d rows, CTR %.4f, purchases %d, %d parts",
            s,
            st["rows"],
            st["clicks"] / max(st["rows"], 1),
            st["purchases"],
            st["parts"],
        )
    return Schema.load(out)
