"""Exercises for notebook 10 (DoRA): a layer's magnitude vector, what DoRA adds to LoRA's parameter
count, and the DoRA paper's magnitude and direction changes on a DoRA adapter the learner trains.
The checks compute the norms on the learner's model, count with PEFT on its architecture, and
measure ΔM and ΔD on the learner's trained adapter."""
from __future__ import annotations

import numbers

from . import Exercise
from .checks import close, whole_number
from .nb08 import peft_counts

SETUP = """
import copy, torch
import labkit
from labkit import lora
model, tok = labkit.load_model()
"""


# --- q1 -------------------------------------------------------------------------------------------

def _check_q1(answer, model):
    import torch

    if not isinstance(answer, torch.Tensor):
        return f"give the magnitude vector as a torch tensor, not {type(answer).__name__}"
    wv = model.model.layers[0].self_attn.v_proj.weight.detach().float().cpu()
    truth = torch.linalg.norm(wv, dim=1)
    got = answer.detach().float().cpu()
    if got.dim() != 1:
        return (f"your answer has shape {tuple(got.shape)}: that is a matrix (the direction V/||V||?); the "
                f"magnitude is a vector, one length per output row: {wv.shape[0]} values")
    if got.shape == truth.shape and torch.allclose(got, truth, rtol=1e-4, atol=1e-6):
        return None
    if got.shape == truth.shape and torch.allclose(got, truth**2, rtol=1e-4, atol=1e-6):
        return "these are squared lengths; the magnitude is the L2 norm (the square root)"
    wq = model.model.layers[0].self_attn.q_proj.weight.detach().float().cpu()
    if got.shape[0] == wq.shape[0] and torch.allclose(got, torch.linalg.norm(wq, dim=1), rtol=1e-4, atol=1e-6):
        return "that is q_proj's magnitude (section 1's); the exercise asks for v_proj"
    if got.shape[0] == wv.shape[1] and torch.allclose(got, torch.linalg.norm(wv, dim=0), rtol=1e-4, atol=1e-6):
        return (f"you took the norm of each column ({wv.shape[1]} inputs); DoRA's magnitude (PEFT's) is one "
                f"per output row: {wv.shape[0]} values")
    if got.shape != truth.shape:
        return (f"your vector has {got.shape[0]} values; v_proj of layer 0 has {wv.shape[0]} output rows, "
                "so its magnitude has that many")
    return "these are not the row norms of layer 0's v_proj weight (lora.magnitude_direction(weight)[0])"


q1 = Exercise(
    name="Exercise 1",
    level="easy",
    question="""
Give DoRA's **magnitude vector** `m` of the first layer's **value projection**
(`model.model.layers[0].self_attn.v_proj`), as section 1 did for `q_proj`. How many values has it, and
why is that fewer than q_proj's?
""",
    check_answer=_check_q1,
    hint_text="lora.magnitude_direction(model.model.layers[0].self_attn.v_proj.weight)[0]: one L2 norm per output row.",
    solution_code="""
answer, _ = lora.magnitude_direction(model.model.layers[0].self_attn.v_proj.weight)
""",
    wrong=["answer, _ = lora.magnitude_direction(model.model.layers[0].self_attn.q_proj.weight)",
           "answer = torch.linalg.norm(model.model.layers[0].self_attn.v_proj.weight.detach(), dim=0)",
           "answer = lora.magnitude_direction(model.model.layers[0].self_attn.v_proj.weight)[1]"],
    context_names=("model",),
)


# --- q2 -------------------------------------------------------------------------------------------

R2 = 8


def _check_q2(answer, model):
    import torch

    if (problem := whole_number(answer, "the number of extra parameters")) is not None:
        return problem
    dora, _ = peft_counts(model, R2, "all-linear", dora=True)
    lora_, _ = peft_counts(model, R2, "all-linear", dora=False)
    truth = dora - lora_
    if answer == truth:
        return None
    layers = model.config.num_hidden_layers
    block = [m for n, m in model.named_modules()
             if isinstance(m, torch.nn.Linear) and n.startswith("model.layers.0.")]
    if answer == dora:
        return "that is DoRA's whole trainable count; the exercise asks how many more than LoRA's"
    if answer == -truth:
        return "the sign is flipped: DoRA trains more parameters than LoRA, so the difference is positive"
    if answer == layers * sum(m.in_features for m in block):
        return ("you added one value per input column; the magnitude has one value per output row "
                "(out_features) of each adapted layer")
    if answer * layers == truth:
        return f"that is one block's extra; the model has {layers} blocks"
    return (f"{answer:,} is not what PEFT's DoRA adds at r={R2} on all linear layers: one magnitude per "
            "output row of every adapted layer, in every block (the rank does not enter)")


q2 = Exercise(
    name="Exercise 2",
    level="medium",
    question=f"""
At rank **r={R2} on all linear layers**, how many **more** trainable parameters does DoRA have than LoRA
on our model? Give a whole number, counted from the model's layers (or with `lora.lora_parameter_count`);
the check builds both adapters with PEFT on your `model`. Does the difference depend on r?
""",
    check_answer=_check_q2,
    hint_text=("DoRA adds one magnitude per output row of each adapted layer: the sum of out_features over "
               "the 7 linear layers of a block, times the number of blocks."),
    solution_code=f"""
arch = lora.arch_from_config(model.config)
answer = lora.lora_parameter_count(arch, {R2}, dora=True) - lora.lora_parameter_count(arch, {R2})
""",
    wrong=[f"answer = lora.lora_parameter_count(lora.arch_from_config(model.config), {R2}, dora=True)",
           """answer = model.config.num_hidden_layers * sum(
    m.in_features for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n.startswith("model.layers.0."))""",
           f"""arch = lora.arch_from_config(model.config)
answer = (lora.lora_parameter_count(arch, {R2}, dora=True) - lora.lora_parameter_count(arch, {R2})) // arch.layers"""],
    context_names=("model",),
)


# --- q3 -------------------------------------------------------------------------------------------

R3, LAYER3 = 4, "layers.0.self_attn.q_proj"


def _find_layer(model):
    for name, module in model.named_modules():
        if name.endswith(LAYER3) and hasattr(module, "base_layer"):
            return module
    return None


def _check_q3(answer):
    import torch

    from labkit import lora

    if not isinstance(answer, dict) or not {"model", "delta_m", "delta_d"} <= set(answer):
        return "give a dict {'model': run.model, 'delta_m': ..., 'delta_d': ...}"
    model = answer["model"]
    if not hasattr(model, "peft_config"):
        return "answer['model'] has no adapter: give the trained PEFT model (run.model)"
    config = model.peft_config[model.active_adapter]
    if not getattr(config, "use_dora", False):
        return "this adapter is plain LoRA (no magnitude vector): train with method='dora'"
    if config.r != R3:
        return f"your adapter has r={config.r}; the exercise asks for r={R3}"
    layer = _find_layer(model)
    if layer is None:
        return f"found no adapted layer named ...{LAYER3} in answer['model']"
    name = model.active_adapter
    base_w = layer.base_layer.weight.detach().float()
    magnitude = layer.lora_magnitude_vector[name].weight.detach().float()
    b = layer.lora_B[name].weight
    if not bool((b != 0).any()) and torch.allclose(magnitude, torch.linalg.norm(base_w, dim=1)):
        return ("the adapter was never trained: B is zero and the magnitude still equals ||W|| row by row, "
                "so ΔM = ΔD = 0; train it with labkit.train")
    dm, dd = lora.magnitude_direction_change(base_w, lora.effective_weight(layer))
    for key in ("delta_m", "delta_d"):
        if isinstance(answer[key], bool) or not isinstance(answer[key], numbers.Real):
            return f"answer['{key}'] should be a number, not {type(answer[key]).__name__}"
    got_m, got_d = float(answer["delta_m"]), float(answer["delta_d"])
    if close(got_m, dm, rel=1e-4, abs_=1e-9) and close(got_d, dd, rel=1e-4, abs_=1e-9):
        return None
    if close(got_m, dd, rel=1e-4, abs_=1e-9) and close(got_d, dm, rel=1e-4, abs_=1e-9):
        return "ΔM and ΔD are swapped: magnitude_direction_change returns (ΔM, ΔD) in that order"
    if close(got_m, 0, abs_=1e-12) and close(got_d, 0, abs_=1e-12):
        return ("ΔM = ΔD = 0: you compared a weight with itself; compare the frozen weight "
                "(layer.base_layer.weight) with lora.effective_weight(layer)")
    return (f"ΔM = {got_m:.4g}, ΔD = {got_d:.4g} are not the changes of ...{LAYER3} in your model: "
            "lora.magnitude_direction_change(layer.base_layer.weight, lora.effective_weight(layer))")


q3 = Exercise(
    name="Exercise 3",
    level="harder",
    question=f"""
**The DoRA paper's ΔM and ΔD, on an adapter you train.** Train a **DoRA** adapter of rank **r={R3}** on
the toy model (`labkit.toy.toy_model()`, its texts `TOY_TEXT` as `text` records) for 5 steps at learning
rate 1e-2. Then, for its first layer's query projection (`...{LAYER3}`), measure how far DoRA moved the
weight: ΔM (mean change of the row lengths) and ΔD (mean 1 − cosine of the rows) between the frozen
weight and the weight the layer now applies (`lora.effective_weight`), with
`lora.magnitude_direction_change`. Answer: `{{"model": run.model, "delta_m": ..., "delta_d": ...}}`.
""",
    check_answer=_check_q3,
    hint_text=("run = labkit.train(toy, toy_tok, [{'text': t} for t in TOY_TEXT], method='dora', lora_r=4, "
               "steps=5, learning_rate=1e-2, live=False); the layer is "
               "run.model.base_model.model.model.layers[0].self_attn.q_proj; "
               "lora.magnitude_direction_change(layer.base_layer.weight, lora.effective_weight(layer))."),
    solution_code=f"""
from labkit.toy import TOY_TEXT, toy_model
toy, toy_tok = toy_model()
run = labkit.train(toy, toy_tok, [{{"text": t}} for t in TOY_TEXT], method="dora", lora_r={R3}, steps=5,
                   batch_size=2, max_length=32, learning_rate=1e-2, seed=0, live=False, label="DoRA on the toy")
layer = run.model.base_model.model.model.layers[0].self_attn.q_proj
dm, dd = lora.magnitude_direction_change(layer.base_layer.weight, lora.effective_weight(layer))
answer = {{"model": run.model, "delta_m": dm, "delta_d": dd}}
""",
    wrong=[f"""from labkit.toy import TOY_TEXT, toy_model
toy, toy_tok = toy_model()
run = labkit.train(toy, toy_tok, [{{"text": t}} for t in TOY_TEXT], method="lora", lora_r={R3}, steps=5,
                   batch_size=2, max_length=32, learning_rate=1e-2, seed=0, live=False)
layer = run.model.base_model.model.model.layers[0].self_attn.q_proj
dm, dd = lora.magnitude_direction_change(layer.base_layer.weight, lora.effective_weight(layer))
answer = {{"model": run.model, "delta_m": dm, "delta_d": dd}}""",
           f"""from labkit.toy import TOY_TEXT, toy_model
toy, toy_tok = toy_model()
run = labkit.train(toy, toy_tok, [{{"text": t}} for t in TOY_TEXT], method="dora", lora_r={R3}, steps=5,
                   batch_size=2, max_length=32, learning_rate=1e-2, seed=0, live=False)
layer = run.model.base_model.model.model.layers[0].self_attn.q_proj
dd, dm = lora.magnitude_direction_change(layer.base_layer.weight, lora.effective_weight(layer))
answer = {{"model": run.model, "delta_m": dm, "delta_d": dd}}""",
           f"""from peft import LoraConfig, get_peft_model
from labkit.toy import toy_model
toy, _ = toy_model()
untrained = get_peft_model(toy, LoraConfig(r={R3}, target_modules="all-linear", use_dora=True))
answer = {{"model": untrained, "delta_m": 0.0, "delta_d": 0.0}}"""],
    context_names=(),
)
