"""LoRA/DoRA from scratch against PEFT, and parameter counts from shapes against PEFT's count."""
import copy

import pytest
import torch

from labkit import lora
from labkit.toy import toy_model


def peft_model(model, r=4, alpha=8, targets=("q_proj", "v_proj"), dora=False):
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(r=r, lora_alpha=alpha, target_modules=list(targets),
                                            use_dora=dora, lora_dropout=0.0))


def test_lora_linear_starts_at_the_base_layer():
    base = torch.nn.Linear(16, 8)
    layer = lora.LoRALinear(copy.deepcopy(base), r=4, alpha=8)
    x = torch.randn(3, 16)
    assert torch.equal(layer(x), base(x))          # B = 0
    assert layer.lora_A.abs().sum() > 0             # A is random, like PEFT's
    assert [n for n, p in layer.named_parameters() if p.requires_grad] == ["lora_A", "lora_B"]


def test_lora_linear_matches_peft_on_the_same_weights():
    model, tok = toy_model()
    ours, theirs = copy.deepcopy(model), peft_model(copy.deepcopy(model), r=4, alpha=8)
    wrapped = lora.wrap_linears(ours, ["q_proj", "v_proj"], r=4, alpha=8)
    assert len(wrapped) == 4
    torch.manual_seed(1)
    for name in wrapped:
        mine = ours.get_submodule(name)
        peft_layer = theirs.base_model.model.get_submodule(name)
        with torch.no_grad():
            mine.lora_B.normal_(std=0.5)  # non-zero B, so the update matters
            peft_layer.lora_A["default"].weight.copy_(mine.lora_A)
            peft_layer.lora_B["default"].weight.copy_(mine.lora_B)
    ids = tok("The capital of France is Paris.", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        a, b, base = ours(ids).logits, theirs(ids).logits, model(ids).logits
    assert (a - base).abs().max() > 1e-3            # the adapters change the output...
    assert torch.allclose(a, b, atol=1e-5)          # ...exactly as PEFT's do


def test_wrap_linears_rejects_unknown_targets():
    model, _ = toy_model()
    with pytest.raises(ValueError, match="target_modules"):
        lora.wrap_linears(model, ["nope"])
    with pytest.raises(ValueError, match="r="):
        lora.LoRALinear(torch.nn.Linear(2, 2), r=0)


@pytest.mark.parametrize("targets,dora", [("all-linear", False), ("attention", False), ("qv", True)])
def test_parameter_formula_matches_peft_on_the_toy_model(targets, dora):
    model, _ = toy_model()
    arch = lora.arch_from_config(model.config)
    assert lora.total_parameter_count(arch) == sum(p.numel() for p in model.parameters())
    pm = peft_model(model, r=4, targets=lora.TARGETS[targets], dora=dora)
    trainable, _ = pm.get_nb_trainable_parameters()
    assert lora.lora_parameter_count(arch, 4, targets, dora=dora) == trainable


def test_published_shapes_give_the_published_sizes():
    counts = {n: lora.total_parameter_count(a) for n, a in lora.ARCHITECTURES.items()}
    assert 6.7e9 < counts["llama-2-7b"] < 6.8e9      # "6.74B"
    assert 12.9e9 < counts["llama-2-13b"] < 13.1e9
    assert 68.9e9 < counts["llama-2-70b"] < 69.1e9
    assert 8.0e9 < counts["llama-3-8b"] < 8.1e9
    # LoRA paper, Table 4: GPT-3 175B with r=8 on Wq and Wv trains 37.7M parameters
    assert lora.lora_parameter_count(lora.ARCHITECTURES["gpt-3-175b"], 8, "qv") == pytest.approx(37.7e6, rel=0.01)


def test_dora_decomposition_and_peft_dora_layer_agree():
    model, tok = toy_model()
    pm = peft_model(model, r=4, targets=("q_proj",), dora=True)
    layer = pm.base_model.model.model.layers[0].self_attn.q_proj
    with torch.no_grad():
        layer.lora_B["default"].weight.normal_(std=0.3)
        layer.lora_magnitude_vector["default"].weight.mul_(1.5)
    x = torch.randn(5, model.config.hidden_size)
    with torch.no_grad():
        expected = layer(x)
    assert torch.allclose(x @ lora.effective_weight(layer).T, expected, atol=1e-5)
    m, direction = lora.magnitude_direction(layer.base_layer.weight)
    assert torch.allclose(m[:, None] * direction, layer.base_layer.weight, atol=1e-6)
    assert torch.allclose(direction.norm(dim=1), torch.ones_like(m), atol=1e-5)


def test_magnitude_and_direction_change():
    w = torch.randn(6, 10)
    assert lora.magnitude_direction_change(w, w) == pytest.approx((0.0, 0.0), abs=1e-6)
    dm, dd = lora.magnitude_direction_change(w, 2 * w)          # longer, same direction
    assert dm == pytest.approx(float(w.norm(dim=1).mean()), rel=1e-5) and dd == pytest.approx(0, abs=1e-6)
    dm, dd = lora.magnitude_direction_change(w, -w)             # same length, opposite direction
    assert dm == pytest.approx(0, abs=1e-5) and dd == pytest.approx(2.0, abs=1e-5)


def test_rank_widget_updates_the_count():
    w = lora.rank_widget(lora.ARCHITECTURES["smollm2-135m"], r=8)
    before = list(w.figure.data[0].y)
    w.controls["r"].value = 64
    assert list(w.figure.data[0].y) != before
    assert w.table.loc[0, "lora_parameters"] == lora.lora_parameter_count(lora.ARCHITECTURES["smollm2-135m"], 64)


@pytest.mark.model
def test_parameter_formula_matches_peft_on_the_real_model():
    from labkit import load_model

    model, _ = load_model()
    arch = lora.arch_from_config(model.config)
    assert arch == lora.ArchShape("model", **{k: v for k, v in lora.ARCHITECTURES["smollm2-135m"].to_dict().items()
                                              if k != "name"} | {"head_dim": 64})
    assert lora.total_parameter_count(arch) == sum(p.numel() for p in model.parameters())
    trainable, _ = peft_model(model, r=8, targets=lora.TARGETS["all-linear"]).get_nb_trainable_parameters()
    assert trainable == lora.lora_parameter_count(lora.ARCHITECTURES["smollm2-135m"], 8, "all-linear")
