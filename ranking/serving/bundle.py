"""Open an export bundle safely: format version, sha256 of every file, artifacts.

Imports torch, numpy and the standard library only (``ranking-recommend`` and
the serving team use it without the training stack).

Example::

    bundle = Bundle("runs/latest/bundle")          # checks version and sha256s
    ranker = bundle.load("ranker", "torchscript")   # or "pt2", "aoti"
    probs = ranker(inputs)                          # float32 [B, T], manifest's task order
    bundle.check_test_vectors("pt2")                # {artifact: max abs diff}

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
        expected outputs. Raises BundleError above the recorded tolerance."""
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
        return out


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
