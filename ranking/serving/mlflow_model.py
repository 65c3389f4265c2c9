"""The export bundle as an MLflow model, registered in the Model Registry.

``ranking-train mlflow.register=NAME`` logs the job's bundle as an MLflow
``pyfunc`` model (the bundle folder is its artifact, the ``ranking`` package
its code, so loading needs mlflow, torch, numpy, faiss and pandas only) and
registers it as a new version of ``NAME``. A serving team loads it with::

    import mlflow, pandas as pd
    model = mlflow.pyfunc.load_model("models:/NAME/1")
    model.predict(pd.DataFrame({"user_id": [1, 2]}), params={"top_n": 10})
    #    user_id           items                 scores
    # 0        1  [812, 33, ...]  [0.21, 0.19, ...]

``predict`` is :meth:`ranking.serving.recommend.Recommender.recommend` (one
call for the frame's users); params ``top_n`` (10), ``at`` (request time: only
the items available then; default none) and ``exclude_seen`` (False). The
files stay usable as they are: ``mlflow.artifacts.download_artifacts`` of the
model's ``artifacts/bundle`` folder is the bundle that ``ranking-recommend``
and libtorch servers read.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.pyfunc import PythonModel
from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

log = logging.getLogger(__name__)

MODEL_NAME = "model"  # the logged model's name in its run

SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("long", "user_id")]),  # out: user_id, items (list), scores (list)
    params=ParamSchema(
        [
            ParamSpec("top_n", "long", 10),
            ParamSpec("at", "long", None),
            ParamSpec("exclude_seen", "boolean", False),
        ]
    ),
)


class BundleModel(PythonModel):
    """``pyfunc`` over an export bundle: a frame of ``user_id`` -> their top N."""

    def load_context(self, context: Any) -> None:
        from ranking.serving.recommend import Recommender

        self.recommender = Recommender(context.artifacts["bundle"])

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        params = {"top_n": 10, "at": None, "exclude_seen": False, **(params or {})}
        users = [int(u) for u in np.asarray(model_input["user_id"])]
        at = params["at"]
        rows = self.recommender.recommend(
            users,
            top_n=int(params["top_n"]),
            at=None if at is None else int(at),
            exclude_seen=bool(params["exclude_seen"]),
        )
        return pd.DataFrame(rows, columns=["user_id", "items", "scores"])


def log_bundle_model(bundle: str | Path, register: str | None = None) -> dict[str, Any]:
    """Log ``bundle`` as a pyfunc model in the active run; with ``register``, as a new
    version of that registered model. Returns {model_uri, name?, version?}."""
    import faiss
    import torch

    package = Path(__file__).resolve().parents[1]  # the ranking package: the model's code
    info = mlflow.pyfunc.log_model(
        name=MODEL_NAME,
        python_model=BundleModel(),
        artifacts={"bundle": str(bundle)},
        code_paths=[str(package)],
        pip_requirements=[
            f"torch=={torch.__version__.split('+')[0]}",
            f"numpy=={np.__version__}",
            f"faiss-cpu=={faiss.__version__}",
            f"pandas=={pd.__version__}",
            f"mlflow=={mlflow.__version__}",
        ],
        signature=SIGNATURE,
        registered_model_name=register,
    )
    out: dict[str, Any] = {"model_uri": info.model_uri}
    if register:
        out.update(name=register, version=int(info.registered_model_version))
        log.info("registered %s version %s (%s)", register, out["version"], info.model_uri)
    return out
