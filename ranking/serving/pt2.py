"""``.pt2`` artifacts: torch.export programs (default) and AOTInductor packages.

TorchScript is deprecated from torch 2.13; ``torch.export`` is its successor. Each
guarded predictor (:class:`~ranking.serving.guards.GuardedPredictor`) is exported
once with symbolic sizes, from its manifest input specs:

- ``B``: one batch size shared by every input, ``1 <= B``;
- ``L_<name>``: one length per list input, ``1 <= L <= max_len``.

``<artifact>.pt2`` is the ExportedProgram (``torch.export.save``; load with
``torch.export.load(path).module()``; runs in Python). With ``aoti=True`` the
export also compiles ``<artifact>.aoti.pt2``, an AOTInductor package of native
code (``torch._inductor.aoti_load_package`` in Python,
``torch::inductor::AOTIModelPackageLoader`` in C++); compiling takes ~10 s per
artifact, so it is opt-in (``export.aoti=true``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.export import Dim, ExportedProgram

EXAMPLE_BATCH = 3


def example_inputs(
    specs: list[dict[str, Any]], batch: int = EXAMPLE_BATCH
) -> dict[str, torch.Tensor]:
    """Valid inputs of the given specs: ids inside their tables, lists half padded."""
    g = torch.Generator().manual_seed(0)
    out: dict[str, torch.Tensor] = {}
    for spec in specs:
        shape = spec["shape"]
        if spec["dtype"] == "float32":
            out[spec["name"]] = torch.randn(batch, int(shape[1]), generator=g)
            continue
        ids = spec.get("ids") or {}
        rows = int(ids.get("buckets") or ids.get("vocab_size") or spec.get("rows") or 1)
        if len(shape) == 1:
            out[spec["name"]] = torch.randint(0, rows, (batch,), generator=g)
        else:
            length = _example_length(spec)
            x = torch.randint(0, rows, (batch, length), generator=g)
            x[:, length // 2 + 1 :] = -1
            out[spec["name"]] = x
    return out


def _example_length(spec: dict[str, Any]) -> int:
    # Trace with the longest list: export specialises sizes 0 and 1, so a list
    # dimension is symbolic only when max_len >= 2 (else it is the constant 1).
    return int(spec["max_len"])


def dynamic_shapes(specs: list[dict[str, Any]]) -> dict[str, Any]:
    """``dynamic_shapes`` for ``torch.export.export(module, (inputs,))``."""
    batch = Dim("B", min=1)
    per_input: dict[str, Any] = {}
    for spec in specs:
        name, shape = spec["name"], spec["shape"]
        dims: dict[int, Any] = {0: batch}
        if spec["dtype"] == "int64" and len(shape) == 2:
            max_len = int(spec["max_len"])
            if max_len >= 2:
                dims[1] = Dim(f"L_{_ident(name)}", min=1, max=max_len)
        per_input[name] = dims
    return {"inputs": per_input}


def _ident(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name)


def export_program(module: torch.nn.Module, specs: list[dict[str, Any]]) -> ExportedProgram:
    """torch.export a guarded predictor with dynamic batch size and list lengths."""
    module = module.eval()
    with torch.no_grad():
        return torch.export.export(
            module, (example_inputs(specs),), dynamic_shapes=dynamic_shapes(specs), strict=False
        )


def save_program(program: ExportedProgram, path: str | Path) -> None:
    torch.export.save(program, str(path))


def compile_aoti(program: ExportedProgram, path: str | Path) -> None:
    """Compile an AOTInductor package (native code for this machine's CPU) to ``path``."""
    import torch._inductor as inductor

    inductor.aoti_compile_and_package(program, package_path=str(path))


def load_program(path: str | Path) -> torch.nn.Module:
    """The callable module of a saved ExportedProgram (input checks included)."""
    return torch.export.load(str(path)).module()


def load_aoti(path: str | Path):
    """The callable of an AOTInductor package (``fn(inputs_dict) -> output``)."""
    import torch._inductor as inductor

    return inductor.aoti_load_package(str(path))
