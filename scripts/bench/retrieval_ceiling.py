"""How much of the oracle's random-exposure recall a retrieval model can hope for.

``test_random/recall@100`` counts the clicks of the random-exposure slice of the
synthetic test split found in each user's top 100 over the corpus of the test
days (the items available on at least one of them: the evaluator's corpus, by
the dataset's availability windows); the oracle ranks that corpus by the true
P(click) (``ranking/data/synthetic/world.py``).
This script ranks the corpus with the oracle's click logit minus some terms,
i.e. the recall of a model that knew everything *except* them, exactly, and
with the item terms a model can only learn from the item's own impressions
(latent quality and appeal) *estimated* from the train split (a Gaussian-prior
logistic MAP per item, every other term given), and with the user's interests
*estimated* from what a model sees of them: the categories of the user's
history at query time (its earliest test row, as the evaluator's query), mapped
to the interest term by a least-squares fit on these very users (a generous
estimator: tuned against the truth). It also ranks by what an
in-batch softmax over logged clicks converges to with unlimited data,
``log P(click | u, i) + log pi(i | u) - beta log x_i`` (pi: the logging
mixture's exposure probability, x: the mean exposure share, beta: the exposure
adjustment). If the target lies above such a ceiling, no model reaches it.

Columns: recall@100 over the slice's clicks (sampling noise: a few thousand
clicks); expected recall, the share of the user's true click probability over
the corpus in the top 100; and slice-expected recall, the same share with
each item's probability weighted by its exposure in the random slice (uniform
over the items available on each test day): the expected value of the slice's
recall, without its sampling noise. ``--whole-corpus`` ranks every item instead
(the evaluation before availability windows: about a fifth of the oracle's top
100 were then items no test day could show).
``scripts/bench/retrieval_learner.py`` fits the world's model to the log
instead of giving it the true coefficients.

Usage::

    .venv/bin/python scripts/bench/retrieval_ceiling.py --data data/synthetic_benchmark
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads

from ranking.data.synthetic import world as W
from ranking.metrics.retrieval_oracle import random_slice_exposure

K = 100
USERS_PER_CHUNK = 256


def corpus_of_test_days(world: W.World) -> np.ndarray:
    """bool [I]: the items available on at least one test day (the evaluator's
    corpus for the test split, from the dataset's availability windows)."""
    cfg = world.config
    days = range(cfg.n_days - cfg.test_days, cfg.n_days)
    return np.logical_or.reduce([world.available(day) for day in days])


def random_slice_positives(data: Path) -> tuple[np.ndarray, list[np.ndarray]]:
    """Users of the test split's random-exposure clicks and each one's distinct items."""
    t = pads.dataset(data / "test").to_table(columns=["user_id", "item_id", "click", "policy"])
    keep = (t["policy"].to_numpy() == 1) & (t["click"].to_numpy() > 0)
    pairs = np.unique(
        np.stack([t["user_id"].to_numpy()[keep], t["item_id"].to_numpy()[keep]], axis=1), axis=0
    )
    users, starts = np.unique(pairs[:, 0], return_index=True)
    return users, np.split(pairs[:, 1], starts[1:])


def _estimated_item_terms(world: W.World, data: Path, iters: int = 30) -> np.ndarray:
    """[I] MAP estimate of each item's latent click term (quality and appeal) from
    the train impressions, every other term of the click logit given, with the
    true terms' mean and variance as a Gaussian prior."""
    d = world.derived
    t = pads.dataset(data / "train").to_table(columns=["user_id", "item_id", "position", "click"])
    u, i = t["user_id"].to_numpy(), t["item_id"].to_numpy()
    y = t["click"].to_numpy().astype(np.float64)
    truth = W.Q_CLICK * d["item_quality"] + W.APPEAL * world.item_appeal
    terms = W.click_logit_terms(world, u, i, t["position"].to_numpy())
    offset = sum(v for k, v in terms.items() if k not in ("quality", "appeal"))
    mu, var = truth.mean(), truth.var()
    q = np.full(world.n_items, mu)
    for _ in range(iters):  # Newton steps, one coordinate per item
        p = 1.0 / (1.0 + np.exp(-(offset + q[i])))
        grad = np.bincount(i, weights=y - p, minlength=world.n_items) - (q - mu) / var
        hess = np.bincount(i, weights=p * (1 - p), minlength=world.n_items) + 1.0 / var
        q = q + grad / hess
    return q


def query_rows(data: Path, users: np.ndarray, columns: list[str]) -> pa.Table:
    """``columns`` of each user's earliest test row (the evaluator's query row), in
    the order of ``users``."""
    t = pads.dataset(data / "test").to_table(columns=["user_id", "ts", *columns])
    u, ts = t["user_id"].to_numpy(), t["ts"].to_numpy()
    order = np.lexsort((ts, u))
    firsts = order[np.unique(u[order], return_index=True)[1]]
    row_of = dict(zip(u[firsts].tolist(), firsts.tolist(), strict=True))
    return t.select(columns).take(np.array([row_of[int(user)] for user in users]))


def category_shares(hist: pa.ChunkedArray | pa.Array, n_cat: int) -> np.ndarray:
    """float32 [N, n_cat]: each row's share of every category in a list column."""
    lists = hist.combine_chunks() if isinstance(hist, pa.ChunkedArray) else hist
    offsets, values = lists.offsets.to_numpy(), lists.values.to_numpy()
    lengths = np.diff(offsets)
    out = np.zeros((len(lengths), n_cat), dtype=np.float32)
    rows = np.repeat(np.arange(len(lengths)), lengths)
    np.add.at(out, (rows, values[offsets[0] : offsets[-1]]), 1.0)
    return (out / np.maximum(lengths, 1)[:, None]).astype(np.float32)


def expected_recalls(
    p: np.ndarray, top: np.ndarray, exposure: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """[U] share of each user's click probability over the corpus that ``top``
    ([U, k] item ids) holds, and the same share with each item's probability
    weighted by its ``exposure`` (the expected random-slice recall)."""
    pe = p * exposure[None, :]
    return (
        np.take_along_axis(p, top, axis=1).sum(axis=1) / p.sum(axis=1),
        np.take_along_axis(pe, top, axis=1).sum(axis=1) / pe.sum(axis=1),
    )


def _history_affinity(world: W.World, data: Path, users: np.ndarray) -> np.ndarray:
    """[U, C] interest term of each L2 category estimated from each user's
    ``hist_cats`` at their earliest test row: a least-squares fit of the true
    interest term (expressed and latent slots) on the history's share of the
    category, of its L1 siblings, their square roots and presence indicators."""
    cfg = world.config
    n_cat = cfg.n_cat_l2
    fe = category_shares(query_rows(data, users, ["hist_cats"])["hist_cats"], n_cat)
    fe = fe.astype(np.float64)
    l1 = np.arange(n_cat) // cfg.n_cat_l2_per_l1
    same_l1 = (l1[:, None] == l1[None, :]).astype(np.float64)
    fs = fe @ same_l1 - fe
    basis = np.stack(
        [np.ones_like(fe), fe, np.sqrt(fe), fs, np.sqrt(fs), fe > 0, fs > 0], axis=-1
    ).astype(np.float64)
    anchor = np.array([np.flatnonzero(world.derived["item_l2"] == c)[0] for c in range(n_cat)])
    truth = W.interest_affinity(
        world, np.repeat(users, n_cat), np.tile(anchor, len(users))
    ).reshape(len(users), n_cat)
    coef, *_ = np.linalg.lstsq(basis.reshape(-1, basis.shape[-1]), truth.ravel(), rcond=None)
    return basis @ coef


def _exposure(world: W.World, users: np.ndarray, day: int, policy: W.DayPolicy) -> np.ndarray:
    """[U, I] exposure probability of one slot under the day's policy mixture."""
    cfg, n = world.config, world.n_items
    logged = W.logging_propensity(
        world, np.repeat(users, n), np.tile(np.arange(n), len(users)), day, policy
    ).reshape(len(users), n)
    uniform = world.available(day) / world.n_available(day)
    share = cfg.random_exposure_share
    return (1 - share) * logged + share * uniform[None, :]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("data/synthetic"))
    parser.add_argument("--whole-corpus", action="store_true", help="rank unavailable items too")
    args = parser.parse_args(argv)
    world = W.load_world(args.data)
    cfg, d = world.config, world.derived
    corpus = np.ones(world.n_items, bool) if args.whole_corpus else corpus_of_test_days(world)
    outside = np.where(corpus, 0.0, -np.inf)
    users, positives = random_slice_positives(args.data)
    n_items = world.n_items
    true_item = W.Q_CLICK * d["item_quality"] + W.APPEAL * world.item_appeal
    estimated_item = _estimated_item_terms(world, args.data)
    day = cfg.train_days - 1  # the policy of the last train day
    policy = W.day_policy(world, day)
    rng = np.random.default_rng(0)
    sample = rng.choice(world.n_users, min(2000, world.n_users), replace=False)
    x = sum(
        _exposure(world, sample[lo : lo + USERS_PER_CHUNK], day, policy).sum(axis=0)
        for lo in range(0, len(sample), USERS_PER_CHUNK)
    )
    log_x = np.log(np.maximum(x / x.sum(), 1e-12))

    history = _history_affinity(world, args.data, users)
    row = {int(user): r for r, user in enumerate(users)}

    def logit(
        us: np.ndarray, item: np.ndarray, aff: bool | str, latent: bool, taste: bool
    ) -> np.ndarray:
        """[U, I] click logit at position 0 with ``item`` [I] as the quality and
        appeal term, the interests (latent ones only if ``latent``; ``"history"``:
        estimated from the history) and taste on request."""
        uu, ii = np.repeat(us, n_items), np.tile(np.arange(n_items), len(us))
        if aff == "history":
            rows = np.array([row[int(user)] for user in us])
            interests = history[rows][:, d["item_l2"]].ravel()
        elif aff:
            interests = W.interest_affinity(world, uu, ii, expressed_only=not latent)
        else:
            interests = 0.0
        terms = W.click_logit_terms(world, uu, ii, np.zeros_like(uu), interests)
        terms["quality"], terms["appeal"] = item[ii], 0.0
        if not taste:
            terms["taste"] = 0.0
        return sum(terms.values()).reshape(len(us), n_items)

    def softmax_limit(beta: float) -> Callable[[np.ndarray], np.ndarray]:
        def score(us: np.ndarray) -> np.ndarray:
            p, _ = W.oracle_probabilities(world, us[:, None], np.arange(n_items)[None, :], 0)
            exposure = np.maximum(_exposure(world, us, day, policy), 1e-30)
            return np.log(p) + np.log(exposure) - beta * log_x[None, :]

        return score

    rankers: dict[str, Callable[[np.ndarray], np.ndarray]] = {
        "(nothing): the oracle": lambda us: logit(us, true_item, True, True, True),
        "latent interests": lambda us: logit(us, true_item, True, False, True),
        "latent interests, taste": lambda us: logit(us, true_item, True, False, False),
        "latent interests; item quality estimated from train": lambda us: logit(
            us, estimated_item, True, False, True
        ),
        "interests estimated from the history; item quality estimated": lambda us: logit(
            us, estimated_item, "history", True, True
        ),
        "the same, and taste": lambda us: logit(us, estimated_item, "history", True, False),
        "item quality and appeal": lambda us: logit(us, np.zeros(n_items), True, True, True),
        "every interest and taste (non-personal)": lambda us: logit(
            us, true_item, False, False, False
        ),
        "softmax limit, beta 0": softmax_limit(0.0),
        "softmax limit, beta 0.75": softmax_limit(0.75),
        "softmax limit, beta 1": softmax_limit(1.0),
    }
    print(
        f"{args.data}: {len(users)} users, {sum(map(len, positives))} random-exposure "
        f"test clicks, {int(corpus.sum())} of {n_items} items in the corpus"
    )
    print(
        "| model knows everything except | recall@100 | ratio | expected recall@100 | ratio "
        "| slice-expected recall@100 | ratio |"
    )
    print("|---|---|---|---|---|---|---|")
    exposure = random_slice_exposure(world)
    oracle = None
    for name, rank in rankers.items():
        recall, mass, slice_mass = [], [], []
        for lo in range(0, len(users), USERS_PER_CHUNK):
            us = users[lo : lo + USERS_PER_CHUNK]
            top = np.argpartition(-(rank(us) + outside), K - 1, axis=1)[:, :K]
            p, _ = W.oracle_probabilities(world, us[:, None], np.arange(n_items)[None, :], 0)
            full, exposed = expected_recalls(p * corpus, top, exposure)
            mass.append(full)
            slice_mass.append(exposed)
            chunk = positives[lo : lo + USERS_PER_CHUNK]
            recall += [np.isin(pos, row).mean() for pos, row in zip(chunk, top, strict=True)]
        r, m = float(np.mean(recall)), float(np.mean(np.concatenate(mass)))
        e = float(np.mean(np.concatenate(slice_mass)))
        oracle = oracle or (r, m, e)
        print(
            f"| {name} | {r:.4f} | {r / oracle[0]:.3f} | {m:.4f} | {m / oracle[1]:.3f} "
            f"| {e:.4f} | {e / oracle[2]:.3f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
