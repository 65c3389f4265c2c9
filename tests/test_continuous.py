"""Continuous training: id activity, time windows, warm start with new and expired ids."""

from __future__ import annotations

import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
import pytorch_lightning as pl
import torch
import yaml

from ranking.data import id_activity
from ranking.data.errors import ConfigError
from ranking.data.id_activity import NEVER, Activity, expired_rows, last_seen, merged
from ranking.data.stats import DenseStats, Moments, compute_dense_stats
from ranking.data.window import write_window
from ranking.hashing import hash_int, hash_strings
from ranking.lit.fused_tables import SPARSE_STATE_KEY
from ranking.modules.fused_embedding import fused_optimizer
from ranking.pipeline import (
    CHECKPOINTS,
    IdTracking,
    build_stage,
    make_trainer,
    stage_datamodule,
    track_ids,
    train_stage,
    trained_datamodule,
    trained_stats,
    warm_stats,
)
from ranking.schema import Schema
from ranking.tracking import Tracker
from ranking.warm_start import (
    WarmStart,
    carry_optimizer,
    continue_schedule,
    earlier_state,
    warm_start,
)
from tests.conftest import compose_train, tiny_overrides

DAY = 86_400


def _brute_last_seen(schema: Schema) -> dict[str, np.ndarray]:
    """Row by row, value by value: the latest time each table row is looked up."""
    out = {name: np.full(t.num_rows, NEVER, np.int64) for name, t in schema.tables.items()}
    for path in schema.split_paths("train"):
        for row in pq.read_table(path).to_pylist():
            for f in schema.sparse():
                values = row[f.name] if f.is_list else [row[f.name]]
                if f.is_list and f.truncate:
                    values = values[-f.max_len :]
                for v in values:
                    if f.hashed:
                        if isinstance(v, str):
                            r = int(hash_strings(np.array([v], dtype=object), f.hash_buckets)[0])
                        else:
                            r = int(hash_int(np.array([v], np.int64), f.hash_buckets)[0])
                    else:
                        r = int(v)
                    out[f.table][r] = max(out[f.table][r], row[schema.time])
    return out


def test_last_seen_matches_a_row_by_row_loop(tiny_dataset):
    schema = Schema.load(tiny_dataset)
    got = last_seen(schema)
    want = _brute_last_seen(schema)
    assert set(got.tables) == set(schema.tables)
    for name in schema.tables:
        np.testing.assert_array_equal(got.tables[name], want[name], err_msg=name)
    # the item table is looked up by item_id and by the behaviour sequences
    assert (got.tables["item_id"] != NEVER).any() and (got.tables["item_id"] == NEVER).any()
    times = pq.read_table(schema.split_paths("train"), columns=[schema.time]).column(0)
    assert (got.start, got.end) == (min(times.to_pylist()), max(times.to_pylist()))


def test_expiry_and_merge_by_hand(tmp_path):
    earlier = Activity({"t": np.array([NEVER, 10, 50, 95]), "gone": np.array([1])}, 0, 99)
    # first event of the new run at 100, ids unseen for more than 40 expire: seen before 60
    expired = expired_rows(earlier, 100, 40)
    np.testing.assert_array_equal(expired["t"], [False, True, True, False])
    now = Activity({"t": np.array([NEVER, NEVER, 120, 101, 130, NEVER])}, 100, 130)  # grew to 6
    state = merged(earlier, now, expired)
    # row 1 expired and unseen since: forgotten; row 2 expired but back at 120
    np.testing.assert_array_equal(state.tables["t"], [NEVER, NEVER, 120, 101, 130, NEVER])
    assert set(state.tables) == {"t"} and (state.start, state.end) == (0, 130)
    kept = merged(earlier, now)  # no expiry: the later sighting of either
    np.testing.assert_array_equal(kept.tables["t"], [NEVER, 10, 120, 101, 130, NEVER])
    id_activity.save(tmp_path / "a.npz", state)
    back = id_activity.load(tmp_path / "a.npz")
    np.testing.assert_array_equal(back.tables["t"], state.tables["t"])
    assert (back.start, back.end) == (0, 130)


def _train_times(schema: Schema) -> np.ndarray:
    return pq.read_table(schema.split_paths("train"), columns=[schema.time]).column(0).to_numpy()


def test_window_keeps_the_train_rows_of_its_times_and_links_the_rest(tiny_dataset, tmp_path):
    schema = Schema.load(tiny_dataset)
    ts = _train_times(schema)
    cut = int(ts.min()) + 2 * DAY
    late, kept = write_window(tiny_dataset, tmp_path / "late", cut, None)
    got = pq.read_table(late.split_paths("train"))
    whole = pq.read_table(schema.split_paths("train"))
    want = whole.filter(np.asarray(whole.column(schema.time)) >= cut)
    assert got.num_rows == kept.rows == want.num_rows > 0 and kept.total == whole.num_rows
    assert got.to_pylist() == want.select(got.column_names).to_pylist()  # same rows, same order
    for split in ("valid", "test", "items"):
        assert late.split_paths(split) == [
            tmp_path / "late" / p.relative_to(tiny_dataset) for p in schema.split_paths(split)
        ]
        assert (tmp_path / "late" / schema.files[split]).is_symlink()
    assert late.tables == schema.tables
    with pytest.raises(ConfigError, match="holds none of the"):
        write_window(tiny_dataset, tmp_path / "none", int(ts.max()) + 1, None)


def _resized(tiny_dataset, tmp_path, **vocab):
    """A copy of the tiny dataset whose schema gives tables other sizes."""
    out = tmp_path / "resized"
    shutil.copytree(tiny_dataset, out)
    raw = yaml.safe_load((out / "schema.yaml").read_text())
    for name, size in vocab.items():
        key = "hash_buckets" if "hash_buckets" in raw["features"][name] else "vocab_size"
        raw["features"][name][key] = size
    (out / "schema.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return out


@pytest.mark.parametrize("stage", ["retrieval", "ranking"])
def test_warm_start_copies_grows_and_resets_expired_rows(tiny_dataset, tmp_path, stage):
    schema = Schema.load(tiny_dataset)
    n = schema.tables["item_id"].num_rows
    before = build_stage(stage, compose_train(tiny_overrides(tiny_dataset)), schema)
    grown_path = _resized(tiny_dataset, tmp_path, item_id=n + 7)
    grown = Schema.load(grown_path)
    torch.manual_seed(1)
    module = build_stage(stage, compose_train(tiny_overrides(grown_path)), grown)
    init = {k: v.clone() for k, v in module.state_dict().items()}
    expired = {"item_id": np.zeros(n, bool)}
    expired["item_id"][[0, 5]] = True
    report = warm_start(module, before.state_dict(), grown, expired)
    old, new = before.state_dict(), module.state_dict()
    key = "model.sparse.embedding_bags.item_id.weight"
    assert report.grown == {"item_id": (n, n + 7)} and report.expired["item_id"] == 2
    assert not report.fresh and not report.dropped
    torch.testing.assert_close(new[key][1:5], old[key][1:5], rtol=0, atol=0)
    torch.testing.assert_close(new[key][6:n], old[key][6:n], rtol=0, atol=0)
    for rows in ([0, 5], slice(n, n + 7)):  # expired and new ids: their initial rows
        torch.testing.assert_close(new[key][rows], init[key][rows], rtol=0, atol=0)
    assert not torch.equal(old[key][[0, 5]], init[key][[0, 5]])
    for k, v in new.items():
        if k == key:
            continue
        if k.startswith("task.") and k not in dict(module.named_parameters()):
            # statistics of this dataset (logQ's item probabilities...), sized to it
            torch.testing.assert_close(v, init[k], rtol=0, atol=0)
        else:
            torch.testing.assert_close(v, old[k], rtol=0, atol=0, msg=k)
    # another width, a shrunk table, a re-hashed one: each row would change meaning
    for change, match in (
        ({"item_id": n - 1}, "item_id.weight: shape"),
        ({"brand": schema.tables["brand"].num_rows + 8}, "brand.weight: shape"),
    ):
        other_path = _resized(tiny_dataset, tmp_path / str(len(match)), **change)
        other = build_stage(
            stage, compose_train(tiny_overrides(other_path)), Schema.load(other_path)
        )
        if "brand" in change and not any("brand" in k for k in other.state_dict()):
            continue  # this stage's model has no brand table
        with pytest.raises(ConfigError, match=match):
            warm_start(other, before.state_dict(), Schema.load(other_path))
        report = warm_start(other, before.state_dict(), Schema.load(other_path), partial=True)
        assert report.fresh == [k for k in report.fresh if "embedding_bags" in k] and report.fresh
    # a tensor the earlier model lacks
    trimmed = {k: v for k, v in before.state_dict().items() if not k.endswith(".bias")}
    with pytest.raises(ConfigError, match="is new"):
        warm_start(
            build_stage(stage, compose_train(tiny_overrides(tiny_dataset)), schema), trimmed, schema
        )


@pytest.mark.slow
def test_warm_started_day_keeps_unseen_rows_and_resets_expired_ones(
    tiny_trained, tiny_dataset, tmp_path
):
    """Yesterday's run (the tiny trained run, days 0..3) then today's (the last train
    day only), warm-started with a one-day expiry: after training, the item rows today
    never looked up are yesterday's exactly, or their initial values where they expired."""
    cfg0, _, _, run0 = tiny_trained
    earlier = tmp_path / "earlier"
    (earlier / "checkpoints").mkdir(parents=True)
    for name in CHECKPOINTS.values():
        (earlier / "checkpoints" / name).symlink_to(run0 / "checkpoints" / name)
    schema0 = Schema.load(tiny_dataset)
    track_ids(cfg0, schema0, earlier, lead=True)  # yesterday's activity file
    ts = _train_times(schema0)
    day0 = int(ts.min()) // DAY * DAY
    last_day = day0 + (int(ts.max()) - day0) // DAY * DAY
    today_path = tmp_path / "today"
    today, _ = write_window(tiny_dataset, today_path, last_day, None)
    overrides = [
        *tiny_overrides(today_path),
        "mlflow.enabled=false",
        f"warm_start.run={earlier}",
        f"warm_start.expire_after={DAY}",
        "retrieval.task.num_sampled=0",  # sampled corpus negatives would touch other rows
    ]
    cfg = compose_train(overrides)
    run = tmp_path / "run"
    ids = IdTracking(cfg, run, lead=True)
    expired = ids.expired(today)
    seen0 = id_activity.load(earlier / "checkpoints" / id_activity.ACTIVITY_FILE).tables["item_id"]
    activity_today = last_seen(today)
    seen_today = activity_today.tables["item_id"]
    want = (seen0 != NEVER) & (seen0 < activity_today.start - DAY)
    np.testing.assert_array_equal(expired["item_id"], want)
    assert want.any() and (~want & (seen0 != NEVER)).any()
    state = id_activity.load(run / "checkpoints" / id_activity.ACTIVITY_FILE).tables["item_id"]
    np.testing.assert_array_equal(state, np.maximum(np.where(want, NEVER, seen0), seen_today))

    key = "model.sparse.embedding_bags.item_id.weight"
    pl.seed_everything(5)
    init = build_stage("retrieval", cfg, today).state_dict()[key]
    pl.seed_everything(5)
    module, _ = train_stage("retrieval", cfg, today_path, Tracker("", "", enabled=False), run, ids)
    after = module.state_dict()[key]
    yesterday = earlier_state(earlier / "checkpoints" / CHECKPOINTS["retrieval"])[key]
    untouched = seen_today == NEVER
    assert (untouched & ~want).any() and (untouched & want).any() and (~untouched).any()
    torch.testing.assert_close(
        after[untouched & ~want], yesterday[untouched & ~want], rtol=0, atol=0
    )
    torch.testing.assert_close(after[untouched & want], init[untouched & want], rtol=0, atol=0)
    assert not torch.equal(after[~untouched], yesterday[~untouched])  # trained today


def _moments(x: np.ndarray, transform: str = "standardize") -> Moments:
    return Moments(transform, float(x.mean()), float(x.std()), int(x.size))


def test_merged_stats_are_the_union_moments_and_warm_stats_modes():
    rng = np.random.default_rng(0)
    a, b = rng.normal(3.0, 2.0, 1000), rng.normal(5.0, 0.5, 300)
    new = rng.normal(size=50)
    earlier = DenseStats({"x": _moments(a)})
    own = DenseStats({"x": _moments(b), "new": _moments(new)})
    union = earlier.merged(own)
    both = np.concatenate([a, b])
    assert union["x"].count == 1300
    np.testing.assert_allclose([union["x"].mean, union["x"].std], [both.mean(), both.std()])
    assert union["new"] == own["new"]  # in one only: its own moments
    assert warm_stats("merged", earlier, own) == union
    assert warm_stats("earlier", earlier, own) == DenseStats({"x": earlier["x"], "new": own["new"]})
    assert warm_stats("own", earlier, own) == own
    assert warm_stats("merged", None, own) == own  # an earlier run without statistics
    with pytest.raises(ConfigError, match="use one of merged, earlier, own"):
        warm_stats("mean", earlier, own)
    logged = DenseStats({"x": _moments(b, "log1p_standardize")})
    with pytest.raises(ConfigError, match="transform 'standardize' in one"):
        warm_stats("earlier", earlier, logged)
    gone = DenseStats({"x": _moments(b)})  # a feature this run's schema dropped: not kept
    assert set(warm_stats("merged", own, gone).moments) == {"x"}
    empty = DenseStats({"x": Moments("standardize", 0.0, 0.0, 0)})
    assert empty.merged(empty)["x"].count == 0 and earlier.merged(empty) == earlier


def test_evaluation_standardises_as_the_run_trained(tiny_trained, tiny_dataset, tmp_path):
    """ranking-eval on another dataset (data_path=...) reads the run's statistics
    from its checkpoints, not those of the other dataset's train split."""
    cfg, _, _, run = tiny_trained
    ts = _train_times(Schema.load(tiny_dataset))
    day = write_window(tiny_dataset, tmp_path / "day", int(ts.max()) // DAY * DAY, None)[0]
    trained = trained_stats(run, ["retrieval", "ranking"])
    assert trained == compute_dense_stats(Schema.load(tiny_dataset))
    other = compute_dense_stats(day)
    assert other != trained
    for stage in CHECKPOINTS:
        assert trained_datamodule(stage, cfg, day.root, run).converter.stats == trained


def _with_optimizer_state(module, seed: int) -> dict:
    """A checkpoint dict of ``module`` whose optimisers hold state (random, as training
    leaves it): Adam moments and steps, the fused tables' accumulators."""
    g = torch.Generator().manual_seed(seed)
    params = module.dense_parameters()
    optimizer = module.optimizer_factory(params)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g)
    optimizer.step()
    out = {"state_dict": module.state_dict(), "optimizer_states": [optimizer.state_dict()]}
    if module.model.fused:
        fused = fused_optimizer(module.model.sparse)
        sparse = fused.state_dict()
        for tensors in sparse["state"].values():
            for name, t in tensors.items():
                # the size training leaves (squared batch-mean gradients summed)
                tensors[name] = (torch.rand(t.shape, generator=g) + 0.5) * 1e-7
        fused.load_state_dict(sparse)
        out[SPARSE_STATE_KEY] = fused.state_dict()
    return out


def test_optimizer_state_carries_over_with_grown_and_expired_rows(tiny_dataset, tmp_path):
    """The ranker (fused row-wise Adagrad tables, AdamW): the earlier accumulators
    continue, the grown table's new rows and its expired rows start fresh; the dense
    optimiser resumes from the earlier step once training starts."""
    schema = Schema.load(tiny_dataset)
    n = schema.tables["item_id"].num_rows
    before = build_stage("ranking", compose_train(tiny_overrides(tiny_dataset)), schema)
    earlier = _with_optimizer_state(before, seed=3)
    grown_path = _resized(tiny_dataset, tmp_path, item_id=n + 7)
    grown = Schema.load(grown_path)
    one_step = ["+trainer.max_steps=1", "+trainer.limit_val_batches=0"]
    cfg = compose_train([*tiny_overrides(grown_path), "mlflow.enabled=false", *one_step])
    module = build_stage("ranking", cfg, grown)
    fresh = fused_optimizer(module.model.sparse).state_dict()["state"]
    expired = {"item_id": np.zeros(n, bool)}
    expired["item_id"][[0, 5]] = True
    report = WarmStart()
    carry_optimizer(module, earlier, grown, report, expired)
    earlier["optimizer_states"] = [_at_rate(earlier, 0.25)]  # where a schedule ended
    group = earlier["optimizer_states"][0]["param_groups"][0]
    continue_schedule(module, earlier, report)
    assert report.optimizer == [
        f"{len(fresh)} table state tensors",
        f"dense state of {len(module.dense_parameters())} parameters",
    ]
    assert report.rates == "learning rates at 0.25 x, the earlier run's last"
    assert f"; {report.rates}" in report.summary()
    state = fused_optimizer(module.model.sparse).state_dict()["state"]
    (name,) = state["item_id.weight"]
    now, then = (
        state["item_id.weight"][name],
        earlier[SPARSE_STATE_KEY]["state"]["item_id.weight"][name],
    )
    keep = np.setdiff1d(np.arange(n), [0, 5])
    torch.testing.assert_close(now[keep], then[keep], rtol=0, atol=0)
    new_rows = np.r_[0, 5, n : n + 7]
    fresh_rows = fresh["item_id.weight"][name][new_rows]
    torch.testing.assert_close(now[new_rows], fresh_rows, rtol=0, atol=0)
    assert not torch.equal(then[[0, 5]], fresh["item_id.weight"][name][[0, 5]])
    for key, tensors in state.items():  # tables that did not grow: all carried
        if key != "item_id.weight":
            for k, t in tensors.items():
                torch.testing.assert_close(t, earlier[SPARSE_STATE_KEY]["state"][key][k])

    # the dense optimiser: one step of training continues from the earlier step
    warm_start(module, earlier["state_dict"], grown, expired)
    trainer = make_trainer(cfg, 1, None, tmp_path)
    trainer.fit(module, datamodule=stage_datamodule("ranking", cfg, grown_path))
    # the step ran at a quarter of the configured rates, without warm-up
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.25 * group["initial_lr"])
    sparse_lr = fused_optimizer(module.model.sparse).param_groups[0]["lr"]
    assert sparse_lr == pytest.approx(0.25 * cfg.ranking.optimizer.sparse.lr)
    dense = trainer.optimizers[0].state_dict()["state"]
    then_dense = earlier["optimizer_states"][0]["state"]
    assert set(dense) == set(then_dense)
    for i in dense:
        assert int(dense[i]["step"]) == int(then_dense[i]["step"]) + 1
    # rows no train row looked up in that step keep the earlier accumulators exactly
    after = fused_optimizer(module.model.sparse).state_dict()["state"]["item_id.weight"][name]
    unchanged = (after[keep] == then[keep]).numpy()
    assert unchanged.any() and not unchanged.all()


def test_dense_optimizer_state_of_a_grown_table(tiny_dataset, tmp_path):
    """Tables without a fused optimiser (optimizer=adam: the dense optimiser updates
    them): their Adam moments grow with the table, new and expired rows at zero."""
    schema = Schema.load(tiny_dataset)
    n = schema.tables["item_id"].num_rows
    adam = ["optimizer@retrieval.optimizer=adam"]
    before = build_stage("retrieval", compose_train([*tiny_overrides(tiny_dataset), *adam]), schema)
    earlier = _with_optimizer_state(before, seed=6)
    grown_path = _resized(tiny_dataset, tmp_path, item_id=n + 3)
    grown = Schema.load(grown_path)
    module = build_stage("retrieval", compose_train([*tiny_overrides(grown_path), *adam]), grown)
    assert not module.model.fused
    expired = {"item_id": np.zeros(n, bool)}
    expired["item_id"][2] = True
    report = WarmStart()
    carry_optimizer(module, earlier, grown, report, expired)
    names = [
        k for k, p in module.named_parameters() if any(p is q for q in module.dense_parameters())
    ]
    i = names.index("model.sparse.embedding_bags.item_id.weight")
    then, now = earlier["optimizer_states"][0]["state"][i], module._carried_dense[i]
    assert report.optimizer == [f"dense state of {len(names)} parameters"]
    for k in ("exp_avg", "exp_avg_sq"):
        assert now[k].shape[0] == n + 3
        keep = np.setdiff1d(np.arange(n), [2])
        torch.testing.assert_close(now[k][keep], then[k][keep], rtol=0, atol=0)
        assert not now[k][[2, n, n + 1, n + 2]].any() and then[k][2].any()
    assert int(now["step"]) == int(then["step"])
    for j, p in enumerate(module.dense_parameters()):  # every other parameter: as it was
        if j != i:
            torch.testing.assert_close(
                module._carried_dense[j]["exp_avg"],
                earlier["optimizer_states"][0]["state"][j]["exp_avg"],
            )
            assert module._carried_dense[j]["exp_avg"].shape == p.shape


def test_optimizer_carry_refusals(tiny_dataset):
    schema = Schema.load(tiny_dataset)
    cfg = compose_train(tiny_overrides(tiny_dataset))
    earlier = _with_optimizer_state(build_stage("ranking", cfg, schema), seed=4)
    module = build_stage("ranking", cfg, schema)
    with pytest.raises(ConfigError, match="sharded run's optimiser state"):
        carry_optimizer(module, earlier, schema, WarmStart(), sharded=True)
    sgd = compose_train(
        [*tiny_overrides(tiny_dataset), "ranking.optimizer.dense._target_=torch.optim.SGD"]
    )
    with pytest.raises(ConfigError, match="another kind"):
        carry_optimizer(build_stage("ranking", sgd, schema), earlier, schema, WarmStart())
    bare = {k: v for k, v in earlier.items() if k != SPARSE_STATE_KEY}
    with pytest.raises(
        ConfigError, match="no fused-table optimiser state.*warm_start.optimizer=false"
    ):
        carry_optimizer(module, bare, schema, WarmStart())
    with pytest.raises(ConfigError, match="use warm_start.schedule=restart"):
        continue_schedule(module, {"state_dict": earlier["state_dict"]}, WarmStart())
    ended = {**earlier, "optimizer_states": [_at_rate(earlier, 0.0)]}
    with pytest.raises(ConfigError, match="ended at learning rate 0"):
        continue_schedule(module, ended, WarmStart())


def _at_rate(earlier: dict, factor: float) -> dict:
    """The dense optimiser state of ``earlier`` as a schedule at ``factor`` leaves it."""
    state = {**earlier["optimizer_states"][0]}
    (group,) = state["param_groups"]
    state["param_groups"] = [{**group, "initial_lr": group["lr"], "lr": group["lr"] * factor}]
    return state


def test_continue_schedule_holds_the_last_rate_or_finishes_a_warm_up(tiny_dataset):
    """The factor the earlier schedule ended at, constant; within its warm-up, the
    warm-up goes on from the step it reached (a chain of runs is one long run)."""
    schema = Schema.load(tiny_dataset)
    cfg = compose_train(tiny_overrides(tiny_dataset))
    earlier = _with_optimizer_state(build_stage("ranking", cfg, schema), seed=5)
    shape = {"warmup_steps": 300, "total_steps": 1000, "decay": "cosine", "min_factor": 0.1}
    for last, factor, want in (
        (1000, 0.1, [0.1, 0.1, 0.1]),  # decayed: held at min_factor
        (120, 0.4, [121 / 300, 122 / 300, 1.0]),  # stopped within the warm-up
    ):
        done = {
            **earlier,
            "optimizer_states": [_at_rate(earlier, factor)],
            "lr_schedulers": [{"last_epoch": last, "lr_lambdas": [shape]}],
        }
        module = build_stage("ranking", cfg, schema)
        report = WarmStart()
        continue_schedule(module, done, report)
        module.configure_optimizers()
        got = [module.schedule(step) for step in (0, 1, 5000)]
        assert got == pytest.approx(want), report.rates
    assert report.rates == "the earlier run's warm-up continued from step 120 of 300"
