"""Serving latency of an export bundle, per artifact format, on this machine's CPU.

One request = 1 user x C candidates (default 500): user tower (batch 1) -> exact
FAISS inner-product search over the corpus -> gather the candidates' item inputs
-> ranker (batch C) -> top-N. Reported per format (eager, TorchScript, .pt2
ExportedProgram, and the AOTInductor package with ``--aoti``) and per intra-op
thread count: p50/p99 of the full request and of its parts over ``--requests``
requests after ``--warmup``, and ranker-only throughput at batch 512 and 4096.

The corpus: the bundle's items, or with ``--corpus N`` a synthetic corpus of N
items whose every item-side input column is drawn (independently, with
replacement) from the bundle's own corpus; their embeddings come from the item
tower and go into an exact ``IndexFlatIP`` (whatever index the bundle ships).
The eager modules are rebuilt from the run's checkpoints (``--run``, the bundle's
parent by default), exactly as the export builds them.

    .venv/bin/python scripts/bench/latency.py --run runs/latest --corpus 100000
    .venv/bin/python scripts/bench/latency.py --run runs/latest --corpus 100000 --aoti
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import faiss
import numpy as np
import torch
from machine import cpu_model  # scripts/bench/machine.py (this script's folder)

from ranking.serving.bundle import Bundle

Fn = Callable[[dict[str, torch.Tensor]], torch.Tensor]


def eager_modules(run: Path, bundle: Bundle) -> dict[str, torch.nn.Module]:
    """The guarded eager modules of the run (the training stack is needed here only)."""
    from ranking.cli.runs import run_config
    from ranking.pipeline import load_stage
    from ranking.schema import Schema
    from ranking.serving.artifacts import guarded
    from ranking.serving.convert import (
        item_tower_predictor,
        ranker_predictor,
        user_tower_predictor,
    )

    run_dir, cfg = run_config(run)
    data = Path(cfg.data.path)
    if not data.is_absolute():
        data = run_dir.parents[1] / data  # runs/<stamp> lives next to the data folder
    schema = Schema.load(data)
    retrieval = load_stage("retrieval", cfg, schema, run_dir).model
    ranker = load_stage("ranking", cfg, schema, run_dir).model
    preds = {
        "user_tower": user_tower_predictor(schema, retrieval),
        "item_tower": item_tower_predictor(schema, retrieval),
        "ranker": ranker_predictor(schema, ranker),
    }
    arts = bundle.manifest["artifacts"]
    return {name: guarded(p, arts[name]["inputs"]) for name, p in preds.items()}


def load_formats(bundle: Bundle, run: Path | None, aoti: bool) -> dict[str, dict[str, Fn]]:
    out: dict[str, dict[str, Fn]] = {}
    if run is not None:
        out["eager"] = eager_modules(run, bundle)
    names = list(bundle.manifest["artifacts"])
    out["torchscript"] = {n: bundle.load(n, "torchscript") for n in names}
    out["pt2"] = {n: bundle.load(n, "pt2") for n in names}
    if aoti:
        if "aoti" in bundle.formats():
            out["aoti"] = {n: bundle.load(n, "aoti") for n in names}
        else:  # compile here from the bundle's ExportedPrograms
            from ranking.serving import pt2

            tmp = Path(tempfile.mkdtemp(prefix="aoti_"))
            out["aoti"] = {}
            for n in names:
                program = torch.export.load(str(bundle.artifact_file(n, "pt2")))
                pt2.compile_aoti(program, tmp / f"{n}.aoti.pt2")
                out["aoti"][n] = pt2.load_aoti(tmp / f"{n}.aoti.pt2")
    return out


def synthetic_corpus(items: dict[str, np.ndarray], n: int, seed: int) -> dict[str, np.ndarray]:
    """n items: each input column drawn independently from the real corpus's rows."""
    rng = np.random.default_rng(seed)
    size = len(next(iter(items.values())))
    return {k: v[rng.integers(0, size, n)] for k, v in items.items()}


@torch.no_grad()
def embed(item_tower: Fn, items: dict[str, torch.Tensor], batch: int = 8192) -> np.ndarray:
    n = len(next(iter(items.values())))
    parts = [
        item_tower({k: v[i : i + batch] for k, v in items.items()}).float().numpy()
        for i in range(0, n, batch)
    ]
    return np.ascontiguousarray(np.concatenate(parts), dtype=np.float32)


def percentiles(xs: list[float]) -> tuple[float, float]:
    a = np.array(xs) * 1e3
    return float(np.percentile(a, 50)), float(np.percentile(a, 99))


class Server:
    """The request path of ranking-recommend for one user, with stage timings."""

    def __init__(self, bundle: Bundle, fns: dict[str, Fn], items, users, index, candidates):
        self.user_tower, self.ranker = fns["user_tower"], fns["ranker"]
        self.items, self.users, self.index, self.k = items, users, index, candidates
        self.extra: dict[str, torch.Tensor] = {}
        have = set(items) | set(users)
        defaults = bundle.manifest["serving"]["context_defaults"]
        for spec in bundle.manifest["artifacts"]["ranker"]["inputs"]:
            name = spec["name"]
            if name in have:
                continue
            if spec["dtype"] == "float32":  # one row, expanded to each batch
                self.extra[name] = torch.zeros(1, int(spec["shape"][1]))
            else:
                self.extra[name] = torch.full((1,), int(defaults.get(name, 0)))
        self.ranker_inputs = {s["name"] for s in bundle.manifest["artifacts"]["ranker"]["inputs"]}

    def ranker_batch(self, user_row: int, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        n = len(rows)
        inputs = {
            k: v[user_row : user_row + 1].expand(n, *v.shape[1:])
            for k, v in self.users.items()
            if k in self.ranker_inputs
        }
        inputs.update({k: v.index_select(0, rows) for k, v in self.items.items()})
        inputs.update({k: v.expand(n, *v.shape[1:]) for k, v in self.extra.items()})
        return inputs

    @torch.no_grad()
    def request(self, user_row: int) -> tuple[float, float, float, float]:
        t0 = time.perf_counter()
        user = {k: v[user_row : user_row + 1] for k, v in self.users.items()}
        query = self.user_tower(user).float().numpy()
        t1 = time.perf_counter()
        _, cand = self.index.search(query, self.k)
        t2 = time.perf_counter()
        inputs = self.ranker_batch(user_row, torch.from_numpy(cand[0]))
        probs = self.ranker(inputs)
        torch.topk(probs[:, 0], 10)
        t3 = time.perf_counter()
        return t3 - t0, t1 - t0, t2 - t1, t3 - t2


@torch.no_grad()
def ranker_only(server: Server, user_rows: np.ndarray, batch: int, iters: int, warmup: int):
    rng = np.random.default_rng(1)
    n_items = len(next(iter(server.items.values())))
    batches = [
        server.ranker_batch(
            int(user_rows[i % len(user_rows)]), torch.from_numpy(rng.integers(0, n_items, batch))
        )
        for i in range(min(iters, 8))
    ]
    for i in range(warmup):
        server.ranker(batches[i % len(batches)])
    times = []
    for i in range(iters):
        t = time.perf_counter()
        server.ranker(batches[i % len(batches)])
        times.append(time.perf_counter() - t)
    return times


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", default="runs/latest", help="run folder (checkpoints, for eager)")
    p.add_argument("--bundle", default=None, help="bundle folder (default: RUN/bundle)")
    p.add_argument("--corpus", type=int, default=0, help="synthetic corpus size (0: the bundle's)")
    p.add_argument("--candidates", type=int, default=500)
    p.add_argument("--requests", type=int, default=1000)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument(
        "--formats", nargs="+", default=None, help="subset of eager torchscript pt2 aoti"
    )
    p.add_argument("--aoti", action="store_true", help="also AOTInductor (compiled here if absent)")
    p.add_argument("--throughput-batches", type=int, nargs="+", default=[512, 4096])
    p.add_argument("--throughput-iters", type=int, default=50)
    p.add_argument("--no-eager", action="store_true", help="skip eager (no training stack needed)")
    args = p.parse_args(argv)

    run = Path(args.run)
    bundle = Bundle(args.bundle or run / "bundle")
    fmts = load_formats(bundle, None if args.no_eager else run, args.aoti)
    if args.formats:
        fmts = {k: v for k, v in fmts.items() if k in args.formats}

    with np.load(bundle.root / bundle.manifest["snapshots"]["items"]["file"]) as z:
        items_np = {k: z[k] for k in z.files}
    with np.load(bundle.root / bundle.manifest["snapshots"]["users"]["file"]) as z:
        users_np = {k: z[k] for k in z.files if k != "user_ids"}
    corpus_note = f"the bundle's {len(next(iter(items_np.values())))} items"
    if args.corpus:
        items_np = synthetic_corpus(items_np, args.corpus, seed=0)
        corpus_note = (
            f"synthetic {args.corpus} items (item-side inputs drawn per column from the "
            f"bundle's corpus), embedded by the bundle's item tower"
        )
    items = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in items_np.items()}
    users = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in users_np.items()}
    torch.set_num_threads(os.cpu_count() or 1)
    emb = embed(fmts.get("torchscript", next(iter(fmts.values())))["item_tower"], items)
    index = faiss.IndexFlatIP(emb.shape[1])
    index.add(emb)

    print(f"command: {shlex.join([sys.executable, *sys.argv])}")
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"cpu: {cpu_model()}; {os.cpu_count()} logical cores, {affinity} usable")
    print(
        f"torch {torch.__version__}, faiss {faiss.__version__}, python {platform.python_version()}"
    )
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"load average before: {load} (other processes on the machine skew timings)")
    print(
        f"corpus: {corpus_note}; index: exact IndexFlatIP, D={emb.shape[1]}, ntotal={index.ntotal}"
    )
    print(
        f"request: 1 user x {args.candidates} candidates; {args.requests} requests after "
        f"{args.warmup} warm-up, users cycled over the snapshot; times in ms"
    )
    print()
    print(
        "| format | threads | request p50 | request p99 | user tower p50 | search p50 | "
        "ranker+gather p50 | ranker+gather p99 | ranker 500 p50 | ranker 500 p99 | "
        + " | ".join(f"ranker rows/s @{b}" for b in args.throughput_batches)
        + " |"
    )
    print("|" + "---|" * (10 + len(args.throughput_batches)))
    n_users = len(next(iter(users.values())))
    user_rows = np.random.default_rng(0).integers(0, n_users, args.requests + args.warmup)
    for threads in args.threads:
        torch.set_num_threads(threads)
        faiss.omp_set_num_threads(threads)
        for fmt, fns in fmts.items():
            server = Server(bundle, fns, items, users, index, args.candidates)
            for i in range(args.warmup):
                server.request(int(user_rows[i]))
            stats = [server.request(int(u)) for u in user_rows[args.warmup :]]
            total, utower, search, rank = (list(x) for x in zip(*stats, strict=True))
            r500 = ranker_only(server, user_rows, args.candidates, args.requests, args.warmup)
            tput = []
            for b in args.throughput_batches:
                ts = ranker_only(server, user_rows, b, args.throughput_iters, 5)
                tput.append(b / statistics.median(ts))
            p50, p99 = percentiles(total)
            rk50, rk99 = percentiles(rank)
            o50, o99 = percentiles(r500)
            print(
                f"| {fmt} | {threads} | {p50:.2f} | {p99:.2f} | {percentiles(utower)[0]:.2f} | "
                f"{percentiles(search)[0]:.2f} | {rk50:.2f} | {rk99:.2f} | {o50:.2f} | {o99:.2f} | "
                + " | ".join(f"{t:,.0f}" for t in tput)
                + " |",
                flush=True,
            )
    print(f"\nload average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
