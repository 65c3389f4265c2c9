"""The latent world: users, products, creators, items, and the true outcome model.

Everything here is O(users + items). The world is drawn once from the seed,
saved next to the dataset (``world.npz`` + ``world.json``) and reloaded with
:func:`load_world`, so evaluation code can ask the oracle for the true
P(click) and P(click and purchase) of any (user, item, position), not only of
the logged pairs.

Entities:
    category tree   ``n_cat_l1`` L1 categories, each with ``n_cat_l2_per_l1`` L2
                    children; L2 ids are global, ``l1 = l2 // n_cat_l2_per_l1``.
    users           age bucket, gender, city tier, device, activity level; a few
                    *expressed* L2 interests (the logging policy targets them) and
                    at least one *latent* interest (the policy reaches it only
                    through its exploration share, but clicks respond to it); a
                    taste vector; click/purchase biases; price sensitivity.
    products        L2 category, brand (raw 10-12 digit code), merchant, price,
                    latent quality.
    creators        channel (self-broadcast, alliance, campaign, top KOL) and a
                    heavy-tailed follower count; self-broadcast creators sell
                    their own merchant's products.
    items           shoppable content: one product, one creator, a content type
                    (short video, live stream, product card), an appeal and a
                    taste vector, a heavy-tailed (log-normal) popularity that
                    follows creator reach, quality and appeal, an availability
                    window in days (live streams are exposable for
                    ``live_window_days`` only; some items are released mid-log).

Outcome model (``p_click`` is P(click), ``p_purchase`` is P(click and purchase))::

    aff        = sum_k s_uk * ([c_uk == l2_i] + SIBLING * [c_uk, l2_i share an L1, c_uk != l2_i])
    logit_c    = click_bias + aff + taste_scale * <t_u, t_i> + Q_CLICK * quality_i
                 + APPEAL * appeal_i + user_bias_u + ct_device[device_u, type_i]
                 + FOLLOW * followers_z_i - PRICE_CLICK * price_sens_u * price_dev_l1_i
                 - position_bias * log1p(position)
    logit_b    = purchase_bias + Q_BUY * quality_i + INTEREST_BUY * aff
                 + channel_buy[channel_i] + type_buy[type_i] + buy_bias_u
                 - PRICE_BUY * price_sens_u * price_dev_i
    p_click    = sigmoid(logit_c);   p_purchase = p_click * sigmoid(logit_b)

where s_uk, c_uk are the strength and L2 of user u's interest slot k (expressed
and latent alike), price_dev_l1 is log(price) minus the mean over the items of
its L1, price_dev is log(price) minus the mean over all items, and followers_z
is the z-score of log10(followers) over creators.

Logging policy (``policy == 0``) for user u on day d: pick an L2 category
(with probability ``1 - explore_share`` one of u's expressed interests, weighted
by strength; else a category from the global popularity ``cat_pop``), then an
item of that category available on day d with probability proportional to its
popularity. Its propensity is therefore exact and cheap::

    pi(i | u, d) = ((1 - eps) * w_u(l2_i) + eps * cat_pop[l2_i]) * pop_i / Z_d(l2_i)

The random policy (``policy == 1``) picks uniformly among the items available
on day d: ``1 / n_available[d]``.

A request's slots are filled in order without repeating an item (a repeat is
redrawn), so the ``propensity`` column of the row in slot k is the policy
probability renormalised over the items not shown yet in the request,
``pi(i | u, d) / (1 - sum_{j<k} pi(item_j | u, d))`` (Plackett-Luce style);
for the random policy ``1 / (n_available[d] - position)``. At position 0 it is
``pi`` itself (:func:`logging_propensity`, :func:`random_propensity`).
"""

from __future__ import annotations

import dataclasses
import io
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ranking.data.synthetic.config import SyntheticConfig

WORLD_NPZ = "world.npz"
WORLD_JSON = "world.json"
FORMAT_VERSION = 1

# Codes of the categorical user / item attributes (index = code).
AGE_BUCKETS = ("<18", "18-24", "25-30", "31-40", "41-50", "51-60", "60+")
GENDERS = ("unknown", "female", "male")
CITY_TIERS = ("tier1", "tier2", "tier3", "tier4", "tier5")
DEVICES = ("android", "ios", "other")
ACTIVITY = ("low", "medium", "high", "very_high")
CONTENT_TYPES = ("short_video", "live_stream", "product_card")
CHANNELS = ("self_broadcast", "alliance", "campaign", "top_kol")
LIVE_STREAM = CONTENT_TYPES.index("live_stream")
PRODUCT_CARD = CONTENT_TYPES.index("product_card")
SELF_BROADCAST = CHANNELS.index("self_broadcast")
POLICIES = ("logged", "random")  # value of the ``policy`` column

# Fixed coefficients of the outcome model (the config exposes the ones worth tuning).
SIBLING = 0.3  # share of an interest's strength that spills to its L1 siblings
Q_CLICK = 0.35
APPEAL = 0.45
FOLLOW = 0.15
PRICE_CLICK = 0.25
Q_BUY = 0.6
INTEREST_BUY = 0.5
PRICE_BUY = 0.5
LIVE_BOOST = 1.0  # log-popularity boost of live streams in the logging policy

_AGE_P = (0.08, 0.22, 0.26, 0.2, 0.13, 0.08, 0.03)
_GENDER_P = (0.05, 0.55, 0.40)
_CITY_P = (0.12, 0.2, 0.25, 0.23, 0.2)
_DEVICE_P = (0.6, 0.35, 0.05)
_ACTIVITY_P = (0.35, 0.35, 0.2, 0.1)
_ACTIVITY_RATE = (0.3, 0.8, 1.6, 3.0)  # relative requests per day
_ACTIVITY_CLICK = (-0.2, 0.0, 0.1, 0.2)
_CITY_PRICE_SENS = (0.6, 0.8, 1.0, 1.2, 1.4)
_CHANNEL_P = (0.45, 0.35, 0.08, 0.12)
_CHANNEL_LOG10_FOLLOWERS = ((3.0, 0.6), (4.3, 0.5), (5.0, 0.4), (6.3, 0.45))
_CHANNEL_BUY = (0.3, 0.0, 0.2, 0.1)  # self-broadcast converts best (the shop itself)
_TYPE_BUY = (0.0, 0.4, 0.2)  # live streams convert best

_BLOCK = 65_536  # users per block of the [users, categories] interest logits


def world_seed(seed: int) -> np.random.SeedSequence:
    """Seed of the world (entities and latents); days use ``day_seed``."""
    return np.random.SeedSequence(entropy=seed, spawn_key=(0,))


def day_seed(seed: int, day: int) -> np.random.SeedSequence:
    """Independent child seed per simulated day (history days are negative), so
    chunking and resuming never shift the random stream."""
    return np.random.SeedSequence(entropy=seed, spawn_key=(1, day) if day >= 0 else (2, -day))


@dataclass
class World:
    """Latent parameters of one synthetic world. Arrays are indexed by id.

    Shapes: U users, K interest slots, D taste dim, C L2 categories, P products,
    B brands, R creators, I items.
    """

    config: SyntheticConfig
    # users
    user_age: np.ndarray  # int64 [U]
    user_gender: np.ndarray  # int64 [U]
    user_city: np.ndarray  # int64 [U]
    user_device: np.ndarray  # int64 [U]
    user_activity: np.ndarray  # int64 [U]
    user_rate: np.ndarray  # float64 [U] mean requests per day
    user_interest_cat: np.ndarray  # int64 [U, K] L2 ids, -1 = empty slot
    user_interest_strength: np.ndarray  # float64 [U, K] (0 in empty slots)
    user_interest_expressed: np.ndarray  # bool [U, K] True = expressed, False = latent/empty
    user_taste: np.ndarray  # float64 [U, D]
    user_bias: np.ndarray  # float64 [U] click logit offset
    user_price_sens: np.ndarray  # float64 [U]
    user_buy_bias: np.ndarray  # float64 [U] purchase logit offset
    # categories
    cat_pop: np.ndarray  # float64 [C] global L2 popularity (sums to 1)
    # products / brands / creators
    product_l2: np.ndarray  # int64 [P]
    product_brand: np.ndarray  # int64 [P] brand index (not the raw code)
    product_merchant: np.ndarray  # int64 [P]
    product_price: np.ndarray  # float64 [P]
    product_quality: np.ndarray  # float64 [P]
    brand_code: np.ndarray  # int64 [B] raw 10-12 digit codes (hashed by the pipeline)
    creator_channel: np.ndarray  # int64 [R]
    creator_followers: np.ndarray  # int64 [R]
    creator_home_l1: np.ndarray  # int64 [R]
    creator_merchant: np.ndarray  # int64 [R] own shop of self-broadcast creators, else -1
    # items
    item_product: np.ndarray  # int64 [I]
    item_creator: np.ndarray  # int64 [I]
    item_content_type: np.ndarray  # int64 [I]
    item_appeal: np.ndarray  # float64 [I]
    item_taste: np.ndarray  # float64 [I, D]
    item_pop: np.ndarray  # float64 [I] popularity weight of the logging policy
    item_from_day: np.ndarray  # int64 [I] first day the item can be exposed
    item_to_day: np.ndarray  # int64 [I] first day it can no longer be exposed
    # outcome-model tables
    ct_device: np.ndarray  # float64 [devices, content types]
    # derived (not saved)
    derived: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._derive()

    # ---- derived item attributes -----------------------------------------------------
    def _derive(self) -> None:
        cfg = self.config
        d = self.derived
        d["item_l2"] = self.product_l2[self.item_product]
        d["item_l1"] = d["item_l2"] // cfg.n_cat_l2_per_l1
        d["item_brand_code"] = self.brand_code[self.product_brand[self.item_product]]
        d["item_merchant"] = self.product_merchant[self.item_product]
        d["item_channel"] = self.creator_channel[self.item_creator]
        d["item_price"] = self.product_price[self.item_product]
        d["item_quality"] = self.product_quality[self.item_product]
        d["item_followers"] = self.creator_followers[self.item_creator]
        logf = np.log10(self.creator_followers.astype(np.float64))
        fz = (logf - logf.mean()) / max(logf.std(), 1e-9)
        d["item_followers_z"] = fz[self.item_creator]
        logp = np.log(d["item_price"])
        l1_mean = np.bincount(d["item_l1"], weights=logp, minlength=cfg.n_cat_l1) / np.maximum(
            np.bincount(d["item_l1"], minlength=cfg.n_cat_l1), 1
        )
        d["item_price_dev_l1"] = logp - l1_mean[d["item_l1"]]
        d["item_price_dev"] = logp - logp.mean()
        d["item_channel_buy"] = np.asarray(_CHANNEL_BUY)[d["item_channel"]]
        d["item_type_buy"] = np.asarray(_TYPE_BUY)[self.item_content_type]
        # logging policy: per-user normalised weights over the expressed slots
        w = np.where(self.user_interest_expressed, self.user_interest_strength, 0.0)
        d["user_policy_w"] = w / w.sum(axis=1, keepdims=True)
        # L1 of each interest slot (-1 for empty slots, so it never matches)
        d["user_interest_l1"] = np.where(
            self.user_interest_cat >= 0, self.user_interest_cat // cfg.n_cat_l2_per_l1, -1
        )
        d["user_bias_total"] = self.user_bias + np.asarray(_ACTIVITY_CLICK)[self.user_activity]

    @property
    def n_users(self) -> int:
        return int(self.user_age.shape[0])

    @property
    def n_items(self) -> int:
        return int(self.item_product.shape[0])

    def item_l2(self) -> np.ndarray:
        return self.derived["item_l2"]

    def available(self, day: int) -> np.ndarray:
        """bool [I]: items the policies may show on ``day``."""
        return (self.item_from_day <= day) & (day < self.item_to_day)

    def n_available(self, day: int) -> int:
        return int(self.available(day).sum())

    def item_features(self) -> dict[str, np.ndarray]:
        """Item-side feature columns of the corpus, indexed by item id (schema names)."""
        d = self.derived
        return {
            "item_id": np.arange(self.n_items, dtype=np.int64),
            "content_type": self.item_content_type,
            "category_l1": d["item_l1"],
            "category_l2": d["item_l2"],
            "product_id": self.item_product,
            "brand": d["item_brand_code"],
            "merchant_id": d["item_merchant"],
            "creator_id": self.item_creator,
            "channel": d["item_channel"],
            "price": d["item_price"].astype(np.float32),
            "creator_followers": d["item_followers"].astype(np.float32),
        }

    def user_features(self) -> dict[str, np.ndarray]:
        """Static user-side feature columns, indexed by user id (schema names)."""
        return {
            "user_id": np.arange(self.n_users, dtype=np.int64),
            "age_bucket": self.user_age,
            "gender": self.user_gender,
            "city_tier": self.user_city,
            "device": self.user_device,
            "activity": self.user_activity,
        }

    # ---- persistence -------------------------------------------------------------------
    def array_fields(self) -> list[str]:
        return [f.name for f in dataclasses.fields(self) if f.name not in ("config", "derived")]

    def save(self, out_dir: str | Path) -> None:
        """Write ``world.npz`` (arrays) and ``world.json`` (config, codes, coefficients),
        byte-stable for a given world."""
        out = Path(out_dir)
        _save_npz_stable(out / WORLD_NPZ, {k: getattr(self, k) for k in self.array_fields()})
        cfg = self.config
        meta = {
            "format_version": FORMAT_VERSION,
            "config": cfg.to_dict(),
            "codes": {
                "age_bucket": list(AGE_BUCKETS),
                "gender": list(GENDERS),
                "city_tier": list(CITY_TIERS),
                "device": list(DEVICES),
                "activity": list(ACTIVITY),
                "content_type": list(CONTENT_TYPES),
                "channel": list(CHANNELS),
                "policy": list(POLICIES),
            },
            "coefficients": {
                "SIBLING": SIBLING,
                "Q_CLICK": Q_CLICK,
                "APPEAL": APPEAL,
                "FOLLOW": FOLLOW,
                "PRICE_CLICK": PRICE_CLICK,
                "Q_BUY": Q_BUY,
                "INTEREST_BUY": INTEREST_BUY,
                "PRICE_BUY": PRICE_BUY,
                "LIVE_BOOST": LIVE_BOOST,
                "activity_click": list(_ACTIVITY_CLICK),
                "channel_buy": list(_CHANNEL_BUY),
                "type_buy": list(_TYPE_BUY),
            },
            "n_available_per_day": [self.n_available(d) for d in range(cfg.n_days)],
            "interests": "user_interest_cat[u, k] is an L2 id (-1 empty); "
            "user_interest_expressed[u, k] True = expressed (logging policy targets it), "
            "False with cat >= 0 = latent",
        }
        (out / WORLD_JSON).write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")


def _save_npz_stable(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Like np.savez, but with fixed zip timestamps (np.savez stamps the current time)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for name in sorted(arrays):
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arrays[name]), allow_pickle=False)
            info = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue())


def load_world(dataset_dir: str | Path) -> World:
    """Reload the world saved by :func:`ranking.data.synthetic.generate`."""
    root = Path(dataset_dir)
    meta_path = root / WORLD_JSON
    if not meta_path.exists():
        raise FileNotFoundError(f"{meta_path}: no synthetic world here (not a synthetic dataset?)")
    meta = json.loads(meta_path.read_text())
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{meta_path}: world format {meta.get('format_version')} != {FORMAT_VERSION}"
        )
    cfg = SyntheticConfig.from_dict(meta["config"])
    with np.load(root / WORLD_NPZ, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    return World(config=cfg, **arrays)


# ---- construction ----------------------------------------------------------------------
def _zipf_weights(n: int, a: float, rng: np.random.Generator) -> np.ndarray:
    """Weights 1/rank^a over a random permutation of n entities (sum 1)."""
    w = 1.0 / np.arange(1, n + 1, dtype=np.float64) ** a
    w = w[rng.permutation(n)]
    return w / w.sum()


def _pick_in_groups(
    group: np.ndarray,
    members_sorted_by_group: np.ndarray,
    starts: np.ndarray,
    counts: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """For each entry of ``group`` pick a uniform member of that group (counts > 0)."""
    r = rng.random(group.shape[0])
    off = np.minimum((r * counts[group]).astype(np.int64), counts[group] - 1)
    return members_sorted_by_group[starts[group] + off]


def _groups(keys: np.ndarray, n_groups: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    order = np.argsort(keys, kind="stable")
    counts = np.bincount(keys, minlength=n_groups)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    return order, starts, counts


def build_world(cfg: SyntheticConfig) -> World:
    """Draw a world from ``cfg.seed`` (deterministic)."""
    rng = np.random.Generator(np.random.PCG64(world_seed(cfg.seed)))
    U, I, P, R, M, B = (  # noqa: E741 (entity counts, as in the docstrings)
        cfg.n_users,
        cfg.n_items,
        cfg.n_products,
        cfg.n_creators,
        cfg.n_merchants,
        cfg.n_brands,
    )
    C1, per, C = cfg.n_cat_l1, cfg.n_cat_l2_per_l1, cfg.n_cat_l2
    D = cfg.taste_dim
    l1_of_l2 = np.arange(C) // per

    # ---- category tree popularity -------------------------------------------------
    l1_pop = _zipf_weights(C1, 0.7, rng)
    l2_within = np.concatenate([_zipf_weights(per, 0.8, rng) for _ in range(C1)])
    cat_pop = l1_pop[l1_of_l2] * l2_within
    cat_pop = cat_pop / cat_pop.sum()

    # ---- users ------------------------------------------------------------------------
    age = rng.choice(len(AGE_BUCKETS), size=U, p=_AGE_P).astype(np.int64)
    gender = rng.choice(len(GENDERS), size=U, p=_GENDER_P).astype(np.int64)
    city = rng.choice(len(CITY_TIERS), size=U, p=_CITY_P).astype(np.int64)
    device = rng.choice(len(DEVICES), size=U, p=_DEVICE_P).astype(np.int64)
    activity = rng.choice(len(ACTIVITY), size=U, p=_ACTIVITY_P).astype(np.int64)
    act_rate = np.asarray(_ACTIVITY_RATE) / np.dot(_ACTIVITY_RATE, _ACTIVITY_P)
    rate = cfg.requests_per_user_day * act_rate[activity] * rng.lognormal(-0.045, 0.3, size=U)

    # Interests: demographic groups tilt the L1 prior, so profile features predict
    # interests (also the latent ones). Gumbel top-k samples distinct categories
    # in sequential-draw order; the last n_latent of them are latent (less
    # mainstream on average), the first n_expressed are expressed.
    tilt = rng.normal(0.0, 0.8, size=(len(GENDERS), len(AGE_BUCKETS), C1))
    n_exp = rng.integers(cfg.min_expressed, cfg.max_expressed + 1, size=U)
    n_lat = rng.integers(cfg.min_latent, cfg.max_latent + 1, size=U)
    K = cfg.max_expressed + cfg.max_latent
    top = np.empty((U, K), dtype=np.int64)
    log_cat = np.log(cat_pop)
    for lo in range(0, U, _BLOCK):
        hi = min(lo + _BLOCK, U)
        logits = log_cat[None, :] + tilt[gender[lo:hi], age[lo:hi]][:, l1_of_l2]
        logits = logits + rng.gumbel(size=(hi - lo, C))
        top[lo:hi] = np.argsort(-logits, axis=1, kind="stable")[:, :K]
    slot = np.arange(K)[None, :]
    expressed = slot < n_exp[:, None]
    used = slot < (n_exp + n_lat)[:, None]
    interest_cat = np.where(used, top, -1)
    strength = np.where(
        expressed, rng.uniform(0.7, 1.3, size=(U, K)), rng.uniform(0.9, 1.5, size=(U, K))
    )
    strength = np.where(used, strength, 0.0)
    user_taste = rng.normal(0.0, 1.0, size=(U, D))
    user_bias = rng.normal(0.0, 0.3, size=U)
    price_sens = np.asarray(_CITY_PRICE_SENS)[city] * rng.lognormal(0.0, 0.3, size=U)
    age_buy = np.linspace(-0.2, 0.2, len(AGE_BUCKETS))
    buy_bias = rng.normal(0.0, 0.5, size=U) + age_buy[age]

    # ---- brands, merchants, products -----------------------------------------------
    brand_code = rng.choice(np.int64(10**12) - 10**9, size=B, replace=False) + np.int64(10**9)
    brand_l1 = np.concatenate([np.arange(C1), rng.choice(C1, size=B - C1, p=l1_pop)])
    brand_quality = rng.normal(0.0, 0.5, size=B)
    # the first C products are one anchor per L2 category, so no category is empty
    product_l2 = np.concatenate([np.arange(C), rng.choice(C, size=P - C, p=cat_pop)])
    product_l1 = product_l2 // per
    b_order, b_starts, b_counts = _groups(brand_l1, C1)
    # brands within an L1 are Zipf-popular: pick by a squared uniform (skews to the head)
    r = rng.random(P) ** 2
    off = np.minimum((r * b_counts[product_l1]).astype(np.int64), b_counts[product_l1] - 1)
    product_brand = b_order[b_starts[product_l1] + off]
    product_merchant = rng.choice(M, size=P, p=_zipf_weights(M, 1.0, rng))
    product_quality = rng.normal(0.0, 0.8, size=P) + brand_quality[product_brand]
    l1_log_price = rng.uniform(np.log(15.0), np.log(300.0), size=C1)
    log_price = l1_log_price[product_l1] + rng.normal(0.0, 0.6, size=P) + 0.15 * product_quality
    product_price = np.round(np.exp(log_price), 2).clip(0.99, None)

    # ---- creators -----------------------------------------------------------------------
    channel = rng.choice(len(CHANNELS), size=R, p=_CHANNEL_P).astype(np.int64)
    mu = np.asarray([m for m, _ in _CHANNEL_LOG10_FOLLOWERS])[channel]
    sd = np.asarray([s for _, s in _CHANNEL_LOG10_FOLLOWERS])[channel]
    followers = np.round(10.0 ** rng.normal(mu, sd)).astype(np.int64).clip(1, None)
    home_l1 = rng.choice(C1, size=R, p=l1_pop).astype(np.int64)
    own_product = rng.integers(0, P, size=R)
    creator_merchant = np.where(channel == SELF_BROADCAST, product_merchant[own_product], -1)

    # ---- items --------------------------------------------------------------------------
    item_creator = rng.choice(R, size=I, p=_zipf_weights(R, 0.6, rng)).astype(np.int64)
    ct_p = (cfg.video_share, cfg.live_share, 1.0 - cfg.video_share - cfg.live_share)
    content_type = rng.choice(len(CONTENT_TYPES), size=I, p=ct_p).astype(np.int64)
    # product: self-broadcast -> own merchant's catalogue; others -> home L1 (70%) or any
    m_order, m_starts, m_counts = _groups(product_merchant, M)
    l_order, l_starts, l_counts = _groups(product_l1, C1)
    ch = channel[item_creator]
    own = _pick_in_groups(
        np.maximum(creator_merchant[item_creator], 0), m_order, m_starts, m_counts, rng
    )
    home = _pick_in_groups(home_l1[item_creator], l_order, l_starts, l_counts, rng)
    anywhere = rng.integers(0, P, size=I)
    use_home = rng.random(I) < 0.7
    item_product = np.where(ch == SELF_BROADCAST, own, np.where(use_home, home, anywhere))
    # anchors: the first C items are always-available product cards of the C anchor products
    item_product[:C] = np.arange(C)
    content_type[:C] = PRODUCT_CARD
    item_appeal = rng.normal(0.0, 1.0, size=I)
    item_taste = rng.normal(0.0, 1.0 / np.sqrt(D), size=(I, D))
    logf = np.log10(followers.astype(np.float64))
    fz = (logf - logf.mean()) / max(logf.std(), 1e-9)
    log_pop = (
        1.3 * rng.normal(0.0, 1.0, size=I)
        + 0.5 * fz[item_creator]
        + 0.3 * product_quality[item_product]
        + 0.3 * item_appeal
        + LIVE_BOOST * (content_type == LIVE_STREAM)  # live streams get pushed while live
    )
    item_pop = np.exp(log_pop)
    # availability: most items exist before day 0 (from the first history day on);
    # some are released during the log; live streams are exposable for
    # live_window_days only.
    W = cfg.live_window_days
    is_new = rng.random(I) < cfg.new_item_share
    release = np.where(is_new, rng.integers(1, max(cfg.n_days, 2), size=I), -cfg.history_days)
    live_start = rng.integers(-(W - 1), cfg.n_days, size=I)
    is_live = content_type == LIVE_STREAM
    from_day = np.where(is_live, live_start, release).astype(np.int64)
    to_day = np.where(is_live, live_start + W, np.iinfo(np.int32).max).astype(np.int64)
    from_day[:C] = -cfg.history_days
    to_day[:C] = np.iinfo(np.int32).max

    ct_device = rng.normal(0.0, 0.25, size=(len(DEVICES), len(CONTENT_TYPES)))

    return World(
        config=cfg,
        user_age=age,
        user_gender=gender,
        user_city=city,
        user_device=device,
        user_activity=activity,
        user_rate=rate,
        user_interest_cat=interest_cat,
        user_interest_strength=strength,
        user_interest_expressed=expressed,
        user_taste=user_taste,
        user_bias=user_bias,
        user_price_sens=price_sens,
        user_buy_bias=buy_bias,
        cat_pop=cat_pop,
        product_l2=product_l2.astype(np.int64),
        product_brand=product_brand.astype(np.int64),
        product_merchant=product_merchant.astype(np.int64),
        product_price=product_price,
        product_quality=product_quality,
        brand_code=brand_code.astype(np.int64),
        creator_channel=channel,
        creator_followers=followers,
        creator_home_l1=home_l1,
        creator_merchant=creator_merchant.astype(np.int64),
        item_product=item_product.astype(np.int64),
        item_creator=item_creator,
        item_content_type=content_type,
        item_appeal=item_appeal,
        item_taste=item_taste,
        item_pop=item_pop,
        item_from_day=from_day,
        item_to_day=to_day,
        ct_device=ct_device,
    )


# ---- oracle -------------------------------------------------------------------------------
def _check_ids(world: World, users: np.ndarray, items: np.ndarray) -> None:
    if users.size and (users.min() < 0 or users.max() >= world.n_users):
        raise ValueError(f"user ids must lie in [0, {world.n_users})")
    if items.size and (items.min() < 0 or items.max() >= world.n_items):
        raise ValueError(f"item ids must lie in [0, {world.n_items})")


def interest_affinity(
    world: World, users: np.ndarray, items: np.ndarray, expressed_only: bool = False
) -> np.ndarray:
    """float64 [N]: interest strength of each user for each item's category
    (exact L2 match, plus ``SIBLING`` x strength for other L2s of the same L1);
    with ``expressed_only`` the latent interests count 0 (what a model can read
    off the user's behaviour)."""
    cfg = world.config
    cats = world.user_interest_cat[users]  # [N, K]
    s = world.user_interest_strength[users] * cfg.interest_scale
    if expressed_only:
        s = s * world.user_interest_expressed[users]
    l2 = world.derived["item_l2"][items][:, None]
    exact = cats == l2
    sib = (world.derived["user_interest_l1"][users] == l2 // cfg.n_cat_l2_per_l1) & ~exact
    return (s * (exact + SIBLING * sib)).sum(axis=1)


def click_logit_terms(
    world: World,
    users: np.ndarray,
    items: np.ndarray,
    position: np.ndarray,
    aff: np.ndarray | float | None = None,
) -> dict[str, np.ndarray | float]:
    """The terms of the click logit (module docstring), float64 [N] each (``bias``
    a float), in the order :func:`outcome_probabilities` adds them; ``aff`` is
    :func:`interest_affinity` when the caller has it already. The ceiling
    scripts (``scripts/bench/*_ceiling.py``) drop or replace some of them."""
    cfg = world.config
    d = world.derived
    if aff is None:
        aff = interest_affinity(world, users, items)
    taste = np.einsum("nd,nd->n", world.user_taste[users], world.item_taste[items])
    return {
        "bias": cfg.click_bias,
        "interests": aff,
        "taste": cfg.taste_scale * taste,
        "quality": Q_CLICK * d["item_quality"][items],
        "appeal": APPEAL * world.item_appeal[items],
        "user_bias": d["user_bias_total"][users],
        "device_x_type": world.ct_device[world.user_device[users], world.item_content_type[items]],
        "followers": FOLLOW * d["item_followers_z"][items],
        "price": -PRICE_CLICK * world.user_price_sens[users] * d["item_price_dev_l1"][items],
        "position": -cfg.position_bias * np.log1p(position),
    }


def outcome_probabilities(
    world: World, users: np.ndarray, items: np.ndarray, position: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(P(click), P(purchase | click)) as float64 [N] (no input checks; see
    :func:`oracle_probabilities`)."""
    cfg = world.config
    d = world.derived
    aff = interest_affinity(world, users, items)
    logit_c = sum(click_logit_terms(world, users, items, position, aff).values())
    logit_b = (
        cfg.purchase_bias
        + Q_BUY * d["item_quality"][items]
        + INTEREST_BUY * aff
        + d["item_channel_buy"][items]
        + d["item_type_buy"][items]
        + world.user_buy_bias[users]
        - PRICE_BUY * world.user_price_sens[users] * d["item_price_dev"][items]
    )
    return _sigmoid(logit_c), _sigmoid(logit_b)


def oracle_probabilities(
    world: World,
    user_ids: np.ndarray,
    item_ids: np.ndarray,
    position: np.ndarray | int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """True P(click) and P(click and purchase) of (user, item, position) triples.

    Args:
        world: from :func:`load_world`.
        user_ids, item_ids: int [N] (or broadcastable to a common shape).
        position: slot in [0, max_slots) (int or array broadcastable to [N]).

    Returns:
        (p_click, p_purchase): float64 arrays of the broadcast shape. These are
        the ``p_click`` / ``p_purchase`` columns of the log (written as float32).
    """
    u, i, pos = np.broadcast_arrays(
        np.asarray(user_ids, dtype=np.int64),
        np.asarray(item_ids, dtype=np.int64),
        np.asarray(position, dtype=np.int64),
    )
    shape = u.shape
    u, i, pos = u.ravel(), i.ravel(), pos.ravel()
    _check_ids(world, u, i)
    if pos.size and (pos.min() < 0 or pos.max() >= world.config.max_slots):
        raise ValueError(f"position must lie in [0, {world.config.max_slots})")
    p_click, p_buy = outcome_probabilities(world, u, i, pos)
    return p_click.reshape(shape), (p_click * p_buy).reshape(shape)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


# ---- policies -----------------------------------------------------------------------------
@dataclass
class DayPolicy:
    """Sampling tables of both policies for one day.

    Items are grouped by L2 category (``order``); ``cum`` is the running sum of
    the logging policy's item weights (popularity x availability) in that order.
    """

    day: int
    weight: np.ndarray  # float64 [I] logging weight (0 if unavailable)
    cat_total: np.ndarray  # float64 [C] Z_d(c)
    order: np.ndarray  # int64 [I] items sorted by category
    cum: np.ndarray  # float64 [I] inclusive cumsum of weight[order]
    cat_lo: np.ndarray  # float64 [C] cum before the category's first item
    first_pos: np.ndarray  # int64 [C] first index (in order) with positive weight
    last_pos: np.ndarray  # int64 [C] last index (in order) with positive weight
    available_items: np.ndarray  # int64 [A]


def day_policy(world: World, day: int) -> DayPolicy:
    cfg = world.config
    l2 = world.derived["item_l2"]
    avail = world.available(day)
    weight = np.where(avail, world.item_pop, 0.0)
    order = np.argsort(l2, kind="stable")
    w_sorted = weight[order]
    cum = np.cumsum(w_sorted)
    counts = np.bincount(l2, minlength=cfg.n_cat_l2)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    cat_lo = np.where(starts > 0, cum[np.maximum(starts - 1, 0)], 0.0)
    cat_total = np.bincount(l2, weights=weight, minlength=cfg.n_cat_l2)
    if np.any(cat_total <= 0):
        raise AssertionError("every category keeps an available anchor item")
    pos_idx = np.flatnonzero(w_sorted > 0)
    cat_of_pos = l2[order][pos_idx]
    first_pos = np.full(cfg.n_cat_l2, -1, dtype=np.int64)
    last_pos = np.full(cfg.n_cat_l2, -1, dtype=np.int64)
    first_pos[cat_of_pos[::-1]] = pos_idx[::-1]
    last_pos[cat_of_pos] = pos_idx
    return DayPolicy(
        day=day,
        weight=weight,
        cat_total=cat_total,
        order=order,
        cum=cum,
        cat_lo=cat_lo,
        first_pos=first_pos,
        last_pos=last_pos,
        available_items=np.flatnonzero(avail).astype(np.int64),
    )


def category_policy(world: World, users: np.ndarray, cats: np.ndarray) -> np.ndarray:
    """float64 [N]: probability that the logging policy picks L2 category ``cats``
    for ``users``: (1 - eps) * expressed weight + eps * cat_pop."""
    eps = world.config.explore_share
    w = world.derived["user_policy_w"][users]
    hit = world.user_interest_cat[users] == cats[:, None]
    return (1.0 - eps) * (w * hit).sum(axis=1) + eps * world.cat_pop[cats]


def logging_propensity(
    world: World,
    user_ids: np.ndarray,
    item_ids: np.ndarray,
    day: int,
    policy: DayPolicy | None = None,
) -> np.ndarray:
    """float64 [N]: pi(i | u, day), the probability of one draw of the logging
    policy for user u on ``day`` (0 for items unavailable that day); sums to 1
    over the items. It is the propensity of a row at position 0; later slots
    renormalise it over the items not shown yet (see the module docstring)."""
    users = np.asarray(user_ids, dtype=np.int64)
    items = np.asarray(item_ids, dtype=np.int64)
    _check_ids(world, users, items)
    pol = policy if policy is not None else day_policy(world, day)
    cats = world.derived["item_l2"][items]
    return category_policy(world, users, cats) * pol.weight[items] / pol.cat_total[cats]


def random_propensity(world: World, day: int, position: np.ndarray | int = 0) -> np.ndarray:
    """Propensity of the random policy's rows on ``day``: 1 / (items available -
    position), the uniform draw among the items not shown yet in the request."""
    return 1.0 / (world.n_available(day) - np.asarray(position, dtype=np.float64))
