"""ESMM against a conversion model trained on clicked impressions only.

Trains, with the ranking config of ``conf/train.yaml`` (plus any Hydra overrides):

1. ``esmm``: the default multi-task ranker, click and purchase through ESMM,
   every train impression (pCTR, pCVR = its conversion tower, pCTCVR = product);
2. ``clicked_only``: a single-task purchase model trained on the clicked train
   impressions only (the classic CVR model: pCVR with sample selection bias);
   its pCTCVR is the ESMM model's pCTR times its pCVR, so the two pCTCVRs
   differ only by the conversion model.

and scores both on every test impression (the space the ranker serves):

- ``ctcvr_auc``: AUC of pCTCVR against click-and-purchase labels (ESMM paper's
  CTCVR task);
- ``cvr_auc_all``: AUC of pCVR against conversion labels drawn for every test
  impression from the world's true P(purchase | click) (synthetic data only: the
  counterfactual "had it been clicked" outcome, unobservable in real logs), with
  ``cvr_oracle_auc_all`` the true probability's AUC on the same draws;
- ``cvr_auc_clicked``: AUC of pCVR against purchase labels on clicked test
  impressions (the conventional CVR evaluation);
- ``cvr_calibration_all``: mean pCVR / mean true P(purchase | click), all impressions.

Usage::

    .venv/bin/python scripts/bench/esmm.py --data data/synthetic [--seeds 0 1 2] [hydra overrides]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir

from ranking.cli import CONFIG_PATH
from ranking.metrics.ranking import binary_auc
from ranking.pipeline import build_datamodule, build_ranking, make_trainer


def _compose(data: Path, seed: int, overrides: list[str]):
    with initialize_config_dir(config_dir=CONFIG_PATH, version_base="1.3"):
        return compose(
            config_name="train",
            overrides=[
                f"data.path={data}",
                f"seed={seed}",
                "mlflow.enabled=false",
                "trainer.enable_progress_bar=false",
                *overrides,
            ],
        )


def _train(cfg, data: Path, train_filter: str | None, run_dir: Path):
    pl.seed_everything(cfg.seed, workers=True)
    dm = build_datamodule(cfg, data, train_filter=train_filter)
    module = build_ranking(cfg, dm.schema)
    trainer = make_trainer(cfg, cfg.ranking.epochs, None, run_dir)
    trainer.fit(module, datamodule=dm)
    return module.model.eval(), dm


def _predict(model, dm) -> dict[str, np.ndarray]:
    """Per test row: own (conditional) and output probabilities, labels, oracle."""
    out: dict[str, list[np.ndarray]] = {}

    def put(key: str, x: torch.Tensor) -> None:
        out.setdefault(key, []).append(x.detach().double().numpy())

    with torch.no_grad():
        for batch in dm.test_dataloader():
            joint = torch.sigmoid(model(batch))
            own = torch.sigmoid(model.own_logits(batch))
            for i, t in enumerate(model.tasks):
                put(f"p_{t}", joint[:, i])
                put(f"own_{t}", own[:, i])
            for t, y in batch.labels.items():
                put(f"y_{t}", y)
            for t, p in batch.oracle.items():
                put(f"oracle_{t}", p)
    return {k: np.concatenate(v) for k, v in out.items()}


def run(
    data: Path, seed: int, overrides: list[str], work: Path, baseline_epochs: int | None = None
) -> dict[str, dict[str, float]]:
    cfg = _compose(data, seed, overrides)
    esmm_model, dm = _train(cfg, data, None, work / f"esmm_{seed}")
    esmm = _predict(esmm_model, dm)
    cvr_overrides = [*overrides, "ranking.model.tasks=[purchase]", "ranking.model.esmm=null"]
    if baseline_epochs is not None:  # it sees ~1/13 of the rows: give it more passes
        cvr_overrides.append(f"ranking.epochs={baseline_epochs}")
    cvr_cfg = _compose(data, seed, cvr_overrides)
    cvr_model, _ = _train(cvr_cfg, data, "click", work / f"clicked_only_{seed}")
    naive = _predict(cvr_model, dm)

    click, purchase = esmm["y_click"], esmm["y_purchase"]
    true_cvr = esmm["oracle_purchase"] / np.maximum(esmm["oracle_click"], 1e-12)
    draws = (np.random.default_rng(seed).random(len(true_cvr)) < true_cvr).astype(np.int8)
    clicked = click == 1
    models = {
        "esmm": (esmm["p_purchase"], esmm["own_purchase"]),
        "clicked_only": (esmm["p_click"] * naive["p_purchase"], naive["p_purchase"]),
    }
    out = {}
    for name, (ctcvr, cvr) in models.items():
        out[name] = {
            "ctcvr_auc": binary_auc(ctcvr, purchase),
            "cvr_auc_all": binary_auc(cvr, draws),
            "cvr_auc_clicked": binary_auc(cvr[clicked], purchase[clicked]),
            "cvr_calibration_all": float(cvr.mean() / true_cvr.mean()),
        }
    out["oracle"] = {
        "ctcvr_auc": binary_auc(esmm["oracle_purchase"], purchase),
        "cvr_auc_all": binary_auc(true_cvr, draws),
        "cvr_auc_clicked": binary_auc(true_cvr[clicked], purchase[clicked]),
        "cvr_calibration_all": 1.0,
    }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("data/synthetic"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--work", type=Path, default=Path("runs/bench_esmm"))
    parser.add_argument(
        "--baseline-epochs", type=int, default=None, help="epochs of the clicked-only model"
    )
    args, overrides = parser.parse_known_args(argv)
    results = []
    for seed in args.seeds:
        start = time.perf_counter()
        res = run(args.data, seed, overrides, args.work, args.baseline_epochs)
        res["seconds"] = round(time.perf_counter() - start, 1)
        print(json.dumps({"seed": seed, **res}), flush=True)
        results.append(res)
    print(
        "\n| model | CTCVR AUC (all) | CVR AUC (all, counterfactual) | CVR AUC (clicked) "
        "| pCVR calibration (all) |"
    )
    print("|---|---|---|---|---|")
    for name in ("esmm", "clicked_only", "oracle"):
        cells = []
        for key in ("ctcvr_auc", "cvr_auc_all", "cvr_auc_clicked", "cvr_calibration_all"):
            v = np.array([r[name][key] for r in results])
            cells.append(f"{v.mean():.4f}" + (f" ± {v.std():.4f}" if len(v) > 1 else ""))
        print(f"| {name} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
