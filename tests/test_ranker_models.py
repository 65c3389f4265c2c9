"""The ranker's configurable parts: each interaction / attention / task setup is one
config override, trains a few steps with the fused tables, and its scripted
plain-torch serving predictor matches the eager model."""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf

from ranking.data.datamodule import RecDataModule
from ranking.models.dlrm import attention_pairs
from ranking.modules.fused_embedding import position_key, with_positions
from ranking.modules.mixture import MixtureOfExperts
from ranking.modules.sequence_match import SequenceMatch
from ranking.modules.task_heads import TaskHeads, logit_of_product
from ranking.pipeline import build_ranking
from ranking.schema import Side
from ranking.serving.convert import flat_inputs, ranker_predictor
from tests.conftest import compose_train, tiny_overrides

VARIANTS = {
    "default": [],
    "dot": ["ranking.model.interaction=dot"],
    "dcn": ["ranking.model.interaction=dcn"],
    "dcn_low_rank": ["ranking.model.interaction=dcn", "ranking.model.dcn.rank=8"],
    "attention": ["ranking.model.attention=true"],
    "attention_dot": ["ranking.model.attention=true", "ranking.model.interaction=dot"],
    "match_off": ["ranking.model.match=false"],
    "single_task": ["ranking.model.tasks=[click]"],
    "mmoe": ["ranking.model.experts=3"],
    "ple": [
        "ranking.model.experts=2",
        "ranking.model.task_experts=1",
        "ranking.model.expert_levels=2",
    ],
    "plain_tables": ["optimizer@ranking.optimizer=adam"],
}


@pytest.fixture(scope="module")
def tiny_dm(tiny_dataset) -> RecDataModule:
    dm = RecDataModule(tiny_dataset, batch_size=128, eval_batch_size=256, validate=False)
    dm.setup()
    return dm


def _train_steps(module, batches) -> None:
    optimizer = module.optimizer_factory(module.dense_parameters())
    module.train()
    for batch in batches:
        module.on_train_batch_start(batch, 0)  # hands the fused tables their rate
        loss, _ = module.task.loss(module.model(batch), batch.labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_variant_trains_and_scripted_predictor_matches(variant, tiny_dataset, tiny_dm):
    torch.manual_seed(0)
    cfg = compose_train([*tiny_overrides(tiny_dataset), *VARIANTS[variant]])
    module = build_ranking(cfg, tiny_dm.schema)
    model = module.model
    assert model.fused == (variant != "plain_tables")
    want_interaction = {"dcn": "CrossInteraction", "dot": "DotInteraction"}[
        cfg.ranking.model.interaction
    ]
    assert type(model.head.interaction).__name__ == want_interaction
    assert bool(model.positions) == bool(cfg.ranking.model.attention)
    assert len(model.head.matchers) == (3 if cfg.ranking.model.match else 0)
    assert isinstance(model.head.over_arch, MixtureOfExperts) == (variant in ("mmoe", "ple"))

    batches = [b for _, b in zip(range(3), tiny_dm.train_dataloader(), strict=False)]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _train_steps(module, batches)
    after = model.state_dict()
    table = "sparse.embedding_bags.item_id.weight"
    touched = torch.cat([b.sparse["item_id"].values() for b in batches]).unique()
    moved = (after[table] - before[table]).abs().sum(dim=1) > 0
    assert moved[touched].all()  # the fused (or dense) update reached the looked-up rows
    if model.fused:  # ... and only those, without a dense gradient on the tables
        assert all(p.grad is None for p in model.sparse.parameters())
        seen = set(touched.tolist())
        for b in batches:
            seen |= set(b.sparse["hist_items"].values().tolist())
        untouched = torch.ones_like(moved)
        untouched[list(seen)] = False
        assert not moved[untouched].any()

    model.eval()
    batch = next(iter(tiny_dm.test_dataloader()))
    scripted = torch.jit.script(ranker_predictor(tiny_dm.schema, model))
    inputs = flat_inputs(tiny_dm.schema, batch, (Side.USER, Side.ITEM, Side.CONTEXT))
    with torch.no_grad():
        want = torch.sigmoid(model(batch))
        got = scripted(inputs)
    assert got.shape == (len(batch), len(cfg.ranking.model.tasks))
    assert (got - want).abs().max().item() < 1e-5


def test_attention_pairs_come_from_shared_tables(tiny_dm):
    pairs = attention_pairs(tiny_dm.schema)
    assert ("hist_items", "item_id") in pairs
    for seq, cand in pairs:
        assert tiny_dm.schema.feature(seq).table == tiny_dm.schema.feature(cand).table
    assert attention_pairs(tiny_dm.schema, ["hist_items"]) == [("hist_items", "item_id")]
    with pytest.raises(ValueError, match="share no table"):
        attention_pairs(tiny_dm.schema, ["user_id"])


def test_positional_keys_hold_each_sequence_element(tiny_dm):
    batch = next(iter(tiny_dm.test_dataloader()))
    length = tiny_dm.schema.feature("hist_items").max_len
    kjt, padded = with_positions(batch.sparse, {"hist_items": length})
    ids = padded["hist_items"]
    assert ids.shape == (len(batch), length)
    rows = [
        t.tolist()
        for t in torch.split(
            batch.sparse["hist_items"].values(), batch.sparse["hist_items"].lengths().tolist()
        )
    ]
    for r, row in enumerate(rows[:20]):
        assert ids[r, : len(row)].tolist() == row and (ids[r, len(row) :] == -1).all()
    for j in (0, length - 1):
        jt = kjt[position_key("hist_items", j)]
        assert jt.lengths().tolist() == (ids[:, j] >= 0).int().tolist()
        assert jt.values().tolist() == ids[:, j][ids[:, j] >= 0].tolist()


def test_sequence_match_counts_by_hand():
    cand = torch.tensor([3, 4, 5])
    seq = torch.tensor([[3, 1, 3, -1], [-1, -1, -1, -1], [5, -1, -1, -1]])
    got = SequenceMatch()(cand, seq)
    want = torch.tensor([[math.log(3), 2 / 3], [0.0, 0.0], [math.log(2), 1.0]])
    assert torch.allclose(got, want)


def test_esmm_logit_is_logit_of_product():
    a = torch.tensor([-30.0, -3.0, 0.0, 2.0, 25.0])
    b = torch.tensor([-2.0, 30.0, 0.5, -25.0, 4.0])
    joint = torch.sigmoid(logit_of_product(a, b))
    assert torch.allclose(joint, torch.sigmoid(a) * torch.sigmoid(b), rtol=1e-5, atol=1e-12)
    heads = TaskHeads(4, ["click", "purchase"], [], after={"purchase": "click"})
    x = torch.randn(6, 4)
    own = heads.own_logits(x)
    out = torch.sigmoid(heads(x))
    assert torch.allclose(out[:, 0], torch.sigmoid(own[:, 0]))
    assert torch.allclose(out[:, 1], torch.sigmoid(own[:, 0]) * torch.sigmoid(own[:, 1]))
    with pytest.raises(ValueError, match="must come before"):
        TaskHeads(4, ["purchase", "click"], [], after={"purchase": "click"})


def test_esmm_gradient_reaches_both_towers_from_joint_labels():
    heads = TaskHeads(3, ["click", "purchase"], [], after={"purchase": "click"})
    x = torch.randn(8, 3)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(heads(x)[:, 1], torch.ones(8))
    loss.backward()
    assert all(t.net[0].weight.grad.abs().sum() > 0 for t in heads.towers)
    # -log(pCTR * pCVR) for a positive
    own = heads.own_logits(x).detach()
    want = -(torch.sigmoid(own[:, 0]) * torch.sigmoid(own[:, 1])).log().mean()
    assert math.isclose(loss.item(), want.item(), rel_tol=1e-5)


def test_default_config_is_multi_task_esmm(tiny_dataset):
    cfg = compose_train(tiny_overrides(tiny_dataset))
    model_cfg = OmegaConf.to_container(cfg.ranking.model, resolve=True)
    assert model_cfg["tasks"] == ["click", "purchase"]
    assert model_cfg["esmm"] == {"purchase": "click"}
    assert model_cfg["sparse_optimizer"]["type"] == "rowwise_adagrad"


def test_mixture_of_experts_by_hand():
    """MMoE: two one-unit experts relu(x0) and relu(x1); gate logits for task 0 are
    (x0, 0), for task 1 (0, ln 3) whatever x: h_t = sum_e softmax(gate_t)_e expert_e."""
    moe = MixtureOfExperts(2, [1], experts=2, tasks=2)
    (layer,) = moe.layers
    with torch.no_grad():
        for e, expert in enumerate(layer.shared):
            expert.net[0].weight.copy_(torch.eye(2)[e : e + 1])
            expert.net[0].bias.zero_()
        layer.tasks[0].gate.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 0.0]]))
        layer.tasks[0].gate.bias.zero_()
        layer.tasks[1].gate.weight.zero_()
        layer.tasks[1].gate.bias.copy_(torch.tensor([0.0, math.log(3.0)]))
    x = torch.tensor([[2.0, 4.0], [-1.0, 3.0]])
    w0 = [math.exp(2) / (math.exp(2) + 1), math.exp(-1) / (math.exp(-1) + 1)]  # task 0, expert 0
    want = torch.tensor(
        [
            [[w0[0] * 2 + (1 - w0[0]) * 4], [0.25 * 2 + 0.75 * 4]],
            [[w0[1] * 0 + (1 - w0[1]) * 3], [0.25 * 0 + 0.75 * 3]],
        ]
    )
    got = moe(x)
    assert got.shape == (2, 2, 1)
    assert torch.allclose(got, want, atol=1e-6)
    assert len(layer.shared_gate) == 0 and not any(len(task.experts) for task in layer.tasks)


def test_ple_matches_a_loop_over_rows_and_experts():
    """PLE, 2 levels, S=2 shared and K=1 own expert per task, T=2: every output
    recomputed row by row from the parameters (softmax weights by hand)."""
    torch.manual_seed(0)
    ple = MixtureOfExperts(3, [4], experts=2, tasks=2, task_experts=1, levels=2).eval()
    x = torch.randn(5, 3)

    def mix(gate, v, experts_out):
        logits = [float(gate.weight[e] @ v + gate.bias[e]) for e in range(len(experts_out))]
        z = sum(math.exp(v_) for v_ in logits)
        return sum(math.exp(l_) / z * out for l_, out in zip(logits, experts_out, strict=True))

    with torch.no_grad():
        got = ple(x)
        for b in range(5):
            task_in, shared_in = [x[b], x[b]], x[b]
            for layer in ple.layers:
                common = [expert(shared_in) for expert in layer.shared]
                own = [[expert(task_in[t]) for expert in layer.tasks[t].experts] for t in range(2)]
                outs = [mix(layer.tasks[t].gate, task_in[t], own[t] + common) for t in range(2)]
                if len(layer.shared_gate):
                    shared_in = mix(layer.shared_gate[0], shared_in, own[0] + own[1] + common)
                task_in = outs
            for t in range(2):
                assert torch.allclose(got[b, t], task_in[t], atol=1e-5)
    assert [len(layer.shared_gate) for layer in ple.layers] == [1, 0]
    assert torch.jit.script(ple)(x).allclose(got, atol=1e-6)


@pytest.mark.parametrize("variant", ["mmoe", "ple"])
def test_mixture_heads_read_one_input_per_task_and_export(tiny_dataset, tiny_dm, variant):
    """With experts, tower t reads mixture t (a tower fed another task's mixture
    would give another logit), and the head goes through torch.export unchanged."""
    torch.manual_seed(0)
    cfg = compose_train([*tiny_overrides(tiny_dataset), *VARIANTS[variant]])
    model = build_ranking(cfg, tiny_dm.schema).model.eval()
    batch = next(iter(tiny_dm.test_dataloader()))
    inputs = model.head_inputs(batch)
    with torch.no_grad():
        mixed = model.head.hidden(*inputs)
        assert mixed.shape == (len(batch), 2, cfg.ranking.model.over_arch[-1])
        own = model.head.heads.own_logits(mixed)
        by_hand = torch.cat(
            [tower(mixed[:, t]) for t, tower in enumerate(model.head.heads.towers)], dim=1
        )
        assert torch.equal(own, by_hand)
        swapped = model.head.heads.towers[0](mixed[:, 1])
        assert not torch.allclose(swapped, own[:, :1])
        program = torch.export.export(model.head, tuple(inputs))
        assert torch.allclose(program.module()(*inputs), model.head(*inputs), atol=1e-6)
