import pytest
import torch

from labkit import weights
from labkit.models import count_parameters


def test_inventory_counts_every_parameter_once_with_its_bytes(toy):
    model, _ = toy
    table = weights.inventory(model)
    assert table["parameters"].sum() == count_parameters(model)
    assert (table["bytes"] == 4 * table["parameters"]).all()  # float32
    assert {"embedding", "attention", "mlp", "norm"} <= set(table["component"])
    q = table[table["name"] == "model.layers.1.self_attn.q_proj.weight"].iloc[0]
    assert (q["component"], q["layer"], q["module"]) == ("attention", 1, "q")
    by_component = weights.inventory_by_component(model)
    assert by_component["share"].sum() == pytest.approx(1.0)


def test_histogram_counts_every_value(toy):
    model, _ = toy
    name = "model.layers.0.mlp.up_proj.weight"
    counts, edges = weights.histogram(model, name, bins=20)
    assert sum(counts) == dict(model.named_parameters())[name].numel() and len(edges) == 21
    with pytest.raises(ValueError, match="not a parameter"):
        weights.histogram(model, "nope")


def test_delta_statistics_recover_a_known_change(toy):
    model, _ = toy
    names = weights.linear_weight_names(model)
    assert len(names) == 2 * 7
    before = weights.snapshot(model, names)
    name = "model.layers.1.mlp.down_proj.weight"
    w = dict(model.named_parameters())[name]
    g = torch.Generator().manual_seed(0)
    # a rank-4 change with equal singular values, scaled to 10% of ||W||
    u, _ = torch.linalg.qr(torch.randn(w.shape[0], 4, generator=g))
    v, _ = torch.linalg.qr(torch.randn(w.shape[1], 4, generator=g))
    change = u @ v.T
    change *= 0.1 * w.detach().norm() / change.norm()
    with torch.no_grad():
        w += change
    table = weights.relative_change(before, model)
    moved = table.set_index("name")["relative_change"]
    assert moved[name] == pytest.approx(0.1, rel=1e-4)
    assert (moved.drop(name) == 0).all()
    grid = weights.change_grid(table)
    assert list(grid.columns) == ["q", "k", "v", "o", "gate", "up", "down"] and list(grid.index) == [0, 1]
    assert grid.loc[1, "down"] == pytest.approx(0.1, rel=1e-4)
    s = weights.singular_values(weights.delta(before, model, name))
    share = weights.energy_share(s, ks=(1, 4, 16))
    assert share[1] == pytest.approx(0.25, abs=1e-4) and share[4] == pytest.approx(1.0, abs=1e-5)
    spectrum = weights.spectrum_table(before, model, [name])
    assert spectrum["top_4"].iloc[0] == pytest.approx(1.0, abs=1e-5)
    fig = weights.spectrum_figure(before, model, [name], top=8)
    assert len(fig.data[0].y) == 8


def test_energy_share_of_a_rank_one_matrix_and_bad_input():
    m = torch.outer(torch.arange(1.0, 6.0), torch.ones(3))
    assert weights.energy_share(weights.singular_values(m))[1] == pytest.approx(1.0)
    assert weights.energy_share(torch.zeros(3))[1] != weights.energy_share(torch.zeros(3))[1]  # nan
    with pytest.raises(ValueError, match="2-D"):
        weights.singular_values(torch.ones(3))
    with pytest.raises(ValueError, match="step"):
        weights.UpdateSizeCallback(step=0)


def test_one_optimizer_step_is_measured_during_training(toy, toy_text):
    from labkit import train

    model, tok = toy
    before = weights.snapshot(model)
    cb = weights.UpdateSizeCallback(step=2)
    train(model, tok, toy_text, method="full", steps=2, batch_size=2, max_length=32,
          learning_rate=1e-3, mixed_precision="no", live=False, callbacks=[cb])
    assert cb.table is not None and len(cb.table) == 14
    assert (cb.table["relative_change"] > 0).all()
    total = weights.relative_change(before, model).set_index("name")["norm_dw"]
    one_step = cb.table.set_index("name")["norm_dw"]
    assert (one_step <= total[one_step.index] * 2 + 1e-9).all()   # one of two steps, bounded by both


@pytest.mark.model
def test_real_model_inventory(real_model):
    model, _ = real_model
    table = weights.inventory(model)
    assert table["layer"].max() == 29
    emb = table[table["component"] == "embedding"].iloc[0]
    assert emb["shape"] == (49152, 576)
    assert table["parameters"].sum() == count_parameters(model)


def test_after_bf16_training_the_model_predicts_in_its_own_precision(toy, toy_text):
    from labkit import train
    from labkit.predictions import next_token_logits

    model, tok = toy
    train(model, tok, toy_text, method="full", steps=1, batch_size=2, max_length=32,
          mixed_precision="bf16", live=False)
    logits = next_token_logits(model, tok, "The capital")
    with torch.no_grad():
        manual = model.model(input_ids=tok("The capital", return_tensors="pt")["input_ids"]).last_hidden_state
        manual = (manual[0, -1] @ model.lm_head.weight.T).float()
    assert torch.allclose(logits, manual, atol=1e-5)   # not rounded to bfloat16 by a leftover autocast
