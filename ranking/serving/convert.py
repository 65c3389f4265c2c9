"""From the training world (torchrec models, Batch) to plain-torch predictors
and flat input tensors. This is the one place that reads torchrec state for
export: a sharded model gathers its tables here too."""

from __future__ import annotations

import copy

import torch
from torchrec import EmbeddingBagCollection

from ranking.data.batch import Batch
from ranking.models.dlrm import DLRM
from ranking.models.two_tower import TwoTower
from ranking.modules.padded_bags import PaddedEmbeddingBags
from ranking.schema import Schema, Side
from ranking.serving.predictors import RankerPredictor, TowerPredictor

DENSE_KEYS = {Side.USER: "dense_user", Side.ITEM: "dense_item", Side.CONTEXT: "dense_context"}


def gather_tables(ebc: EmbeddingBagCollection) -> dict[str, torch.Tensor]:
    """Full weight of every table, keyed by table name (on CPU)."""
    state = ebc.state_dict()
    return {
        cfg.name: state[f"embedding_bags.{cfg.name}.weight"].detach().cpu()
        for cfg in ebc.embedding_bag_configs()
    }


def padded_bags(
    schema: Schema, ebc: EmbeddingBagCollection, features: list[str]
) -> PaddedEmbeddingBags:
    tables = gather_tables(ebc)
    specs = []
    for name in features:
        f = schema.feature(name)
        specs.append((name, f.table, f.is_list, schema.tables[f.table].pooling))
    used = {t for _, t, _, _ in specs}
    return PaddedEmbeddingBags({k: v for k, v in tables.items() if k in used}, specs)


def user_tower_predictor(schema: Schema, model: TwoTower) -> TowerPredictor:
    """The user tower; attention-pooled sequences (``model.attentive``) look up the
    same table weights and pool with a copy of the trained pooler."""
    head = copy.deepcopy(model.user_tower).cpu().eval()
    pooled = [f for f in head.features if f not in model.attentive]
    bags = padded_bags(schema, model.sparse, pooled)
    if model.attentive:
        from ranking.modules.sequence_pooling import AttentiveBags, MergedBags

        tables = gather_tables(model.sparse)
        specs = [
            (name, schema.feature(name).table, copy.deepcopy(model.poolers[name]).cpu().eval())
            for name in head.features
            if name in model.attentive
        ]
        used = {t for _, t, _ in specs}
        attentive = AttentiveBags({k: v for k, v in tables.items() if k in used}, specs)
        bags = MergedBags(bags, attentive)
    return TowerPredictor(bags, head, "dense_user").eval()


def item_tower_predictor(schema: Schema, model: TwoTower) -> TowerPredictor:
    head = copy.deepcopy(model.item_tower).cpu().eval()
    return TowerPredictor(
        padded_bags(schema, model.sparse, head.features), head, "dense_item"
    ).eval()


def ranker_predictor(schema: Schema, model: DLRM) -> RankerPredictor:
    """The ranker; sequences under target attention are looked up unpooled in
    the same copied weights as the pooled features."""
    from ranking.modules.padded_sequence import PaddedSequences

    head = copy.deepcopy(model.head).cpu().eval()
    bags = padded_bags(schema, model.sparse, head.features)
    sequences = PaddedSequences.sharing(bags, list(dict.fromkeys(head.sequences)))
    return RankerPredictor(bags, head, sequences).eval()


def flat_inputs(schema: Schema, batch: Batch, sides: tuple[Side, ...]) -> dict[str, torch.Tensor]:
    """The predictors' input dict for ``batch``'s features on ``sides``.

    Lists are padded with -1 to the feature's ``max_len``.
    """
    out: dict[str, torch.Tensor] = {}
    for f in schema.sparse(*sides):
        jt = batch.sparse[f.name]
        if f.is_list:
            out[f.name] = jt.to_padded_dense(desired_length=f.max_len, padding_value=-1).long()
        else:
            out[f.name] = jt.values().long()
    for side in sides:
        out[DENSE_KEYS[side]] = batch.dense[side].float()
    return out
