"""Two-tower model: shared item table, attention and transformer pooling, plain-torch
export parity."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from ranking.data.datamodule import RecDataModule
from ranking.models.two_tower import TwoTower
from ranking.modules.fused_embedding import position_key
from ranking.modules.sequence_pooling import AttentionPooling, TransformerPooling
from ranking.schema import Kind, Side
from ranking.serving.convert import flat_inputs, user_tower_predictor
from tests.test_bundle import BLOCKER


@pytest.fixture(scope="module")
def dm(tiny_dataset) -> RecDataModule:
    dm = RecDataModule(tiny_dataset, batch_size=512, eval_batch_size=512, validate=False)
    dm.setup()
    return dm


def _attention_model(schema, heads: int = 2, pooling: str = "attention") -> TwoTower:
    torch.manual_seed(0)
    model = TwoTower(
        schema,
        hidden=[16],
        out_dim=8,
        sequence_pooling=pooling,
        attention_heads=heads,
        attention_hidden=8,
        transformer_dropout=0.1,  # off in eval: the exports must not see it
    )
    with torch.no_grad():  # random recency embeddings, so positions matter in the test
        for pooler in model.poolers.values():
            pooler.recency.weight.normal_()
    return model.eval()


@pytest.mark.parametrize("pooling", ["mean", "attention", "transformer"])
def test_item_id_table_is_shared_with_the_sequences(dm, pooling):
    schema = dm.schema
    model = TwoTower(schema, hidden=[8], out_dim=4, sequence_pooling=pooling)
    tables = {c.name: c.feature_names for c in model.sparse.embedding_bag_configs()}
    sequences = [f.name for f in schema.sparse(Side.USER) if f.table == schema.item_id]
    assert sequences, "the synthetic schema has an item-id sequence"
    assert list(tables).count(schema.item_id) == 1
    for name in sequences:
        if pooling == "mean":
            assert name in tables[schema.item_id]
        else:
            assert position_key(name, 0) in tables[schema.item_id]
            assert not any(name in feats for feats in tables.values())


def test_attention_pooling_masks_padding_and_pools_empty_to_zero():
    torch.manual_seed(1)
    pool = AttentionPooling(dim=4, max_len=3, heads=2, hidden=5)
    with torch.no_grad():
        pool.recency.weight.normal_()
    emb = torch.randn(2, 3, 4)
    valid = torch.tensor([[True, True, False], [False, False, False]])
    out = pool(emb, valid)
    assert out.shape == (2, 8)
    assert torch.equal(out[1], torch.zeros(8))
    changed = emb.clone()
    changed[0, 2] = 100.0  # a padded position cannot matter
    assert torch.allclose(pool(changed, valid), out)
    # one valid item: every head returns that item
    single = pool(emb, torch.tensor([[True, False, False], [True, False, False]]))
    assert torch.allclose(single[0], emb[0, 0].repeat(2))
    # two items: a convex combination per head, not the mean (weights are learned)
    heads = out[0].reshape(2, 4)
    for h in heads:
        w = torch.linalg.lstsq(emb[0, :2].T, h.unsqueeze(1)).solution.squeeze()
        assert w.sum().item() == pytest.approx(1.0, abs=1e-5) and (w > 0).all()


def _transformer_by_rows(pool: TransformerPooling, emb, valid) -> torch.Tensor:
    """Reference: each row alone, its valid items only (no padding, no mask), through
    the same blocks; the output is the last item's encoding."""
    rows = []
    for b in range(emb.shape[0]):
        n = int(valid[b].sum())
        if n == 0:
            rows.append(torch.zeros(emb.shape[2]))
            continue
        x = emb[b, :n] + pool.recency.weight[torch.arange(n - 1, -1, -1)]
        x = x.unsqueeze(0)
        for block in pool.blocks:
            x = block(x)
        rows.append(pool.norm(x)[0, n - 1])
    return torch.stack(rows)


def test_transformer_pooling_reads_the_ordered_sequence_of_each_row():
    torch.manual_seed(2)
    pool = TransformerPooling(dim=8, max_len=6, heads=2, layers=2, dropout=0.3).eval()
    emb = torch.randn(4, 6, 8)
    valid = torch.tensor(
        [[1, 1, 1, 0, 0, 0], [0, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1], [1, 0, 0, 0, 0, 0]]
    ).bool()
    with torch.no_grad():
        out = pool(emb, valid)
        assert out.shape == (4, 8)
        assert torch.allclose(out, _transformer_by_rows(pool, emb, valid), atol=1e-5)
        assert torch.equal(out[1], torch.zeros(8))  # an empty history pools to zeros
        changed = emb.clone()
        changed[0, 3:] = 100.0  # padded positions cannot matter
        assert torch.allclose(pool(changed, valid), out, atol=1e-6)
        # order matters (mean pooling could not tell): the same items reversed
        swapped = emb.clone()
        swapped[0, :3] = emb[0, [2, 1, 0]]
        assert (pool(swapped, valid)[0] - out[0]).abs().max() > 1e-3
    pool.train()  # dropout in training only
    assert (pool(emb, valid) - out).abs().max() > 1e-3
    with pytest.raises(ValueError, match="3 heads do not divide the width 8"):
        TransformerPooling(dim=8, max_len=6, heads=3)


@pytest.mark.parametrize("pooling", ["attention", "transformer"])
def test_pooled_features_are_user_sequences_only(dm, pooling):
    model = _attention_model(dm.schema, pooling=pooling)
    want = {f.name for f in dm.schema.sparse(Side.USER) if f.kind == Kind.SEQUENCE}
    assert set(model.attentive) == want
    kind = AttentionPooling if pooling == "attention" else TransformerPooling
    assert all(isinstance(p, kind) for p in model.poolers.values())


def test_transformer_towers_export_as_a_bundle(dm, tmp_path):
    """A retrieval bundle of a transformer-pooled model: its TorchScript and .pt2
    artifacts (dynamic batch and list length) reproduce their test vectors, and the
    .pt2 user tower equals the torchrec model at batch 1, 7 and 512."""
    from ranking.serving.bundle import Bundle
    from ranking.serving.export import export_bundle

    model = _attention_model(dm.schema, pooling="transformer")
    out = export_bundle(
        tmp_path / "bundle",
        dm.schema,
        dm.stats.to_dict(),
        model,
        None,
        None,
        corpus_batches=dm.corpus_dataloader(),
        user_batches=dm.users_dataloader(),
    )
    bundle = Bundle(out)
    for fmt in ("torchscript", "pt2"):
        assert sorted(bundle.check_test_vectors(fmt)) == ["item_tower", "retrieval", "user_tower"]
    exported = bundle.load("user_tower", "pt2")
    for size in (1, 7, 512):
        loader = RecDataModule(dm.path, batch_size=size, eval_batch_size=size, validate=False)
        loader.setup()
        batch = next(iter(loader.test_dataloader()))
        with torch.no_grad():
            want = model.encode_users(batch)
            got = exported(flat_inputs(dm.schema, batch, (Side.USER,)))
        diff = (got - want).abs().max().item()
        assert diff < 1e-5, f"batch {size}: max abs diff {diff}"


@pytest.mark.parametrize("pooling", ["attention", "transformer"])
def test_pooled_user_tower_export_matches_without_torchrec(dm, tmp_path, pooling):
    model = _attention_model(dm.schema, pooling=pooling)
    pred = user_tower_predictor(dm.schema, model)
    torch.jit.save(torch.jit.script(pred), str(tmp_path / "user_tower.pt"))
    cases, want = {}, {}
    for size in (1, 7, 512):
        loader = RecDataModule(dm.path, batch_size=size, eval_batch_size=size, validate=False)
        loader.setup()
        batch = next(iter(loader.test_dataloader()))
        assert len(batch) == size
        with torch.no_grad():
            want[size] = model.encode_users(batch)
        cases[size] = flat_inputs(dm.schema, batch, (Side.USER,))
    torch.save(cases, tmp_path / "cases.pt")
    code = BLOCKER + (
        "import torch\n"
        f"m = torch.jit.load({str(tmp_path / 'user_tower.pt')!r})\n"
        f"cases = torch.load({str(tmp_path / 'cases.pt')!r})\n"
        f"torch.save({{k: m(v) for k, v in cases.items()}}, {str(tmp_path / 'out.pt')!r})\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = torch.load(tmp_path / "out.pt")
    for size in (1, 7, 512):
        diff = (got[size] - want[size]).abs().max().item()
        assert diff < 1e-5, f"batch {size}: max abs diff {diff}"
    # the sequences are not empty, so the attention path was exercised
    assert (cases[512]["hist_items"] >= 0).any()


def test_id_dropout_zeroes_whole_id_rows_in_training_only(dm):
    schema = dm.schema
    torch.manual_seed(0)
    model = TwoTower(schema, hidden=[8], out_dim=4, id_dropout=0.5)
    assert model.id_features == [schema.user_id, schema.item_id]
    batch = next(iter(dm.train_dataloader()))
    model.eval()
    full = model.pooled(batch)
    model.train()
    dropped = model.pooled(batch)
    for name, emb in full.items():
        if name not in model.id_features:
            assert torch.equal(dropped[name], emb), name  # histories etc. untouched
            continue
        zero = (dropped[name] == 0).all(dim=1)
        # a kept row is the id's embedding exactly (no rescaling), a dropped one all zeros
        assert torch.equal(dropped[name][~zero], emb[~zero])
        share = zero.float().mean().item()
        assert 0.4 < share < 0.6, f"{name}: {share:.2f} of {len(batch)} rows dropped"
    with pytest.raises(ValueError, match="id_dropout"):
        TwoTower(schema, hidden=[8], out_dim=4, id_dropout=1.0)


def test_bias_terms_add_a_user_and_an_item_offset_to_the_dot_product(dm):
    schema = dm.schema
    torch.manual_seed(0)
    model = TwoTower(schema, hidden=[8], out_dim=4, bias_terms=True).eval()
    assert model.out_dim == 6
    batch = next(iter(dm.test_dataloader()))
    with torch.no_grad():
        user, item = model(batch)
        pooled = model.pooled(batch)
        # the towers' MLPs end in D + 1 units: the embedding, then the offset
        raw_u = model.user_tower.mlp(
            torch.cat([*(pooled[n] for n in model.user_tower.features), batch.dense[Side.USER]], 1)
        )
        raw_i = model.item_tower.mlp(
            torch.cat([*(pooled[n] for n in model.item_tower.features), batch.dense[Side.ITEM]], 1)
        )
    assert raw_u.shape[1] == raw_i.shape[1] == 5
    e_u = torch.nn.functional.normalize(raw_u[:, :4], dim=1)
    e_i = torch.nn.functional.normalize(raw_i[:, :4], dim=1)
    b_u, b_i = raw_u[:, 4], raw_i[:, 4]
    assert torch.allclose(user, torch.cat([e_u, torch.ones_like(b_u)[:, None], b_u[:, None]], 1))
    assert torch.allclose(item, torch.cat([e_i, b_i[:, None], torch.ones_like(b_i)[:, None]], 1))
    # every user against every item: cosine + b_i + b_u
    want = e_u @ e_i.T + b_i[None, :] + b_u[:, None]
    assert torch.allclose(user @ item.T, want, atol=1e-6)
    assert b_i.std() > 0  # offsets differ between items (not a constant column)


def test_bias_terms_user_tower_export_matches_without_torchrec(dm, tmp_path):
    torch.manual_seed(0)
    model = TwoTower(dm.schema, hidden=[8], out_dim=4, bias_terms=True).eval()
    pred = torch.jit.script(user_tower_predictor(dm.schema, model))
    batch = next(iter(dm.test_dataloader()))
    with torch.no_grad():
        want = model.encode_users(batch)
        got = pred(flat_inputs(dm.schema, batch, (Side.USER,)))
    assert got.shape == (len(batch), 6)
    assert (got - want).abs().max().item() < 1e-5


def test_fused_sgd_tables_take_exactly_one_sgd_step(dm):
    """The fused tables (sparse_optimizer) update each looked-up row inside the
    backward pass by -lr x its gradient: checked against plain tables' autograd."""
    schema = dm.schema
    torch.manual_seed(0)
    plain = TwoTower(schema, hidden=[8], out_dim=4)
    fused = TwoTower(schema, hidden=[8], out_dim=4, sparse_optimizer={"type": "sgd", "lr": 0.5})
    assert fused.fused and not plain.fused
    fused.load_state_dict(plain.state_dict())
    before = {k: v.clone() for k, v in plain.sparse.state_dict().items()}
    batch = next(iter(dm.train_dataloader()))
    for model in (plain, fused):
        user, item = model(batch)
        ((user * item).sum(dim=1) ** 2).mean().backward()
    grads = {n: p.grad for n, p in plain.sparse.named_parameters()}
    after = fused.sparse.state_dict()
    moved = 0
    for key, old in before.items():
        grad = grads[key]
        assert torch.allclose(after[key], old - 0.5 * grad, atol=1e-6), key
        moved += int((grad.abs().sum(dim=1) > 0).sum())
    assert moved > 0
    # the dense layers are left to the dense optimiser: same gradients in both
    pairs = zip(plain.user_tower.named_parameters(), fused.user_tower.parameters(), strict=True)
    for (name, p), q in pairs:
        assert torch.allclose(p.grad, q.grad, atol=1e-6), name
