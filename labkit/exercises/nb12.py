"""Exercises for notebook 12 (deployment): save one adapter of a multi-adapter model to a folder,
answer a mixed batch with a different adapter per row, and merge an adapter into a plain model.
The checks open the learner's saved files and compare them with the adapters in memory, and run the
learner's model and the adapter model on the same prompts."""
from __future__ import annotations

import json
from pathlib import Path

from . import Exercise

# The notebook serves notebook 07's adapters on SmolLM2 (or trains three); the test's setup serves
# three stand-ins on the toy model (the same Llama architecture, in milliseconds): LoRA adapters whose
# B matrices are random, so that each changes the outputs in its own way (what is served does not
# depend on how an adapter was trained).
SETUP = """
import tempfile
from pathlib import Path
import torch
import labkit
from labkit import serving
from labkit.toy import toy_model
from peft import LoraConfig, get_peft_model

CONFIG = dict(seed=0, adapters=["medical", "legal", "code"], lora_r=8)
scratch = tempfile.TemporaryDirectory()  # removed with this object (the notebook writes to ../outputs)
OUT = Path(scratch.name) / "12_deployment"
base, tok = toy_model()
stand_in = None
for name in CONFIG["adapters"]:
    config = LoraConfig(r=CONFIG["lora_r"], lora_alpha=2 * CONFIG["lora_r"], target_modules="all-linear")
    if stand_in is None:
        stand_in = get_peft_model(toy_model(tok)[0], config, adapter_name=name)
    else:
        stand_in.add_adapter(name, config)
torch.manual_seed(CONFIG["seed"])
with torch.no_grad():
    for n, p in stand_in.named_parameters():
        if "lora_B" in n:
            p.normal_(std=0.5)
adapters = {name: serving.save_adapter(stand_in, OUT / "adapters" / name, adapter_name=name)
            for name in CONFIG["adapters"]}
del stand_in
model = serving.load_adapters(base, adapters)
prompt = {"medical": "Summarise the patient's discharge plan.", "legal": "What does the motion ask the court?",
          "code": "Write a function that adds two numbers."}
prompts = [prompt["medical"], prompt["legal"], prompt["code"], prompt["medical"]]
"""


def _adapter_tensors(model, name: str) -> dict:
    """The tensors PEFT saves for adapter ``name`` (keys as in adapter_model.safetensors)."""
    from peft import get_peft_model_state_dict

    return {k: v.detach().cpu() for k, v in get_peft_model_state_dict(model, adapter_name=name).items()}


# --- q1 -------------------------------------------------------------------------------------------

ADAPTER1 = "legal"


def _check_q1(answer, model):
    import torch
    from safetensors.torch import load_file

    from labkit import serving

    if not isinstance(answer, (str, Path)):
        return f"give the folder's path (a Path or a string), not {type(answer).__name__}"
    path = Path(answer)
    if path.is_file():
        if path.name == serving.WEIGHTS_FILE:
            return "that is the weights file; give the folder that holds it (its parent)"
        return f"{path} is a file; give the adapter's folder"
    if not path.is_dir():
        return f"there is no folder at {path}: did the save run? (serving.save_adapter returns the folder)"
    inside = sorted(p.name for p in path.iterdir())
    if serving.CONFIG_FILE not in inside:
        if "model.safetensors" in inside:
            return "this folder holds a full checkpoint (model.safetensors), not an adapter: use serving.save_adapter"
        if any((path / n / serving.CONFIG_FILE).is_file() for n in inside):
            return ("the adapter's files are in a sub-folder of this folder (PEFT's save_pretrained of a named "
                    "adapter does that): save with serving.save_adapter, which puts them in the folder itself")
        return f"no {serving.CONFIG_FILE} in {path} (it holds {inside}): save with serving.save_adapter"
    if serving.WEIGHTS_FILE not in inside:
        return f"no {serving.WEIGHTS_FILE} in {path}: the adapter's weights were not saved as safetensors"
    config = json.loads((path / serving.CONFIG_FILE).read_text())
    if ADAPTER1 not in model.peft_config:
        return f"`model` has no adapter called {ADAPTER1!r} (it has {list(model.peft_config)})"
    want = model.peft_config[ADAPTER1]
    if config.get("r") != want.r:
        return f"the saved adapter has r={config.get('r')}; the {ADAPTER1} adapter in `model` has r={want.r}"
    saved = load_file(str(path / serving.WEIGHTS_FILE))
    for name in model.peft_config:
        mine = _adapter_tensors(model, name)
        if set(mine) == set(saved) and all(torch.equal(mine[k], saved[k]) for k in mine):
            if name == ADAPTER1:
                return None
            return (f"the weights in this folder are the {name} adapter's, not {ADAPTER1}'s: save_adapter "
                    f"saves the active adapter unless you name one (adapter_name='{ADAPTER1}')")
    return (f"the weights in {serving.WEIGHTS_FILE} match none of the adapters loaded in `model` "
            f"({list(model.peft_config)}): save from `model` itself")


q1 = Exercise(
    name="Exercise 1",
    level="easy",
    question=f"""
**Ship one adapter.** `model` holds three adapters. Save the **{ADAPTER1}** adapter alone into a new folder,
`OUT / "exercise" / "{ADAPTER1}"`, with `serving.save_adapter`, and give that folder. The check opens the
files you wrote and compares the saved tensors with the {ADAPTER1} adapter in `model`. How large is the
folder (`serving.dir_size_bytes`), against the full checkpoint of section 1?
""",
    check_answer=_check_q1,
    hint_text=f"serving.save_adapter(model, OUT / 'exercise' / '{ADAPTER1}', adapter_name='{ADAPTER1}') returns the folder.",
    solution_code=f"""
answer = serving.save_adapter(model, OUT / "exercise" / "{ADAPTER1}", adapter_name="{ADAPTER1}")
""",
    wrong=[f"""model.set_adapter("medical")
answer = serving.save_adapter(model, OUT / "exercise" / "{ADAPTER1}")""",
           f"""folder = serving.save_adapter(model, OUT / "exercise" / "{ADAPTER1}", adapter_name="{ADAPTER1}")
answer = folder / serving.WEIGHTS_FILE""",
           f"""model.save_pretrained(OUT / "exercise" / "{ADAPTER1}-pretrained", selected_adapters=["{ADAPTER1}"])
answer = OUT / "exercise" / "{ADAPTER1}-pretrained\""""],
    context_names=("model",),
)


# --- q2 -------------------------------------------------------------------------------------------

NAMES2 = ("medical", "legal", "code")


def _row_logits(model, tok, text: str, name: str, chat: bool = True):
    """One prompt's last-position logits through adapter ``name`` (or the base model)."""
    from labkit import serving

    if name == serving.BASE:
        with model.disable_adapter():
            return serving.logits(model, tok, [text], chat=chat)[0]
    previous = model.active_adapter
    model.set_adapter(name)
    try:
        return serving.logits(model, tok, [text], chat=chat)[0]
    finally:
        model.set_adapter(previous)


def _same(a, b) -> bool:
    return bool((a - b).abs().max() <= 2e-4 * max(1.0, b.abs().max().item()))


def _check_q2(answer, model, tok, prompts):
    import torch

    from labkit import serving

    if not isinstance(answer, torch.Tensor):
        return f"give the logits as a torch tensor (batch x vocabulary), not {type(answer).__name__}"
    vocab = model.config.vocab_size
    rows = list(prompts[:3])
    if answer.dim() == 3:
        return (f"your tensor has shape {tuple(answer.shape)}: every position's logits; give the last "
                "position's, one row per prompt (serving.mixed_batch_logits does)")
    if tuple(answer.shape) != (len(rows), vocab):
        return f"your tensor has shape {tuple(answer.shape)}; expected ({len(rows)}, {vocab}): one row per prompt"
    got = answer.detach().float().cpu()
    for i, (text, want_name) in enumerate(zip(rows, NAMES2)):
        want = _row_logits(model, tok, text, want_name).cpu()
        if _same(got[i], want):
            continue
        if _same(got[i], _row_logits(model, tok, text, want_name, chat=False).cpu()):
            return (f"row {i} is the raw prompt's output, without the chat template; the served prompts go "
                    "through it (serving.mixed_batch_logits does it for you)")
        for other in [n for n in (serving.BASE, *NAMES2) if n != want_name]:
            if _same(got[i], _row_logits(model, tok, text, other).cpu()):
                what = "the base model's (no adapter)" if other == serving.BASE else f"the {other} adapter's"
                return (f"row {i} is {what} output, not the {want_name} adapter's: give each row its own adapter "
                        f"(adapter_names={list(NAMES2)})")
        return (f"row {i} does not match prompts[{i}] through the {want_name} adapter "
                f"(largest difference {(got[i] - want).abs().max().item():.3g})")
    return None


q2 = Exercise(
    name="Exercise 2",
    level="medium",
    question="""
**One batch, three tenants.** In a **single forward pass**, get the next-token logits of the first three
`prompts`, each through its own adapter: `prompts[0]` through **medical**, `prompts[1]` through **legal**,
`prompts[2]` through **code** (`serving.mixed_batch_logits`). Your answer: the tensor, one row per prompt.
The check runs each prompt alone through its adapter (`set_adapter`) and compares.
""",
    check_answer=_check_q2,
    hint_text=f"serving.mixed_batch_logits(model, tok, prompts[:3], {list(NAMES2)}).",
    solution_code=f"""
answer = serving.mixed_batch_logits(model, tok, prompts[:3], {list(NAMES2)})
""",
    wrong=["""model.set_adapter("medical")
answer = serving.logits(model, tok, prompts[:3])""",
           """with model.disable_adapter():
    answer = serving.logits(model, tok, prompts[:3])""",
           f"""answer = serving.mixed_batch_logits(model, tok, prompts[:3], {list(NAMES2)}, chat=False)"""],
    context_names=("model", "tok", "prompts"),
)


# --- q3 -------------------------------------------------------------------------------------------

ADAPTER3 = "code"


def _batch_logits(model, tok, rows, name: str):
    """The rows' last-position logits, all through adapter ``name`` (or the base model)."""
    from labkit import serving

    if name == serving.BASE:
        with model.disable_adapter():
            return serving.logits(model, tok, rows).cpu()
    previous = model.active_adapter
    model.set_adapter(name)
    try:
        return serving.logits(model, tok, rows).cpu()
    finally:
        model.set_adapter(previous)


def _check_q3(answer, model, tok, prompts):
    import torch
    from peft.tuners.tuners_utils import BaseTunerLayer

    from labkit import serving

    if not isinstance(answer, torch.nn.Module):
        return f"give the merged model, not {type(answer).__name__}"
    if answer is model.get_base_model() or answer is model:
        return ("that is the serving model itself: merging into it removes its adapters (the notebook's "
                "`model` now serves only one tenant). Merge into a copy: copy.deepcopy(model); reload "
                "`model` with serving.load_adapters(labkit.load_model()[0], adapters)")
    if hasattr(answer, "peft_config") or any(isinstance(m, BaseTunerLayer) for m in answer.modules()):
        return ("your model still has LoRA layers (the adapter is added at every forward pass); "
                "merge_and_unload() folds it into the weights and returns a plain model")
    rows = list(prompts[:2])
    got = serving.logits(answer, tok, rows).cpu()
    want = _batch_logits(model, tok, rows, ADAPTER3)
    if _same(got, want):
        return None
    for other in [n for n in (serving.BASE, *model.peft_config) if n != ADAPTER3]:
        ref = _batch_logits(model, tok, rows, other)
        if _same(got, ref):
            if other == serving.BASE:
                return ("your model gives the base model's outputs: nothing was merged (unload() drops the "
                        "adapters; merge_and_unload() adds the active one into the weights first)")
            return (f"your merged model gives the {other} adapter's outputs: merge_and_unload merges the "
                    f"active adapter; set_adapter('{ADAPTER3}') first")
    return (f"your model's logits differ from the {ADAPTER3} adapter's by up to "
            f"{(got - want).abs().max().item():.3g}: merge the {ADAPTER3} adapter into a copy of `model`")


q3 = Exercise(
    name="Exercise 3",
    level="harder",
    question=f"""
**Merge for a dedicated deployment.** One tenant (**{ADAPTER3}**) gets its own server: merge its adapter
into the weights of a **copy** of `model` (so that `model` keeps serving all three) and give the merged,
plain model (no LoRA layers left). The check compares its logits on `prompts[:2]` with `model` running
the {ADAPTER3} adapter. Why must the copy's active adapter be set before merging?
""",
    check_answer=_check_q3,
    hint_text=(f"clone = copy.deepcopy(model); clone.set_adapter('{ADAPTER3}'); answer = clone.merge_and_unload() "
               "(it merges the active adapter and drops the others)."),
    solution_code=f"""
import copy
clone = copy.deepcopy(model)
clone.set_adapter("{ADAPTER3}")
answer = clone.merge_and_unload()
""",
    wrong=["""import copy
clone = copy.deepcopy(model)
clone.set_adapter("medical")
answer = clone.merge_and_unload()""",
           """import copy
answer = copy.deepcopy(model).unload()""",
           f"""import copy
answer = copy.deepcopy(model)
answer.set_adapter("{ADAPTER3}")"""],
    context_names=("model", "tok", "prompts"),
)
