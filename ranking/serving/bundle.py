"""Open an export bundle safely: format version, sha256 of every file, artifacts.

Imports torch, numpy and the standard library only (``ranking-recommend`` and
the serving team use it without the training stack).

Example::

    bundle = Bundle("runs/latest/bundle")          # checks version and sha256s
    ranker = bundle.load("ranker", "torchscript")   # or "pt2", "aoti"
    probs = ranker(inputs)                          # float32 [B, T], manifest's task order
    bundle.check_test_vectors("pt2")                # {artifact or "retrieval": max abs diff}

    python -m ranking.serving.bundle runs/latest/bundle   # verify + test vectors, all formats
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

FORMAT_VERSION = 2
SUPPORTED_FORMATS = (FORMAT_VERSION,)
ARTIFACT_FORMATS = ("torchscript", "pt2", "aoti")
TEST_VECTORS = "test_vectors.pt"


class BundleError(RuntimeError):
    """The bundle is missing a file or disagrees with its manifest."""


def sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_manifest(root: str | Path, verify: bool = True) -> dict[str, Any]:
    """Parse ``root/manifest.json``; with ``verify``, check its format version and
    the sha256 of every file it lists. Raises :class:`BundleError` naming the file."""
    root = Path(root)
    path = root / "manifest.json"
    if not path.exists():
        raise BundleError(f"{path}: not found (is {root} an export bundle?)")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise BundleError(f"{path}: not valid JSON ({e})") from None
    version = manifest.get("format_version")
    if version not in SUPPORTED_FORMATS:
        raise BundleError(
            f"{path}: bundle format version {version!r}; this loader reads "
            f"{', '.join(map(str, SUPPORTED_FORMATS))} (re-export with this package's version)"
        )
    if verify:
        for name, digest in manifest.get("files", {}).items():
            f = root / name
            if not f.is_file():
                raise BundleError(f"{f}: listed in the manifest but missing")
            if sha256(f) != digest:
                raise BundleError(
                    f"{f}: sha256 differs from the manifest (file changed or corrupted)"
                )
    return manifest


def check_inputs(specs: list[dict[str, Any]], inputs: dict[str, torch.Tensor]) -> None:
    """Host-side input checks against an artifact's manifest specs (names, dtype,
    rank, batch, widths, list lengths), with messages naming the input. The
    TorchScript artifacts do the same inside; ``.pt2`` loaders call this first."""
    names = [s["name"] for s in specs]
    for key in inputs:
        if key not in names:
            raise ValueError(f"unexpected input {key!r}; this artifact takes: {', '.join(names)}")
    batch = None
    for s in specs:
        name = s["name"]
        if name not in inputs:
            raise ValueError(f"missing input {name!r}; this artifact takes: {', '.join(names)}")
        x = inputs[name]
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"input {name!r} must be a tensor, got {type(x).__name__}")
        want = getattr(torch, s["dtype"])
        if x.dtype != want:
            raise TypeError(f"input {name!r} must be {s['dtype']}, got {str(x.dtype)[6:]}")
        if x.dim() != len(s["shape"]):
            raise ValueError(
                f"input {name!r} must have {len(s['shape'])} dimensions, got shape {list(x.shape)}"
            )
        if batch is None:
            batch = (name, x.shape[0])
            if x.shape[0] < 1:
                raise ValueError(f"input {name!r} has an empty batch (B must be >= 1)")
        elif x.shape[0] != batch[1]:
            raise ValueError(
                f"input {name!r} has batch size {x.shape[0]} but {batch[0]!r} has {batch[1]}"
            )
        if s["dtype"] == "float32" and x.shape[1] != int(s["shape"][1]):
            raise ValueError(f"input {name!r} must have {s['shape'][1]} columns, got {x.shape[1]}")
        if "max_len" in s and not 1 <= x.shape[1] <= int(s["max_len"]):
            raise ValueError(
                f"input {name!r} has list length {x.shape[1]}; it must lie in "
                f"[1, {s['max_len']}] (pad with -1, keep the last max_len ids)"
            )


class CheckedArtifact:
    """A ``.pt2`` callable behind :func:`check_inputs` (TorchScript checks inside)."""

    def __init__(self, fn: Callable, specs: list[dict[str, Any]]) -> None:
        self.fn = fn
        self.specs = specs

    def __call__(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        check_inputs(self.specs, inputs)
        return self.fn(inputs)


class Bundle:
    """A verified export bundle.

    Args:
        root: the bundle folder.
        verify: check the sha256 of every file listed in the manifest (default).
    """

    def __init__(self, root: str | Path, verify: bool = True) -> None:
        self.root = Path(root)
        self.manifest = read_manifest(self.root, verify=verify)

    def artifact_file(self, name: str, fmt: str = "torchscript") -> Path:
        arts = self.manifest["artifacts"]
        if name not in arts:
            raise BundleError(f"{self.root}: no artifact {name!r} (has {sorted(arts)})")
        files = arts[name].get("formats", {"torchscript": arts[name]["file"]})
        if fmt not in files:
            hint = " (export with export.aoti=true)" if fmt == "aoti" else ""
            raise BundleError(
                f"{self.root}: artifact {name!r} has no {fmt!r} file (has {sorted(files)}){hint}"
            )
        return self.root / files[fmt]

    def load(self, name: str, fmt: str = "torchscript") -> Callable:
        """Load one artifact: ``fn({input: tensor}) -> tensor``."""
        path = self.artifact_file(name, fmt)
        if fmt == "torchscript":
            return torch.jit.load(str(path), map_location="cpu").eval()
        specs = self.manifest["artifacts"][name]["inputs"]
        if fmt == "pt2":
            return CheckedArtifact(torch.export.load(str(path)).module(), specs)
        if fmt == "aoti":
            import torch._inductor as inductor

            return CheckedArtifact(inductor.aoti_load_package(str(path)), specs)
        raise BundleError(f"unknown artifact format {fmt!r}; use one of {ARTIFACT_FORMATS}")

    def formats(self) -> list[str]:
        """Formats every artifact of this bundle has."""
        arts = self.manifest["artifacts"].values()
        return [
            f
            for f in ARTIFACT_FORMATS
            if all(f in a.get("formats", {"torchscript": a["file"]}) for a in arts)
        ]

    def test_vectors(self) -> dict[str, Any]:
        return torch.load(self.root / TEST_VECTORS, weights_only=True)

    @torch.no_grad()
    def check_test_vectors(self, fmt: str = "torchscript") -> dict[str, float]:
        """Max abs difference per artifact between ``fmt`` and the test vectors'
        expected outputs, and ``retrieval``'s max score difference
        (:meth:`check_retrieval`) where the vectors hold that case. Raises
        BundleError above the recorded tolerance."""
        vectors = self.test_vectors()
        tol = float(vectors["tolerance"])
        out = {}
        for name, case in vectors["artifacts"].items():
            got = self.load(name, fmt)(dict(case["inputs"]))
            want = case["output"]
            if got.shape != want.shape:
                raise BundleError(
                    f"{name} ({fmt}): output shape {tuple(got.shape)}, want {tuple(want.shape)}"
                )
            diff = float((got - want).abs().max())
            if not diff <= tol:
                raise BundleError(f"{name} ({fmt}): max abs diff {diff:.3g} > tolerance {tol}")
            out[name] = diff
        if "retrieval" in vectors:
            out["retrieval"] = self.check_retrieval(vectors, fmt)
        return out

    @torch.no_grad()
    def check_retrieval(self, vectors: dict[str, Any], fmt: str = "torchscript") -> float:
        """Run the retrieval case: the query artifact's outputs on its test inputs,
        exact inner-product search over ``item_embeddings.npy``, and the found
        rows' raw ids (``item_ids.npy``), against the recorded top k
        (:func:`top_k_mismatch`). Returns the max abs score difference; raises
        BundleError on a mismatch."""
        case = vectors["retrieval"]
        emb = np.load(self.root / "item_embeddings.npy")
        ids = np.load(self.root / "item_ids.npy")
        query = self.load(case["query"], fmt)(dict(vectors["artifacts"][case["query"]]["inputs"]))
        k = int(case["k"])
        rows, scores = exact_top_k(query.float().numpy(), emb, k + 1)
        # a query off by the tolerance per element moves a score by at most this much
        tol = (
            float(vectors["tolerance"])
            * np.sqrt(emb.shape[1])
            * max(float(np.linalg.norm(emb, axis=1).max(initial=0.0)), 1.0)
        )
        want_rows, want_scores = case["rows"].numpy(), case["scores"].numpy()
        nxt = scores[:, k] if scores.shape[1] > k else None
        got_rows = rows[:, :k]
        why = top_k_mismatch(
            got_rows,
            scores[:, :k],
            want_rows,
            want_scores,
            tol,
            nxt,
            got_ids=ids[got_rows],
            want_ids=case["item_ids"].numpy(),
        )
        if why is not None:
            raise BundleError(f"retrieval ({fmt}): {why}")
        return float(np.abs(scores[:, :k] - want_scores).max(initial=0.0))


def exact_top_k(queries: np.ndarray, corpus: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows int64 [B, k], scores float32 [B, k]): each query's k corpus rows of
    highest inner product, best first, ties by the lower row (float64 products)."""
    scores = queries.astype(np.float64) @ corpus.astype(np.float64).T  # [B, N]
    k = min(k, corpus.shape[0])
    rows = np.broadcast_to(np.arange(scores.shape[1]), scores.shape)
    order = np.lexsort((rows, -scores), axis=1)[:, :k]
    return order.astype(np.int64), np.take_along_axis(scores, order, axis=1).astype(np.float32)


def top_k_mismatch(
    got_rows: np.ndarray,
    got_scores: np.ndarray,
    want_rows: np.ndarray,
    want_scores: np.ndarray,
    tol: float,
    next_scores: np.ndarray | None = None,
    got_ids: np.ndarray | None = None,
    want_ids: np.ndarray | None = None,
) -> str | None:
    """Why two top-k lists [B, k] disagree, or None.

    Every score must lie within ``tol`` of the wanted one. Two items whose wanted
    scores are within ``2 * tol`` may swap places (each may move by ``tol``), so
    only a place whose wanted score is more than ``2 * tol`` from both
    neighbours must hold the wanted corpus row and, given ``got_ids`` /
    ``want_ids`` [B, k], the wanted raw id; ``next_scores`` [B] (the (k+1)-th
    score of the checked search) is the last place's lower neighbour.
    """
    if got_rows.shape != want_rows.shape:
        return f"shape {got_rows.shape}, want {want_rows.shape}"
    diff = np.abs(got_scores.astype(np.float64) - want_scores)
    if diff.size and not diff.max() <= tol:  # (a NaN fails too)
        b, j = np.unravel_index(int(np.nan_to_num(diff, nan=np.inf).argmax()), diff.shape)
        return f"query {b} place {j}: score {got_scores[b, j]:.6g}, want {want_scores[b, j]:.6g}"
    w = want_scores.astype(np.float64)
    nxt = np.full(len(w), -np.inf) if next_scores is None else next_scores.astype(np.float64)
    before = np.concatenate([np.full((len(w), 1), np.inf), w[:, :-1]], axis=1)
    after = np.concatenate([w[:, 1:], nxt[:, None]], axis=1)
    clear = (before - w > 2 * tol) & (w - after > 2 * tol)
    for what, got, want in (("corpus row", got_rows, want_rows), ("raw id", got_ids, want_ids)):
        if got is None or want is None:
            continue
        bad = clear & (got != want)
        if bad.any():
            b, j = np.argwhere(bad)[0]
            return f"query {b} place {j}: {what} {got[b, j]}, want {want[b, j]}"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ranking.serving.bundle",
        description="Verify a bundle (sha256s, format version) and run its test vectors.",
    )
    parser.add_argument("bundle")
    parser.add_argument("--format", choices=ARTIFACT_FORMATS, action="append")
    args = parser.parse_args(argv)
    try:
        bundle = Bundle(args.bundle)
        for fmt in args.format or bundle.formats():
            for name, diff in bundle.check_test_vectors(fmt).items():
                print(f"{fmt:12s} {name:12s} max abs diff {diff:.2e}")
    except BundleError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
