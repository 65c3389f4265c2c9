"""How much of the oracle AUC a ranker can hope for on a synthetic dataset.

The synthetic world's click logit is a sum of terms (``ranking/data/synthetic/world.py``).
Some are functions of item, context or user attributes that the features carry
(item quality and appeal, device x content type, position, price); others are
latent per-user parameters that a model can only estimate from that user's own
few training impressions: the click bias and the 8-dim taste vector (its dot
product with the item's taste). This script scores the test split with the
oracle logit minus some of those terms, i.e. the AUC of a model that knew
everything *except* them, exactly. If the AUC target lies above such a
ceiling, no model reaches it without learning those per-user latents.

Usage::

    .venv/bin/python scripts/bench/ranker_ceiling.py --data data/synthetic
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pyarrow.dataset as pads

from ranking.data.synthetic import world as W
from ranking.metrics.ranking import binary_auc


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("data/synthetic"))
    args = parser.parse_args(argv)
    world = W.load_world(args.data)
    cfg, d = world.config, world.derived
    cols = ["user_id", "item_id", "position", "click", "purchase"]
    t = pads.dataset(args.data / "test").to_table(columns=cols)
    u, i = t["user_id"].to_numpy(), t["item_id"].to_numpy()
    pos = t["position"].to_numpy()
    click, purchase = t["click"].to_numpy(), t["purchase"].to_numpy()
    aff = W.interest_affinity(world, u, i)
    c = W.click_logit_terms(world, u, i, pos, aff)  # click logit terms
    click_bias = c.pop("bias")
    c["item"] = c.pop("quality") + c.pop("appeal") + c.pop("followers")
    b = {  # purchase-given-click logit terms
        "item": W.Q_BUY * d["item_quality"][i] + d["item_channel_buy"][i] + d["item_type_buy"][i],
        "interests": W.INTEREST_BUY * aff,
        "price": -W.PRICE_BUY * world.user_price_sens[u] * d["item_price_dev"][i],
        "user_buy_bias": world.user_buy_bias[u],
    }
    oracle_c = binary_auc(sum(c.values()), click)
    p_buy = lambda ci, bi: _sigmoid(click_bias + ci) * _sigmoid(cfg.purchase_bias + bi)  # noqa: E731
    oracle_p = binary_auc(p_buy(sum(c.values()), sum(b.values())), purchase)
    print(f"test rows {len(click)}; oracle AUC click {oracle_c:.4f}, purchase {oracle_p:.4f}")
    print("| model knows everything except | click AUC | ratio | purchase AUC | ratio |")
    print("|---|---|---|---|---|")
    for missing in ([], ["taste"], ["taste", "user_bias"], ["taste", "user_bias", "user_buy_bias"]):
        ci = sum(v for k, v in c.items() if k not in missing)
        bi = sum(v for k, v in b.items() if k not in missing)
        ac, ap = binary_auc(ci, click), binary_auc(p_buy(ci, bi), purchase)
        print(
            f"| {', '.join(missing) or '(nothing)'} | {ac:.4f} | {(ac - 0.5) / (oracle_c - 0.5):.3f}"
            f" | {ap:.4f} | {(ap - 0.5) / (oracle_p - 0.5):.3f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
