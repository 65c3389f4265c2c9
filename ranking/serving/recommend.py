"""``ranking-recommend``: top-N items per user from an export bundle alone.

Imports torch, numpy, faiss and the standard library only: the serving team
runs it without our training stack. Pipeline per request batch:
user snapshot -> user tower -> FAISS top-K -> ranker on the K candidates ->
sort by the manifest's ``rank_by`` task -> top-N. A retrieval-only bundle (no
ranker) serves the top N by retrieval score (the towers' inner product).

With ``--at T`` (the request time, in the dataset's time units) and a bundle
whose dataset declares availability windows (``item_availability.npz``), the
FAISS search only visits the items available at T (an ``IDSelector``): an ended
live stream or an item not released yet is never a candidate. Without ``--at``
every item is a candidate. When an approximate index (IVF, HNSW) returns fewer
than the ``retrieve_k`` candidates asked for, exact search over the servable
items completes the list.

With ``--exclude-seen`` the items in the user's behaviour sequences of item ids
(the manifest's ``serving.seen``: in the snapshot, e.g. the last ``max_len``
clicked items of ``hist_items``) are never candidates: the index is asked for
``retrieve_k`` plus the most seen items of any user in the request and the seen
ones are dropped, so each user still gets the top ``retrieve_k`` unseen items.

Example::

    ranking-recommend --bundle runs/quickstart/bundle --users 0 1 2 --top-n 10 --at 1704844800
    ranking-recommend --bundle runs/movielens-1m/bundle --users 1 2 --exclude-seen
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

__all__ = ["BundleError", "Recommender", "filtered_search", "main"]


class Recommender:
    """Loads a bundle once; ``recommend`` serves a batch of users."""

    def __init__(self, bundle: str | Path) -> None:
        self.root = Path(bundle)
        # Format version and the sha256 of every file: a changed file is refused by name.
        self.manifest = read_manifest(self.root)
        arts = self.manifest["artifacts"]
        self.user_tower = torch.jit.load(str(self.root / arts["user_tower"]["file"]))
        serving = self.manifest["serving"]
        self.retrieve_k = int(serving["retrieve_k"])
        self.context_defaults: dict[str, int] = serving["context_defaults"]
        #: None in a retrieval-only bundle: the list is ordered by retrieval score
        self.ranker = None
        if "ranker" in arts:
            self.ranker = torch.jit.load(str(self.root / arts["ranker"]["file"]))
            self.tasks: list[str] = arts["ranker"]["tasks"]
            self.rank_col = self.tasks.index(serving["rank_by"])
            self.ranker_inputs = arts["ranker"]["inputs"]
        self.index = faiss.read_index(str(self.root / self.manifest["index"]["file"]))
        self.item_ids = np.load(self.root / self.manifest["index"]["row_to_item_id"])
        #: (start, end) int64 [N] by corpus row, or None: every item always available
        self.windows: tuple[np.ndarray, np.ndarray] | None = None
        if "availability" in self.manifest["index"]:
            with np.load(self.root / self.manifest["index"]["availability"]["file"]) as z:
                self.windows = (z["start"], z["end"])
        with np.load(self.root / self.manifest["snapshots"]["items"]["file"]) as z:
            self.items = {k: torch.from_numpy(z[k]) for k in z.files}
        with np.load(self.root / self.manifest["snapshots"]["users"]["file"]) as z:
            self.users = {k: torch.from_numpy(z[k]) for k in z.files}
        ids = self.users.pop("user_ids").numpy()
        self.user_order = np.argsort(ids, kind="stable")
        self.user_sorted = ids[self.user_order]
        #: manifest ``serving.seen`` (None in bundles exported before it existed)
        self.seen_spec: dict | None = serving.get("seen")
        #: item input value -> corpus row (-1: none), built on the first seen() call
        self._item_to_row: np.ndarray | None = None
        #: the exported item embeddings [N, D], memory-mapped on the first exact search
        self._embeddings: np.ndarray | None = None

    def user_rows(self, user_ids: list[int]) -> np.ndarray:
        q = np.asarray(user_ids, dtype=np.int64)
        pos = np.searchsorted(self.user_sorted, q)
        pos = np.minimum(pos, len(self.user_sorted) - 1)
        unknown = q[self.user_sorted[pos] != q]
        if unknown.size:
            raise KeyError(f"user id {int(unknown[0])} is not in the bundle's user snapshot")
        return self.user_order[pos]

    def seen(self, user_inputs: dict[str, torch.Tensor]) -> list[np.ndarray]:
        """Per user of ``user_inputs`` (snapshot rows), the corpus rows of the items
        in their behaviour sequences of item ids (``serving.seen``), each once."""
        if self.seen_spec is None:
            raise BundleError(
                f"{self.root}: the manifest has no serving.seen entry (exported by an older "
                "version); export the run again to use --exclude-seen"
            )
        if self._item_to_row is None:  # once per bundle, not per request
            item_values = self.items[self.seen_spec["item_input"]].numpy()
            to_row = np.full(int(item_values.max()) + 2, -1, dtype=np.int64)  # last: no item
            to_row[item_values] = np.arange(len(item_values))
            self._item_to_row = to_row
        to_row = self._item_to_row
        names = self.seen_spec["user_inputs"]
        if not names:
            return [
                np.empty(0, dtype=np.int64) for _ in range(len(next(iter(user_inputs.values()))))
            ]
        lists = np.concatenate([user_inputs[n].numpy() for n in names], axis=1)  # [U, L], -1 pads
        lists = np.where((lists >= 0) & (lists < len(to_row)), lists, len(to_row) - 1)
        rows = to_row[lists]
        return [np.unique(r[r >= 0]) for r in rows]

    def available(self, at: int | None) -> np.ndarray | None:
        """bool [N] corpus rows servable at time ``at`` (None: no restriction)."""
        if at is None or self.windows is None:
            return None
        start, end = self.windows
        return (start <= at) & (at < end)

    def _search(self, query: np.ndarray, k: int, servable: np.ndarray | None) -> np.ndarray:
        """[U, k] corpus rows of the top k among the ``servable`` rows (bool [N]; None:
        all). An IVF or HNSW index that finds fewer than k (few lists probed, or a
        filter that leaves its graph sparse) is completed by exact search over the
        servable rows, so -1 only pads when fewer than k rows are servable."""
        cand = filtered_search(self.index, query, k, servable)
        short = np.flatnonzero((cand < 0).any(axis=1))
        if short.size:
            cand[short] = self._exact_search(query[short], k, servable)
        return cand

    def _candidates(
        self, query: np.ndarray, k: int, servable: np.ndarray | None, seen: list[np.ndarray] | None
    ) -> np.ndarray:
        """[U, k] corpus rows of the top k servable rows, without each user's ``seen``
        rows when given (-1 pads where fewer remain). Over-fetches by the largest
        seen list so that dropping never leaves a user short of what exists."""
        if seen is None:
            return self._search(query, k, servable)
        total = self.index.ntotal if servable is None else int(servable.sum())
        extra = max((len(s) for s in seen), default=0)
        cand = self._search(query, min(k + extra, total), servable)
        out = np.full((len(cand), k), -1, dtype=np.int64)
        for u, (row, drop) in enumerate(zip(cand, seen, strict=True)):
            keep = row[(row >= 0) & ~np.isin(row, drop)][:k]
            out[u, : len(keep)] = keep
        return out

    def embeddings(self) -> np.ndarray:
        """The exported item embeddings [N, D] (memory-mapped once)."""
        if self._embeddings is None:
            path = self.root / self.manifest["index"]["embeddings"]
            self._embeddings = np.load(path, mmap_mode="r")
        return self._embeddings

    def _exact_search(self, query: np.ndarray, k: int, servable: np.ndarray | None) -> np.ndarray:
        """[U, k] exact inner-product top k over the servable rows (-1 pads past them)."""
        self.embeddings()
        rows = np.arange(self.index.ntotal) if servable is None else np.flatnonzero(servable)
        scores = torch.from_numpy(query) @ torch.from_numpy(np.asarray(self._embeddings[rows])).T
        top = torch.topk(scores, min(k, len(rows)), dim=1).indices.numpy()
        out = np.full((len(query), k), -1, dtype=np.int64)
        out[:, : top.shape[1]] = rows[top]
        return out

    @torch.no_grad()
    def recommend(
        self,
        user_ids: list[int],
        top_n: int = 10,
        at: int | None = None,
        exclude_seen: bool = False,
    ) -> list[dict]:
        """Top ``top_n`` items per user; with ``at``, only items available at that time;
        with ``exclude_seen``, none of the user's seen items (see :meth:`seen`). Fewer
        than ``top_n`` only when fewer items are left."""
        rows = torch.from_numpy(self.user_rows(user_ids))
        user_inputs = {k: v[rows] for k, v in self.users.items()}
        query = self.user_tower(user_inputs).float().contiguous().numpy()
        servable = self.available(at)
        seen = self.seen(user_inputs) if exclude_seen else None
        total = self.index.ntotal if servable is None else int(servable.sum())
        k = min(self.retrieve_k, total)
        n_users = len(user_ids)
        if k == 0:
            return [{"user_id": int(u), "items": [], "scores": []} for u in user_ids]
        if self.ranker is None:  # retrieval-only bundle: the top N by inner product
            return self._by_retrieval_score(user_ids, query, min(top_n, k), servable, seen)
        cand = self._candidates(query, k, servable, seen)  # [U, K] corpus rows (-1: none)
        found = torch.from_numpy(cand >= 0)
        cand = np.where(cand >= 0, cand, 0)
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
        probs = probs.masked_fill(~found, -torch.inf)
        top = torch.topk(probs, min(top_n, k), dim=1)
        out = []
        for u in range(n_users):
            real = torch.isfinite(top.values[u]).numpy()
            picked = cand[u, top.indices[u].numpy()[real]]
            out.append(
                {
                    "user_id": int(user_ids[u]),
                    "items": [int(i) for i in self.item_ids[picked]],
                    "scores": [round(float(s), 6) for s in top.values[u][real]],
                }
            )
        return out

    def _by_retrieval_score(
        self,
        user_ids: list[int],
        query: np.ndarray,
        n: int,
        servable: np.ndarray | None,
        seen: list[np.ndarray] | None,
    ) -> list[dict]:
        """Top ``n`` corpus items per user by the towers' inner product (the index's
        own order; the scores recomputed from the exported embeddings)."""
        cand = self._candidates(query, n, servable, seen)
        emb = self.embeddings()
        out = []
        for u, rows in enumerate(cand):
            rows = rows[rows >= 0]
            scores = np.asarray(emb[rows]) @ query[u]
            order = np.argsort(-scores, kind="stable")  # ANN results may come out of order
            out.append(
                {
                    "user_id": int(user_ids[u]),
                    "items": [int(i) for i in self.item_ids[rows[order]]],
                    "scores": [round(float(s), 6) for s in scores[order]],
                }
            )
        return out


def filtered_search(
    index: faiss.Index, query: np.ndarray, k: int, servable: np.ndarray | None
) -> np.ndarray:
    """[U, k] rows of the index's top k for float32 ``query`` [U, D], visiting only
    the ``servable`` rows (bool [N], packed into an ``IDSelectorBitmap``; None: all);
    -1 where the index found fewer. IVF and HNSW keep their own nprobe / efSearch."""
    if servable is None:
        return index.search(query, k)[1]
    bits = np.packbits(servable, bitorder="little")  # kept alive for the search
    selector = faiss.IDSelectorBitmap(len(servable), faiss.swig_ptr(bits))
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexIVF):
        params = faiss.SearchParametersIVF(sel=selector, nprobe=index.nprobe)
    elif isinstance(index, faiss.IndexHNSW):
        params = faiss.SearchParametersHNSW(sel=selector, efSearch=index.hnsw.efSearch)
    else:
        params = faiss.SearchParameters(sel=selector)
    return index.search(query, k, params=params)[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ranking-recommend", description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", required=True, help="export bundle folder (has manifest.json)")
    parser.add_argument("--users", required=True, nargs="+", type=int, help="raw user ids")
    parser.add_argument("--top-n", type=int, default=10, help="items per user (default 10)")
    parser.add_argument(
        "--at",
        type=int,
        default=None,
        help="request time (dataset time units): serve only the items available then "
        "(a bundle without availability windows serves every item)",
    )
    parser.add_argument(
        "--exclude-seen",
        action="store_true",
        help="never recommend an item of the user's behaviour sequences of item ids "
        "(the snapshot's history, e.g. the last max_len items of hist_items; manifest "
        "serving.seen)",
    )
    args = parser.parse_args(argv)
    try:
        rec = Recommender(args.bundle)
        if args.at is not None and rec.windows is None:
            print(
                f"warning: {args.bundle} has no availability windows; --at is ignored and "
                "every item is served",
                file=sys.stderr,
            )
        if args.exclude_seen and rec.seen_spec is not None and not rec.seen_spec["user_inputs"]:
            print(
                f"warning: {args.bundle} has no user lists of item ids; --exclude-seen "
                "drops nothing",
                file=sys.stderr,
            )
        results = rec.recommend(args.users, args.top_n, at=args.at, exclude_seen=args.exclude_seen)
    except (BundleError, KeyError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for line in results:
        print(json.dumps(line))
    return 0


if __name__ == "__main__":
    sys.exit(main())
