"""Write the serving bundle: scripted predictors, item embeddings, FAISS index,
feature snapshots and ``manifest.json``.

Bundle layout (format version 2; ``ranking.serving.bundle`` opens it)::

    manifest.json        what everything is (see ``build_manifest``)
    user_tower.pt        TorchScript: inputs (user-side) -> float32 [B, D]
    item_tower.pt        TorchScript: inputs (item-side) -> float32 [B, D]
    ranker.pt            TorchScript: inputs (all sides) -> float32 [B, T] probabilities
    *.pt2                the same three as torch.export programs (``*.aoti.pt2``:
                         AOTInductor packages, with export.aoti=true); every artifact
                         checks its inputs and maps ids into range (serving.guards)
    preprocess.py        numpy reference of the manifest's ``preprocessing`` contract
    test_vectors.pt/json raw requests, their tensors, each artifact's expected output,
                         and the user-tower outputs' exact top 10 over item_embeddings
    item_embeddings.npy  float32 [N, D], row i = item_ids[i]
    item_ids.npy         int64 [N], raw item id of each corpus row
    items.faiss          FAISS inner-product index over item_embeddings (row = corpus row;
                         exact, IVF or HNSW, see ranking.serving.index)
    item_features.npz    item-side ranker inputs per corpus row (same keys as the artifacts)
    item_availability.npz  (datasets with availability windows) ``start``, ``end`` int64 [N]:
                         corpus row i can be served at time t when start[i] <= t < end[i]
                         (int64 min / max: unbounded), in the dataset's time units
    user_snapshot.npz    user-side inputs of every known user + ``user_ids`` (int64 [U])
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import torch

from ranking.data.availability import OPEN_END, OPEN_START, read_windows
from ranking.data.batch import Batch
from ranking.models.dlrm import DLRM
from ranking.models.two_tower import TwoTower
from ranking.schema import Schema, Side
from ranking.serving.artifacts import write_artifacts
from ranking.serving.bundle import FORMAT_VERSION as BUNDLE_FORMAT_VERSION
from ranking.serving.convert import (
    flat_inputs,
    item_tower_predictor,
    ranker_predictor,
    user_tower_predictor,
)
from ranking.serving.index import IndexConfig, build_index, measure_index, sample_rows

FORMAT_VERSION = BUNDLE_FORMAT_VERSION  # ranking.serving.bundle reads it back
AVAILABILITY_FILE = "item_availability.npz"
log = logging.getLogger(__name__)


def _stack_inputs(chunks: list[dict[str, torch.Tensor]]) -> dict[str, np.ndarray]:
    return {k: torch.cat([c[k] for c in chunks]).numpy() for k in chunks[0]}


def snapshot(schema: Schema, batches, sides: tuple[Side, ...]) -> dict[str, np.ndarray]:
    """Flat inputs of ``sides`` for every row of ``batches`` (+ user/item ids)."""
    chunks, users, items = [], [], []
    for batch in batches:
        chunks.append(flat_inputs(schema, batch, sides))
        users.append(batch.user_ids)
        items.append(batch.item_ids)
    out = _stack_inputs(chunks)
    out["user_ids"] = torch.cat(users).numpy()
    out["item_ids"] = torch.cat(items).numpy()
    return out


def input_specs(schema: Schema, sides: tuple[Side, ...]) -> list[dict[str, Any]]:
    """Name, dtype and shape of each input of an artifact over ``sides``."""
    specs = []
    for f in schema.sparse(*sides):
        specs.append(
            {
                "name": f.name,
                "dtype": "int64",
                "shape": ["B", "L"] if f.is_list else ["B"],
                "padding": -1 if f.is_list else None,
                "table": f.table,
                "rows": schema.tables[f.table].num_rows,
            }
        )
    for side in sides:
        dense = [f.name for f in schema.dense(side)]
        specs.append(
            {
                "name": f"dense_{side}",
                "dtype": "float32",
                "shape": ["B", len(dense)],
                "columns": dense,
            }
        )
    return specs


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _version(pkg: str) -> str | None:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def export_bundle(
    out: str | Path,
    schema: Schema,
    dense_stats: dict[str, Any],
    retrieval: TwoTower,
    ranker: DLRM | None,
    tasks: list[str] | None,
    corpus_batches,
    user_batches,
    metrics: dict[str, float] | None = None,
    run_id: str | None = None,
    retrieve_k: int = 100,
    rank_by: str | None = None,
    aoti: bool | list[str] = False,
    index: dict[str, Any] | None = None,
) -> Path:
    """Export both stages into one self-contained folder. Returns the folder.

    Args:
        ranker, tasks: the ranking stage, or None for a retrieval-only bundle
            (towers, index and snapshots; ``ranking-recommend`` then orders the
            candidates by their retrieval score).
        corpus_batches: iterable of item-corpus :class:`Batch` (every item once).
        user_batches: iterable of user-snapshot batches (every user once).
        rank_by: the task whose probability orders the final list (default: the first).
        aoti: also compile AOTInductor ``.aoti.pt2`` packages (~10-30 s per
            artifact): True for every artifact, or the names of the ones to compile.
        index: :class:`~ranking.serving.index.IndexConfig` fields (default: exact).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    retrieval = retrieval.cpu().eval()
    predictors = {
        "user_tower": user_tower_predictor(schema, retrieval),
        "item_tower": item_tower_predictor(schema, retrieval),
    }
    if ranker is not None:
        predictors["ranker"] = ranker_predictor(schema, ranker.cpu().eval())
    user_pred = predictors["user_tower"]

    with torch.no_grad():
        corpus: list[Batch] = list(corpus_batches)
        items = snapshot(schema, corpus, (Side.ITEM,))
        emb = torch.cat([retrieval.encode_items(b) for b in corpus]).numpy().astype(np.float32)
    item_ids = items.pop("item_ids")
    items.pop("user_ids")
    np.save(out / "item_embeddings.npy", emb)
    np.save(out / "item_ids.npy", item_ids)
    np.savez(out / "item_features.npz", **items)
    windows = read_windows(schema)
    if windows is not None:
        np.savez(out / AVAILABILITY_FILE, start=windows.start[item_ids], end=windows.end[item_ids])

    users = snapshot(schema, user_batches, (Side.USER,))
    users.pop("item_ids")
    np.savez(out / "user_snapshot.npz", **users)

    index_cfg = IndexConfig(**(index or {}))
    faiss_index, index_info = build_index(emb, index_cfg)
    faiss.write_index(faiss_index, str(out / "items.faiss"))
    queries = _sample_queries(user_pred, users, emb, index_cfg)
    index_info.update(measure_index(faiss_index, emb, queries, index_cfg.eval_k))
    log.info(
        "FAISS %s over %d items: recall@%d vs exact search %.4f (%d user queries), "
        "1-thread latency p50 %.3f ms, p99 %.3f ms",
        index_info["type"],
        len(item_ids),
        index_info["k"],
        index_info["recall_vs_exact"],
        index_info["queries"],
        index_info["latency_ms"]["p50"],
        index_info["latency_ms"]["p99"],
    )

    manifest = build_manifest(
        schema,
        dense_stats,
        retrieval,
        tasks,
        metrics or {},
        run_id,
        retrieve_k,
        (rank_by or tasks[0]) if ranker is not None else None,
        n_items=len(item_ids),
        n_users=len(users["user_ids"]),
        index_info=index_info,
        ranker_outputs=ranker.output_columns() if ranker is not None else None,
        availability=windows is not None,
    )
    write_artifacts(
        out,
        manifest,
        schema,
        dense_stats,
        predictors,
        aoti=aoti,
        corpus=(emb, item_ids),
    )
    manifest["files"] = {
        p.name: _sha256(p)
        for p in sorted(out.iterdir())
        if p.is_file() and p.name != "manifest.json"
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=False))
    return out


def _sample_queries(
    user_pred: torch.nn.Module,
    users: dict[str, np.ndarray],
    emb: np.ndarray,
    cfg: IndexConfig,
) -> np.ndarray:
    """User-tower outputs of a sample of the snapshot's users: the index's test
    queries (item embeddings when the snapshot is empty)."""
    n = len(users["user_ids"])
    if n == 0:
        return emb[sample_rows(len(emb), cfg.eval_queries, cfg.seed)]
    rows = sample_rows(n, cfg.eval_queries, cfg.seed)
    inputs = {k: torch.from_numpy(v[rows]) for k, v in users.items() if k != "user_ids"}
    with torch.no_grad():
        return user_pred(inputs).float().numpy()


def seen_entry(schema: Schema) -> dict[str, Any]:
    """What ``ranking-recommend --exclude-seen`` drops: the items in the user
    snapshot's behaviour sequences that hold item ids (the user-side lists looked
    up in the item id's table). Item ids are vocabulary ids (never hashed), so a
    list entry equals the item input's value of exactly one corpus item."""
    table = schema.feature(schema.item_id).table
    lists = [f.name for f in schema.sparse(Side.USER) if f.is_list and f.table == table]
    return {
        "item_input": schema.item_id,
        "user_inputs": lists,
        "rule": "corpus row i is seen by a user when item_features.npz[item_input][i] is "
        "in one of the user's user_inputs in user_snapshot.npz (-1 pads)",
    }


def _availability_entry(schema: Schema) -> dict[str, Any]:
    return {
        "file": AVAILABILITY_FILE,
        "rule": "corpus row i can be served at time t when start[i] <= t < end[i]",
        "unbounded": {"start": int(OPEN_START), "end": int(OPEN_END)},
        "time_units": f"those of the dataset's time column {schema.time!r}",
        "columns": dict(schema.availability),
    }


def build_manifest(
    schema: Schema,
    dense_stats: dict[str, Any],
    retrieval: TwoTower,
    tasks: list[str] | None,
    metrics: dict[str, float],
    run_id: str | None,
    retrieve_k: int,
    rank_by: str | None,
    n_items: int,
    n_users: int,
    index_info: dict[str, Any] | None = None,
    ranker_outputs: list[dict[str, Any]] | None = None,
    availability: bool = False,
) -> dict[str, Any]:
    from ranking.hashing import DEFAULT_SEED

    features = {}
    for f in schema.features:
        entry: dict[str, Any] = {"side": str(f.side), "kind": str(f.kind)}
        if f.is_sparse:
            entry.update(
                table=f.table,
                rows=schema.tables[f.table].num_rows,
                pooling=schema.tables[f.table].pooling,
                raw_to_row=(
                    {"hash": "splitmix64", "seed": DEFAULT_SEED, "buckets": f.hash_buckets}
                    if f.hashed
                    else {"identity": True, "vocab_size": f.vocab_size}
                ),
            )
            if f.is_list:
                entry.update(max_len=f.max_len, truncate_keeps="last" if f.truncate else None)
        else:
            entry.update(transform=f.transform, stats=dense_stats.get("features", {}).get(f.name))
        features[f.name] = entry
    context_defaults = {f.name: 0 for f in schema.sparse(Side.CONTEXT)}

    def tower(side: Side, output: str) -> dict[str, Any]:
        return {
            "file": f"{side}_tower.pt",
            "format": "torchscript",
            "inputs": input_specs(schema, (side,)),
            "output": {"name": output, "dtype": "float32", "shape": ["B", retrieval.out_dim]},
        }

    artifacts: dict[str, Any] = {
        "user_tower": tower(Side.USER, "user_embedding"),
        "item_tower": tower(Side.ITEM, "item_embedding"),
    }
    if tasks is not None:
        artifacts["ranker"] = {
            "file": "ranker.pt",
            "format": "torchscript",
            "inputs": input_specs(schema, (Side.USER, Side.ITEM, Side.CONTEXT)),
            "output": {"name": "probabilities", "dtype": "float32", "shape": ["B", len(tasks)]},
            "tasks": list(tasks),
            # column i = task i; ESMM columns are joint probabilities (pCTCVR)
            "outputs": ranker_outputs,
        }
    return {
        "format_version": FORMAT_VERSION,
        "dataset": schema.name,
        "versions": {
            "ranking": _version("ranking"),
            "torch": torch.__version__,
            "faiss": faiss.__version__,
            "python": platform.python_version(),
        },
        "mlflow_run_id": run_id,
        "metrics": metrics,
        "artifacts": artifacts,
        # type/params of the FAISS index, its recall@k against exact search and
        # single-thread query latency, measured at export (ranking.serving.index)
        "index": {
            "file": "items.faiss",
            "type": "IndexFlatIP",
            "metric": "inner_product",
            "ntotal": n_items,
            **(index_info or {}),
            "row_to_item_id": "item_ids.npy",
            "embeddings": "item_embeddings.npy",
            **({"availability": _availability_entry(schema)} if availability else {}),
        },
        "snapshots": {
            "items": {"file": "item_features.npz", "rows": n_items, "order": "item_ids.npy"},
            "users": {"file": "user_snapshot.npz", "rows": n_users, "id_key": "user_ids"},
        },
        "id_mapping": {
            "user": f"raw user id = {schema.user_id}; looked up in user_snapshot.npz['user_ids']",
            "item": f"raw item id = {schema.item_id}; FAISS/corpus row i holds item_ids.npy[i]",
        },
        "serving": {
            "retrieve_k": retrieve_k,
            # the ranker's task ordering the final list; null in a retrieval-only
            # bundle (no ranker): the final list is the top by retrieval score
            "rank_by": rank_by,
            "order": "ranker" if tasks is not None else "retrieval_score",
            "context_defaults": context_defaults,
            "seen": seen_entry(schema),
        },
        "features": features,
    }
