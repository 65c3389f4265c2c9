"""The synthetic interest e-commerce world: determinism, no leakage, schema and
dtypes, policies and propensities, the oracle, and the default size's numbers."""

from __future__ import annotations

import bisect
import hashlib
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ranking.data.availability import read_windows
from ranking.data.synthetic import (
    SyntheticConfig,
    benchmark_config,
    generate,
    load_world,
    logging_propensity,
    oracle_probabilities,
)
from ranking.data.synthetic.simulate import RingBuffer, ragged
from ranking.data.synthetic.world import CONTENT_TYPES
from ranking.data.validate import validate_dataset
from ranking.schema import SPLITS, Kind, Schema

# Small enough for brute force, big enough for every split to hold random rows;
# short history caps so truncation is exercised.
SMALL = dict(
    seed=7,
    n_users=300,
    n_items=200,
    n_products=120,
    n_creators=40,
    n_merchants=30,
    n_brands=20,
    n_cat_l1=4,
    n_cat_l2_per_l1=4,
    n_days=8,
    history_days=0,  # every event in the log, so histories can be rebuilt from it
    valid_days=2,
    test_days=2,
    requests_per_user_day=1.5,
    click_bias=-3.0,
    purchase_bias=-1.5,
    hist_len=5,
    buy_hist_len=3,
    chunk_rows=3000,
)


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Schema]:
    out = tmp_path_factory.mktemp("syn") / "small"
    schema = generate(out, SyntheticConfig(**SMALL))
    return out, schema


@pytest.fixture(scope="module")
def log(small: tuple[Path, Schema]) -> pa.Table:
    """All splits in generation order, with a ``split`` column."""
    _, schema = small
    tables = []
    for s in SPLITS:
        t = pa.concat_tables(pq.read_table(p) for p in schema.split_paths(s))
        tables.append(t.append_column("split", pa.array([s] * t.num_rows)))
    return pa.concat_tables(tables)


def _sha256_tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _np(t: pa.Table, col: str) -> np.ndarray:
    return t.column(col).to_numpy()


def _lists(t: pa.Table, col: str) -> list[list[int]]:
    return t.column(col).to_pylist()


# ---- small building blocks (hand-computed) ------------------------------------------------
def test_ring_buffer_keeps_last_cap_values_in_order() -> None:
    rb = RingBuffer(n_users=3, cap=3)
    rb.append(np.array([2, 0, 0]), np.array([9, 1, 2]))  # runs per user, any user order
    rb.append(np.array([0, 0, 0]), np.array([3, 4, 5]))  # user 0 wraps: 1, 2 drop out
    lens, vals = rb.read(np.array([0, 1, 2]))
    assert lens.tolist() == [3, 0, 1]
    assert vals[0].tolist() == [3, 4, 5]
    assert vals[2, :1].tolist() == [9]
    assert rb.total.tolist() == [5, 0, 1]
    # more new values than the cap in one append: only the last cap survive, in order
    rb.append(np.array([1, 1, 1, 1, 1]), np.array([10, 11, 12, 13, 14]))
    lens, vals = rb.read(np.array([1]))
    assert lens.tolist() == [3] and vals[0].tolist() == [12, 13, 14]
    with pytest.raises(ValueError, match="contiguous"):
        rb.append(np.array([2, 0, 2]), np.array([1, 2, 3]))


def test_ragged_repeats_lists_per_row() -> None:
    lens = np.array([2, 0, 1])
    vals = np.array([[5, 6, -1], [-1, -1, -1], [7, -1, -1]])
    off, flat = ragged(lens, vals)
    assert off.tolist() == [0, 2, 2, 3] and flat.tolist() == [5, 6, 7]
    off, flat = ragged(lens, vals, rows=np.array([0, 0, 1, 2, 2]))
    assert off.tolist() == [0, 2, 4, 4, 5, 6]
    assert flat.tolist() == [5, 6, 5, 6, 7, 7]


def test_config_rejects_inconsistent_sizes() -> None:
    with pytest.raises(ValueError, match="n_days"):
        SyntheticConfig(n_days=3, valid_days=2, test_days=1)
    with pytest.raises(ValueError, match="min_slots"):
        SyntheticConfig(min_slots=5, max_slots=4)
    with pytest.raises(ValueError, match="unknown"):
        SyntheticConfig.from_dict({"n_userz": 3})


# ---- determinism --------------------------------------------------------------------------
def test_same_seed_same_bytes_different_seed_different(
    small: tuple[Path, Schema], tmp_path: Path
) -> None:
    out, _ = small
    ref = _sha256_tree(out)
    assert any(k.startswith("train/part-00001") for k in ref), "config must give several parts"
    generate(tmp_path / "again", SyntheticConfig(**SMALL))
    assert _sha256_tree(tmp_path / "again") == ref
    generate(tmp_path / "other", SyntheticConfig(**{**SMALL, "seed": 8}))
    other = _sha256_tree(tmp_path / "other")
    for name in ("world.npz", "items.parquet", "users.parquet", "train/part-00000.parquet"):
        assert other[name] != ref[name], name
    for s in SPLITS:  # every split's first part differs too
        assert other[f"{s}/part-00000.parquet"] != ref[f"{s}/part-00000.parquet"]


def test_chunk_rows_changes_files_not_rows(small: tuple[Path, Schema], tmp_path: Path) -> None:
    out, schema = small
    big = generate(tmp_path / "big", SyntheticConfig(**{**SMALL, "chunk_rows": 1_000_000}))
    for s in SPLITS:
        parts = schema.split_paths(s)
        assert all(pq.ParquetFile(p).metadata.num_rows <= SMALL["chunk_rows"] for p in parts)
        a = pa.concat_tables(pq.read_table(p) for p in parts)
        b = pa.concat_tables(pq.read_table(p) for p in big.split_paths(s))
        assert len(big.split_paths(s)) == 1
        assert a.equals(b), s
    assert len(schema.split_paths("train")) > 1


def test_generate_refuses_foreign_directory(tmp_path: Path) -> None:
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        generate(foreign, SyntheticConfig(**SMALL))
    assert (foreign / "notes.txt").read_text() == "keep me"


# ---- no leakage -----------------------------------------------------------------------------
def test_sequences_are_rebuilt_exactly_from_strictly_earlier_requests(
    small: tuple[Path, Schema], log: pa.Table
) -> None:
    """Brute force: each row's histories = the user's last clicks / purchases with
    ts before the start of the row's request (ts - position)."""
    out, _ = small
    cap, buy_cap = SMALL["hist_len"], SMALL["buy_hist_len"]
    user, item, ts = _np(log, "user_id"), _np(log, "item_id"), _np(log, "ts")
    pos, click, buy = _np(log, "position"), _np(log, "click"), _np(log, "purchase")
    product, l2 = _np(log, "product_id"), _np(log, "category_l2")
    req = _np(log, "request_id")
    # all rows of a request share its start time (ts - position)
    starts = {(int(r), int(t)) for r, t in zip(req, ts - pos, strict=True)}
    assert len(starts) == len(np.unique(req))

    events: dict[int, list[tuple[int, int, int, int, bool]]] = defaultdict(list)
    for n in np.flatnonzero(click):
        events[int(user[n])].append(
            (int(ts[n]), int(item[n]), int(l2[n]), int(product[n]), bool(buy[n]))
        )
    for ev in events.values():
        ev.sort()
    ev_ts = {u: [e[0] for e in ev] for u, ev in events.items()}

    hist_items, hist_cats = _lists(log, "hist_items"), _lists(log, "hist_cats")
    hist_buys, counts = _lists(log, "hist_buy_products"), _np(log, "user_click_count")
    nonempty = 0
    for n in range(log.num_rows):
        u = int(user[n])
        cut = bisect.bisect_left(ev_ts.get(u, []), int(ts[n] - pos[n]))  # strictly earlier
        seen = events.get(u, [])[:cut]
        assert hist_items[n] == [e[1] for e in seen][-cap:], n
        assert hist_cats[n] == [e[2] for e in seen][-cap:], n
        assert hist_buys[n] == [e[3] for e in seen if e[4]][-buy_cap:], n
        assert counts[n] == len(seen), n
        assert all(e[0] < ts[n] for e in seen)
        nonempty += bool(seen)
    assert log.num_rows > 10_000 and nonempty > log.num_rows // 2  # not vacuous
    assert max(len(h) for h in hist_items) == cap and max(len(h) for h in hist_buys) == buy_cap

    # users.parquet: the state after the whole log
    users = pq.read_table(out / "users.parquet")
    world_l2 = _np(pq.read_table(out / "items.parquet"), "category_l2")
    assert _np(users, "user_id").tolist() == list(range(SMALL["n_users"]))
    for u, h, b, c in zip(
        _np(users, "user_id"),
        _lists(users, "hist_items"),
        _lists(users, "hist_buy_products"),
        _np(users, "user_click_count"),
        strict=True,
    ):
        ev = events.get(int(u), [])
        assert h == [e[1] for e in ev][-cap:]
        assert b == [e[3] for e in ev if e[4]][-buy_cap:]
        assert c == len(ev)
    assert _lists(users, "hist_cats") == [
        [int(x) for x in world_l2[h]] for h in _lists(users, "hist_items")
    ]


def test_history_days_only_prefill_the_histories(
    small: tuple[Path, Schema], log: pa.Table, tmp_path: Path
) -> None:
    """Days before the log change no logged impression or outcome; each row's
    histories are the pre-log clicks followed by the logged earlier ones."""
    schema = generate(tmp_path / "hist", SyntheticConfig(**{**SMALL, "history_days": 3}))
    pre = pa.concat_tables(pq.read_table(p) for s in SPLITS for p in schema.split_paths(s))
    history = {"hist_items", "hist_cats", "hist_buy_products", "user_click_count"}
    for col in log.column_names:
        if col not in history and col != "split":
            assert pre.column(col).equals(log.column(col)), col
    user, ts, pos = _np(log, "user_id"), _np(log, "ts"), _np(log, "position")
    with_pre, without = _lists(pre, "hist_items"), _lists(log, "hist_items")
    extra = _np(pre, "user_click_count") - _np(log, "user_click_count")
    cap = SMALL["hist_len"]
    pre_clicks: dict[int, float] = {}
    for n in range(log.num_rows):
        u = int(user[n])
        assert extra[n] == pre_clicks.setdefault(u, extra[n]), n  # a per-user constant
        logged = without[n]
        assert len(with_pre[n]) == min(cap, len(logged) + int(extra[n])), n
        assert with_pre[n][len(with_pre[n]) - len(logged) :] == logged, n
    first = np.unique(user, return_index=True)[1]  # each user's first logged row
    assert not any(without[n] for n in first)
    assert np.mean([bool(with_pre[n]) for n in first]) > 0.5
    assert (ts - pos).min() >= SyntheticConfig().start_ts  # nothing logged before day 0


# ---- schema, dtypes, labels -----------------------------------------------------------------
def _expected_type(schema: Schema, col: str) -> pa.DataType:
    if col in schema.labels:
        return pa.int8()
    if col in schema.oracle.values():
        return pa.float32()
    if col == schema.time or col in schema.availability.values():
        return pa.int64()
    ignored = {
        "policy": pa.int8(),
        "propensity": pa.float64(),
        "day": pa.int32(),
        "request_id": pa.int64(),
    }
    if col in ignored:
        return ignored[col]
    f = schema.feature(col)
    return {
        Kind.CATEGORICAL: pa.int64(),
        Kind.SEQUENCE: pa.list_(pa.int64()),
        Kind.DENSE: pa.float32(),
    }[f.kind]


def test_schema_names_every_column_with_its_dtype(
    small: tuple[Path, Schema], log: pa.Table
) -> None:
    out, schema = small
    assert schema.user_id == "user_id" and schema.item_id == "item_id" and schema.time == "ts"
    assert schema.labels == ("click", "purchase")
    assert schema.oracle == {"click": "p_click", "purchase": "p_purchase"}
    assert schema.feature("brand").hash_buckets == 4096
    assert schema.feature("hist_items").table == "item_id"
    assert schema.tables["item_id"].num_rows == SMALL["n_items"]
    assert schema.files["users"] == "users.parquet"
    wanted = [*schema.data_columns, *schema.ignore]
    for s in SPLITS:
        for p in schema.split_paths(s):
            file_schema = pq.read_schema(p)
            for col in wanted:
                assert col in file_schema.names, (p, col)
                assert file_schema.field(col).type == _expected_type(schema, col), (p, col)
    items = pq.read_table(out / schema.files["items"])
    for col in schema.item_columns:
        assert items.schema.field(col).type == _expected_type(schema, col), col
    users = pq.read_table(out / schema.files["users"])
    for f in schema.select(sides=(schema.feature("user_id").side,)):
        assert users.schema.field(f.name).type == _expected_type(schema, f.name), f.name

    # values respect the declared vocabularies and caps
    for f in schema.features:
        if f.kind == Kind.CATEGORICAL and f.vocab_size:
            v = _np(log, f.name)
            assert v.min() >= 0 and v.max() < f.vocab_size, f.name
        if f.kind == Kind.SEQUENCE:
            flat = log.column(f.name).combine_chunks()
            assert flat.value_lengths().to_numpy().max() <= f.max_len, f.name
            vals = flat.values.to_numpy()
            assert vals.min() >= 0 and vals.max() < f.vocab_size, f.name
    brand = _np(items, "brand")
    assert brand.min() >= 10**9 and brand.max() < 10**12  # raw codes: the hashing path


def test_labels_and_oracle_columns_are_consistent(log: pa.Table) -> None:
    click, buy = _np(log, "click"), _np(log, "purchase")
    assert set(np.unique(click)) == {0, 1} and set(np.unique(buy)) == {0, 1}
    assert np.all(buy <= click)
    pc, pb = _np(log, "p_click"), _np(log, "p_purchase")
    assert np.all((pc > 0) & (pc < 1)) and np.all(pb <= pc) and np.all(pb > 0)
    # the log is in time order, request by request (request start = ts - position)
    assert np.all(np.diff(_np(log, "ts") - _np(log, "position")) >= 0)
    assert np.all(np.diff(_np(log, "request_id")) >= 0)
    # splits are ordered in time: train < valid < test
    split, ts = _np(log, "split"), _np(log, "ts")
    ts_by = {s: ts[split == s] for s in SPLITS}
    assert (
        ts_by["train"].max() < ts_by["valid"].min() and ts_by["valid"].max() < ts_by["test"].min()
    )


def test_item_and_user_tables_match_the_rows(small: tuple[Path, Schema], log: pa.Table) -> None:
    out, schema = small
    items = pq.read_table(out / "items.parquet")
    assert _np(items, "item_id").tolist() == list(range(SMALL["n_items"]))
    item = _np(log, "item_id")
    for f in schema.select(sides=(schema.feature("item_id").side,)):
        assert np.array_equal(_np(items, f.name)[item], _np(log, f.name)), f.name
    users = pq.read_table(out / "users.parquet")
    user = _np(log, "user_id")
    for col in ("age_bucket", "gender", "city_tier", "device", "activity"):
        assert np.array_equal(_np(users, col)[user], _np(log, col)), col


# ---- policies -----------------------------------------------------------------------------
def test_availability_windows_match_the_world_and_every_row(
    small: tuple[Path, Schema], log: pa.Table
) -> None:
    """The corpus's windows hold exactly the world's available days (brute force over
    days and items), never-ending items have a null end, every logged row lies in its
    item's window, and validation accepts the dataset with the windows declared."""
    out, schema = small
    assert schema.availability == {"from": "available_from", "to": "available_to"}
    world = load_world(out)
    windows = read_windows(schema)
    start_ts = world.config.start_ts
    for day in range(-world.config.history_days, world.config.n_days):
        lo, hi = start_ts + day * 86_400, start_ts + (day + 1) * 86_400 - 1
        for t in (lo, hi):
            np.testing.assert_array_equal(windows.at(t), world.available(day), err_msg=str(t))
        np.testing.assert_array_equal(windows.during(lo, hi), world.available(day))
    items = pq.read_table(out / schema.files["items"])
    never_ends = items["available_to"].is_null().to_numpy(zero_copy_only=False)
    live = items["content_type"].to_numpy() == CONTENT_TYPES.index("live_stream")
    assert never_ends.any() and not never_ends[live].any()
    ends = windows.end[~never_ends] - windows.start[~never_ends]
    assert (ends == world.config.live_window_days * 86_400).any()  # live streams end
    item, ts = _np(log, "item_id"), _np(log, "ts")
    assert np.all((windows.start[item] <= ts) & (ts < windows.end[item]))
    validate_dataset(schema)


def _request_starts(log: pa.Table) -> np.ndarray:
    req = _np(log, "request_id")
    return np.flatnonzero(np.r_[True, req[1:] != req[:-1]])


def test_requests_never_repeat_an_item(log: pa.Table) -> None:
    req, item, pos = _np(log, "request_id"), _np(log, "item_id"), _np(log, "position")
    assert np.unique(np.stack([req, item]), axis=1).shape[1] == log.num_rows
    # positions run 0..n-1 inside each request
    starts = _request_starts(log)
    sizes = np.diff(np.r_[starts, log.num_rows])
    assert np.array_equal(pos, np.arange(log.num_rows) - np.repeat(starts, sizes))
    assert sizes.min() >= 4 and sizes.max() <= 10


def test_random_slice_in_every_split_with_uniform_propensity(
    small: tuple[Path, Schema], log: pa.Table
) -> None:
    out, _ = small
    world = load_world(out)
    day, policy, prop = _np(log, "day"), _np(log, "policy"), _np(log, "propensity")
    item, pos = _np(log, "item_id"), _np(log, "position")
    meta = json.loads((out / "world.json").read_text())
    for s in SPLITS:
        in_split = _np(log, "split") == s
        assert (policy[in_split] == 1).sum() > 0, s
        assert (policy[in_split] == 0).sum() > 0, s
    for d in np.unique(day):
        avail = (world.item_from_day <= d) & (d < world.item_to_day)
        assert meta["n_available_per_day"][d] == avail.sum()
        rows = day == d
        assert np.all(avail[item[rows]]), f"an unavailable item was shown on day {d}"
        rnd = rows & (policy == 1)
        # uniform over the available items not yet shown in the request
        np.testing.assert_allclose(prop[rnd], 1.0 / (avail.sum() - pos[rnd]), rtol=1e-12)
    assert abs(policy.mean() - 0.1) < 0.03
    # a request is served by one policy
    starts = _request_starts(log)
    assert np.array_equal(policy, np.repeat(policy[starts], np.diff(np.r_[starts, log.num_rows])))
    # live streams are short-lived: every exposure lies in its window
    live = _np(log, "content_type") == 1
    assert live.any()
    assert np.all(world.item_to_day[item[live]] - world.item_from_day[item[live]] == 2)


def test_logging_propensity_is_a_distribution_and_matches_the_log(
    small: tuple[Path, Schema], log: pa.Table
) -> None:
    out, _ = small
    world = load_world(out)
    user, item, day = _np(log, "user_id"), _np(log, "item_id"), _np(log, "day")
    prop, logged, pos = _np(log, "propensity"), _np(log, "policy") == 0, _np(log, "position")
    for d in (0, 5):
        for u in (0, 17, 250):
            p = logging_propensity(world, np.full(world.n_items, u), np.arange(world.n_items), d)
            assert p.sum() == pytest.approx(1.0, abs=1e-12)
            assert np.all(p[~world.available(d)] == 0)
    # row propensity = pi renormalised over the items not shown yet in the request
    pi = np.zeros(log.num_rows)
    for d in np.unique(day):
        rows = logged & (day == d)
        pi[rows] = logging_propensity(world, user[rows], item[rows], int(d))
    starts = _request_starts(log)
    sizes = np.diff(np.r_[starts, log.num_rows])
    cum = np.cumsum(pi)
    shown_before = cum - pi - np.repeat((cum - pi)[starts], sizes)
    np.testing.assert_allclose(prop[logged], (pi / (1 - shown_before))[logged], rtol=1e-9)
    np.testing.assert_allclose(prop[logged & (pos == 0)], pi[logged & (pos == 0)], rtol=1e-12)

    # The draws follow pi (first slots, where nothing is excluded yet): the share of
    # rows in the user's expressed interests matches its expectation within 4
    # standard errors, and item counts pass a chi-square test against the summed pi.
    first = np.flatnonzero(logged & (pos == 0))
    assert first.size > 2000
    u, it, dd = user[first], item[first], day[first]
    l2 = world.derived["item_l2"]
    eps = world.config.explore_share
    cats, expressed = world.user_interest_cat[u], world.user_interest_expressed[u]
    in_expr = ((cats == l2[it][:, None]) & expressed).any(axis=1)
    p_expr = (1 - eps) + eps * (world.cat_pop[np.maximum(cats, 0)] * expressed).sum(axis=1)
    se = np.sqrt((p_expr * (1 - p_expr)).sum()) / first.size
    assert abs(in_expr.mean() - p_expr.mean()) < 4 * se, (in_expr.mean(), p_expr.mean(), se)
    n_items = world.n_items
    expected = np.zeros(n_items)
    for d in np.unique(dd):
        uu = u[dd == d]
        grid = logging_propensity(
            world, np.repeat(uu, n_items), np.tile(np.arange(n_items), uu.size), int(d)
        )
        expected += grid.reshape(uu.size, n_items).sum(axis=0)
    observed = np.bincount(it, minlength=n_items)
    big = expected >= 5
    o = np.r_[observed[big], observed[~big].sum()]
    e = np.r_[expected[big], expected[~big].sum()]
    chi2, dof = ((o - e) ** 2 / e).sum(), o.size - 1
    assert dof > 50 and chi2 < dof + 5 * np.sqrt(2 * dof), (chi2, dof)


def test_latent_interests_are_rarely_logged_but_clicked(
    small: tuple[Path, Schema], log: pa.Table
) -> None:
    out, _ = small
    world = load_world(out)
    cfg = world.config
    n_exp = world.user_interest_expressed.sum(axis=1)
    n_lat = ((world.user_interest_cat >= 0) & ~world.user_interest_expressed).sum(axis=1)
    assert n_exp.min() >= cfg.min_expressed and n_exp.max() <= cfg.max_expressed
    assert n_lat.min() >= cfg.min_latent and n_lat.max() <= cfg.max_latent
    user, item = _np(log, "user_id"), _np(log, "item_id")
    cats = world.user_interest_cat[user]
    hit = cats == world.derived["item_l2"][item][:, None]
    latent = (hit & ~world.user_interest_expressed[user]).any(axis=1)
    none = ~hit.any(axis=1)
    policy, pc = _np(log, "policy"), _np(log, "p_click").astype(np.float64)
    # the logging policy reaches latent interests only through exploration
    assert latent[policy == 1].mean() > 3 * latent[policy == 0].mean()
    # but clicks respond to them: true CTR on latent-interest items beats non-interest ones
    assert pc[latent].mean() > 2 * pc[none].mean()


def test_click_logit_terms_sum_to_the_oracle_and_affinity_drops_latent_slots(
    small: tuple[Path, Schema],
) -> None:
    from ranking.data.synthetic import world as W

    world = load_world(small[0])
    rng = np.random.default_rng(0)
    u = rng.integers(0, world.n_users, 500)
    i = rng.integers(0, world.n_items, 500)
    pos = rng.integers(0, world.config.max_slots, 500)
    p_click, _ = oracle_probabilities(world, u, i, pos)
    logit = sum(W.click_logit_terms(world, u, i, pos).values())
    assert np.allclose(1 / (1 + np.exp(-logit)), p_click, rtol=0, atol=1e-12)
    # brute force over the interest slots: exact L2 match or an L1 sibling
    cfg, d = world.config, world.derived
    want_all, want_exp = np.zeros(500), np.zeros(500)
    for n in range(500):
        for k, cat in enumerate(world.user_interest_cat[u[n]]):
            if cat < 0:
                continue
            l2 = d["item_l2"][i[n]]
            same_l1 = cat // cfg.n_cat_l2_per_l1 == l2 // cfg.n_cat_l2_per_l1
            w = 1.0 if cat == l2 else (W.SIBLING if same_l1 else 0.0)
            v = world.user_interest_strength[u[n], k] * cfg.interest_scale * w
            want_all[n] += v
            want_exp[n] += v * world.user_interest_expressed[u[n], k]
    assert np.allclose(W.interest_affinity(world, u, i), want_all)
    got_exp = W.interest_affinity(world, u, i, expressed_only=True)
    assert np.allclose(got_exp, want_exp) and not np.allclose(got_exp, want_all)


# ---- oracle -------------------------------------------------------------------------------
def test_oracle_reproduces_logged_probabilities(small: tuple[Path, Schema], log: pa.Table) -> None:
    out, _ = small
    world = load_world(out)
    u, i, pos = _np(log, "user_id"), _np(log, "item_id"), _np(log, "position")
    p_click, p_purchase = oracle_probabilities(world, u, i, pos)
    np.testing.assert_allclose(p_click, _np(log, "p_click"), atol=1e-6, rtol=0)
    np.testing.assert_allclose(p_purchase, _np(log, "p_purchase"), atol=1e-6, rtol=0)
    # any pair, scalar position broadcasts; position bias lowers P(click)
    c0, b0 = oracle_probabilities(world, np.arange(5), np.arange(5), 0)
    c5, b5 = oracle_probabilities(world, np.arange(5), np.arange(5), 5)
    assert c0.shape == (5,) and np.all(c5 < c0) and np.all(b0 <= c0)
    grid_c, grid_b = oracle_probabilities(world, np.arange(3)[:, None], np.arange(SMALL["n_items"]))
    assert grid_c.shape == (3, SMALL["n_items"])
    np.testing.assert_array_equal(
        grid_c[2],
        oracle_probabilities(world, np.full(SMALL["n_items"], 2), np.arange(SMALL["n_items"]))[0],
    )
    with pytest.raises(ValueError, match="item ids"):
        oracle_probabilities(world, [0], [SMALL["n_items"]])
    with pytest.raises(ValueError, match="position"):
        oracle_probabilities(world, [0], [0], world.config.max_slots)


# ---- default size -------------------------------------------------------------------------
def test_default_size_rates_and_oracle_auc(tmp_path: Path) -> None:
    from sklearn.metrics import roc_auc_score

    schema = generate(tmp_path / "default")
    stats = json.loads((tmp_path / "default" / "stats.json").read_text())
    assert 2_000_000 <= stats["train"]["rows"] <= 3_200_000
    assert stats["train"]["purchases"] >= 15_000
    test = pa.concat_tables(pq.read_table(p) for p in schema.split_paths("test"))
    click, pc = _np(test, "click"), _np(test, "p_click")
    assert 0.03 <= click.mean() <= 0.12
    auc = roc_auc_score(click, pc)
    assert 0.70 <= auc <= 0.85, auc
    buy = _np(test, "purchase")
    assert 0.05 <= buy.sum() / click.sum() <= 0.25
    assert roc_auc_score(buy, _np(test, "p_purchase")) > auc


@pytest.mark.slow
def test_benchmark_preset_is_the_experiments_world_at_its_rate(tmp_path: Path) -> None:
    """experiment=synthetic_benchmark's world is benchmark_config(), and its traffic
    per user gives >= 3M train rows: checked on a tenth of its users (rows grow
    with the users; the whole world takes ~45 s to generate)."""
    from omegaconf import OmegaConf

    from tests.conftest import compose_train

    world = OmegaConf.to_container(compose_train(["experiment=synthetic_benchmark"]).world)
    assert world == benchmark_config().to_dict()
    schema = generate(tmp_path / "bench", benchmark_config(n_users=3_000))
    stats = json.loads((tmp_path / "bench" / "stats.json").read_text())
    assert stats["train"]["rows"] * 10 >= 3_000_000
    assert len(schema.split_paths("train")) > 1  # chunked into several part files
