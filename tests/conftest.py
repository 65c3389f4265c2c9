"""Shared fixtures: a tiny synthetic world and a tiny trained run (built once per session)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from ranking.cli import CONFIG_PATH

# A world small enough to generate in about a second but with every feature kind.
TINY_WORLD = dict(
    n_users=300,
    n_items=240,
    n_products=120,
    n_creators=40,
    n_merchants=30,
    n_brands=25,
    n_days=6,
    valid_days=1,
    test_days=1,
    requests_per_user_day=2.0,
)


def tiny_overrides(data_path: Path) -> list[str]:
    return [
        f"data.path={data_path}",
        "data.batch_size=256",
        "data.eval_batch_size=512",
        "retrieval.epochs=1",
        "ranking.epochs=1",
        "trainer.enable_progress_bar=false",
        "trainer.log_every_n_steps=5",
        *[f"world.{k}={v}" for k, v in TINY_WORLD.items()],
    ]


def compose_train(overrides: list[str]):
    with initialize_config_dir(config_dir=CONFIG_PATH, version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    from ranking.data.synthetic import SyntheticConfig, generate

    path = tmp_path_factory.mktemp("data") / "tiny"
    generate(path, SyntheticConfig(**TINY_WORLD))
    return path


@pytest.fixture(scope="session")
def tiny_trained(tiny_dataset, tmp_path_factory):
    """(cfg, retrieval module, ranking module, run dir) trained in-process, no MLflow."""
    from ranking.pipeline import train_stage
    from ranking.tracking import Tracker

    run_dir = tmp_path_factory.mktemp("run")
    cfg = compose_train([*tiny_overrides(tiny_dataset), "mlflow.enabled=false"])
    tracker = Tracker(cfg.mlflow.tracking_uri, cfg.mlflow.experiment, enabled=False)
    retrieval, _ = train_stage("retrieval", cfg, tiny_dataset, tracker, run_dir)
    ranking, _ = train_stage("ranking", cfg, tiny_dataset, tracker, run_dir)
    return cfg, retrieval.eval(), ranking.eval(), run_dir


@pytest.fixture(scope="session")
def bundle(tiny_trained, tiny_dataset, tmp_path_factory) -> Path:
    """The export bundle of the tiny run (shared by the bundle and serving tests)."""
    from ranking.pipeline import export_run

    cfg, retrieval, ranking, _ = tiny_trained
    out = tmp_path_factory.mktemp("bundle") / "bundle"
    return export_run(cfg, tiny_dataset, retrieval, ranking, out, {"test/auc/click": 0.5}, None)
