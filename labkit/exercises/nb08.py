"""Exercises for notebook 08 (LoRA): count an adapter's trainable parameters, merge a from-scratch
LoRA layer into one plain weight, and predict an adapter file's size before saving it. Each check
computes the truth on the learner's own model: PEFT builds the adapter on a weightless copy of the
model's architecture, and a real adapter is saved to measure its file."""
from __future__ import annotations

import math
import tempfile
import warnings
from pathlib import Path

from . import Exercise
from .checks import number, whole_number

SETUP = """
import copy, torch
import labkit
from labkit import lora
model, tok = labkit.load_model()
q = model.model.layers[0].self_attn.q_proj
layer = lora.LoRALinear(copy.deepcopy(q), r=8, alpha=16)
"""


def skeleton(model):
    """A weightless copy of ``model``'s architecture (on torch's meta device): PEFT can wrap it
    and count parameters in a second, without copying any weight."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(model.config)


_COUNTS: dict = {}


def peft_counts(model, r: int, target_modules, dora: bool = False) -> tuple[int, int]:
    """(trainable, total) parameters of PEFT's LoRA (or DoRA) on ``model``'s architecture
    (kept per model, so that checking again is instant)."""
    import weakref

    from peft import LoraConfig, get_peft_model

    targets = target_modules if isinstance(target_modules, str) else list(target_modules)
    key = (id(model), r, str(targets), dora)
    hit = _COUNTS.get(key)
    if hit is not None and hit[0]() is model:
        return hit[1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wrapped = get_peft_model(skeleton(model), LoraConfig(r=r, lora_alpha=2 * r, target_modules=targets,
                                                            use_dora=dora))
    result = wrapped.get_nb_trainable_parameters()
    _COUNTS[key] = (weakref.ref(model), result)
    return result


# --- q1 -------------------------------------------------------------------------------------------

R1, TARGETS1 = 4, ("q_proj", "v_proj")


def _check_q1(answer, model):
    if (problem := whole_number(answer, "the number of trainable parameters")) is not None:
        return problem
    truth, total = peft_counts(model, R1, TARGETS1)
    if answer == truth:
        return None
    layers = model.config.num_hidden_layers
    if answer == total:
        return ("you counted the base model's parameters too; count only the adapter's (the frozen "
                "weights do not train)")
    if answer == total - truth:
        return "that is the base model's parameter count; the exercise asks for the adapter's"
    if answer * R1 == truth * 8:
        return f"that is the count for r=8 (the notebook's rank); the exercise asks for r={R1}"
    from labkit import lora

    if answer == lora.lora_parameter_count(lora.arch_from_config(model.config), R1, "all-linear"):
        return ("that is the count with adapters on every linear layer; the exercise puts them on "
                "q_proj and v_proj only")
    if answer * layers == truth:
        return f"that is one layer's count; the model has {layers} layers, each with its own q_proj and v_proj"
    if answer * 2 == truth or answer == truth // 2:
        return "that is half the count: did you count only A (or only B), or only one of q_proj and v_proj?"
    return (f"{answer:,} is not what PEFT trains for r={R1} on q_proj and v_proj of this model; each "
            "adapted layer (in -> out) adds r x (in + out)")


q1 = Exercise(
    name="Exercise 1",
    level="easy",
    question=f"""
The LoRA paper adapted only the **query and value projections**. How many parameters does LoRA with
**r={R1}** on `q_proj` and `v_proj` (every layer) train on our model? Give a whole number. Compute it
from the model's shapes (`lora.arch_from_config(model.config)` and `lora.lora_parameter_count`, or by
hand); the check counts what PEFT builds on your `model`.
""",
    check_answer=_check_q1,
    hint_text=("Each adapted layer (in -> out) adds r x (in + out): A is r x in, B is out x r. q_proj is "
               "576 -> 576 and v_proj 576 -> 192 here; then multiply by the number of layers. "
               "lora.lora_parameter_count(arch, r, 'qv') does it."),
    solution_code=f"""
arch = lora.arch_from_config(model.config)
answer = lora.lora_parameter_count(arch, r={R1}, target_modules="qv")
""",
    wrong=["answer = lora.lora_parameter_count(lora.arch_from_config(model.config), r=8, target_modules='qv')",
           f"answer = lora.lora_parameter_count(lora.arch_from_config(model.config), r={R1}, target_modules='all-linear')",
           f"answer = lora.lora_parameter_count(lora.arch_from_config(model.config), r={R1}, target_modules='qv') // model.config.num_hidden_layers",
           f"""n = lora.lora_parameter_count(lora.arch_from_config(model.config), r={R1}, target_modules="qv")
answer = n + sum(p.numel() for p in model.parameters())"""],
    context_names=("model",),
)


# --- q2 -------------------------------------------------------------------------------------------

def _check_q2(answer, layer):
    import torch

    if not isinstance(layer.lora_B, torch.Tensor) or not bool((layer.lora_B != 0).any()):
        return ("`layer.lora_B` is still all zeros, so B A = 0 and any copy of the frozen layer would pass: "
                "first give B values, as the exercise says (torch.nn.init.normal_(layer.lora_B, std=0.02))")
    if not isinstance(answer, torch.nn.Linear):
        return f"give a torch.nn.Linear (one plain layer with the merged weight), not {type(answer).__name__}"
    w = layer.base.weight
    if tuple(answer.weight.shape) != tuple(w.shape):
        return (f"your layer's weight has shape {tuple(answer.weight.shape)}; the merged weight has W's "
                f"shape {tuple(w.shape)} (out x in): B A is (out x r)(r x in)")
    torch.manual_seed(0)
    x = torch.randn(4, w.shape[1], device=w.device, dtype=w.dtype)
    with torch.no_grad():
        want, got = layer(x), answer(x)
        delta = x @ (layer.lora_B @ layer.lora_A).T
        base = layer.base(x)
    scale = want.abs().max().item()
    tol = 1e-4 * max(1.0, scale)
    if (got - want).abs().max().item() <= tol:
        return None
    if (got - base).abs().max().item() <= tol:
        return "your layer gives the frozen layer's output: the update (alpha/r) B A is missing"
    if (got - (base + delta)).abs().max().item() <= tol:
        return (f"you added B A without the scaling alpha/r = {layer.scaling:g}; LoRA's update is "
                "(alpha/r) B A")
    if (got - (base + delta / layer.scaling)).abs().max().item() <= tol:
        return f"you scaled B A by r/alpha; the scaling is alpha/r = {layer.scaling:g}"
    if (got - (base + layer.scaling * x @ (layer.lora_B @ layer.lora_A))).abs().max().item() <= tol:
        return ("your update is transposed: B A is (out x r)(r x in), already W's shape (out x in); "
                "add it to W as it is")
    if (got - (base + 2 * layer.scaling * delta)).abs().max().item() <= tol:
        return "the update is counted twice: is B A already inside the weight you started from?"
    return (f"your layer's output differs from `layer`'s by up to {(got - want).abs().max().item():.3g}; "
            "its weight should be W + (alpha/r) B A, with W = layer.base.weight")


q2 = Exercise(
    name="Exercise 2",
    level="medium",
    question="""
**Merge by hand.** Give `layer` (the `LoRALinear` of section 1) a non-zero `B`, as training would:
`torch.nn.init.normal_(layer.lora_B, std=0.02)`. Then build **one plain `torch.nn.Linear`** (no bias)
whose output equals `layer`'s for every input: its weight is the frozen `W` plus the LoRA update. This is
what PEFT's `merge_and_unload()` does before deployment (notebook 12). Your answer: that `nn.Linear`.
""",
    check_answer=_check_q2,
    hint_text=("layer.base.weight is W (out x in); layer.lora_A is A (r x in) and layer.lora_B is B "
               "(out x r); layer.scaling is alpha/r. Copy W + scaling * B @ A into a new "
               "torch.nn.Linear(in, out, bias=False) under torch.no_grad()."),
    solution_code="""
torch.nn.init.normal_(layer.lora_B, std=0.02)
merged = torch.nn.Linear(layer.base.in_features, layer.base.out_features, bias=False)
with torch.no_grad():
    merged.weight.copy_(layer.base.weight + layer.scaling * layer.lora_B @ layer.lora_A)
answer = merged
""",
    wrong=["""torch.nn.init.normal_(layer.lora_B, std=0.02)
merged = torch.nn.Linear(layer.base.in_features, layer.base.out_features, bias=False)
with torch.no_grad():
    merged.weight.copy_(layer.base.weight + layer.lora_B @ layer.lora_A)
answer = merged""",
           """torch.nn.init.normal_(layer.lora_B, std=0.02)
answer = copy.deepcopy(layer.base)""",
           """torch.nn.init.normal_(layer.lora_B, std=0.02)
merged = torch.nn.Linear(layer.base.in_features, layer.base.out_features, bias=False)
with torch.no_grad():
    merged.weight.copy_(layer.base.weight + layer.scaling * (layer.lora_B @ layer.lora_A).T)
answer = merged"""],
    context_names=("layer",),
)


# --- q3 -------------------------------------------------------------------------------------------

R3 = 16


_SAVED: dict = {}


def adapter_file(model, r: int) -> tuple[int, int]:
    """Save a real LoRA adapter (rank r, all linear layers) of a copy of ``model`` and measure its
    file: (bytes of adapter_model.safetensors, trainable parameters). Kept per model: the size does
    not depend on the values, and a learner may check several times."""
    import copy
    import weakref

    from peft import LoraConfig, get_peft_model

    hit = _SAVED.get((id(model), r))
    if hit is not None and hit[0]() is model:
        return hit[1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wrapped = get_peft_model(copy.deepcopy(model), LoraConfig(r=r, lora_alpha=2 * r,
                                                                  target_modules="all-linear"))
        with tempfile.TemporaryDirectory() as d:
            wrapped.save_pretrained(d, safe_serialization=True)
            size = (Path(d) / "adapter_model.safetensors").stat().st_size
    result = (size, wrapped.get_nb_trainable_parameters()[0])
    del wrapped
    _SAVED[(id(model), r)] = (weakref.ref(model), result)
    return result


def _check_q3(answer, model):
    if (problem := number(answer, "the size in MiB")) is not None:
        return problem
    size, trainable = adapter_file(model, R3)
    truth = size / 2**20
    if math.isclose(answer, truth, rel_tol=0.01):
        return None
    if math.isclose(answer, size, rel_tol=0.01) or math.isclose(answer, trainable * 4, rel_tol=0.01):
        return "that is in bytes; give MiB (divide by 2**20)"
    if math.isclose(answer, size / 1e6, rel_tol=0.01) or math.isclose(answer, trainable * 4 / 1e6, rel_tol=0.01):
        return "that is in MB (10**6 bytes); give MiB (2**20 bytes)"
    if math.isclose(answer, trainable / 2**20, rel_tol=0.01):
        return "that is the number of parameters in millions (of 2**20); each takes bytes in the file"
    if math.isclose(answer * 2, truth, rel_tol=0.01):
        return (f"half the file: either the count of r=8 (the exercise asks r={R3}) or 2 bytes per "
                "parameter (PEFT saves LoRA adapters in fp32: 4 bytes each)")
    full = sum(p.numel() for p in model.parameters()) * 4 / 2**20
    if math.isclose(answer, full, rel_tol=0.05) or answer > full / 2:
        return (f"{answer:.1f} MiB is the size of the whole model ({full:.0f} MiB in fp32); the adapter file "
                "holds only A and B of each adapted layer")
    return (f"{answer:.2f} MiB is {100 * (answer / truth - 1):+.0f}% off the real file: it holds "
            "r x (in + out) parameters per adapted layer (all 7 linear layers of each block), 4 bytes each")


q3 = Exercise(
    name="Exercise 3",
    level="harder",
    question=f"""
**Predict an adapter's size on disk.** Before training anything: how large (in **MiB**) will the file
`adapter_model.safetensors` be for LoRA with **r={R3} on all linear layers** of our model? PEFT keeps and
saves LoRA adapters in **fp32**. Give a number of MiB; the check saves a real adapter of that shape and
accepts your prediction within 1% (the file's small header is all that is left out).
""",
    check_answer=_check_q3,
    hint_text=("Size = trainable parameters x bytes per parameter. lora.lora_parameter_count(arch, "
               f"r={R3}, 'all-linear') counts them; fp32 is 4 bytes; MiB is 2**20 bytes."),
    solution_code=f"""
n = lora.lora_parameter_count(lora.arch_from_config(model.config), r={R3}, target_modules="all-linear")
answer = n * 4 / 2**20
""",
    wrong=[f"answer = lora.lora_parameter_count(lora.arch_from_config(model.config), r={R3}) * 4",
           f"answer = lora.lora_parameter_count(lora.arch_from_config(model.config), r={R3}) * 4 / 1e6",
           f"answer = lora.lora_parameter_count(lora.arch_from_config(model.config), r={R3}) * 2 / 2**20",
           "answer = sum(p.numel() for p in model.parameters()) * 4 / 2**20"],
    context_names=("model",),
)
