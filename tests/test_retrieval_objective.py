"""The retrieval objective against hand-computed values.

Three users (rows), two-dimensional embeddings chosen so every logit is a
small number written out below; item ids make accidental hits on purpose.
"""

from __future__ import annotations

import math

import pytest
import torch

from ranking.tasks.retrieval import RetrievalTask, StreamingFrequency

USER = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
ITEM = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
ITEM_IDS = torch.tensor([10, 11, 10])  # rows 0 and 2 clicked the same item
# user . item, row by row:  [1, 0, .5], [0, 1, .5], [1, 1, 1]
SAMPLED = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
SAMPLED_IDS = torch.tensor([11, 12])  # item 11 is row 1's own positive
# user . sampled: [2, 0], [0, 0], [2, 0]
NUM_ITEMS = 20


def _ce(logits: list[float | None], own: int) -> float:
    """-log softmax of column ``own`` over the unmasked (not None) logits."""
    z = [v for v in logits if v is not None]
    return -logits[own] + math.log(sum(math.exp(v) for v in z))


def _task(**kw) -> RetrievalTask:
    task = RetrievalTask(temperature=1.0, num_items=NUM_ITEMS, **kw)
    positives = torch.zeros(NUM_ITEMS, dtype=torch.int64)
    positives[10], positives[11], positives[12] = 6, 3, 1  # p = .6, .3, .1
    task.set_item_counts(positives)
    task.corpus_size = 20  # uniform draw probability 1 / 20
    return task


def test_in_batch_softmax_without_correction_masks_accidental_hits():
    loss = _task(logq=False).loss(USER, ITEM, ITEM_IDS)
    want = (
        _ce([1.0, 0.0, None], 0)  # column 2 holds item 10 = row 0's own item
        + _ce([0.0, 1.0, 0.5], 1)
        + _ce([None, 1.0, 1.0], 2)  # column 0 holds item 10 = row 2's own item
    ) / 3
    assert loss.item() == pytest.approx(want, rel=1e-6)


def test_softmax_weight_scales_the_softmax_loss():
    full = _task(logq=False).loss(USER, ITEM, ITEM_IDS).item()
    quarter = _task(logq=False, softmax_weight=0.25).loss(USER, ITEM, ITEM_IDS).item()
    assert quarter == pytest.approx(0.25 * full, rel=1e-6)
    pointwise = _task(logq=False, softmax_weight=0.0, impression_weight=1.0)
    assert pointwise.loss(USER, ITEM, ITEM_IDS).item() == 0.0


def test_no_masking_keeps_duplicates_as_negatives():
    loss = _task(logq=False, mask_accidental_hits=False).loss(USER, ITEM, ITEM_IDS)
    want = (_ce([1.0, 0.0, 0.5], 0) + _ce([0.0, 1.0, 0.5], 1) + _ce([1.0, 1.0, 1.0], 2)) / 3
    assert loss.item() == pytest.approx(want, rel=1e-6)


def test_in_batch_logq_subtracts_log_expected_count():
    # No uniform draws: the correction of item j is log(B p_j) = log(3 p_j).
    loss = _task(logq=True).loss(USER, ITEM, ITEM_IDS)
    c10, c11 = math.log(3 * 0.6), math.log(3 * 0.3)
    want = (
        _ce([1.0 - c10, 0.0 - c11, None], 0)
        + _ce([0.0 - c10, 1.0 - c11, 0.5 - c10], 1)
        + _ce([None, 1.0 - c11, 1.0 - c10], 2)
    ) / 3
    assert loss.item() == pytest.approx(want, rel=1e-6)


@pytest.mark.parametrize("logq", [False, True])
def test_mixed_negatives_with_temperature(logq):
    # temperature 0.5 doubles every dot product. Expected counts under the mixed
    # proposal (B = 3 in-batch draws from p, M = 2 uniform draws over 20 items):
    # item 10: 3 * .6 + 2 / 20 = 1.9; item 11: 1.0; item 12: 3 * .1 + .1 = 0.4.
    task = _task(logq=logq, num_sampled=2)
    task.log_inverse_temperature.fill_(math.log(2.0))
    loss = task.loss(USER, ITEM, ITEM_IDS, SAMPLED, SAMPLED_IDS)
    c = (
        {10: math.log(1.9), 11: math.log(1.0), 12: math.log(0.4)}
        if logq
        else dict.fromkeys((10, 11, 12), 0.0)
    )
    cols = [10, 11, 10, 11, 12]
    dots = [[1.0, 0.0, 0.5, 2.0, 0.0], [0.0, 1.0, 0.5, 0.0, 0.0], [1.0, 1.0, 1.0, 2.0, 0.0]]
    masked = [{2}, {3}, {0}]  # same item as the row's positive (own column excepted)
    want = 0.0
    for row in range(3):
        z = [None if j in masked[row] else 2.0 * dots[row][j] - c[cols[j]] for j in range(5)]
        want += _ce(z, row)
    assert loss.item() == pytest.approx(want / 3, rel=1e-6)


def test_hard_negatives_only_for_the_same_user_and_uncorrected():
    hard = torch.tensor([[0.0, 2.0], [1.0, 0.0]])
    hard_ids = torch.tensor([13, 10])
    same_user = torch.tensor([[True, True], [True, False], [False, False]])
    loss = _task(logq=True, hard_negatives=True).loss(
        USER, ITEM, ITEM_IDS, hard=hard, hard_ids=hard_ids, hard_mask=same_user
    )
    c10, c11 = math.log(1.8), math.log(0.9)
    want = (
        # row 0: hard 13 (dot 0) is a negative; hard 10 is its own item: masked
        _ce([1.0 - c10, 0.0 - c11, None, 0.0], 0)
        # row 1: hard 13 (dot 2) of the same user; hard 10 belongs to another user
        + _ce([0.0 - c10, 1.0 - c11, 0.5 - c10, 2.0], 1)
        + _ce([None, 1.0 - c11, 1.0 - c10], 2)
    ) / 3
    assert loss.item() == pytest.approx(want, rel=1e-6)


def test_exposure_adjustment_also_lifts_hard_negatives():
    # the same prior beta log x_j on every candidate column, hard ones included
    task = _task(logq=False, exposure_adjustment=0.5, hard_negatives=True)
    exposures = torch.zeros(NUM_ITEMS, dtype=torch.int64)
    exposures[10], exposures[11], exposures[13] = 30, 10, 2  # 17 others: half each
    task.set_item_counts(torch.ones(NUM_ITEMS, dtype=torch.int64), exposures)
    total = 30 + 10 + 2 + 17 * 0.5
    a10, a11, a13 = (0.5 * math.log(x / total) for x in (30, 10, 2))
    hard = torch.tensor([[0.0, 2.0]])
    same_user = torch.tensor([[True], [True], [False]])
    loss = task.loss(
        USER, ITEM, ITEM_IDS, hard=hard, hard_ids=torch.tensor([13]), hard_mask=same_user
    )
    want = (
        _ce([1.0 + a10, 0.0 + a11, None, 0.0 + a13], 0)
        + _ce([0.0 + a10, 1.0 + a11, 0.5 + a10, 2.0 + a13], 1)
        + _ce([None, 1.0 + a11, 1.0 + a10], 2)
    ) / 3
    assert loss.item() == pytest.approx(want, rel=1e-6)


def test_exposure_adjustment_adds_beta_log_exposure_share():
    task = _task(logq=False, exposure_adjustment=0.5)
    exposures = torch.zeros(NUM_ITEMS, dtype=torch.int64)
    exposures[10], exposures[11] = 30, 10  # the 18 others get half an exposure each
    task.set_item_counts(torch.ones(NUM_ITEMS, dtype=torch.int64), exposures)
    total = 30 + 10 + 18 * 0.5
    a10, a11 = 0.5 * math.log(30 / total), 0.5 * math.log(10 / total)
    loss = task.loss(USER, ITEM, ITEM_IDS)
    want = (
        _ce([1.0 + a10, 0.0 + a11, None], 0)
        + _ce([0.0 + a10, 1.0 + a11, 0.5 + a10], 1)
        + _ce([None, 1.0 + a11, 1.0 + a10], 2)
    ) / 3
    assert loss.item() == pytest.approx(want, rel=1e-6)


def test_streaming_frequency_by_hand():
    est = StreamingFrequency(num_items=5, alpha=0.5)
    for ids in ([1, 2], [1, 1], [1, 2], [3]):
        est.update(torch.tensor(ids))
    # item 1: first at step 1 -> 1; step 2 holds it twice (gap 1 / 2 copies):
    #   .5 * 1 + .5 * .5 = .75; step 3: .5 * .75 + .5 * 1 = .875
    # item 2: first at step 1 -> 1; next at step 3: .5 * 1 + .5 * 2 = 1.5
    # item 3: first at step 4 -> 4; items 0, 4 never seen -> expected count 0
    got = est.expected_count(torch.arange(5))
    want = torch.tensor([0.0, 1 / 0.875, 1 / 1.5, 0.25, 0.0], dtype=got.dtype)
    assert torch.allclose(got, want)
    assert int(est.step) == 4


def test_streaming_frequency_counts_copies_within_a_batch():
    # item 7 three times in every batch, item 8 once every other batch: the
    # estimates approach the corpus estimate's expected counts B p, 3 and 0.5
    est = StreamingFrequency(num_items=10, alpha=0.2)
    for step in range(200):
        est.update(torch.tensor([7, 7, 7] + ([8] if step % 2 else [])))
    got = est.expected_count(torch.tensor([7, 8]))
    assert got[0].item() == pytest.approx(3.0, rel=1e-9)
    assert got[1].item() == pytest.approx(0.5, rel=1e-6)
    # the first time seen with copies: first step 1 with 2 copies -> delta 1 / 2
    first = StreamingFrequency(num_items=3, alpha=0.5)
    first.update(torch.tensor([2, 2]))
    assert first.expected_count(torch.tensor([2])).item() == pytest.approx(2.0)


def test_streaming_logq_uses_the_estimate():
    task = RetrievalTask(temperature=1.0, logq=True, logq_source="streaming", num_items=NUM_ITEMS)
    task.observe(torch.tensor([10, 11]))  # step 1
    task.observe(torch.tensor([10]))  # step 2: item 10 every step, item 11 once in 2
    task.frequency.delta[11] = 2.0  # as if seen at steps 1 and 3 with alpha = 1
    loss = task.loss(USER[:2], ITEM[:2], torch.tensor([10, 11]))
    c10, c11 = math.log(1.0), math.log(0.5)
    want = (_ce([1.0 - c10, 0.0 - c11], 0) + _ce([0.0 - c10, 1.0 - c11], 1)) / 2
    assert loss.item() == pytest.approx(want, rel=1e-6)


def test_learned_temperature_is_trained_and_clamped():
    task = _task(logq=False, learn_temperature=True, min_temperature=0.5)
    params = dict(task.named_parameters())
    assert "log_inverse_temperature" in params
    task.loss(USER, ITEM, ITEM_IDS).backward()
    assert params["log_inverse_temperature"].grad is not None
    with torch.no_grad():
        task.log_inverse_temperature.fill_(5.0)
    assert task.inverse_temperature().item() == pytest.approx(2.0)
    fixed = _task(logq=False)
    assert "log_inverse_temperature" not in dict(fixed.named_parameters())
    # a fixed temperature is used as given, outside the learned range too
    for t in (2.0, 0.005):
        task = RetrievalTask(temperature=t, min_temperature=0.01)
        assert task.inverse_temperature().item() == pytest.approx(1 / t, rel=1e-6)
    with pytest.raises(ValueError, match="learned temperature"):
        RetrievalTask(temperature=2.0, learn_temperature=True)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="logq_source"):
        RetrievalTask(logq_source="hash")
    with pytest.raises(ValueError, match="num_sampled"):
        RetrievalTask(num_sampled=-1)
    with pytest.raises(ValueError, match="not both 0"):
        RetrievalTask(softmax_weight=0.0)


def test_impression_loss_is_weighted_bce_of_the_scaled_dot_product():
    task = _task(logq=False, impression_weight=2.0)
    with torch.no_grad():
        task.impression_bias.fill_(-1.0)
        task.log_inverse_temperature.fill_(math.log(3.0))
    item = ITEM[[1, 0, 2]]  # dots with USER: 0, 0, 1
    labels = {"click": torch.tensor([1.0, 0.0, 1.0])}
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    want = 2.0 * (-math.log(sig(-1.0)) - math.log(1 - sig(-1.0)) - math.log(sig(3.0 - 1.0))) / 3
    assert task.impression_loss(USER, item, labels).item() == pytest.approx(want, rel=1e-6)
    assert task.needs_all_rows
    assert _task(logq=False).impression_loss(USER, item, labels).item() == 0.0
    assert not _task(logq=False).needs_all_rows


def _exposure_task(logq: bool) -> RetrievalTask:
    task = RetrievalTask(
        temperature=1.0,
        logq=logq,
        num_items=NUM_ITEMS,
        exposure_weight=2.0,
        embedding_dim=2,
        impression_share=0.5,
    )
    positives = torch.zeros(NUM_ITEMS, dtype=torch.int64)
    exposures = torch.zeros(NUM_ITEMS, dtype=torch.int64)
    positives[10], positives[11], positives[12] = 6, 3, 1
    exposures[10], exposures[11], exposures[12] = 10, 5, 3
    task.set_item_counts(positives, exposures)
    with torch.no_grad():
        task.exposure_matrix.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
        task.exposure_bias[10], task.exposure_bias[11] = 0.5, -0.5
    return task


def test_exposure_loss_by_hand():
    task = _exposure_task(logq=True)
    # loader rows per item: positives + 0.5 x the rest: 8 (item 10), 4 (11), 2 (12), and
    # the 17 others count 1 each: 31 in all; three rows: log(3 x 8/31), log(3 x 4/31)
    c10, c11 = math.log(24 / 31), math.log(12 / 31)
    # e = u M v + b:  row 0 [1.5, -.5, 1], row 1 [.5, 1.5, 1.5], row 2 [1.5, 1.5, 2]
    ce = [
        _ce([1.5 - c10, -0.5 - c11, None], 0),  # column 2 is item 10 again
        _ce([0.5 - c10, 1.5 - c11, 1.5 - c10], 1),
        _ce([None, 1.5 - c11, 2.0 - c10], 2),
    ]
    positive = torch.tensor([True, False, True])  # row 1 was not clicked: weight 1 / 0.5
    want = 2.0 * (ce[0] + 2 * ce[1] + ce[2]) / 4
    user = USER.clone().requires_grad_()
    got = task.exposure_loss(user, ITEM, ITEM_IDS, positive)
    assert got.item() == pytest.approx(want, rel=1e-6)
    got.backward()  # a probe over the click embeddings: it trains M and b, not the towers
    assert user.grad is None
    assert task.exposure_matrix.grad.abs().sum() > 0 and task.exposure_bias.grad[10] != 0
    assert task.needs_all_rows
    assert _task(logq=False).exposure_loss(USER, ITEM, ITEM_IDS, positive).item() == 0.0
    # without logQ the same logits, uncorrected
    plain = [_ce([1.5, -0.5, None], 0), _ce([0.5, 1.5, 1.5], 1), _ce([None, 1.5, 2.0], 2)]
    got = _exposure_task(logq=False).exposure_loss(USER, ITEM, ITEM_IDS, positive)
    assert got.item() == pytest.approx(2.0 * (plain[0] + 2 * plain[1] + plain[2]) / 4, rel=1e-6)


def test_click_softmax_adds_the_exposure_score_without_training_it():
    task = _exposure_task(logq=False)
    user = USER.clone().requires_grad_()
    loss = task.loss(user, ITEM, ITEM_IDS)
    # u . v + e(u, j), accidental hits masked as in the plain softmax
    want = (
        _ce([1.0 + 1.5, 0.0 - 0.5, None], 0)
        + _ce([0.0 + 0.5, 1.0 + 1.5, 0.5 + 1.5], 1)
        + _ce([None, 1.0 + 1.5, 1.0 + 2.0], 2)
    ) / 3
    assert loss.item() == pytest.approx(want, rel=1e-6)
    loss.backward()
    assert user.grad is not None and user.grad.abs().sum() > 0
    assert task.exposure_matrix.grad is None and task.exposure_bias.grad is None
    with pytest.raises(ValueError, match="embedding_dim"):
        RetrievalTask(exposure_weight=1.0)
    with pytest.raises(ValueError, match="exposure_adjustment=0"):
        RetrievalTask(exposure_weight=1.0, embedding_dim=2, exposure_adjustment=0.75)


def test_unavailable_candidates_are_masked_beside_accidental_hits():
    # Row 0 cannot have been shown sampled item 11 (column 3); row 1 neither in-batch
    # item 10 (column 0) nor sampled item 12 (column 4). No logQ, temperature 1.
    unavailable = torch.zeros(3, 5, dtype=torch.bool)
    unavailable[0, 3] = unavailable[1, 0] = unavailable[1, 4] = True
    task = _task(logq=False, num_sampled=2, mask_unavailable=True)
    task.log_inverse_temperature.fill_(0.0)
    loss = task.loss(USER, ITEM, ITEM_IDS, SAMPLED, SAMPLED_IDS, unavailable=unavailable)
    want = (
        _ce([1.0, 0.0, None, None, 0.0], 0)  # col 2: accidental hit; col 3: unavailable
        + _ce([None, 1.0, 0.5, None, None], 1)  # col 3: accidental hit (item 11)
        + _ce([None, 1.0, 1.0, 2.0, 0.0], 2)
    ) / 3
    assert loss.item() == pytest.approx(want, rel=1e-6)
    own = torch.zeros(3, 5, dtype=torch.bool)
    own[1, 1] = True  # a row's own positive cannot be unavailable
    with pytest.raises(ValueError, match="batch row 1: its own item 11 is unavailable"):
        task.loss(USER, ITEM, ITEM_IDS, SAMPLED, SAMPLED_IDS, unavailable=own)
