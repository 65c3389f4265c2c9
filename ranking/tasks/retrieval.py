"""Retrieval objective: sampled softmax over in-batch, uniformly sampled and hard negatives.

For the B positive rows of a batch (user u_b clicked item i_b), the candidates
of row b are

- the B in-batch items i_1..i_B (its own positive among them),
- M items drawn uniformly from the corpus (mixed negative sampling, Yang et
  al., WWW 2020; the same M for every row),
- optionally, hard negatives: the batch's non-clicked impressions shown to the
  same user (with a loader that keeps a request's rows together, the other
  items of the click's own request),

and the loss is the softmax cross-entropy of its own positive among them, with
logits ``s(u, i) / temperature``.

**Sampling-bias (logQ) correction** (Yi et al., RecSys 2019). In-batch
candidates are positives of other rows, so popular items are negatives far more
often than tail items: an uncorrected in-batch softmax learns
``log P(i | u) - log p_i``, every item marked down by its own click popularity
(good items and popular ones alike), not the full softmax over the corpus. The
sampled-softmax correction subtracts from each candidate's logit the log of its
expected number of occurrences in the candidate set. Under the mixed proposal
that is, for item j,

    log( B * p_j  +  M / N )

where p_j is the probability that one positive row holds item j and N the
corpus size: the first term is the in-batch share, the second the uniform one
(an item can arrive by either route, so both use the same mixture; a tail item
with p_j ~ 0 gets the uniform ``log(M / N)``, a head item ~ ``log(B p_j)``).
With M = 0 this is Yi et al.'s ``log p_j`` up to a constant, which the softmax
ignores. ``B * p_j`` is estimated either from corpus counts (the train split's
positives per item, :func:`ranking.data.retrieval_stats.item_counts`), or with
the streaming estimator of Yi et al. (one slot per item id instead of a hash:
the average number of steps between two batches that hold the item, updated
with rate ``alpha``; its inverse is the per-batch expected count). With the
correction off every candidate is treated as uniformly drawn: no offset.
Hard negatives are not drawn from the proposal and take no logQ correction
(the exposure adjustment below applies to them as to every candidate).

**Exposure adjustment** (optional, ``exposure_adjustment`` = beta > 0). The
corrected softmax estimates the log's own distribution, log P(i | u), and the
log is biased: the logging policy shows popular items far more often, so
P(i | u) = exposure(i | u) x click(i | u) / Z_u carries the exposure bias. Adding
``beta * log x_j`` to each candidate's training logit, with x the train
exposure share of item j (logit adjustment, Menon et al., ICLR 2021), makes the
model learn ``log P(i | u) - beta * log x_i`` instead: beta = 1 divides the
item's exposure popularity out, which is what ranking for an unbiased
(random) exposure needs. The serving score is the plain dot product. Note
that an *uncorrected* in-batch softmax is the special case "logQ on, beta = 1
with the positives' own popularity as prior": it removes popularity twice
over (exposure and click quality alike).

**Impression loss** (optional, ``impression_weight`` = lambda > 0). Positives
alone only tell which items a user clicked among those the log showed; how
often an item is *not* clicked when shown is in the other impressions. With
lambda > 0 the task adds lambda x the binary cross-entropy of
``sigmoid(u . v / temperature + b)`` against the label over every impression
of the batch (b is a learned offset), which pulls the same dot product
towards the click probability given exposure, the quantity a random (unbiased)
exposure measures. The train loader then yields every positive and a share
of the other impressions (``retrieval.negative_share``; downsampling shifts
the learned logit by a constant, which no ranking sees).
``softmax_weight`` scales the softmax term; 0 leaves the impression loss
alone: a pointwise click model, unbiased by the logging policy's targeting
(P(click | u, i, shown) does not depend on why i was shown). Use it with the
towers' bias terms (``retrieval.model.bias_terms``: a per-user and a per-item
offset in the dot product), so item-only click quality has a parameter of its
own instead of a shared direction of the cosine; measured in
``docs/benchmarks.md``.

**Exposure-aware softmax** (optional, ``exposure_weight`` = mu > 0). The
positives of a log are drawn from P(i | u, click) ~ pi(i | u) x P(click | u, i):
the logging policy's exposure pi targets each user's expressed interests and
popular items, and a softmax over positives learns that targeting back, which
a global prior (the exposure adjustment) cannot remove: it is per user. This
mode factorises it out. An exposure score

    e(u, j) = u^T M v_j + b_j       (M [D, D] and b [N]: the task's parameters)

is trained by a second sampled softmax in which every impression of the batch
is a positive ("j was shown to u"; in-batch and uniform candidates, logQ by
each item's share of the loader's rows, non-clicked rows weighted by
1 / ``impression_share`` to undo the loader's downsampling), so it estimates
log pi(j | u). It is a probe over the click embeddings u and v: its loss
trains M and b only (letting it train the towers too pulled the embeddings
towards the exposure structure and cost half the logged-slice recall on the
benchmark world, docs/benchmarks.md). The click softmax then uses
``s(u, j) + e(u, j)`` as the logit of candidate j, with e held fixed (no
gradient): the product pi x P(click) is explained by both, and the served
score s = u . v / temperature is left with log P(click | u, j), the quantity
a random (unbiased) exposure rewards.
The exposure score is a training device only; nothing of it is exported.
Use it without the exposure adjustment (beta = 0): e removes the popularity
that beta would.

**Accidental hits**: a candidate that is the row's own positive item (the same
item clicked in another row, drawn from the corpus, or shown to the user
elsewhere) is masked out of the row's softmax; the row's own column stays.

**Unavailable candidates** (``mask_unavailable``, with the dataset's
availability windows): a candidate that could not be shown at the time of the
row (a live stream that had ended, an item not released yet) is masked out of
the row's softmax too: the user did not prefer the row's item over it. Without
the mask, an item with a short window is a negative at every other time, and
the towers learn its window instead of its appeal. The caller passes the mask
(:meth:`logits` ``unavailable``); the row's own item is available (validated).
"""

from __future__ import annotations

import math

import torch
from torch import nn

LOGQ_SOURCES = ("corpus", "streaming")


class StreamingFrequency(nn.Module):
    """Per-item streaming estimate of how often an item appears in a batch (Yi et al.
    2019, Algorithm 2 without hashing: ids index the arrays directly).

    ``last[j]`` is the last step that held item j, ``delta[j]`` the smoothed number
    of steps per occurrence of j; ``1 / delta[j]`` estimates the expected count of
    j per batch (which exceeds 1 for a head item: each copy of it is a negative
    for the other rows). A step holding j c times after a gap of g steps since
    the last one contributes g / c, the mean gap per copy (one update of g per
    step would stop a head item's count at 1). The first time j is seen, at step t,
    ``delta = t / c``; later ``delta <- (1 - alpha) delta + alpha (t - last) / c``.
    Items never seen have expected count 0. State is in buffers, so it is saved
    and restored with checkpoints.

    Shapes: update(item_ids [B]); expected_count(ids [K]) -> [K].
    """

    def __init__(self, num_items: int, alpha: float = 0.05) -> None:
        super().__init__()
        if not 0 < alpha <= 1:
            raise ValueError(f"alpha must lie in (0, 1], got {alpha}")
        self.alpha = alpha
        self.register_buffer("step", torch.zeros((), dtype=torch.int64))
        self.register_buffer("last", torch.full((num_items,), -1, dtype=torch.int64))
        self.register_buffer("delta", torch.zeros(num_items, dtype=torch.float64))

    @torch.no_grad()
    def update(self, item_ids: torch.Tensor) -> None:
        """Record one training step whose batch holds ``item_ids``."""
        self.step += 1
        ids, counts = torch.unique(item_ids, return_counts=True)
        last = self.last[ids]
        gap = (self.step - last.clamp(min=0)).to(self.delta.dtype) / counts.to(self.delta.dtype)
        seen = last >= 0
        old = self.delta[ids]
        self.delta[ids] = torch.where(seen, (1 - self.alpha) * old + self.alpha * gap, gap)
        self.last[ids] = self.step

    def expected_count(self, ids: torch.Tensor) -> torch.Tensor:
        d = self.delta[ids]
        return torch.where(d > 0, 1.0 / d.clamp(min=1e-12), torch.zeros_like(d))


class RetrievalTask(nn.Module):
    """Sampled softmax with logQ correction, mixed negatives and hard negatives.

    The model computes embeddings; this task turns them into the loss (see the
    module docstring for the formulas).

    Args:
        positive_label: label column that marks a positive interaction (rows
            with label 0 are impressions without interest; they are not
            retrieval positives).
        temperature: logits are ``u . v / temperature`` (the initial value if learned).
        learn_temperature: make 1 / temperature a trained parameter, clamped to
            ``[1, 1 / min_temperature]``.
        min_temperature: lower bound of a learned temperature.
        mask_accidental_hits: mask candidates equal to the row's positive item.
        mask_unavailable: ask the caller for the mask of candidates unavailable at
            each row's time (the ``unavailable`` argument of :meth:`loss`).
        logq: subtract the log expected count of each candidate (sampling-bias
            correction); False: no correction.
        logq_source: ``corpus`` (train positives per item; call
            :meth:`set_item_counts`) or ``streaming`` (:class:`StreamingFrequency`).
        streaming_alpha: learning rate of the streaming estimator.
        num_sampled: M, corpus items drawn uniformly per batch as extra negatives.
        hard_negatives: use the batch's non-positive rows of the same user as
            extra negatives (the train loader then yields the non-positive
            impressions too; shuffled row by row, few share a batch with a
            positive of the same user, so shuffle request by request:
            ``retrieval.group_by``, :class:`~ranking.data.dataset.ParquetIterableDataset`).
        exposure_adjustment: beta of the exposure adjustment (0 = off); needs
            :meth:`set_item_counts` with exposures.
        impression_weight: lambda of the impression loss (0 = off); the train
            loader must yield every impression.
        softmax_weight: weight of the softmax loss (1 = as above; 0 leaves the
            impression loss alone, a pointwise click model).
        exposure_weight: mu of the exposure-aware softmax (0 = off); needs
            ``embedding_dim`` and every impression from the train loader.
        embedding_dim: D of the towers (the exposure score's M is [D, D]).
        impression_share: share of the non-positive impressions the train loader
            keeps (``retrieval.negative_share``); the exposure loss weights them back.
        num_items: size of the item-id vocabulary (corpus counts / streaming state).

    Example:
        >>> task = RetrievalTask(temperature=0.1, logq=False)
        >>> u = torch.nn.functional.normalize(torch.randn(4, 8), dim=1)
        >>> v = torch.nn.functional.normalize(torch.randn(4, 8), dim=1)
        >>> task.loss(u, v, torch.tensor([3, 1, 4, 1])).shape
        torch.Size([])

    Shapes: user [B, D], item [B, D], item_ids [B]; sampled [M, D], sampled_ids [M];
    hard [H, D], hard_ids [H], hard_mask bool [B, H] -> scalar loss.
    """

    def __init__(
        self,
        positive_label: str = "click",
        temperature: float = 0.05,
        learn_temperature: bool = False,
        min_temperature: float = 0.01,
        mask_accidental_hits: bool = True,
        mask_unavailable: bool = False,
        logq: bool = False,
        logq_source: str = "corpus",
        streaming_alpha: float = 0.05,
        num_sampled: int = 0,
        hard_negatives: bool = False,
        exposure_adjustment: float = 0.0,
        impression_weight: float = 0.0,
        softmax_weight: float = 1.0,
        exposure_weight: float = 0.0,
        embedding_dim: int = 0,
        impression_share: float = 1.0,
        num_items: int = 1,
    ) -> None:
        super().__init__()
        if logq_source not in LOGQ_SOURCES:
            raise ValueError(f"logq_source must be one of {LOGQ_SOURCES}, got {logq_source!r}")
        if temperature <= 0 or min_temperature <= 0:
            raise ValueError("temperatures must be positive")
        if learn_temperature and not min_temperature <= temperature <= 1.0:
            raise ValueError(
                f"a learned temperature is kept in [min_temperature, 1] = [{min_temperature}, 1]; "
                f"its initial value {temperature} lies outside"
            )
        if num_sampled < 0:
            raise ValueError(f"num_sampled must be >= 0, got {num_sampled}")
        if softmax_weight < 0 or impression_weight < 0 or not (softmax_weight or impression_weight):
            raise ValueError(
                "softmax_weight and impression_weight must be >= 0 and not both 0, got "
                f"{softmax_weight} and {impression_weight}"
            )
        if exposure_weight < 0 or (exposure_weight and embedding_dim <= 0):
            raise ValueError(
                f"exposure_weight must be >= 0 and needs embedding_dim > 0, got "
                f"{exposure_weight} and {embedding_dim}"
            )
        if exposure_weight and exposure_adjustment:
            raise ValueError(
                "exposure_weight replaces the exposure adjustment (both would remove the "
                "exposure twice): set exposure_adjustment=0"
            )
        if not 0 < impression_share <= 1:
            raise ValueError(f"impression_share must lie in (0, 1], got {impression_share}")
        self.positive_label = positive_label
        self.mask_accidental_hits = mask_accidental_hits
        self.mask_unavailable = mask_unavailable
        self.logq = logq
        self.logq_source = logq_source
        self.num_sampled = int(num_sampled)
        self.hard_negatives = hard_negatives
        self.exposure_adjustment = float(exposure_adjustment)
        self.impression_weight = float(impression_weight)
        self.softmax_weight = float(softmax_weight)
        self.exposure_weight = float(exposure_weight)
        self.impression_share = float(impression_share)
        if exposure_weight:
            # e(u, j) = u^T M v_j + b_j; zero at the start (the click softmax then
            # begins as the plain one)
            self.exposure_matrix = nn.Parameter(torch.zeros(embedding_dim, embedding_dim))
            self.exposure_bias = nn.Parameter(torch.zeros(num_items))
        else:
            self.exposure_matrix = self.exposure_bias = None
        # offset of the impression loss's logit (base click rate)
        self.impression_bias = nn.Parameter(torch.tensor(-2.0)) if impression_weight else None
        self.learn_temperature = bool(learn_temperature)
        self.max_inverse_temperature = 1.0 / min_temperature
        log_inv = torch.tensor(math.log(1.0 / temperature))
        if learn_temperature:
            self.log_inverse_temperature = nn.Parameter(log_inv)
        else:
            self.register_buffer("log_inverse_temperature", log_inv)
        #: corpus size N of the uniform draws (set by the caller that samples them)
        self.corpus_size = int(num_items)
        # p_j of the corpus estimate: positives of j / all positives (train split)
        self.register_buffer("item_prob", torch.zeros(num_items, dtype=torch.float64))
        # log x_j of the exposure adjustment: log of item j's share of train exposures
        self.register_buffer("log_exposure", torch.zeros(num_items, dtype=torch.float32))
        # q_j of the exposure softmax's logQ: item j's share of the loader's rows
        # (exposure mode only, so checkpoints of the plain softmax keep their keys)
        self.register_buffer(
            "row_prob", torch.zeros(num_items, dtype=torch.float64) if exposure_weight else None
        )
        self.frequency = (
            StreamingFrequency(num_items, streaming_alpha)
            if logq and logq_source == "streaming"
            else None
        )

    # ---- state ----------------------------------------------------------------------
    def positives(self, labels: dict[str, torch.Tensor]) -> torch.Tensor:
        """Bool [B]: rows that are retrieval positives."""
        return labels[self.positive_label] > 0.5

    @torch.no_grad()
    def set_item_counts(
        self, positives: torch.Tensor, exposures: torch.Tensor | None = None
    ) -> None:
        """Corpus statistics of the train split, per item id [N]: ``positives``
        (positive rows: the corpus logQ estimate) and ``exposures`` (all rows: the
        exposure adjustment's prior).

        An item never positive (exposed) in train gets the share of one count
        (a positive in the batch was sampled at least once; an unexposed item
        is given half an exposure, so its prior stays finite)."""
        counts = positives.to(torch.float64).clamp(min=1.0)
        self.item_prob.copy_(counts / positives.to(torch.float64).sum().clamp(min=1.0))
        if exposures is not None:
            x = exposures.to(torch.float64).clamp(min=0.5)
            self.log_exposure.copy_(torch.log(x / x.sum()).float())
            if self.row_prob is not None:
                pos = positives.to(torch.float64)
                rows = pos + self.impression_share * (exposures.to(torch.float64) - pos)
                rows = rows.clamp(min=1.0)
                self.row_prob.copy_(rows / rows.sum())

    def inverse_temperature(self) -> torch.Tensor:
        """1 / temperature: the fixed value, or the learned one clamped to
        ``[1, 1 / min_temperature]``."""
        inv = self.log_inverse_temperature.exp()
        return inv.clamp(1.0, self.max_inverse_temperature) if self.learn_temperature else inv

    @property
    def needs_all_rows(self) -> bool:
        """True when the loss reads non-positive impressions (the train loader must
        then yield every row, not only positives)."""
        return self.reads_all_rows(
            self.hard_negatives, self.impression_weight, self.exposure_weight
        )

    @staticmethod
    def reads_all_rows(
        hard_negatives: bool = False, impression_weight: float = 0.0, exposure_weight: float = 0.0
    ) -> bool:
        """Whether a task with these settings reads non-positive impressions (the
        one rule, also asked of a config before the task exists)."""
        return bool(hard_negatives) or impression_weight > 0 or exposure_weight > 0

    def impression_loss(
        self, user: torch.Tensor, item: torch.Tensor, labels: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        """lambda x mean BCE of sigmoid(u . v / temperature + b) against the positive
        label over all rows. Shapes: user [R, D], item [R, D] -> scalar."""
        if self.impression_bias is None:
            return user.new_zeros(())
        logit = (user * item).sum(dim=1) * self.inverse_temperature() + self.impression_bias
        target = labels[self.positive_label].to(logit.dtype)
        bce = nn.functional.binary_cross_entropy_with_logits(logit, target)
        return self.impression_weight * bce

    @torch.no_grad()
    def observe(self, item_ids: torch.Tensor) -> None:
        """One training step's positive item ids (feeds the streaming estimator)."""
        if self.frequency is not None:
            self.frequency.update(item_ids)

    def log_expected_count(self, ids: torch.Tensor, batch: int, sampled: int) -> torch.Tensor:
        """[K] log of the expected occurrences of items ``ids`` among the candidates
        of a batch with ``batch`` positives and ``sampled`` uniform draws."""
        if self.frequency is not None:
            in_batch = self.frequency.expected_count(ids)
        else:
            in_batch = batch * self.item_prob[ids]
        uniform = sampled / max(self.corpus_size, 1)
        return torch.log((in_batch + uniform).clamp(min=1e-30)).to(torch.float32)

    # ---- exposure-aware softmax --------------------------------------------------------
    def exposure_score(
        self, user: torch.Tensor, items: torch.Tensor, item_ids: torch.Tensor
    ) -> torch.Tensor:
        """[B, K] e(u, j) = u^T M v_j + b_j of users [B, D] and candidates [K, D]."""
        if self.exposure_matrix is None or self.exposure_bias is None:
            raise RuntimeError("exposure_score needs exposure_weight > 0")
        return (user @ self.exposure_matrix) @ items.T + self.exposure_bias[item_ids].unsqueeze(0)

    def exposure_loss(
        self,
        user: torch.Tensor,
        item: torch.Tensor,
        item_ids: torch.Tensor,
        positive: torch.Tensor,
        sampled: torch.Tensor | None = None,
        sampled_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """mu x the weighted softmax cross-entropy of each impression's own item
        among the batch's items and the uniform draws, with logits e(u, j) minus
        log(R q_j + M / N) when ``logq`` (0 when the mode is off).

        Shapes: user [R, D], item [R, D], item_ids [R], positive bool [R] (the
        clicked rows, weight 1; the others weigh 1 / impression_share);
        sampled [M, D], sampled_ids [M] -> scalar."""
        if not self.exposure_weight:
            return user.new_zeros(())
        r = user.shape[0]
        cands, cand_ids = _candidates(item, item_ids, sampled, sampled_ids)
        # a probe over the click embeddings: it trains M and b, not the towers
        logits = self.exposure_score(user.detach(), cands.detach(), cand_ids)
        if self.logq and self.row_prob is not None:
            m = cand_ids.shape[0] - r
            expected = r * self.row_prob[cand_ids] + m / max(self.corpus_size, 1)
            logits = logits - torch.log(expected.clamp(min=1e-30)).to(logits.dtype).unsqueeze(0)
        logits = logits.masked_fill(
            _accidental_hits(cand_ids, item_ids), torch.finfo(logits.dtype).min
        )
        own = torch.arange(r, device=user.device)
        ce = nn.functional.cross_entropy(logits, own, reduction="none")
        weight = torch.where(positive, 1.0, 1.0 / self.impression_share).to(ce.dtype)
        return self.exposure_weight * (weight * ce).sum() / weight.sum()

    # ---- loss -------------------------------------------------------------------------
    def logits(
        self,
        user: torch.Tensor,
        item: torch.Tensor,
        item_ids: torch.Tensor,
        sampled: torch.Tensor | None = None,
        sampled_ids: torch.Tensor | None = None,
        hard: torch.Tensor | None = None,
        hard_ids: torch.Tensor | None = None,
        hard_mask: torch.Tensor | None = None,
        unavailable: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Corrected, masked logits [B, B + M + H]; row b's positive is column b.

        ``unavailable``: optional bool [B, B + M], True where the in-batch or
        sampled candidate could not be shown at row b's time (masked out)."""
        b = user.shape[0]
        cands, cand_ids = _candidates(item, item_ids, sampled, sampled_ids)
        proposal = cand_ids.shape[0]  # the B + M columns drawn from the proposal
        has_hard = hard is not None and hard_ids is not None and hard_mask is not None
        if has_hard and hard.shape[0]:
            cands, cand_ids = torch.cat([cands, hard]), torch.cat([cand_ids, hard_ids])
        logits = user @ cands.T * self.inverse_temperature()  # [B, B + M + H]
        if self.logq:  # hard negatives are not drawn from the proposal: no correction
            offset = self.log_expected_count(cand_ids[:proposal], b, proposal - b)
            logits[:, :proposal] -= offset.unsqueeze(0)
        # the priors apply to every candidate alike, hard negatives included
        if self.exposure_adjustment:
            logits = logits + self.exposure_adjustment * self.log_exposure[cand_ids].unsqueeze(0)
        if self.exposure_weight:  # the exposure prior, held fixed (see the module docstring)
            with torch.no_grad():
                prior = self.exposure_score(user, cands, cand_ids)
            logits = logits + prior
        masked = torch.zeros_like(logits, dtype=torch.bool)
        if self.mask_accidental_hits:
            masked = _accidental_hits(cand_ids, item_ids)
        if unavailable is not None:
            own = torch.arange(b, device=user.device)
            bad = torch.nonzero(unavailable[own, own])
            if len(bad):
                r = int(bad[0])
                raise ValueError(
                    f"batch row {r}: its own item {int(item_ids[r])} is unavailable at the "
                    "row's time (validate the dataset: every row must lie in its item's window)"
                )
            masked[:, :proposal] |= unavailable
        if cand_ids.shape[0] > proposal:  # hard negatives of other users' rows
            masked[:, proposal:] |= ~hard_mask
        return logits.masked_fill(masked, torch.finfo(logits.dtype).min)

    def loss(
        self,
        user: torch.Tensor,
        item: torch.Tensor,
        item_ids: torch.Tensor,
        sampled: torch.Tensor | None = None,
        sampled_ids: torch.Tensor | None = None,
        hard: torch.Tensor | None = None,
        hard_ids: torch.Tensor | None = None,
        hard_mask: torch.Tensor | None = None,
        unavailable: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """softmax_weight x the mean softmax cross-entropy of each row's positive
        (see :meth:`logits`)."""
        logits = self.logits(
            user, item, item_ids, sampled, sampled_ids, hard, hard_ids, hard_mask, unavailable
        )
        target = torch.arange(user.shape[0], device=user.device)
        return self.softmax_weight * nn.functional.cross_entropy(logits, target)


def _candidates(
    item: torch.Tensor,
    item_ids: torch.Tensor,
    sampled: torch.Tensor | None,
    sampled_ids: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The in-batch items, then the uniform draws: embeddings [B + M, D], ids [B + M]."""
    if sampled is not None and sampled_ids is not None and sampled.shape[0]:
        return torch.cat([item, sampled]), torch.cat([item_ids, sampled_ids])
    return item, item_ids


def _accidental_hits(cand_ids: torch.Tensor, item_ids: torch.Tensor) -> torch.Tensor:
    """bool [B, K]: candidates holding row b's own item, except row b's own column b."""
    masked = cand_ids.unsqueeze(0) == item_ids.unsqueeze(1)
    own = torch.arange(item_ids.shape[0], device=item_ids.device)
    masked[own, own] = False
    return masked
