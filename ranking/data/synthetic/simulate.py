"""Day-by-day exposure, click and purchase simulation with behaviour sequences.

Time: day d is split into ``steps_per_day`` steps of ``step_seconds``. In a
step, each user makes at most one request (probability ``rate_u /
steps_per_day``), a random time inside the step; the request shows
``min_slots..max_slots`` items at positions 0, 1, ... with
``ts = request_ts + position``. A request is served entirely by the random
policy with probability ``random_exposure_share`` (``policy = 1``), else by the
logging policy (``policy = 0``); see :mod:`.world` for both and their
propensities.

Visibility rule (no leakage): the user-side sequence features of an impression
(``hist_items``, ``hist_cats``, ``hist_buy_products``, ``user_click_count``) are
built from the user's clicks and purchases in *earlier requests*, i.e. events
with ``ts`` strictly before the start of the impression's request
(``ts - position``); equivalently, strictly before the start of its step. A
click in the same request, even at an earlier position, is not visible.
Purchases happen at the ``ts`` of their click.

State is O(users): per-user ring buffers of the last ``hist_len`` clicked items
and the last ``buy_hist_len`` purchased products, plus total counts. Each step
reads the buffers (as of the end of the previous step) for its requests, draws
outcomes, then appends the step's clicks and purchases in (user, ts) order.
Randomness comes from one generator per day (:func:`.world.day_seed`), consumed
in a fixed order, so the stream does not depend on how rows are chunked.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from ranking.data.synthetic.world import (
    DayPolicy,
    World,
    category_policy,
    day_policy,
    day_seed,
    outcome_probabilities,
)


class RingBuffer:
    """Last ``cap`` values per user, most recent last when read.

    Args:
        n_users: U.
        cap: values kept per user.
    """

    def __init__(self, n_users: int, cap: int) -> None:
        self.cap = cap
        self.buf = np.zeros((n_users, cap), dtype=np.int64)
        self.total = np.zeros(n_users, dtype=np.int64)  # values ever appended

    def append(self, users: np.ndarray, values: np.ndarray) -> None:
        """Append ``values`` [N] to ``users`` [N]; users sorted ascending, each user's
        values in chronological order."""
        n = users.shape[0]
        if n == 0:
            return
        starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
        counts = np.diff(np.r_[starts, n])
        rank = np.arange(n) - np.repeat(starts, counts)  # 0.. within the user's run
        k = np.repeat(counts, counts)
        keep = rank >= k - self.cap  # older values would be overwritten anyway
        u, r, v = users[keep], rank[keep], values[keep]
        self.buf[u, (self.total[u] + r) % self.cap] = v
        self.total[users[starts]] += counts

    def read(self, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(lengths int64 [N], values int64 [N, cap]) with row n's last ``lengths[n]``
        values in its first columns, oldest first."""
        tot = self.total[users]
        lens = np.minimum(tot, self.cap)
        j = np.arange(self.cap)[None, :]
        slots = (tot - lens)[:, None] + j
        vals = self.buf[users[:, None], slots % self.cap]
        return lens, vals


def ragged(
    lens: np.ndarray, vals: np.ndarray, rows: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Flatten left-aligned lists into Arrow-style (offsets int32 [M+1], values).

    ``rows`` optionally repeats/permutes the lists (row m takes list ``rows[m]``)
    without materialising a [M, cap] matrix.
    """
    cap = vals.shape[1]
    flat = vals[np.arange(cap)[None, :] < lens[:, None]]
    if rows is None:
        offsets = np.zeros(lens.shape[0] + 1, dtype=np.int64)
        np.cumsum(lens, out=offsets[1:])
        return offsets.astype(np.int32), flat
    src_off = np.zeros(lens.shape[0] + 1, dtype=np.int64)
    np.cumsum(lens, out=src_off[1:])
    row_len = lens[rows]
    offsets = np.zeros(rows.shape[0] + 1, dtype=np.int64)
    np.cumsum(row_len, out=offsets[1:])
    idx = np.arange(offsets[-1], dtype=np.int64) + np.repeat(src_off[rows] - offsets[:-1], row_len)
    return offsets.astype(np.int32), flat[idx]


@dataclass
class StepLog:
    """Rows of one step, all arrays of length N (lists as offsets [N+1] + values)."""

    day: int
    split: str
    columns: dict[str, np.ndarray]
    lists: dict[str, tuple[np.ndarray, np.ndarray]]

    @property
    def n_rows(self) -> int:
        return int(self.columns["item_id"].shape[0])


class Simulation:
    """Runs the log day by day; :meth:`steps` yields one :class:`StepLog` per step.

    After the iteration, :meth:`user_state` gives every user's sequence features
    as of the end of the log (what a serving system would hold).
    """

    def __init__(self, world: World) -> None:
        self.world = world
        cfg = world.config
        self.clicks = RingBuffer(world.n_users, cfg.hist_len)
        self.buys = RingBuffer(world.n_users, cfg.buy_hist_len)
        self.next_request_id = 0
        self._items = world.item_features()
        self._users = world.user_features()
        self._p_step = np.minimum(world.user_rate / cfg.steps_per_day, 1.0)
        self._cat_cdf = np.cumsum(world.cat_pop)
        self._cat_cdf[-1] = 1.0
        # cumulative expressed-interest weights per user; exactly 1 from the last
        # expressed slot on, so latent/empty slots can never be drawn.
        w = world.derived["user_policy_w"]
        cdf = np.cumsum(w, axis=1)
        n_exp = world.user_interest_expressed.sum(axis=1)
        cdf[np.arange(cdf.shape[1])[None, :] >= (n_exp - 1)[:, None]] = 1.0
        self._user_cdf = cdf

    def steps(self) -> Iterator[StepLog]:
        cfg = self.world.config
        for day in range(cfg.n_days):
            rng = np.random.Generator(np.random.PCG64(day_seed(cfg.seed, day)))
            pol = day_policy(self.world, day)
            split = cfg.split_of_day(day)
            for step in range(cfg.steps_per_day):
                log = self._step(rng, pol, day, step, split)
                if log is not None:
                    yield log

    def _step(
        self, rng: np.random.Generator, pol: DayPolicy, day: int, step: int, split: str
    ) -> StepLog | None:
        w = self.world
        cfg = w.config
        d = w.derived
        step_start = cfg.start_ts + day * 86_400 + step * cfg.step_seconds

        # ---- requests (users ascending) -------------------------------------------
        users = np.flatnonzero(rng.random(w.n_users) < self._p_step).astype(np.int64)
        R = users.shape[0]
        n_slots = rng.integers(cfg.min_slots, cfg.max_slots + 1, size=R)
        is_random = rng.random(R) < cfg.random_exposure_share
        req_ts = step_start + rng.integers(0, cfg.step_seconds - cfg.max_slots + 1, size=R)
        if R == 0:
            return None
        N = int(n_slots.sum())
        req_of_row = np.repeat(np.arange(R), n_slots)
        req_start = np.zeros(R, dtype=np.int64)
        np.cumsum(n_slots[:-1], out=req_start[1:])
        position = np.arange(N, dtype=np.int64) - req_start[req_of_row]
        row_user = users[req_of_row]
        row_random = is_random[req_of_row]

        # ---- exposure: both policies draw for every row (fixed stream), one is kept --
        r_explore = rng.random(N)
        r_cat = rng.random(N)
        r_item = rng.random(N)
        r_uniform = rng.integers(0, pol.available_items.shape[0], size=N)
        explore = r_explore < cfg.explore_share
        pick = (r_cat[:, None] >= self._user_cdf[row_user]).sum(axis=1)
        cat_user = w.user_interest_cat[row_user, pick]
        cat_global = np.searchsorted(self._cat_cdf, r_cat, side="right")
        cat = np.where(explore, cat_global, cat_user)
        t = pol.cat_lo[cat] + r_item * pol.cat_total[cat]
        j = np.searchsorted(pol.cum, t, side="right")
        j = np.clip(j, pol.first_pos[cat], pol.last_pos[cat])
        item_logged = pol.order[j]
        item_random = pol.available_items[r_uniform]
        item = np.where(row_random, item_random, item_logged)
        # propensity of the policy that served the row
        logged_prop = (
            category_policy(w, row_user, cat) * pol.weight[item_logged] / pol.cat_total[cat]
        )
        propensity = np.where(row_random, 1.0 / pol.available_items.shape[0], logged_prop)

        # ---- outcomes ---------------------------------------------------------------
        p_click, p_buy = outcome_probabilities(w, row_user, item, position)
        click = rng.random(N) < p_click
        purchase = click & (rng.random(N) < p_buy)

        # ---- sequence features as of the previous step --------------------------------
        c_len, c_vals = self.clicks.read(users)
        b_len, b_vals = self.buys.read(users)
        click_count = self.clicks.total[users]
        hist_items = ragged(c_len, c_vals, req_of_row)
        hist_cats = (hist_items[0], d["item_l2"][hist_items[1]])
        hist_buys = ragged(b_len, b_vals, req_of_row)

        # ---- update state with this step's events (rows are in (user, ts) order) -------
        self.clicks.append(row_user[click], item[click])
        self.buys.append(row_user[purchase], w.item_product[item[purchase]])

        columns = {
            "request_id": self.next_request_id + req_of_row.astype(np.int64),
            "ts": req_ts[req_of_row] + position,
            "day": np.full(N, day, dtype=np.int32),
            "policy": row_random.astype(np.int8),
            "propensity": propensity,
            "user_click_count": click_count[req_of_row].astype(np.float32),
            "position": position,
            "click": click.astype(np.int8),
            "purchase": purchase.astype(np.int8),
            "p_click": p_click.astype(np.float32),
            "p_purchase": (p_click * p_buy).astype(np.float32),
        }
        for k, v in self._users.items():
            columns[k] = v[row_user]
        for k, v in self._items.items():
            columns[k] = v[item]
        self.next_request_id += R
        lists = {"hist_items": hist_items, "hist_cats": hist_cats, "hist_buy_products": hist_buys}
        return StepLog(day=day, split=split, columns=columns, lists=lists)

    def user_state(self) -> tuple[dict[str, np.ndarray], dict[str, tuple[np.ndarray, np.ndarray]]]:
        """Every user's features as of the end of the simulated log:
        (scalar columns, list columns as offsets + values), rows = user ids."""
        w = self.world
        users = np.arange(w.n_users, dtype=np.int64)
        c_len, c_vals = self.clicks.read(users)
        b_len, b_vals = self.buys.read(users)
        hist_items = ragged(c_len, c_vals)
        columns = dict(self._users)
        columns["user_click_count"] = self.clicks.total.astype(np.float32)
        lists = {
            "hist_items": hist_items,
            "hist_cats": (hist_items[0], w.derived["item_l2"][hist_items[1]]),
            "hist_buy_products": ragged(b_len, b_vals),
        }
        return columns, lists
