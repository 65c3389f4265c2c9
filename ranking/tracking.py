"""MLflow tracking: one parent run per job, one child run per stage (and, in a
Hydra sweep, the jobs' runs nested under the sweep's run: ranking/sweep.py).

The default store is ``sqlite:///mlflow.db`` in the working directory (MLflow 3's
default; the file store is in maintenance mode). Open it with
``mlflow ui --backend-store-uri sqlite:///mlflow.db``.

MLflow is imported when a tracker is enabled (its import takes ~2 s of a
command's start-up; ``mlflow.enabled=false`` runs skip it).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import MLFlowLogger

MAX_PARAM_LEN = 6000


def mlflow_key(name: str) -> str:
    """MLflow's metric-name key for a contract name.

    MLflow (and Lightning's MLflow logger) reject ``@`` in metric names, so
    ``test/recall@100`` is stored in MLflow as ``test/recall_at_100``;
    ``metrics.json`` keeps the contract spelling.
    """
    return name.replace("@", "_at_")


class StageLogger(MLFlowLogger):
    """Lightning's MLflow logger with contract metric names mapped by :func:`mlflow_key`."""

    def log_metrics(self, metrics, step=None) -> None:  # noqa: ANN001
        super().log_metrics({mlflow_key(k): v for k, v in metrics.items()}, step)


def flatten(cfg: DictConfig) -> dict[str, str]:
    """Resolved config as ``{"a.b.c": "value"}`` (lists as their string form)."""
    out: dict[str, str] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}.{k}" if prefix else str(k))
        else:
            out[prefix] = str(node)[:MAX_PARAM_LEN]

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return out


def git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).resolve().parent,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


class Tracker:
    """Parent/child MLflow runs; a no-op when ``enabled`` is false."""

    def __init__(self, tracking_uri: str, experiment: str, enabled: bool = True) -> None:
        self.enabled = enabled
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.parent_id: str | None = None
        if enabled:
            import mlflow

            mlflow.set_tracking_uri(tracking_uri)
            mlflow.set_experiment(experiment)

    @contextmanager
    def parent(
        self,
        cfg: DictConfig,
        dataset: str,
        run_name: str | None = None,
        sweep_run_id: str | None = None,
    ) -> Iterator[str | None]:
        """The job's run (nested under ``sweep_run_id``, a sweep's run, when given)."""
        if not self.enabled:
            yield None
            return
        import mlflow

        with mlflow.start_run(run_name=run_name, parent_run_id=sweep_run_id) as run:
            self.parent_id = run.info.run_id
            mlflow.set_tags({"git_commit": git_commit(), "dataset": dataset})
            mlflow.log_params(flatten(cfg))
            mlflow.log_text(OmegaConf.to_yaml(cfg, resolve=True), "config.yaml")
            yield run.info.run_id

    @contextmanager
    def child(
        self, stage: str, dataset: str, tags: dict[str, str] | None = None
    ) -> Iterator[StageLogger | None]:
        """A nested run for one stage (with extra ``tags``), and a Lightning logger
        writing into it."""
        if not self.enabled:
            yield None
            return
        import mlflow

        with mlflow.start_run(run_name=stage, nested=True) as run:
            mlflow.set_tags({"stage": stage, "git_commit": git_commit(), "dataset": dataset})
            self.set_tags(tags or {})
            yield StageLogger(
                experiment_name=self.experiment,
                tracking_uri=self.tracking_uri,
                run_id=run.info.run_id,
            )

    def set_tags(self, tags: dict[str, str]) -> None:
        """Tags on the active run (inside :meth:`child`: the stage's)."""
        if self.enabled:
            import mlflow

            # MLflow caps a tag's value at 5,000 characters
            mlflow.set_tags({k: v[:5000] for k, v in tags.items()})

    def log_metrics(self, metrics: dict[str, float]) -> None:
        if self.enabled:
            import mlflow

            mlflow.log_metrics({mlflow_key(k): float(v) for k, v in metrics.items()})

    def log_artifacts(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self.enabled:
            import mlflow

            mlflow.log_artifacts(str(path), artifact_path=artifact_path)

    def log_artifact(self, path: str | Path) -> None:
        if self.enabled:
            import mlflow

            mlflow.log_artifact(str(path))

    def register_bundle(self, bundle: str | Path, name: str) -> dict[str, Any] | None:
        """The bundle as a pyfunc model of the active run, registered as a new version
        of ``name`` (ranking/serving/mlflow_model.py)."""
        if not self.enabled:
            return None
        from ranking.serving.mlflow_model import log_bundle_model

        return log_bundle_model(bundle, register=name)
