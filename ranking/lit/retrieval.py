"""Lightning module for the two-tower retrieval stage."""

from __future__ import annotations

from collections.abc import Callable

import pytorch_lightning as pl
import torch

from ranking.data.batch import Batch
from ranking.metrics.retrieval import FullCorpusEvaluator
from ranking.models.two_tower import TwoTower
from ranking.tasks.retrieval import RetrievalTask


class RetrievalModule(pl.LightningModule):
    """Trains the towers with the retrieval task; evaluates on the full corpus.

    Validation and test stream their split through the user tower (one query
    per user, see :mod:`ranking.metrics.retrieval`), then embed the whole item
    corpus (``trainer.datamodule.corpus_dataloader()``) and score every user
    against every item. Metric keys: ``valid/recall@100``, ``test/ndcg@10``, ...
    """

    def __init__(
        self,
        model: TwoTower,
        task: RetrievalTask,
        optimizer: Callable[..., torch.optim.Optimizer],
        num_users: int,
        ks: tuple[int, ...] = (10, 50, 100),
    ) -> None:
        super().__init__()
        self.model = model
        self.task = task
        self.optimizer_factory = optimizer
        self.num_users = num_users
        self.ks = tuple(ks)
        self.evaluator: FullCorpusEvaluator | None = None
        self.last_metrics: dict[str, float] = {}

    def _step(self, batch: Batch, stage: str) -> torch.Tensor:
        keep = self.task.positives(batch.labels)
        user, item = self.model(batch)
        loss = self.task.loss(user[keep], item[keep], batch.item_ids[keep])
        self.log(f"{stage}/loss", loss, batch_size=int(keep.sum()), prog_bar=stage == "train")
        return loss

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    # ---- full-corpus evaluation ---------------------------------------------------
    def _eval_start(self) -> None:
        self.evaluator = FullCorpusEvaluator(self.num_users, self.model.out_dim)

    def _eval_step(self, batch: Batch) -> None:
        user = self.model.encode_users(batch)
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

    def _eval_end(self, stage: str) -> None:
        items, ids = self.corpus_embeddings()
        metrics = self.evaluator.compute(items, ids, self.ks)
        users = metrics.pop("users")
        logged = {f"{stage}/{k}": v for k, v in metrics.items()}
        self.log_dict(logged, batch_size=max(int(users), 1))
        self.last_metrics.update(logged)
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
        self._eval_end("test")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.optimizer_factory(self.parameters())
