"""Helpers shared by scripts/bench/retrieval_ceiling.py and retrieval_learner.py, and
the random slice's exposure (ranking/metrics/retrieval_oracle.py), against values
computed by hand and a brute-force loop over the world's days."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts" / "bench"))
from retrieval_ceiling import (  # noqa: E402
    category_shares,
    corpus_of_test_days,
    expected_recalls,
)

from ranking.data.synthetic import load_world  # noqa: E402
from ranking.metrics.retrieval_oracle import random_slice_exposure  # noqa: E402


def test_category_shares_by_hand():
    lists = pa.array([[9, 9], [1, 1, 2], [], [0]])[1:]  # a slice: offsets do not start at 0
    got = category_shares(lists, 3)
    want = np.array([[0, 2 / 3, 1 / 3], [0, 0, 0], [1, 0, 0]], dtype=np.float32)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_expected_recalls_by_hand():
    p = np.array([[0.1, 0.2, 0.3, 0.4], [0.5, 0.25, 0.25, 0.0]])
    top = np.array([[3, 0], [1, 2]])
    exposure = np.array([1.0, 1.0, 0.0, 0.5])
    full, exposed = expected_recalls(p, top, exposure)
    # row 0: (0.4 + 0.1) / 1.0; exposed: (0.2 + 0.1) / (0.1 + 0.2 + 0 + 0.2)
    # row 1: (0.25 + 0.25) / 1.0; exposed: 0.25 / (0.5 + 0.25)
    np.testing.assert_allclose(full, [0.5, 0.5])
    np.testing.assert_allclose(exposed, [0.6, 1 / 3])


def test_slice_exposure_is_the_random_policy_over_the_test_days(tiny_dataset):
    world = load_world(tiny_dataset)
    cfg = world.config
    got = random_slice_exposure(world)
    want = np.zeros(world.n_items)
    days = list(range(cfg.n_days - cfg.test_days, cfg.n_days))
    for day in days:
        for item in range(world.n_items):
            if world.available(day)[item]:
                want[item] += 1.0 / world.n_available(day) / len(days)
    np.testing.assert_allclose(got, want)
    assert got.sum() == pytest.approx(1.0)


def test_bench_corpus_is_the_evaluators_corpus_of_the_test_split(tiny_dataset):
    """The scripts' corpus (items available on a test day) is what the evaluator ranks:
    the items whose availability window meets the test rows' [earliest, latest] time."""
    import pyarrow.dataset as pads

    from ranking.data.availability import read_windows
    from ranking.schema import Schema

    world = load_world(tiny_dataset)
    ts = pads.dataset(tiny_dataset / "test").to_table(columns=["ts"])["ts"].to_numpy()
    evaluated = read_windows(Schema.load(tiny_dataset)).during(int(ts.min()), int(ts.max()))
    got = corpus_of_test_days(world)
    np.testing.assert_array_equal(got, evaluated[: world.n_items])
    assert 0 < (~got).sum() < world.n_items / 2  # some items ended or are not released yet


def test_group_shares_split_the_slice_expected_recall_by_hand():
    from retrieval_learner import group_shares

    p = np.array([[0.4, 0.2, 0.1, 0.3], [0.1, 0.1, 0.6, 0.2]])
    exposure = np.array([1.0, 2.0, 1.0, 0.0])  # item 3 never shown on the slice
    top = np.array([[0, 1], [2, 3]])
    cold = np.array([False, True, True, False])
    got = group_shares(p, top, exposure, [cold, ~cold])
    # user 0: p*e = [0.4, 0.4, 0.1, 0] (sum 0.9), top {0, 1}; user 1: [0.1, 0.2, 0.6, 0]
    np.testing.assert_allclose(got[0], [[0.4 / 0.9, 1], [0.6 / 0.9, 1]])
    np.testing.assert_allclose(got[1], [[0.4 / 0.9, 1], [0.0, 1]])
    _, slice_expected = expected_recalls(p, top, exposure)
    np.testing.assert_allclose(got[:, :, 0].sum(axis=0), slice_expected)
