"""The retrieval stage end to end on the tiny world: every option trains, every
metric reaches metrics and MLflow, the random-exposure slice is the right rows."""

from __future__ import annotations

import numpy as np
import pyarrow.dataset as pads
import pytest
import torch

from ranking.data.availability import read_windows
from ranking.data.datamodule import RecDataModule
from ranking.data.retrieval_stats import item_counts
from ranking.modules.sequence_pooling import TransformerPooling
from ranking.pipeline import train_stage
from ranking.tracking import Tracker
from tests.conftest import compose_train, tiny_overrides

KS = (10, 50, 100)
TEST_KEYS = [f"{m}@{k}" for m in ("recall", "ndcg", "hit") for k in KS] + [
    "tail_recall@100",
    "coverage@100",
    "discovery@100",
    "oracle_recall@100",
    "oracle_discovery@100",
    "expected_recall@100",
]


def test_item_counts_match_the_files(tiny_dataset):
    dm = RecDataModule(tiny_dataset, validate=False)
    dm.setup()
    counts = item_counts(dm.schema, "click", with_pairs=True)
    table = pads.dataset(tiny_dataset / "train").to_table(columns=["user_id", "item_id", "click"])
    items, clicks = table["item_id"].to_numpy(), table["click"].to_numpy()
    n = dm.schema.feature("item_id").vocab_size
    assert np.array_equal(counts.exposures, np.bincount(items, minlength=n))
    assert np.array_equal(counts.positives, np.bincount(items[clicks == 1], minlength=n))
    users = table["user_id"].to_numpy()
    want = {(int(u), int(i)) for u, i, c in zip(users, items, clicks, strict=True) if c == 1}
    assert {tuple(p) for p in counts.pairs.tolist()} == want


def test_slice_loader_yields_exactly_the_random_rows(tiny_dataset):
    dm = RecDataModule(tiny_dataset, eval_batch_size=64, validate=False)
    dm.setup()
    got = [b for b in dm.slice_dataloader("test", "policy", 1)]
    table = pads.dataset(tiny_dataset / "test").to_table(columns=["ts", "policy"])
    want = np.sort(table["ts"].to_numpy()[table["policy"].to_numpy() == 1])
    assert len(want) > 0
    assert np.array_equal(np.sort(np.concatenate([b.time.numpy() for b in got])), want)


@pytest.mark.parametrize(
    ("options", "tracked"),
    [
        # corpus logQ, mixed negatives, exposure adjustment, attention, learned
        # temperature, unavailable candidates masked, train items excluded; logged
        # to MLflow
        (
            [
                "retrieval.task.num_sampled=64",
                "retrieval.task.exposure_adjustment=0.5",
                "retrieval.model.sequence_pooling=attention",
                "retrieval.task.learn_temperature=true",
                "retrieval.eval.exclude_train=true",
                "retrieval.task.mask_unavailable=true",
                # hard negatives from the clicked requests, shuffled request by request
                "retrieval.task.hard_negatives=true",
                "retrieval.group_by=request_id",
                "retrieval.positive_groups_only=true",
                # a slice no test row falls in: warned about, not reported as NaNs
                "+retrieval.eval.slices.test_none={column: policy, value: 7}",
            ],
            True,
        ),
        # streaming logQ, hard negatives, the impression loss and the exposure-aware
        # softmax (the loader then yields every positive and half of the other
        # impressions), id dropout, bias terms, transformer pooling, plain tables
        # under Adam; the whole corpus ranked (availability windows ignored)
        (
            [
                "retrieval.model.bias_terms=true",
                "retrieval.model.sequence_pooling=transformer",
                "retrieval.model.transformer_layers=1",
                "retrieval.model.transformer_dropout=0.1",
                "optimizer@retrieval.optimizer=adam",
                "retrieval.task.logq_source=streaming",
                "retrieval.task.hard_negatives=true",
                "retrieval.task.impression_weight=0.5",
                "retrieval.task.exposure_weight=1.0",
                "retrieval.task.exposure_adjustment=0",
                "retrieval.model.id_dropout=0.5",
                "retrieval.negative_share=0.5",
                "retrieval.task.num_sampled=0",
                "retrieval.eval.availability=false",
            ],
            False,
        ),
    ],
    ids=["corpus-mixed-attention-mlflow", "streaming-hard-impressions-exposure-transformer"],
)
def test_retrieval_stage_reports_every_metric(tiny_dataset, tmp_path, options, tracked):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = compose_train(
        [
            *tiny_overrides(tiny_dataset),
            f"mlflow.tracking_uri={uri}",
            f"mlflow.enabled={str(tracked).lower()}",
            "stages=[retrieval]",
            *options,
        ]
    )
    if tracked:
        mlflow.set_tracking_uri(uri)  # artifacts under tmp_path, not ./mlruns
        mlflow.create_experiment("retrieval-test", artifact_location=(tmp_path / "a").as_uri())
    tracker = Tracker(uri, "retrieval-test", enabled=tracked)
    with tracker.parent(cfg, "tiny", run_name="t"):
        module, metrics = train_stage("retrieval", cfg, tiny_dataset, tracker, tmp_path)
    if tracked:  # the default: fused SGD tables
        assert module.model.fused and module.sparse_lr == cfg.retrieval.optimizer.sparse.lr
        dm = module.trainer.datamodule
        assert dm.train_filter == ("click", 1.0, 1.0) and dm.train_group_by == "request_id"
        assert dm.train_positive_groups_only
    # the corpus ranked at test: the items whose availability window meets the test rows
    ts = pads.dataset(tiny_dataset / "test").to_table(columns=["ts"])["ts"].to_numpy()
    windows = read_windows(module.trainer.datamodule.schema)
    corpus = int(windows.during(int(ts.min()), int(ts.max())).sum())
    assert 150 < corpus < 240  # of the tiny world's 240 items: some ended, some not released
    if not cfg.retrieval.eval.availability:
        corpus = 240
    assert not any(key.startswith("test_none/") for key in metrics)
    for stage in ("test", "test_random"):
        assert metrics[f"{stage}/corpus_items"] == corpus
        for key in TEST_KEYS:
            value = metrics[f"{stage}/{key}"]
            assert 0.0 <= value <= 1.0, f"{stage}/{key} = {value}"
        slice_keys = [f"{stage}/{m}slice_expected_recall@100" for m in ("", "oracle_")]
        if stage == "test_random":  # the random slice's exposure: the world knows it
            assert all(0.0 < metrics[key] <= 1.0 for key in slice_keys)
        else:
            assert not any(key in metrics for key in slice_keys)
        table = module.last_tables[stage]
        assert table["decile"] == list(range(10))
        assert sum(table["items"]) == corpus
    if module.task.mask_unavailable:  # the training mask against a loop over the windows
        t = torch.tensor(
            [int(ts.min()), int(ts.max()), int(windows.start[windows.start > 0].max())]
        )
        ids = torch.arange(240)
        got = module._unavailable(t, ids)
        for r, time in enumerate(t.tolist()):
            for i in range(240):
                shown = windows.start[i] <= time < windows.end[i]
                assert bool(got[r, i]) == (not shown), (time, i)
        assert got.any() and not got.all()
    if not tracked:
        assert int(module.task.frequency.step) > 0  # the estimator saw the training steps
        assert module.trainer.datamodule.train_filter == ("click", 1.0, 0.5)
        task = module.task
        assert task.impression_share == 0.5 and task.exposure_matrix.abs().sum() > 0
        assert module.model.out_dim == cfg.retrieval.model.out_dim + 2  # [e, b, 1]
        assert not module.model.fused
        assert task.row_prob.sum().item() == pytest.approx(1.0)
        poolers = module.model.poolers.values()
        assert poolers and all(isinstance(p, TransformerPooling) for p in poolers)
        assert all(len(p.blocks) == 1 for p in poolers)
        return
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("retrieval-test")
    child = next(
        r for r in client.search_runs([exp.experiment_id]) if r.info.run_name == "retrieval"
    )
    for stage in ("test", "test_random"):
        for key in TEST_KEYS:
            assert f"{stage}/{key.replace('@', '_at_')}" in child.data.metrics
    files = {a.path for a in client.list_artifacts(child.info.run_id, "retrieval")}
    assert "retrieval/test_recall_by_decile.json" in files
    assert "retrieval/test_random_recall_by_decile.csv" in files
    assert "retrieval/test_recall_by_decile.png" in files


def test_a_slice_column_missing_from_some_test_files_is_refused(tmp_path):
    from types import SimpleNamespace

    import pyarrow as pa
    import pyarrow.parquet as pq

    from ranking.lit.slices import split_has_column

    paths = [tmp_path / "a.parquet", tmp_path / "b.parquet", tmp_path / "c.parquet"]
    pq.write_table(pa.table({"x": [1], "policy": [0]}), paths[0])
    pq.write_table(pa.table({"x": [1]}), paths[1])
    pq.write_table(pa.table({"x": [1], "policy": [1]}), paths[2])
    schema = SimpleNamespace(split_paths=lambda split: paths)
    with pytest.raises(ValueError, match=f"{paths[1]}: no column 'policy'"):
        split_has_column(schema, "test", "policy")
    assert split_has_column(schema, "test", "x")
    assert not split_has_column(schema, "test", "device")


@pytest.mark.parametrize(
    "options",
    [
        ["retrieval.positive_groups_only=true", "retrieval.task.hard_negatives=true"],
        ["retrieval.positive_groups_only=true", "retrieval.group_by=request_id"],
        [
            "retrieval.positive_groups_only=true",
            "retrieval.group_by=request_id",
            "retrieval.task.hard_negatives=true",
            "retrieval.task.impression_weight=1",
        ],
    ],
    ids=["no-group", "no-hard-negatives", "impression-loss"],
)
def test_positive_groups_only_is_refused_where_it_would_mislead(tiny_dataset, options):
    from ranking.pipeline import stage_datamodule

    cfg = compose_train([*tiny_overrides(tiny_dataset), "mlflow.enabled=false", *options])
    with pytest.raises(ValueError, match="positive_groups_only"):
        stage_datamodule("retrieval", cfg, tiny_dataset)


def test_mask_unavailable_without_windows_is_refused(tiny_dataset, tmp_path):
    import shutil

    import yaml

    data = tmp_path / "no_windows"
    shutil.copytree(tiny_dataset, data)
    schema = yaml.safe_load((data / "schema.yaml").read_text())
    del schema["availability"]
    (data / "schema.yaml").write_text(yaml.safe_dump(schema))
    cfg = compose_train(
        [
            *tiny_overrides(data),
            "mlflow.enabled=false",
            "stages=[retrieval]",
            "retrieval.task.mask_unavailable=true",
        ]
    )
    tracker = Tracker("sqlite:///unused.db", "t", enabled=False)
    with pytest.raises(ValueError, match=f"mask_unavailable=true needs availability.*{data}"):
        train_stage("retrieval", cfg, data, tracker, tmp_path)


def test_negative_downsampling_keeps_every_click_and_a_fixed_share(tiny_dataset):
    def rows(share):
        dm = RecDataModule(
            tiny_dataset, batch_size=128, validate=False, train_filter=("click", 1.0, share)
        )
        dm.setup()
        got = [b for b in dm.train_dataloader()]
        return np.concatenate([b.time.numpy() * 10_000 + b.item_ids.numpy() for b in got]), (
            np.concatenate([b.labels["click"].numpy() for b in got])
        )

    table = pads.dataset(tiny_dataset / "train").to_table(columns=["click"])
    clicks = int(table["click"].to_numpy().sum())
    others = table.num_rows - clicks
    keys, labels = rows(0.25)
    assert int(labels.sum()) == clicks
    assert abs((labels == 0).sum() - 0.25 * others) < 4 * np.sqrt(0.25 * others)
    again, _ = rows(0.25)
    assert np.array_equal(np.sort(keys), np.sort(again))  # the same sample every time
    everything, _ = rows(1.0)
    assert len(everything) == table.num_rows


@pytest.mark.parametrize("train, valid", [(True, True), (False, True), (True, False)])
def test_excluded_pairs_at_valid_and_test(tiny_dataset, train, valid):
    """``exclude_train`` leaves the train clicks out of both evaluations;
    ``exclude_valid`` the valid clicks out of test too (the pairs read here from
    the files)."""
    from types import SimpleNamespace

    from ranking.pipeline import build_retrieval

    cfg = compose_train(
        [
            *tiny_overrides(tiny_dataset),
            f"retrieval.eval.exclude_train={str(train).lower()}",
            f"retrieval.eval.exclude_valid={str(valid).lower()}",
        ]
    )
    dm = RecDataModule(tiny_dataset, validate=False)
    dm.setup()
    module = build_retrieval(cfg, dm.schema)
    module._trainer = SimpleNamespace(datamodule=dm)
    module.setup("test")

    def clicked(split: str) -> set[tuple[int, int]]:
        t = pads.dataset(tiny_dataset / split).to_table(columns=["user_id", "item_id", "click"])
        keep = t["click"].to_numpy() == 1
        users, items = t["user_id"].to_numpy()[keep], t["item_id"].to_numpy()[keep]
        return set(zip(users.tolist(), items.tolist(), strict=True))

    def got(split: str) -> set[tuple[int, int]]:
        pairs = module._excluded(split)
        return set() if pairs is None else {tuple(p) for p in pairs.tolist()}

    want_valid = clicked("train") if train else set()
    want_test = want_valid | (clicked("valid") if valid else set())
    assert got("valid") == want_valid
    assert got("test") == want_test
    assert len(clicked("valid") - clicked("train")) > 0  # valid adds pairs of its own
