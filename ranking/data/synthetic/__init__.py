"""Synthetic "interest e-commerce" world: the package's embedded default dataset.

A latent world of users (with expressed and latent interests over a category
tree), products, creators and shoppable content items; a day-by-day log of
exposures from a popularity- and interest-biased logging policy plus a uniform
random slice, with clicks and purchases drawn from known probabilities; and
behaviour sequences built strictly from earlier events.

Example::

    from ranking.data.synthetic import SyntheticConfig, generate, load_world, oracle_probabilities
    schema = generate("data/synthetic", SyntheticConfig(seed=1))
    world = load_world("data/synthetic")
    p_click, p_purchase = oracle_probabilities(world, user_ids, item_ids, position=0)
"""

from ranking.data.synthetic.config import SyntheticConfig, benchmark_config
from ranking.data.synthetic.generate import generate
from ranking.data.synthetic.world import (
    World,
    load_world,
    logging_propensity,
    oracle_probabilities,
    random_propensity,
)

__all__ = [
    "SyntheticConfig",
    "World",
    "benchmark_config",
    "generate",
    "load_world",
    "logging_propensity",
    "oracle_probabilities",
    "random_propensity",
]
