"""Day-by-day exposure, click and purchase simulation with behaviour sequences.

Time: day d is split into ``steps_per_day`` steps of ``step_seconds``. In a
step, each user makes at most one request (probability ``rate_u /
steps_per_day``), a random time inside the step; the request shows
``min_slots..max_slots`` items at positions 0, 1, ... with
``ts = request_ts + position``. A request is served entirely by the random
policy with probability ``random_exposure_share`` (``policy = 1``), else by the
logging policy (``policy = 0``); see :mod:`.world` for both. Slots are filled
in order without repeating an item in a request, so the ``propensity`` of the
item in slot k is its policy probability renormalised over the items not yet
shown: ``pi(i) / (1 - sum_{j < k} pi(item_j))``; for the random policy that
is ``1 / (n_available(day) - position)``.

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
outcomes, then appends the step's clicks and purchases (one contiguous,
time-ordered run per user, since a user makes one request per step).
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

_MAX_REDRAWS = 100_000  # rejection rounds per step before giving up
_CANDIDATES = 4  # draws per request and rejection round


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
        """Append ``values`` [N] to ``users`` [N]. Each user's values must be one
        contiguous run, in chronological order (users in any order)."""
        n = users.shape[0]
        if n == 0:
            return
        starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
        if np.unique(users[starts]).shape[0] != starts.shape[0]:
            raise ValueError("RingBuffer.append: a user's values must be contiguous")
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
    """Rows of one step, ordered by request start time, then position. Arrays have
    length N; lists are (offsets [N+1], values)."""

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
        """Every step of the log in time order. The ``history_days`` days before
        day 0 are simulated first: their events only fill the users' histories
        and they yield nothing."""
        cfg = self.world.config
        for day in range(-cfg.history_days, cfg.n_days):
            rng = np.random.Generator(np.random.PCG64(day_seed(cfg.seed, day)))
            pol = day_policy(self.world, day)
            split = cfg.split_of_day(day)
            for step in range(cfg.steps_per_day):
                log = self._step(rng, pol, day, step, split)
                if log is not None:
                    yield log

    def _step(
        self, rng: np.random.Generator, pol: DayPolicy, day: int, step: int, split: str | None
    ) -> StepLog | None:
        w = self.world
        cfg = w.config
        d = w.derived
        step_start = cfg.start_ts + day * 86_400 + step * cfg.step_seconds

        # ---- requests, in time order (ties by user id) ---------------------------------
        users = np.flatnonzero(rng.random(w.n_users) < self._p_step).astype(np.int64)
        R = users.shape[0]
        n_slots = rng.integers(cfg.min_slots, cfg.max_slots + 1, size=R)
        is_random = rng.random(R) < cfg.random_exposure_share
        req_ts = step_start + rng.integers(0, cfg.step_seconds - cfg.max_slots + 1, size=R)
        if R == 0:
            return None
        by_time = np.argsort(req_ts, kind="stable")
        users, n_slots, is_random, req_ts = (
            users[by_time],
            n_slots[by_time],
            is_random[by_time],
            req_ts[by_time],
        )
        N = int(n_slots.sum())
        req_of_row = np.repeat(np.arange(R), n_slots)
        req_start = np.zeros(R, dtype=np.int64)
        np.cumsum(n_slots[:-1], out=req_start[1:])
        position = np.arange(N, dtype=np.int64) - req_start[req_of_row]
        row_user = users[req_of_row]
        row_random = is_random[req_of_row]

        # ---- exposure ---------------------------------------------------------------
        item, propensity = self._expose(rng, pol, users, n_slots, is_random)

        # ---- outcomes ---------------------------------------------------------------
        p_click, p_buy = outcome_probabilities(w, row_user, item, position)
        click = rng.random(N) < p_click
        purchase = click & (rng.random(N) < p_buy)

        if split is None:  # a history day: events only
            self.clicks.append(row_user[click], item[click])
            self.buys.append(row_user[purchase], w.item_product[item[purchase]])
            return None

        # ---- sequence features as of the previous step --------------------------------
        c_len, c_vals = self.clicks.read(users)
        b_len, b_vals = self.buys.read(users)
        click_count = self.clicks.total[users]
        hist_items = ragged(c_len, c_vals, req_of_row)
        hist_cats = (hist_items[0], d["item_l2"][hist_items[1]])
        hist_buys = ragged(b_len, b_vals, req_of_row)

        # ---- update state with this step's events ------------------------------------
        # (one request per user and step: each user's rows are contiguous, in ts order)
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

    def _draw(
        self, rng: np.random.Generator, pol: DayPolicy, users: np.ndarray, is_random: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """One independent draw per request from its policy: (item [n], per-draw
        probability [n]). Uniforms are drawn for every request (a fixed stream)."""
        w = self.world
        cfg = w.config
        n = users.shape[0]
        r_explore, r_cat, r_item = rng.random((3, n))
        r_uniform = rng.integers(0, pol.available_items.shape[0], size=n)
        item = np.empty(n, dtype=np.int64)
        prob = np.empty(n, dtype=np.float64)
        # logging policy: category (expressed interest or global explore), then item
        lg = np.flatnonzero(~is_random)
        lu, rc = users[lg], r_cat[lg]
        pick = (rc[:, None] >= self._user_cdf[lu]).sum(axis=1)
        cat = np.where(
            r_explore[lg] < cfg.explore_share,
            np.searchsorted(self._cat_cdf, rc, side="right"),
            w.user_interest_cat[lu, pick],
        )
        t = pol.cat_lo[cat] + r_item[lg] * pol.cat_total[cat]
        j = np.clip(
            np.searchsorted(pol.cum, t, side="right"), pol.first_pos[cat], pol.last_pos[cat]
        )
        item[lg] = pol.order[j]
        prob[lg] = category_policy(w, lu, cat) * pol.weight[item[lg]] / pol.cat_total[cat]
        # random policy: uniform over the items available today
        rd = np.flatnonzero(is_random)
        item[rd] = pol.available_items[r_uniform[rd]]
        prob[rd] = 1.0 / pol.available_items.shape[0]
        return item, prob

    def _expose(
        self,
        rng: np.random.Generator,
        pol: DayPolicy,
        users: np.ndarray,
        n_slots: np.ndarray,
        is_random: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Fill the slots of every request without repeating an item in a request.

        Sequential semantics: slot k takes independent draws from the request's
        policy until one is not among the items of slots < k (rejection), so it
        holds item i with probability ``pi(i) / (1 - sum of pi over the items in
        slots < k)``: the row's propensity.

        Vectorised: the first draw of every slot is made up front for all rows.
        Then, in rounds, each request whose items still repeat redraws its
        *first* repeating slot (the slots before it are final), taking
        ``_CANDIDATES`` draws at a time and keeping the first acceptable one,
        which is the same as drawing them one by one.

        Returns (item [N], propensity [N]) in request-major row order.
        """
        R, S = users.shape[0], int(n_slots.max())
        filled = np.arange(S)[None, :] < n_slots[:, None]
        req_of_row = np.repeat(np.arange(R), n_slots)
        first_item, first_p = self._draw(rng, pol, users[req_of_row], is_random[req_of_row])
        slot_item = np.full((R, S), -1, dtype=np.int64)
        base = np.zeros((R, S), dtype=np.float64)
        slot_item[filled], base[filled] = first_item, first_p
        before = np.tri(S, S, -1, dtype=bool)  # before[k, j]: slot j precedes slot k

        def first_repeat(req: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            m = slot_item[req]
            rep = ((m[:, :, None] == m[:, None, :]) & before[None]).any(axis=2) & filled[req]
            has = rep.any(axis=1)
            return req[has], rep[has].argmax(axis=1)

        todo, k = first_repeat(np.arange(R))
        c = _CANDIDATES
        for _ in range(_MAX_REDRAWS):
            if todo.size == 0:
                break
            it, p = self._draw(rng, pol, np.repeat(users[todo], c), np.repeat(is_random[todo], c))
            it, p = it.reshape(-1, c), p.reshape(-1, c)
            earlier = np.where(np.arange(S)[None, :] < k[:, None], slot_item[todo], -1)  # [T, S]
            ok = ~(it[:, :, None] == earlier[:, None, :]).any(axis=2)  # [T, c]
            got = np.flatnonzero(ok.any(axis=1))
            pick = ok[got].argmax(axis=1)
            slot_item[todo[got], k[got]] = it[got, pick]
            base[todo[got], k[got]] = p[got, pick]
            todo, k = first_repeat(todo)
        else:
            raise RuntimeError("slot filling did not converge (too few items per request?)")
        shown_before = np.cumsum(base, axis=1) - base  # policy mass of earlier slots' items
        prop = base / (1.0 - shown_before)
        return slot_item[filled], prop[filled]

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
