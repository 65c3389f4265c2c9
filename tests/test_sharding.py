"""Sharded training (torchrec DMP inside Lightning): lockstep loaders, metrics
gathered across ranks, sharded checkpoints read into one process, the CLI end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from ranking.data.datamodule import RecDataModule
from ranking.data.dataset import RecDataLoader
from ranking.data.errors import ConfigError
from ranking.data.even_batches import EvenBatches
from ranking.lit.sharding import TorchrecStrategy, table_constraints
from ranking.metrics.ranking import RankingMetrics
from ranking.metrics.retrieval import FullCorpusEvaluator
from ranking.pipeline import check_sharding, load_stage, resume_checkpoint, single_process
from ranking.schema import Schema
from ranking.warm_start import earlier_state
from tests.conftest import TINY_WORLD, compose_train, tiny_overrides

BIN = Path(sys.executable).parent


# ---- loaders in lockstep ------------------------------------------------------------
class _Item:
    def __init__(self, i: int, padding: bool = False) -> None:
        self.i, self.padding = i, padding

    def padded(self) -> _Item:
        return _Item(self.i, True)


class _Loader:
    """A loader of rank ``rank`` whose dataset plans ``lengths`` batches per rank."""

    def __init__(self, lengths: list[int], rank: int) -> None:
        self.dataset = type("D", (), {"rank_lengths": lambda _: lengths, "split": "test"})()
        self.items = [_Item(i) for i in range(lengths[rank])]

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self):
        return iter(self.items)


def test_even_batches_pads_evaluation_and_truncates_training():
    lengths = [3, 2]
    padded = list(EvenBatches(_Loader(lengths, 1), "pad"))
    assert [(b.i, b.padding) for b in padded] == [(0, False), (1, False), (1, True)]
    assert len(EvenBatches(_Loader(lengths, 1), "pad")) == 3
    full = list(EvenBatches(_Loader(lengths, 0), "pad"))
    assert [(b.i, b.padding) for b in full] == [(0, False), (1, False), (2, False)]
    cut = list(EvenBatches(_Loader(lengths, 0), "truncate"))
    assert [b.i for b in cut] == [0, 1] and len(EvenBatches(_Loader(lengths, 0), "truncate")) == 2
    with pytest.raises(RuntimeError, match="holds no batch"):
        list(EvenBatches(_Loader([1, 0], 1), "pad"))


@pytest.mark.parametrize("split,batch", [("test", 100), ("valid", 37), ("train", 64)])
def test_rank_lengths_are_each_ranks_batch_count(tiny_dataset, split, batch):
    """Every rank knows every rank's batch count (no collective needed to agree)."""
    dm = RecDataModule(tiny_dataset, batch_size=batch, eval_batch_size=batch, validate=False)
    dm.setup()
    counted, planned = [], None
    for rank in range(3):
        ds = dm.split_dataset(split, False, batch)
        ds._init_dist(rank, 3)
        loader = RecDataLoader(ds)
        counted.append(sum(1 for _ in loader))
        planned = ds.rank_lengths()
    assert planned == counted
    assert len(set(counted)) <= 2 and max(counted) - min(counted) <= 1


# ---- metrics over every rank's rows ---------------------------------------------------
def test_ranking_metrics_merged_over_ranks_equal_one_pass():
    rng = np.random.default_rng(0)
    n, tasks = 900, ["click", "purchase"]
    probs = torch.tensor(rng.uniform(0.01, 0.99, (n, 2)), dtype=torch.float32)
    labels = {t: torch.tensor(rng.integers(0, 2, n), dtype=torch.float32) for t in tasks}
    oracle = {t: torch.tensor(rng.uniform(0, 1, n), dtype=torch.float32) for t in tasks}
    users = torch.tensor(rng.integers(0, 40, n))
    whole = RankingMetrics(tasks)
    whole.update(probs, labels, oracle, users)
    parts = []
    for lo, hi in ((0, 301), (301, 650), (650, n)):  # three "ranks"
        part = RankingMetrics(tasks)
        part.update(
            probs[lo:hi],
            {t: v[lo:hi] for t, v in labels.items()},
            {t: v[lo:hi] for t, v in oracle.items()},
            users[lo:hi],
        )
        parts.append(part)
    expected, merged = whole.compute(), RankingMetrics.merged(parts).compute()
    assert merged.keys() == expected.keys()
    for k, v in expected.items():
        assert merged[k] == pytest.approx(v, rel=1e-9, abs=1e-12), k


def test_retrieval_evaluator_merged_over_ranks_equals_one_pass():
    """Each user's query is that of their earliest row, whichever rank read it; the
    positives are the union; the metrics equal one evaluator fed every row."""
    rng = np.random.default_rng(1)
    n_users, n_items, dim, rows = 30, 50, 8, 400
    u = torch.tensor(rng.integers(0, n_users, rows))
    ts = torch.tensor(rng.integers(0, 20, rows))
    emb = torch.tensor(rng.normal(size=(rows, dim)), dtype=torch.float32)
    items = torch.tensor(rng.integers(0, n_items, rows))
    pos = torch.tensor(rng.uniform(size=rows) < 0.5)
    whole = FullCorpusEvaluator(n_users, dim)
    whole.update(u, ts, emb, items, pos)
    parts = []
    for lo, hi in ((0, 150), (150, rows)):
        part = FullCorpusEvaluator(n_users, dim)
        part.update(u[lo:hi], ts[lo:hi], emb[lo:hi], items[lo:hi], pos[lo:hi])
        parts.append(part)
    merged = FullCorpusEvaluator.merged(parts)
    np.testing.assert_array_equal(merged.first_ts, whole.first_ts)
    np.testing.assert_array_equal(merged.queries, whole.queries)
    np.testing.assert_array_equal(merged.positive_pairs(), whole.positive_pairs())
    assert merged.span == whole.span
    corpus = torch.tensor(rng.normal(size=(n_items, dim)), dtype=torch.float32)
    ids = torch.arange(n_items)
    assert merged.compute(corpus, ids).metrics == whole.compute(corpus, ids).metrics


# ---- sharding keeps the model ------------------------------------------------------------
def _shard_worker(rank: int, data: str, port: int, out: dict) -> None:
    import copy
    import os

    import torch.distributed as dist
    from torch.distributed._shard.sharded_tensor import ShardedTensor

    from ranking.lit.sharding import shard_model
    from ranking.pipeline import build_ranking

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = compose_train([*tiny_overrides(Path(data)), "mlflow.enabled=false"])
    dm = RecDataModule(Path(data), batch_size=64, eval_batch_size=64, validate=False)
    dm.setup()
    model = build_ranking(cfg, dm.schema).model.eval()
    plain = copy.deepcopy(model)
    batch = next(iter(dm.split_dataset("test", False, 64)))  # this rank's first batch
    dmp, where = shard_model(model, {"item_id": "column_wise"}, torch.device("cpu"), 2)
    with torch.no_grad():
        sharded_logits, plain_logits = dmp(batch), plain(batch)
    same_tables = []
    for key, value in model.state_dict().items():
        if isinstance(value, ShardedTensor):
            full = torch.empty(value.size()) if rank == 0 else None
            value.gather(0, full)
            if rank == 0:
                same_tables.append(torch.equal(full, plain.state_dict()[key]))
    out[rank] = {
        "logits": float((sharded_logits - plain_logits).abs().max()),
        "tables": same_tables,
        "item_id": where["item_id"],
    }
    dist.destroy_process_group()


def test_sharding_keeps_the_models_weights_and_outputs(tiny_dataset):
    """DMP builds its shards with fresh weights; shard_model copies the model's own
    in, so the sharded model is the one-process model: same tables, same logits."""
    import torch.multiprocessing as mp

    out = mp.Manager().dict()
    mp.spawn(_shard_worker, args=(str(tiny_dataset), 29587, out), nprocs=2)
    assert out[0]["item_id"][0] == "column_wise"
    assert out[0]["tables"] and all(out[0]["tables"])
    assert out[0]["logits"] < 1e-5 and out[1]["logits"] < 1e-5


# ---- configuration ---------------------------------------------------------------------
def test_sharded_runs_refuse_what_they_cannot_do(tiny_dataset, tmp_path):
    base = [*tiny_overrides(tiny_dataset), "trainer=cpu_sharded"]
    check_sharding(compose_train(base), in_sweep=False)
    with pytest.raises(ConfigError, match="sweep"):
        check_sharding(compose_train(base), in_sweep=True)
    with pytest.raises(ConfigError, match="ranking: sharded training needs fused tables"):
        check_sharding(compose_train([*base, "optimizer@ranking.optimizer=adam"]), False)
    with pytest.raises(ValueError, match="sharding types"):
        TorchrecStrategy(sharding_types={"item_id": "diagonal"})
    dims = {"item_id": 16, "brand": 12, "user_id": 8}
    with pytest.raises(ValueError, match="on CPU torchrec shards fused tables"):
        table_constraints(dims, {"item_id": "row_wise"}, "cpu", 2)
    with pytest.raises(ValueError, match=r"name tables \['items'\]"):
        table_constraints(dims, {"items": "column_wise"}, "cpu", 2)
    chosen = table_constraints(dims, {"item_id": "column_wise"}, "cpu", 2)
    assert {t: c.sharding_types for t, c in chosen.items()} == {
        "item_id": ["column_wise"],
        "brand": ["table_wise"],
        "user_id": ["table_wise"],
    }
    # one block of columns per rank, a multiple of 4 wide
    assert [chosen[t].min_partition for t in dims] == [8, 8, 4]
    assert table_constraints(dims, None, "cpu", 3)["item_id"].sharding_types == [
        "table_wise",
        "column_wise",
    ]
    one = single_process(compose_train(base))
    assert "sharding" not in one.trainer and one.trainer.devices == 1


# ---- the command line, two processes -----------------------------------------------------
def _cli(name: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / name), *args], cwd=cwd, capture_output=True, text=True, timeout=900
    )


SHARDED = [
    "trainer=cpu_sharded",
    "trainer.sharding.types={item_id:column_wise}",
    "data.path=ds",
    "retrieval.epochs=1",
    "data.batch_size=256",
    "data.eval_batch_size=512",
    "trainer.enable_progress_bar=false",
    "+trainer.num_sanity_val_steps=0",
    # a schedule that does not depend on the total step count, so the first epoch of
    # a one-epoch run is that of a two-epoch run (the resume test)
    "ranking.optimizer.schedule.decay=constant",
]


@pytest.fixture(scope="module")
def sharded_run(tmp_path_factory):
    """`ranking-train trainer=cpu_sharded`: two processes over gloo, item_id split
    column-wise (two blocks of columns), the other tables table-wise (spread over the
    ranks)."""
    work = tmp_path_factory.mktemp("sharded")
    made = _cli(
        "ranking-data", "out=ds", *[f"world.{k}={v}" for k, v in TINY_WORLD.items()], cwd=work
    )
    assert made.returncode == 0, made.stderr[-3000:]
    trained = _cli("ranking-train", *SHARDED, "ranking.epochs=1", cwd=work)
    assert trained.returncode == 0, trained.stderr[-3000:]
    return work, (work / "runs" / "latest").resolve(), trained.stdout + trained.stderr


@pytest.mark.slow
def test_sharded_run_checkpoints_shards_and_exports_one_bundle(sharded_run):
    import mlflow
    import torch.distributed.checkpoint as dcp

    work, run, out = sharded_run
    assert "item_id column_wise on ranks" in out
    assert (run / "train_ddp_process_1.log").exists()  # Lightning launched rank 1
    for stage in ("retrieval", "ranking"):
        ckpt = run / "checkpoints" / f"{stage}.ckpt"
        assert {p.name for p in ckpt.iterdir()} >= {"__0_0.distcp", "__1_0.distcp", "meta.pt"}
        meta = dcp.FileSystemReader(str(ckpt)).read_metadata().state_dict_metadata
        item = meta["state_dict.model.sparse.embedding_bags.item_id.weight"]
        # two blocks of columns (the planner places each on a rank)
        half = item.size[1] // 2
        assert sorted(c.offsets[1] for c in item.chunks) == [0, half]
        assert all(c.offsets[0] == 0 and c.sizes[1] == half for c in item.chunks)
        # what a warm start reads: the full tensors, without building the model
        full = earlier_state(ckpt)
        assert tuple(full["model.sparse.embedding_bags.item_id.weight"].shape) == tuple(item.size)
    gathered = load_stage(
        "ranking", OmegaConf.load(run / ".hydra" / "config.yaml"), Schema.load(work / "ds"), run
    )
    full = earlier_state(run / "checkpoints" / "ranking.ckpt")
    for k, v in gathered.state_dict().items():
        assert torch.equal(full[k], v), k
    # one bundle, one MLflow run (rank 1 neither exports nor logs)
    manifest = json.loads((run / "bundle" / "manifest.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    assert manifest["metrics"]["test/auc/click"] == metrics["test/auc/click"]
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{work / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("ranking").experiment_id])
    assert len([r for r in runs if "mlflow.parentRunId" not in r.data.tags]) == 1
    recommended = _cli(
        "ranking-recommend", "--bundle", str(run / "bundle"), "--users", "0", "7", cwd=work
    )
    assert recommended.returncode == 0, recommended.stderr[-2000:]
    lines = [json.loads(line) for line in recommended.stdout.splitlines()]
    assert [line["user_id"] for line in lines] == [0, 7] and all(line["items"] for line in lines)


@pytest.mark.slow
def test_sharded_metrics_equal_one_process_evaluation_of_the_checkpoints(sharded_run):
    """Each rank tested its half of the rows; the gathered metrics are those of the
    checkpoints' full tables evaluated in one process by ranking-eval."""
    work, run, _ = sharded_run
    evaluated = _cli("ranking-eval", f"run={run}", cwd=work)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    trained = json.loads((run / "metrics.json").read_text())
    again = json.loads((run / "eval_metrics.json").read_text())
    assert len(again) > 40 and set(again) <= set(trained)
    for k, v in again.items():
        assert v == pytest.approx(trained[k], rel=1e-9, abs=1e-12, nan_ok=True), k


@pytest.mark.slow
def test_sharded_run_resumed_from_its_checkpoint_matches_an_uninterrupted_one(sharded_run):
    """The one-epoch run stands for a run killed after its first ranking epoch:
    resumed to two epochs (each rank reading its shards and the fused optimiser's
    state back), it ends where a two-epoch run of the same seed ends."""
    work, killed, _ = sharded_run
    common = [*SHARDED, "ranking.epochs=2", "mlflow.enabled=false"]
    full = _cli(
        "ranking-train", *common, "stages=[retrieval,ranking]", "hydra.run.dir=full", cwd=work
    )
    assert full.returncode == 0, full.stderr[-3000:]
    resumed = _cli(
        "ranking-train",
        *common,
        "stages=[ranking]",
        f"resume={killed}",
        "hydra.run.dir=resumed",
        cwd=work,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    want = json.loads((work / "full" / "metrics.json").read_text())
    got = json.loads((work / "resumed" / "metrics.json").read_text())
    first = json.loads((killed / "metrics.json").read_text())
    ranker = [k for k in got if k.startswith("test/")]
    assert "test/auc/click" in ranker and got["test/auc/click"] != first["test/auc/click"]
    for k in ranker:
        assert got[k] == pytest.approx(want[k], abs=1e-6, nan_ok=True), k
    # a sharded checkpoint does not resume under a one-process trainer
    one = compose_train([f"resume={killed}", f"data.path={work / 'ds'}"])
    with pytest.raises(ConfigError, match="its ranking checkpoint is sharded"):
        resume_checkpoint(one, "ranking")


@pytest.mark.slow
def test_sharded_run_warm_starts_from_a_sharded_run(sharded_run):
    """A sharded run's weights carry over into the next sharded run; its optimiser
    state (split across ranks) does not, which the default warm start refuses.
    The warm run also keeps its selected epoch (early stopping; the lower AUC of
    two, so not necessarily the last): its stage checkpoint is that epoch's shards,
    and the run's test metrics are theirs."""
    work, earlier, _ = sharded_run
    common = [*SHARDED, "stages=[ranking]", "mlflow.enabled=false", f"warm_start.run={earlier}"]
    refused = _cli("ranking-train", *common, "hydra.run.dir=refused", cwd=work)
    assert refused.returncode != 0
    assert "set warm_start.optimizer=false" in refused.stderr, refused.stderr[-2000:]
    selected = [
        "ranking.epochs=2",
        "ranking.early_stopping.metric=valid/auc/click",
        "ranking.early_stopping.direction=minimize",
    ]
    warm = _cli(
        "ranking-train",
        *common,
        *selected,
        "warm_start.optimizer=false",
        "hydra.run.dir=warm",
        cwd=work,
    )
    assert warm.returncode == 0, warm.stderr[-3000:]
    log = (work / "warm" / "train.log").read_text()
    line = next(x for x in log.splitlines() if "ranking: warm start from" in x)
    # the earlier run stopped within its warm-up: this one goes on with it
    meta = torch.load(earlier / "checkpoints" / "ranking.ckpt" / "meta.pt", weights_only=False)
    (scheduler,) = meta["lr_schedulers"]
    steps = scheduler["lr_lambdas"][0]["warmup_steps"]
    assert 0 < scheduler["last_epoch"] < steps and "optimiser state carried" not in line
    assert f"warm-up continued from step {scheduler['last_epoch']} of {steps}" in line
    assert "tensors copied" in line
    trained = json.loads((work / "warm" / "metrics.json").read_text())
    assert trained["test/auc/click"] > 0.5
    # early stopping: the stage checkpoint is the kept epoch's shards, tested as such
    kept = next(x for x in log.splitlines() if "ranking: kept epoch" in x)
    ckpts = work / "warm" / "checkpoints"
    (best_dir,) = (ckpts / "ranking").glob("best-step*.ckpt")
    best = torch.load(best_dir / "meta.pt", weights_only=False)
    final = torch.load(ckpts / "ranking.ckpt" / "meta.pt", weights_only=False)
    assert final["epoch"] == best["epoch"] == 0  # here the first: not the model training ended with
    assert "kept epoch 1 of 2" in kept
    assert {p.name for p in (ckpts / "ranking.ckpt").iterdir()} >= {"__0_0.distcp", "__1_0.distcp"}
    evaluated = _cli("ranking-eval", f"run={work / 'warm'}", cwd=work)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    again = json.loads((work / "warm" / "eval_metrics.json").read_text())
    assert again["test/auc/click"] == pytest.approx(trained["test/auc/click"], rel=1e-9)
