"""Size and behaviour knobs of the synthetic interest e-commerce world.

Every field is a plain int or float so Hydra can pass overrides as keywords
(``SyntheticConfig(**cfg.data.synthetic)``). The defaults are the quickstart
size: about 2.65M train / 0.53M valid / 0.53M test impressions over 5k users
and 3k items (some 530 train impressions per user, enough to learn per-user
tastes), after 1 history day that only fills the users' behaviour sequences.
:func:`benchmark_config` is the larger preset of ``experiment=synthetic_benchmark``
(6x the users, ~7x the items).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class SyntheticConfig:
    """Knobs of the world, of the exposure log and of the writer.

    Sizes:
        n_users, n_items, n_products, n_creators, n_merchants, n_brands: entity counts.
        n_cat_l1, n_cat_l2_per_l1: category tree (L2 ids are global,
            ``l1 = l2 // n_cat_l2_per_l1``).
    Time:
        n_days: days in the log; the last ``valid_days + test_days`` are valid then test.
        history_days: days simulated before the log (days -history_days..-1). Their
            clicks and purchases fill the users' histories (a log is a window of
            longer lives, so users arrive with behaviour sequences); their
            impressions are not written.
        steps_per_day: sessions per day. A user makes at most one request per step;
            the clicks of a step become visible to the user's features at the next
            step (see ``simulate.py`` for the visibility rule).
        start_ts: unix seconds of the start of day 0.
    Traffic:
        requests_per_user_day: mean requests per user per day (activity scales it).
        min_slots, max_slots: items shown per request; ``position`` is in
            [0, max_slots) and its vocabulary is ``max_slots``.
        random_exposure_share: share of requests served by the uniform random policy.
        explore_share: share of the logging policy's category picks drawn from the
            global category popularity instead of the user's expressed interests
            (the only way the logging policy reaches latent interests).
    Users:
        min_expressed, max_expressed: expressed interests (L2 categories) per user.
        min_latent, max_latent: latent interests per user (never targeted by the
            logging policy).
    Items:
        live_share, video_share: content type shares (the rest are product cards).
        live_window_days: days a live stream can be exposed.
        new_item_share: share of non-live items released during the log.
    Outcome model (logit-scale knobs; the rest is fixed in ``world.py``):
        click_bias, purchase_bias: intercepts of the click and purchase-given-click logits.
        interest_scale: multiplier of interest strengths in both logits.
        taste_scale: weight of the user x item taste dot product in the click logit.
        position_bias: click logit falls by ``position_bias * log1p(position)``.
    Features / writer:
        hist_len: cap of ``hist_items`` / ``hist_cats``; buy_hist_len: cap of
            ``hist_buy_products``.
        chunk_rows: rows per Parquet part file (bounds the writer's memory).
    """

    seed: int = 0
    # sizes
    n_users: int = 5000
    n_items: int = 3000
    n_products: int = 1500
    n_creators: int = 400
    n_merchants: int = 300
    n_brands: int = 250
    n_cat_l1: int = 8
    n_cat_l2_per_l1: int = 6
    # time
    n_days: int = 14
    history_days: int = 1
    valid_days: int = 2
    test_days: int = 2
    steps_per_day: int = 12
    start_ts: int = 1_704_067_200  # 2024-01-01T00:00:00Z
    # traffic
    requests_per_user_day: float = 10.8
    min_slots: int = 4
    max_slots: int = 10
    random_exposure_share: float = 0.1
    explore_share: float = 0.15
    # users
    min_expressed: int = 2
    max_expressed: int = 4
    min_latent: int = 1
    max_latent: int = 2
    # items
    live_share: float = 0.15
    video_share: float = 0.45
    live_window_days: int = 2
    new_item_share: float = 0.15
    # outcome model
    click_bias: float = -3.9
    purchase_bias: float = -3.4
    interest_scale: float = 1.0
    taste_scale: float = 0.2
    position_bias: float = 0.4
    # features / writer
    hist_len: int = 20
    buy_hist_len: int = 10
    taste_dim: int = 8
    chunk_rows: int = 65_536

    def __post_init__(self) -> None:
        problems = []
        positive = [
            "n_users",
            "n_items",
            "n_products",
            "n_creators",
            "n_merchants",
            "n_brands",
            "n_cat_l1",
            "n_cat_l2_per_l1",
            "n_days",
            "steps_per_day",
            "min_slots",
            "max_slots",
            "hist_len",
            "buy_hist_len",
            "taste_dim",
            "chunk_rows",
            "live_window_days",
        ]
        for name in positive:
            if int(getattr(self, name)) <= 0:
                problems.append(f"{name} must be positive")
        if self.history_days < 0:
            problems.append("history_days must be non-negative")
        if self.train_days < 1:
            problems.append("n_days must exceed valid_days + test_days")
        if self.valid_days < 1 or self.test_days < 1:
            problems.append("valid_days and test_days must be at least 1")
        if self.min_slots > self.max_slots:
            problems.append("min_slots must not exceed max_slots")
        if self.n_products < self.n_cat_l2:
            problems.append("n_products must be at least n_cat_l1 * n_cat_l2_per_l1")
        if self.n_items < self.n_cat_l2:
            problems.append("n_items must be at least n_cat_l1 * n_cat_l2_per_l1")
        if self.n_cat_l2 < self.max_slots:
            # the per-category anchor items guarantee max_slots distinct items every day
            problems.append("n_cat_l1 * n_cat_l2_per_l1 must be at least max_slots")
        if self.n_brands < self.n_cat_l1:
            problems.append("n_brands must be at least n_cat_l1")
        if not (1 <= self.min_expressed <= self.max_expressed):
            problems.append("need 1 <= min_expressed <= max_expressed")
        if not (1 <= self.min_latent <= self.max_latent):
            problems.append("need 1 <= min_latent <= max_latent")
        if self.max_expressed + self.max_latent > self.n_cat_l2:
            problems.append("max_expressed + max_latent exceeds the number of L2 categories")
        for name in ("random_exposure_share", "explore_share", "live_share", "video_share"):
            v = float(getattr(self, name))
            if not 0.0 <= v <= 1.0:
                problems.append(f"{name} must lie in [0, 1]")
        if self.live_share + self.video_share > 1.0:
            problems.append("live_share + video_share must not exceed 1")
        if 86_400 % self.steps_per_day or 86_400 // self.steps_per_day <= self.max_slots:
            problems.append("steps_per_day must divide 86400 into steps longer than max_slots s")
        if problems:
            raise ValueError("SyntheticConfig: " + "; ".join(problems))

    @property
    def train_days(self) -> int:
        return self.n_days - self.valid_days - self.test_days

    @property
    def n_cat_l2(self) -> int:
        return self.n_cat_l1 * self.n_cat_l2_per_l1

    @property
    def step_seconds(self) -> int:
        return 86_400 // self.steps_per_day

    def split_of_day(self, day: int) -> str | None:
        """The split a day's impressions go to (None: a history day, not written)."""
        if day < 0:
            return None
        if day < self.train_days:
            return "train"
        if day < self.train_days + self.valid_days:
            return "valid"
        return "test"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SyntheticConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"SyntheticConfig: unknown fields {sorted(unknown)}")
        return cls(**d)


def benchmark_config(**overrides: Any) -> SyntheticConfig:
    """The ``experiment=synthetic_benchmark`` preset: 30k users, 20k items, a
    quarter of the quickstart's traffic per user (about 5.7M train impressions),
    generated in well under a minute. Keyword overrides replace any field."""
    base = dict(
        n_users=30_000,
        n_items=20_000,
        n_products=10_000,
        n_creators=2_500,
        n_merchants=2_000,
        n_brands=1_500,
        n_cat_l1=12,
        n_cat_l2_per_l1=8,
        requests_per_user_day=2.7,
        history_days=14,  # a quarter of the traffic: more days to fill the histories
        chunk_rows=262_144,
    )
    base.update(overrides)
    return SyntheticConfig(**base)
