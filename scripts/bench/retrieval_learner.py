"""What a learner that knows the world's model, but must fit it to the log, reaches.

``retrieval_ceiling.py`` gives its rankers the world's true coefficients and
most of its latent terms. This script is the honest counterpart: a logistic
click model with exactly the world's functional form (module docstring of
``ranking/data/synthetic/world.py``), every term fitted to the train
impressions (all clicks and ``--negative-share`` of the other impressions, as
the pointwise retrieval model reads them)::

    logit = b_pos[position] + b_item[i] + b_user[u]
            + h_u . M[:, l2_i]                  interests: h_u = share of each L2 in hist_cats,
                                                M a full L2 x L2 map (exact match, siblings, ...)
            + G[gender_u, age_u, l2_i]          profile -> interest prior (latent ones too)
            + DT[device_u, content_type_i]      device x content type
            + w[city_u] * price_dev_l1_i        price sensitivity by city tier
            + <p_u, q_i>                        taste (rank --taste-rank, ridge --taste-l2)

trained by Adam; the items without train impressions get the warm items' mean
bias (the prior mean) rather than the initial 0. It ranks the corpus of the test
days (the evaluator's, ``retrieval_ceiling.corpus_of_test_days``; ``--whole-corpus``:
every item) for the users of the random-exposure
test clicks from their earliest test row (the evaluator's query row) and reports
recall@100, expected recall and slice-expected recall (``retrieval_ceiling.py``)
against the oracle, with each term dropped in turn. With ``--run DIR`` it also
scores a trained ``ranking-train`` run's towers on the same users and the same
metrics (its queries from the same test rows), so a run's noisy
``test_random/recall@100`` can be read beside its expected value. A second
table splits each ranker's slice-expected recall by the items' train
impressions (none, 1-99, 100+): what part of the oracle's recall lies in
items the log barely shows, and how much of it each ranker finds.
``--fit-splits train valid`` fits the learner to the valid days too (as a
model serving the test days would be); the groups stay those of train.

Usage::

    .venv/bin/python scripts/bench/retrieval_learner.py --data data/synthetic_benchmark \\
        [--run runs/<dir> ...]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import torch
from retrieval_ceiling import (  # scripts/bench/retrieval_ceiling.py (this script's folder)
    K,
    category_shares,
    corpus_of_test_days,
    expected_recalls,
    query_rows,
    random_slice_positives,
)

from ranking.data.synthetic import world as W
from ranking.metrics.retrieval_oracle import random_slice_exposure

USER_COLUMNS = ["gender", "age_bucket", "device", "city_tier"]
TERMS = ("interests", "profile", "device_x_type", "price", "taste")


class WorldForm(torch.nn.Module):
    """The world's click logit with every coefficient and latent term learned.

    Shapes: user features int [B] each, shares float [B, C], items int [B],
    positions int [B] -> logits [B].
    """

    def __init__(self, world: W.World, items: dict[str, torch.Tensor], rank: int) -> None:
        super().__init__()
        cfg = world.config
        n_cat, n_u, n_i = cfg.n_cat_l2, world.n_users, world.n_items
        self.items = items  # l2, content_type, price_dev: [I] each
        zeros = lambda *shape: torch.nn.Parameter(torch.zeros(*shape))  # noqa: E731
        self.b_pos, self.b_item, self.b_user = zeros(cfg.max_slots), zeros(n_i), zeros(n_u)
        self.interest_map = zeros(n_cat, n_cat)
        self.profile = zeros(len(W.GENDERS), len(W.AGE_BUCKETS), n_cat)
        self.device_type = zeros(len(W.DEVICES), len(W.CONTENT_TYPES))
        self.price = zeros(len(W.CITY_TIERS))
        self.p_user = torch.nn.Parameter(0.01 * torch.randn(n_u, rank))
        self.q_item = torch.nn.Parameter(0.01 * torch.randn(n_i, rank))

    def user_item_terms(
        self, users: dict[str, torch.Tensor], shares: torch.Tensor, items: torch.Tensor | None
    ) -> dict[str, torch.Tensor]:
        """Each personal term: [B] for paired (user row, item) inputs, or [U, I]
        for every corpus item when ``items`` is None."""
        it = self.items
        pair = items is not None
        idx = items if pair else slice(None)
        l2, ctype, price = it["l2"][idx], it["content_type"][idx], it["price_dev"][idx]

        def pick(table: torch.Tensor) -> torch.Tensor:  # table [B, C] -> [B] or [U, I]
            return table.gather(1, l2[:, None]).squeeze(1) if pair else table[:, l2]

        q = self.q_item[idx]
        p = self.p_user[users["user_id"]]
        return {
            "interests": pick(shares @ self.interest_map),
            "profile": pick(self.profile[users["gender"], users["age_bucket"]]),
            "device_x_type": (
                self.device_type[users["device"], ctype]
                if pair
                else self.device_type[users["device"]][:, ctype]
            ),
            "price": (
                self.price[users["city_tier"]] * price
                if pair
                else self.price[users["city_tier"]][:, None] * price[None, :]
            ),
            "taste": (p * q).sum(1) if pair else p @ q.T,
        }

    def forward(
        self,
        users: dict[str, torch.Tensor],
        shares: torch.Tensor,
        items: torch.Tensor,
        positions: torch.Tensor,
    ) -> torch.Tensor:
        terms = self.user_item_terms(users, shares, items)
        base = self.b_pos[positions] + self.b_item[items] + self.b_user[users["user_id"]]
        return base + sum(terms.values())


def _item_columns(data: Path, n_items: int) -> dict[str, torch.Tensor]:
    items = pq.read_table(data / "items.parquet").sort_by("item_id")
    if not np.array_equal(items["item_id"].to_numpy(), np.arange(n_items)):
        raise ValueError(f"{data / 'items.parquet'}: item_id must be 0..{n_items - 1}")
    l1 = items["category_l1"].to_numpy()
    log_price = np.log(items["price"].to_numpy().astype(np.float64))
    mean_l1 = np.bincount(l1, weights=log_price) / np.maximum(np.bincount(l1), 1)
    return {
        "l2": torch.tensor(items["category_l2"].to_numpy()),
        "content_type": torch.tensor(items["content_type"].to_numpy()),
        "price_dev": torch.as_tensor((log_price - mean_l1[l1]).astype(np.float32)),
    }


def fit(world: W.World, data: Path, args: argparse.Namespace) -> WorldForm:
    """Fit :class:`WorldForm` to the train impressions (minibatch Adam, BCE)."""
    torch.manual_seed(args.seed)
    cols = ["user_id", "item_id", "hist_cats", "position", "click", *USER_COLUMNS]
    t = pa.concat_tables(pads.dataset(data / s).to_table(columns=cols) for s in args.fit_splits)
    click = t["click"].to_numpy()
    rng = np.random.default_rng(args.seed)
    t = t.take(np.flatnonzero((click > 0) | (rng.random(len(click)) < args.negative_share)))
    shares = torch.as_tensor(category_shares(t["hist_cats"], world.config.n_cat_l2))
    users = {c: torch.tensor(t[c].to_numpy()) for c in ["user_id", *USER_COLUMNS]}
    items, positions = torch.tensor(t["item_id"].to_numpy()), torch.tensor(t["position"].to_numpy())
    labels = torch.tensor(t["click"].to_numpy().astype(np.float32))
    model = WorldForm(world, _item_columns(data, world.n_items), args.taste_rank)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    for epoch in range(args.epochs):
        total = 0.0
        for j in torch.randperm(len(labels)).split(args.batch_size):
            u = {c: v[j] for c, v in users.items()}
            logits = model(u, shares[j], items[j], positions[j])
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels[j])
            ridge = (model.p_user[u["user_id"]] ** 2).sum() + (model.q_item[items[j]] ** 2).sum()
            opt.zero_grad()
            (loss + args.taste_l2 * ridge / len(j)).backward()
            opt.step()
            total += loss.item() * len(j)
        print(f"epoch {epoch}: train logloss {total / len(labels):.4f} ({len(labels)} rows)")
    # Items without train impressions (released later, live streams not live yet) kept
    # their initial bias 0; give them the prior mean, the warm items' mean bias.
    with torch.no_grad():
        seen = torch.zeros(world.n_items, dtype=torch.bool)
        seen[items] = True
        model.b_item[~seen] = model.b_item[seen].mean()
    print(f"items without train impressions: {int((~seen).sum())} (bias: the warm items' mean)")
    return model


def _run_scorer(run: Path, users: np.ndarray) -> Callable[[slice], np.ndarray]:
    """Scores [U, I] of a trained run's towers, each user queried from their
    earliest test row by the evaluator's own bookkeeping (FullCorpusEvaluator)."""
    from omegaconf import OmegaConf

    from ranking.metrics.retrieval import FullCorpusEvaluator
    from ranking.pipeline import build_datamodule, load_stage, trained_stats

    cfg = OmegaConf.load(run / ".hydra" / "config.yaml")
    # standardised with the statistics the run trained with
    dm = build_datamodule(cfg, Path(cfg.data.path), stats=trained_stats(run, ["retrieval"]))
    module = load_stage("retrieval", cfg, dm.schema, run)
    evaluator = FullCorpusEvaluator(module.num_users, module.model.out_dim)
    with torch.no_grad():
        for batch in dm.test_dataloader():
            user = module.model.encode_users(batch)
            none = torch.zeros(len(batch.user_ids), dtype=torch.bool)
            evaluator.update(batch.user_ids, batch.time, user, batch.item_ids, none)
        item_emb, ids = [], []
        for batch in dm.corpus_dataloader():
            item_emb.append(module.model.encode_items(batch))
            ids.append(batch.item_ids)
    corpus = np.zeros((int(torch.cat(ids).max()) + 1, item_emb[0].shape[1]), dtype=np.float32)
    corpus[torch.cat(ids).numpy()] = torch.cat(item_emb).numpy()
    queries = evaluator.queries[users]
    return lambda rows: queries[rows] @ corpus.T


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("data/synthetic"))
    parser.add_argument("--run", type=Path, action="append", default=[])
    parser.add_argument("--negative-share", type=float, default=0.25)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8192)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--taste-rank", type=int, default=8)
    parser.add_argument("--taste-l2", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--fit-splits", nargs="+", default=["train"], help="splits the learner is fitted to"
    )
    parser.add_argument("--whole-corpus", action="store_true", help="rank unavailable items too")
    args = parser.parse_args(argv)
    world = W.load_world(args.data)
    corpus = np.ones(world.n_items, bool) if args.whole_corpus else corpus_of_test_days(world)
    outside = np.where(corpus, 0.0, -np.inf)
    model = fit(world, args.data, args)
    users, positives = random_slice_positives(args.data)
    q = query_rows(args.data, users, ["hist_cats", *USER_COLUMNS])
    q_users = {c: torch.tensor(q[c].to_numpy()) for c in USER_COLUMNS}
    q_users["user_id"] = torch.as_tensor(users)
    q_shares = torch.as_tensor(category_shares(q["hist_cats"], world.config.n_cat_l2))

    def learner(drop: str | None) -> Callable[[slice], np.ndarray]:
        def score(rows: slice) -> np.ndarray:
            with torch.no_grad():
                u = {c: v[rows] for c, v in q_users.items()}
                terms = model.user_item_terms(u, q_shares[rows], None)
                personal = sum(v for k, v in terms.items() if k != drop)
                return (model.b_item[None, :] + personal).numpy()

        return score

    rankers: dict[str, Callable[[slice], np.ndarray]] = {"all terms": learner(None)}
    rankers |= {f"without {term}": learner(term) for term in TERMS}
    rankers["item terms only (non-personal)"] = lambda rows: np.broadcast_to(
        model.b_item.detach().numpy(), (rows.stop - rows.start, world.n_items)
    ).copy()
    for run in args.run:
        rankers[f"run {run}"] = _run_scorer(run, users)

    exposure = random_slice_exposure(world)
    groups = exposure_groups(args.data, world.n_items)
    # the oracle with the items under 100 train impressions left out: how much of
    # its recall needs the items the log barely shows
    warm = np.where(groups["100+"], 0.0, -np.inf)
    oracle_top, warm_top, oracle_p = [], [], []
    print(
        f"{args.data}: {len(users)} users, {sum(map(len, positives))} random-exposure test clicks"
    )
    print("| ranker | recall@100 | ratio | expected recall@100 | ratio | slice-expected | ratio |")
    print("|---|---|---|---|---|---|---|")
    chunks = [slice(lo, min(lo + 256, len(users))) for lo in range(0, len(users), 256)]
    for rows in chunks:
        p, _ = W.oracle_probabilities(
            world, users[rows, None], np.arange(world.n_items)[None, :], 0
        )
        oracle_p.append(p * corpus)
        oracle_top.append(np.argpartition(-(p + outside), K - 1, axis=1)[:, :K])
        warm_top.append(np.argpartition(-(p + outside + warm), K - 1, axis=1)[:, :K])

    def evaluate(tops: list[np.ndarray]) -> tuple[tuple[float, float, float], np.ndarray]:
        """(recall, expected, slice-expected), and per exposure group [G, 2]: its
        share of the slice-expected recall and its top-100 slots, per user."""
        recall, full, exposed = [], [], []
        by_group = np.zeros((len(groups), 2))
        for rows, top, p in zip(chunks, tops, oracle_p, strict=True):
            f, e = expected_recalls(p, top, exposure)
            full.append(f)
            exposed.append(e)
            recall += [np.isin(pos, r).mean() for pos, r in zip(positives[rows], top, strict=True)]
            by_group += group_shares(p, top, exposure, list(groups.values())).sum(axis=1)
        means = (
            float(np.mean(recall)),
            float(np.concatenate(full).mean()),
            float(np.concatenate(exposed).mean()),
        )
        return means, by_group / len(users)

    ref, ref_groups = evaluate(oracle_top)
    rows_out = {"the oracle": (ref, ref_groups)}
    rows_out["the oracle, over the 100+ items only"] = evaluate(warm_top)
    for name, rank in rankers.items():
        rows_out[name] = evaluate(
            [np.argpartition(-(rank(rows) + outside), K - 1, axis=1)[:, :K] for rows in chunks]
        )
    for name, ((r, m, e), _) in rows_out.items():
        print(
            f"| {name} | {r:.4f} | {r / ref[0]:.3f} | {m:.4f} | {m / ref[1]:.3f} "
            f"| {e:.4f} | {e / ref[2]:.3f} |"
        )
    sizes = ", ".join(f"{g}: {int((m & corpus).sum())}" for g, m in groups.items())
    print(f"\nslice-expected recall@100 by the items' train impressions (corpus items {sizes}):")
    print("| ranker | " + " | ".join(f"{g}: recall share (slots of 100)" for g in groups) + " |")
    print("|---|" + "---|" * len(groups))
    for name, (_, g) in rows_out.items():
        cells = " | ".join(f"{share:.4f} ({slots:.1f})" for share, slots in g)
        print(f"| {name} | {cells} |")
    return 0


def group_shares(
    p: np.ndarray, top: np.ndarray, exposure: np.ndarray, groups: list[np.ndarray]
) -> np.ndarray:
    """[G, U, 2] per item group (bool [I] masks) and user: the part of the user's
    slice-expected recall (``expected_recalls``' second value) that ``top`` ([U, k]
    item ids) holds in the group, and how many of its k items are in the group."""
    pe = p * exposure[None, :]
    share = np.take_along_axis(pe, top, axis=1) / pe.sum(axis=1, keepdims=True)
    return np.stack(
        [np.stack([(share * m[top]).sum(axis=1), m[top].sum(axis=1)], axis=1) for m in groups]
    )


def exposure_groups(data: Path, n_items: int) -> dict[str, np.ndarray]:
    """bool [I] masks of the items by their train impressions: none, 1-99, 100 or more."""
    items = pads.dataset(data / "train").to_table(columns=["item_id"])["item_id"].to_numpy()
    shown = np.bincount(items, minlength=n_items)
    return {"0": shown == 0, "1-99": (shown > 0) & (shown < 100), "100+": shown >= 100}


if __name__ == "__main__":
    raise SystemExit(main())
