"""The synthetic world as a retrieval :class:`~ranking.metrics.retrieval.Reference`.

A synthetic dataset directory holds its latent world (``world.npz``), so the
evaluation can ask for the best possible ranking: every corpus item ordered by
the user's true click probability at position 0
(:func:`ranking.data.synthetic.oracle_probabilities`), and for the interests the
logging policy never targets (the world's *latent* interests: a user clicks
them when shown, but has not expressed them) the categories to discover.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ranking.metrics.retrieval import OracleLists, Reference, csr_chunk

#: (user, item) pairs per oracle call: ~1M pairs is ~100 MB of temporaries.
PAIRS_PER_CHUNK = 1 << 20


def world_reference(dataset_dir: str | Path) -> Reference | None:
    """The world's reference for ``dataset_dir``, or None if it has no world."""
    from ranking.data.synthetic import load_world
    from ranking.data.synthetic.world import POLICIES, WORLD_JSON

    root = Path(dataset_dir)
    if not (root / WORLD_JSON).exists():
        return None
    world = load_world(root)

    def slice_exposure(column: str, value: float) -> np.ndarray | None:
        random = column == "policy" and value == POLICIES.index("random")
        return random_slice_exposure(world) if random else None

    return Reference(
        rank=lambda users, corpus_ids, k, lists, exposure, exclude: oracle_lists(
            world, users, corpus_ids, k, lists, exposure, exclude
        ),
        item_group=world.item_l2(),
        user_groups=lambda users: latent_interests(world, users),
        slice_exposure=slice_exposure,
    )


def random_slice_exposure(world) -> np.ndarray:  # noqa: ANN001
    """float64 [num_items]: each item's probability of filling one random-policy
    slot, averaged over the test days (uniform over the items available that day,
    :func:`ranking.data.synthetic.world.random_propensity` at position 0)."""
    cfg = world.config
    days = range(cfg.n_days - cfg.test_days, cfg.n_days)
    return sum(world.available(day) / world.n_available(day) for day in days) / len(days)


def oracle_lists(
    world,  # noqa: ANN001
    users: np.ndarray,
    corpus_ids: np.ndarray,
    k: int,
    lists: np.ndarray | None = None,
    exposure: np.ndarray | None = None,
    exclude: tuple[np.ndarray, np.ndarray] | None = None,
) -> OracleLists:
    """The k corpus items with the highest true P(click) at position 0 for each
    user, best first (ties by corpus order), and the share of the user's click
    probability mass over the corpus that they and ``lists`` (item ids [U, k'],
    e.g. a model's top k) hold; with ``exposure`` (float [num_items] by item id)
    the same shares again with each probability weighted by the item's exposure.
    ``exclude`` (CSR: indptr [U + 1], corpus rows) names each user's items left
    out of the ranking: they get probability 0, so neither rank nor count.

    Users are scored in chunks of about :data:`PAIRS_PER_CHUNK` pairs (about 5 s
    per 20M pairs on one core).
    """
    from ranking.data.synthetic import oracle_probabilities

    users = np.asarray(users, dtype=np.int64)
    corpus_ids = np.asarray(corpus_ids, dtype=np.int64)
    k = min(k, len(corpus_ids))
    step = max(1, PAIRS_PER_CHUNK // max(len(corpus_ids), 1))
    row_of = np.full(int(corpus_ids.max(initial=0)) + 1, -1, dtype=np.int64)
    row_of[corpus_ids] = np.arange(len(corpus_ids))
    weight = None if exposure is None else np.asarray(exposure, dtype=np.float64)[corpus_ids]
    best, mass, best_mass, exposed, best_exposed = [], [], [], [], []
    for start in range(0, len(users), step):
        u = users[start : start + step]
        p, _ = oracle_probabilities(world, u[:, None], corpus_ids[None, :], 0)
        if exclude is not None:
            p[csr_chunk(exclude, start, start + len(u))] = 0.0
        part = np.argpartition(-p, k - 1, axis=1)[:, :k]
        # order the k best by probability (stable on corpus position for ties)
        order = np.lexsort((part, -np.take_along_axis(p, part, axis=1)), axis=1)
        top = np.take_along_axis(part, order, axis=1)
        total = p.sum(axis=1)
        best.append(corpus_ids[top])
        best_mass.append(np.take_along_axis(p, top, axis=1).sum(axis=1) / total)
        rows = None if lists is None else row_of[lists[start : start + step]]
        if rows is not None:
            mass.append(_held(p, rows).sum(axis=1) / total)
        if weight is not None:
            pw = p * weight[None, :]
            total_w = pw.sum(axis=1)
            best_exposed.append(np.take_along_axis(pw, top, axis=1).sum(axis=1) / total_w)
            if rows is not None:
                exposed.append(_held(pw, rows).sum(axis=1) / total_w)
    if not len(users):
        empty = np.zeros(0)
        with_exposure = None if weight is None else empty
        return OracleLists(
            np.zeros((0, k), dtype=np.int64), empty, empty, with_exposure, with_exposure
        )
    missing = np.full(len(users), np.nan)
    return OracleLists(
        best=np.concatenate(best),
        mass=np.concatenate(mass) if mass else missing,
        best_mass=np.concatenate(best_mass),
        exposed_mass=None if weight is None else (np.concatenate(exposed) if exposed else missing),
        best_exposed_mass=None if weight is None else np.concatenate(best_exposed),
    )


def _held(p: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """[U, k'] values of ``p`` [U, N] at corpus rows ``rows`` (0 where a row is -1:
    an item not in the corpus)."""
    return np.where(rows >= 0, np.take_along_axis(p, rows.clip(min=0), axis=1), 0.0)


def latent_interests(world, users: np.ndarray) -> np.ndarray:  # noqa: ANN001
    """bool [U, C]: the L2 categories that are latent (not expressed) interests of each user."""
    users = np.asarray(users, dtype=np.int64)
    cats = world.user_interest_cat[users]
    latent = (cats >= 0) & ~world.user_interest_expressed[users]
    out = np.zeros((len(users), world.config.n_cat_l2), dtype=bool)
    rows = np.repeat(np.arange(len(users)), cats.shape[1]).reshape(cats.shape)
    out[rows[latent], cats[latent]] = True
    return out
