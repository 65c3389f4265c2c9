"""Write a bundle's model artifacts in every format, with the contract around them.

:func:`write_artifacts` is what ``export_bundle`` calls once the manifest is
built: for each predictor the manifest lists it

1. wraps it in :class:`~ranking.serving.guards.GuardedPredictor` (input checks,
   ids mapped into their tables) built from the manifest's input specs;
2. writes ``<name>.pt`` (TorchScript), ``<name>.pt2`` (torch.export program) and,
   with ``aoti``, ``<name>.aoti.pt2`` (AOTInductor package);
3. adds to the manifest: the formats, the enriched input specs, the preprocessing
   contract, the reference ``preprocess.py`` (copied into the bundle) and the test
   vectors.

Nothing here names a feature or a model: it works on whatever inputs the
manifest lists and whatever module the predictor functions return.
"""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Collection
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ranking.schema import Schema
from ranking.serving import preprocess as preprocess_module
from ranking.serving import pt2, test_vectors
from ranking.serving.contract import describe_inputs, preprocessing_contract
from ranking.serving.guards import GuardedPredictor

FORMAT_NAMES = {
    "torchscript": "TorchScript (torch.jit.load / torch::jit::load)",
    "pt2": "torch.export ExportedProgram (torch.export.load(path).module())",
    "aoti": "AOTInductor package (torch._inductor.aoti_load_package / "
    "torch::inductor::AOTIModelPackageLoader)",
}


def guarded(predictor: torch.nn.Module, inputs: list[dict[str, Any]]) -> GuardedPredictor:
    return GuardedPredictor(predictor.eval(), inputs).eval()


def script(module: torch.nn.Module, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit, deprecated in 2.13
        torch.jit.save(torch.jit.script(module), str(path))


def aoti_artifacts(aoti: bool | Collection[str] | None, names: list[str]) -> set[str]:
    """The artifacts to compile as AOTInductor packages.

    ``aoti`` is True (all of ``names``), False / None (none) or a collection of
    artifact names, each of which must be in ``names``.
    """
    if aoti is None or aoti is False:
        return set()
    if aoti is True:
        return set(names)
    if isinstance(aoti, str):
        aoti = [aoti]
    unknown = sorted(set(aoti) - set(names))
    if unknown:
        raise ValueError(f"export.aoti names {unknown}, not artifacts of this bundle {names}")
    return set(aoti)


def write_artifacts(
    out: str | Path,
    manifest: dict[str, Any],
    schema: Schema,
    dense_stats: dict[str, Any],
    predictors: dict[str, torch.nn.Module],
    aoti: bool | Collection[str] = False,
    corpus: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict[str, GuardedPredictor]:
    """Write every predictor in every format and complete ``manifest`` in place.

    Args:
        manifest: from ``build_manifest``; ``artifacts.<name>.inputs`` decides
            each artifact's inputs.
        dense_stats: :meth:`~ranking.data.stats.DenseStats.to_dict` of train.
        predictors: artifact name -> plain-torch predictor (eval mode).
        aoti: also compile AOTInductor packages (slow: ~10-30 s per artifact):
            True for every artifact, or the names of the ones to compile.
        corpus: (item embeddings [N, D], raw item ids [N]) for the test vectors'
            retrieval case (:func:`ranking.serving.test_vectors.retrieval_case`).

    Returns:
        artifact name -> the guarded eager module that every file reproduces.
    """
    out = Path(out)
    compiled = aoti_artifacts(aoti, list(predictors))
    manifest["preprocessing"] = preprocessing_contract(schema, dense_stats)
    modules: dict[str, GuardedPredictor] = {}
    for name, predictor in predictors.items():
        entry = manifest["artifacts"][name]
        entry["inputs"] = describe_inputs(schema, entry["inputs"])
        module = guarded(predictor, entry["inputs"])
        modules[name] = module
        formats = {"torchscript": f"{name}.pt", "pt2": f"{name}.pt2"}
        script(module, out / formats["torchscript"])
        program = pt2.export_program(module, entry["inputs"])
        pt2.save_program(program, out / formats["pt2"])
        if name in compiled:
            formats["aoti"] = f"{name}.aoti.pt2"
            pt2.compile_aoti(program, out / formats["aoti"])
        if "tasks" in entry:  # the ranker: one output column per task, in this order
            entry["output"]["columns"] = list(entry["tasks"])
        entry["file"] = formats["torchscript"]
        entry["format"] = "torchscript"
        entry["formats"] = formats
        entry["dynamic"] = {
            "B": "batch size, >= 1, shared by every input",
            "L": "per list input: 1 <= L <= max_len (pad with -1)",
        }
    manifest["artifact_formats"] = {
        k: v for k, v in FORMAT_NAMES.items() if compiled or k != "aoti"
    }
    shutil.copyfile(preprocess_module.__file__, out / "preprocess.py")
    vectors = test_vectors.build(schema, dense_stats, manifest, modules, corpus=corpus)
    manifest["test_vectors"] = test_vectors.save(vectors, out)
    return modules
