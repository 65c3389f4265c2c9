"""Lightning module for the two-tower retrieval stage."""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from pytorch_lightning.loggers import MLFlowLogger

from ranking.data.availability import ItemWindows, read_windows
from ranking.data.batch import Batch
from ranking.data.corpus_sampler import CorpusSampler
from ranking.data.retrieval_stats import ItemCounts, item_counts
from ranking.lit.fused_tables import FusedTables
from ranking.lit.sharding import gathered, gathered_pairs
from ranking.lit.slices import present_slices
from ranking.metrics.decile_plot import log_decile_figure
from ranking.metrics.retrieval import FullCorpusEvaluator, Reference, RetrievalReport
from ranking.models.two_tower import TwoTower
from ranking.tasks.retrieval import RetrievalTask

log = logging.getLogger("ranking")


class RetrievalModule(FusedTables):
    """Trains the towers with the retrieval task; evaluates on the full corpus.

    Training: the task's loss over the batch's positive rows, with the corpus
    items the task asks for (``num_sampled`` uniform draws, encoded by the item
    tower in the same step) and, with ``hard_negatives``, the batch's
    non-positive rows. ``setup`` counts the train split once
    (:func:`~ranking.data.retrieval_stats.item_counts`): positives per item for the
    task's corpus logQ estimate, exposures per item for the long-tail metrics.

    Validation and test stream their split through the user tower (one query
    per user, see :mod:`ranking.metrics.retrieval`), then embed the whole item
    corpus (``trainer.datamodule.corpus_dataloader()``) and score every user
    against every item (only the items available during the split's period when
    the schema declares availability windows). Test also evaluates each configured slice of the test
    split (e.g. ``test_random``: the synthetic log's random-exposure rows) with
    the same per-user queries and the slice's positives, and, on a dataset
    with a synthetic world, the oracle. Metric keys: ``valid/recall@100``,
    ``test/tail_recall@100``, ``test_random/oracle_recall@100``, ...; the recall
    by popularity decile goes to the MLflow run as a table per stage
    (``retrieval/<stage>_recall_by_decile.json``, ``.csv`` and a ``.png`` bar chart) and to
    :attr:`last_tables`.

    Optimisation (:class:`~ranking.lit.fused_tables.FusedTables`): ``optimizer``
    updates the dense parameters (towers' MLPs, poolers, the task's); the
    embedding tables, when the model's are fused (``sparse_optimizer``), are
    updated by their own optimiser inside the backward pass.

    Args:
        model: the two towers.
        task: the retrieval objective.
        optimizer: partial optimizer (dense params -> optimizer).
        schedule: warm-up/decay of both learning rates
            (:class:`~ranking.lit.schedule.WarmupSchedule` fields), None: constant.
        num_users: size of the user-id vocabulary.
        ks: cut-offs of recall/ndcg/hit.
        exclude_train: drop each user's train positives from their ranking and
            from their evaluated positives (the oracle ranks without them too).
        exclude_valid: at test, drop each user's valid positives the same way
            (with ``exclude_train``: every positive before the test period, the
            "already-interacted items removed" reading of leave-one-out protocols).
        availability: when the schema declares availability windows, rank only
            the items available during the evaluated split's period (False: the
            whole corpus, ended and unreleased items included).
        tail_share: share of the corpus (least exposed first) that is the tail.
        long_tail_k: k of tail recall, coverage, discovery, deciles and oracle.
        slices: stage name -> ``{"column": ..., "value": ...}``: test rows where
            the column equals the value, evaluated as ``<stage>/...`` (skipped
            with a log line when the test files have no such column).
        oracle: compute oracle metrics at test when the dataset has a synthetic world.
        oracle_valid: also at each validation (for tuning against the world without
            touching test; costs one oracle pass over the valid users per epoch).
        seed: seed of the uniform corpus draws (with the rank and step).
    """

    def __init__(
        self,
        model: TwoTower,
        task: RetrievalTask,
        optimizer: Callable[..., torch.optim.Optimizer],
        num_users: int,
        ks: tuple[int, ...] = (10, 50, 100),
        exclude_train: bool = False,
        exclude_valid: bool = False,
        availability: bool = True,
        tail_share: float = 0.8,
        long_tail_k: int = 100,
        slices: dict[str, dict[str, Any]] | None = None,
        oracle: bool = True,
        oracle_valid: bool = False,
        seed: int = 0,
        schedule: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.task = task
        self.init_optimisation(optimizer, schedule)
        self.num_users = num_users
        self.ks = tuple(ks)
        self.exclude_train = exclude_train
        self.exclude_valid = exclude_valid
        #: the distinct positive (user, item) pairs excluded at test (train and/or valid)
        self._test_exclude: np.ndarray | None = None
        self.availability = availability
        self.tail_share = tail_share
        self.long_tail_k = long_tail_k
        self.slices = dict(slices or {})
        self.use_oracle = oracle
        self.oracle_valid = oracle_valid
        self.seed = seed
        self.evaluator: FullCorpusEvaluator | None = None
        self.counts: ItemCounts | None = None
        #: the dataset's availability windows (None: it declares none)
        self.windows: ItemWindows | None = None
        self._window_tensors: tuple[torch.Tensor, torch.Tensor] | None = None
        self.sampler: CorpusSampler | None = None
        self.last_metrics: dict[str, float] = {}
        self.last_tables: dict[str, dict[str, list]] = {}

    # ---- setup ----------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        dm = self._datamodule()
        if dm is None:
            return
        if self.counts is None:
            self.counts = item_counts(
                dm.schema, self.task.positive_label, "train", with_pairs=self.exclude_train
            )
            self.windows = read_windows(dm.schema)
        if self.task.mask_unavailable and self.windows is None:
            raise ValueError(
                "retrieval.task.mask_unavailable=true needs availability windows, but "
                f"{dm.schema.root} declares none (add availability: {{from: ..., to: ...}} "
                "to its schema, or leave the option off)"
            )
        if stage == "fit":
            self.task.set_item_counts(
                torch.from_numpy(self.counts.positives), torch.from_numpy(self.counts.exposures)
            )
            if self.task.num_sampled and self.sampler is None:
                self.sampler = CorpusSampler(dm.schema, dm.converter)
                self.task.corpus_size = self.sampler.num_items

    def _datamodule(self) -> Any:
        trainer = self._trainer
        return getattr(trainer, "datamodule", None) if trainer is not None else None

    # ---- training -------------------------------------------------------------------
    def _step(self, batch: Batch, stage: str) -> torch.Tensor:
        keep = self.task.positives(batch.labels)
        user, item = self.net(batch)
        ids = batch.item_ids[keep]
        self.task.observe(ids)
        negatives: dict[str, torch.Tensor] = {}
        if self.task.num_sampled:
            draws = self._draw_corpus(self.task.num_sampled)
            negatives["sampled"] = self.model.encode_items(draws)
            negatives["sampled_ids"] = draws.item_ids
        if self.task.hard_negatives:
            other = ~keep
            negatives["hard"] = item[other]
            negatives["hard_ids"] = batch.item_ids[other]
            negatives["hard_mask"] = batch.user_ids[keep].unsqueeze(1) == batch.user_ids[
                other
            ].unsqueeze(0)
        if self.task.mask_unavailable:
            cand_ids = torch.cat([ids, negatives.get("sampled_ids", ids[:0])])
            negatives["unavailable"] = self._unavailable(batch.time[keep], cand_ids)
        n = int(keep.sum())
        loss = self.task.impression_loss(user, item, batch.labels)
        loss = loss + self.task.exposure_loss(
            user, item, batch.item_ids, keep, negatives.get("sampled"), negatives.get("sampled_ids")
        )
        if n:  # (a batch of every impression may hold no positive)
            loss = loss + self.task.loss(user[keep], item[keep], ids, **negatives)
        else:
            loss = loss + (user.sum() + item.sum()) * 0.0
        self.log(f"{stage}/loss", loss, batch_size=max(n, 1), prog_bar=stage == "train")
        return loss

    def _unavailable(self, ts: torch.Tensor, cand_ids: torch.Tensor) -> torch.Tensor:
        """bool [B, K]: candidate k could not be shown at row b's time ``ts[b]``."""
        if self._window_tensors is None or self._window_tensors[0].device != ts.device:
            assert self.windows is not None
            self._window_tensors = (
                torch.from_numpy(self.windows.start).to(ts.device),
                torch.from_numpy(self.windows.end).to(ts.device),
            )
        start, end = self._window_tensors
        t = ts.unsqueeze(1)
        return (t < start[cand_ids].unsqueeze(0)) | (t >= end[cand_ids].unsqueeze(0))

    def _draw_corpus(self, n: int) -> Batch:
        if self.sampler is None:
            raise RuntimeError("num_sampled > 0 needs the data module's corpus (setup('fit'))")
        rng = np.random.default_rng([self.seed, self.global_rank, self.global_step])
        return self.sampler.sample(n, rng).to(self.device)

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    # ---- full-corpus evaluation ---------------------------------------------------
    def _eval_start(self) -> None:
        self.evaluator = FullCorpusEvaluator(self.num_users, self.model.out_dim)

    def _eval_step(self, batch: Batch) -> None:
        user = self.model.encode_users(batch)
        if batch.padding:  # ran only to keep sharded ranks in step
            return
        positive = self.task.positives(batch.labels)
        self.evaluator.update(batch.user_ids, batch.time, user, batch.item_ids, positive)

    @torch.no_grad()
    def corpus_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Item embeddings [N, D] and ids [N] of the whole corpus, in corpus order."""
        embs, ids = [], []
        for batch in self.trainer.datamodule.corpus_dataloader():
            batch = batch.to(self.device)
            embs.append(self.model.encode_items(batch))
            ids.append(batch.item_ids)
        return torch.cat(embs), torch.cat(ids)

    def _evaluate(
        self,
        evaluator: FullCorpusEvaluator,
        items: torch.Tensor,
        ids: torch.Tensor,
        reference: Reference | None = None,
        exposure: np.ndarray | None = None,
        split: str = "test",
    ) -> RetrievalReport:
        counts = self.counts
        return evaluator.compute(
            items,
            ids,
            self.ks,
            exposures=None if counts is None else counts.exposures,
            exclude=self._excluded(split),
            reference=reference,
            tail_share=self.tail_share,
            long_tail_k=self.long_tail_k,
            exposure=exposure,
            windows=self.windows if self.availability else None,
        )

    def _excluded(self, split: str) -> np.ndarray | None:
        """int64 [P, 2] sorted (user, item) pairs left out of ``split``'s evaluation."""
        train = self.counts.pairs if self.counts is not None and self.exclude_train else None
        if split != "test" or not self.exclude_valid:
            return train
        if self._test_exclude is None:
            dm = self._datamodule()
            valid = item_counts(dm.schema, self.task.positive_label, "valid", with_pairs=True)
            both = valid.pairs if train is None else np.concatenate([train, valid.pairs])
            self._test_exclude = np.unique(both, axis=0)
        return self._test_exclude

    def _report(self, stage: str, report: RetrievalReport) -> None:
        logged = {f"{stage}/{k}": v for k, v in report.metrics.items()}
        self.log_dict(logged, batch_size=max(report.users, 1))
        if not self.trainer.sanity_checking:  # the 2-batch check before training is no result
            self.last_metrics.update(logged)
        if report.deciles is not None and stage != "valid":
            self.last_tables[stage] = report.deciles
            self._log_table(stage, report.deciles)

    def _log_table(self, stage: str, table: dict[str, list]) -> None:
        """The decile table as an MLflow table (JSON), a CSV and a bar chart (PNG) in the stage's run."""
        logger = self.logger
        if not isinstance(logger, MLFlowLogger) or not logger.run_id:
            return
        name = f"retrieval/{stage}_recall_by_decile"
        logger.experiment.log_table(logger.run_id, data=table, artifact_file=f"{name}.json")
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(list(table))
        writer.writerows(zip(*table.values(), strict=True))
        logger.experiment.log_text(logger.run_id, buf.getvalue(), f"{name}.csv")
        log_decile_figure(logger.experiment, logger.run_id, table, stage, f"{name}.png")

    def _eval_end(self, stage: str) -> None:
        self.evaluator = gathered(self.evaluator)
        items, ids = self.corpus_embeddings()
        reference = self._reference(self.trainer.datamodule) if self.oracle_valid else None
        self._report(stage, self._evaluate(self.evaluator, items, ids, reference, split=stage))
        self.evaluator = None

    def on_validation_epoch_start(self) -> None:
        self._eval_start()

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._eval_step(batch)

    def on_validation_epoch_end(self) -> None:
        self._eval_end("valid")

    def on_test_epoch_start(self) -> None:
        self._eval_start()

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._eval_step(batch)

    def on_test_epoch_end(self) -> None:
        self.evaluator = gathered(self.evaluator)
        items, ids = self.corpus_embeddings()
        dm = self.trainer.datamodule
        reference = self._reference(dm)
        self._report("test", self._evaluate(self.evaluator, items, ids, reference))
        for stage, column, value in present_slices(dm.schema, "test", self.slices, "retrieval"):
            evaluator = self.evaluator.sharing_queries()
            for batch in dm.slice_dataloader("test", column, value):
                if batch.padding:
                    continue
                keep = self.task.positives(batch.labels)
                evaluator.add_positives(batch.user_ids[keep], batch.item_ids[keep])
            evaluator.pairs = gathered_pairs(evaluator.pairs)
            if not sum(len(p) for p in evaluator.pairs):
                log.warning(
                    "retrieval: the slice %s (%s == %s) holds no positive test row; "
                    "its metrics are not reported",
                    stage,
                    column,
                    value,
                )
                continue
            exposure = None
            if reference is not None and reference.slice_exposure is not None:
                exposure = reference.slice_exposure(column, value)
            self._report(stage, self._evaluate(evaluator, items, ids, reference, exposure))
        self.evaluator = None

    def _reference(self, dm: Any) -> Reference | None:
        if not self.use_oracle:
            return None
        if not hasattr(self, "_world_reference"):
            from ranking.metrics.retrieval_oracle import world_reference

            self._world_reference = world_reference(dm.schema.root)
        return self._world_reference
