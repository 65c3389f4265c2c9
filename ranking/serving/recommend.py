"""``ranking-recommend``: top-N items per user from an export bundle alone.

Imports torch, numpy, faiss and the standard library only: the serving team
runs it without our training stack. Pipeline per request batch:
user snapshot -> user tower -> FAISS top-K -> ranker on the K candidates ->
sort by the manifest's ``rank_by`` task -> top-N.

Example::

    ranking-recommend --bundle runs/quickstart/bundle --users 0 1 2 --top-n 10
    {"user_id": 0, "items": [812, 33, ...], "scores": [0.21, 0.19, ...]}
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import faiss
import numpy as np
import torch

from ranking.serving.bundle import BundleError, read_manifest

__all__ = ["BundleError", "Recommender", "main"]


class Recommender:
    """Loads a bundle once; ``recommend`` serves a batch of users."""

    def __init__(self, bundle: str | Path) -> None:
        self.root = Path(bundle)
        # Format version and the sha256 of every file: a changed file is refused by name.
        self.manifest = read_manifest(self.root)
        arts = self.manifest["artifacts"]
        self.user_tower = torch.jit.load(str(self.root / arts["user_tower"]["file"]))
        self.ranker = torch.jit.load(str(self.root / arts["ranker"]["file"]))
        self.tasks: list[str] = arts["ranker"]["tasks"]
        serving = self.manifest["serving"]
        self.rank_col = self.tasks.index(serving["rank_by"])
        self.retrieve_k = int(serving["retrieve_k"])
        self.context_defaults: dict[str, int] = serving["context_defaults"]
        self.ranker_inputs = arts["ranker"]["inputs"]
        self.index = faiss.read_index(str(self.root / self.manifest["index"]["file"]))
        self.item_ids = np.load(self.root / self.manifest["index"]["row_to_item_id"])
        with np.load(self.root / self.manifest["snapshots"]["items"]["file"]) as z:
            self.items = {k: torch.from_numpy(z[k]) for k in z.files}
        with np.load(self.root / self.manifest["snapshots"]["users"]["file"]) as z:
            self.users = {k: torch.from_numpy(z[k]) for k in z.files}
        ids = self.users.pop("user_ids").numpy()
        self.user_order = np.argsort(ids, kind="stable")
        self.user_sorted = ids[self.user_order]

    def user_rows(self, user_ids: list[int]) -> np.ndarray:
        q = np.asarray(user_ids, dtype=np.int64)
        pos = np.searchsorted(self.user_sorted, q)
        pos = np.minimum(pos, len(self.user_sorted) - 1)
        unknown = q[self.user_sorted[pos] != q]
        if unknown.size:
            raise KeyError(f"user id {int(unknown[0])} is not in the bundle's user snapshot")
        return self.user_order[pos]

    @torch.no_grad()
    def recommend(self, user_ids: list[int], top_n: int = 10) -> list[dict]:
        rows = torch.from_numpy(self.user_rows(user_ids))
        user_inputs = {k: v[rows] for k, v in self.users.items()}
        query = self.user_tower(user_inputs).float().contiguous().numpy()
        k = min(self.retrieve_k, self.index.ntotal)
        _, cand = self.index.search(query, k)  # [U, K] corpus rows
        n_users = len(user_ids)
        flat = torch.from_numpy(cand.reshape(-1))
        inputs = {name: v.repeat_interleave(k, dim=0) for name, v in user_inputs.items()}
        inputs.update({name: v[flat] for name, v in self.items.items()})
        for spec in self.ranker_inputs:
            name = spec["name"]
            if name in inputs:
                continue
            if name == "dense_context":
                inputs[name] = torch.zeros(n_users * k, int(spec["shape"][1]), dtype=torch.float32)
            else:  # context features take the manifest's serving defaults
                inputs[name] = torch.full(
                    (n_users * k,), int(self.context_defaults[name]), dtype=torch.int64
                )
        probs = self.ranker(inputs)[:, self.rank_col].reshape(n_users, k)
        top = torch.topk(probs, min(top_n, k), dim=1)
        out = []
        for u in range(n_users):
            picked = cand[u, top.indices[u].numpy()]
            out.append(
                {
                    "user_id": int(user_ids[u]),
                    "items": [int(i) for i in self.item_ids[picked]],
                    "scores": [round(float(s), 6) for s in top.values[u]],
                }
            )
        return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ranking-recommend", description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", required=True, help="export bundle folder (has manifest.json)")
    parser.add_argument("--users", required=True, nargs="+", type=int, help="raw user ids")
    parser.add_argument("--top-n", type=int, default=10, help="items per user (default 10)")
    args = parser.parse_args(argv)
    try:
        rec = Recommender(args.bundle)
        results = rec.recommend(args.users, args.top_n)
    except (BundleError, KeyError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for line in results:
        print(json.dumps(line))
    return 0


if __name__ == "__main__":
    sys.exit(main())
