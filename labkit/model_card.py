"""What a saved adapter says about itself, so that it works on another machine and a reader knows
what it is: the hub id of its base model, where the lab's local base weights came from, and a
model card (``README.md``) with the data, prompt format, method, settings and measured results.

    base_hub_id(model)                    # "HuggingFaceTB/SmolLM2-135M-Instruct" for the offline model
    local_weights_note("HuggingFaceTB/SmolLM2-135M-Instruct")  # dequantised from Q4_1: counted in the file
    adapter_card(adapter_config, info)    # the README.md text (save_adapter writes it)
    prediction_gap(local, original, tok, prompts)  # how far two copies of one model disagree

Why the hub id: PEFT records the base model's ``name_or_path``, which for the offline model is a
folder in this machine's cache; on any other machine ``AutoPeftModel`` cannot find it, and a hub
page would link to nothing. The hub id is what vLLM, TGI and a hub user load.

Why the note on local weights: the offline model is dequantised from a 4-bit GGUF, so an adapter
trained here was trained against slightly different weights than the original ones it will be
served with. How far apart the two are is measured by :func:`prediction_gap` where both can be
loaded (the original needs the hub); offline it is not measured, and the card says so.
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import torch

from .models import REGISTRY, converted_path, looks_like_path, packaged_gguf_path

# Which GGUF tensor types hold 4-bit numbers (llama.cpp's quantisation names).
FOUR_BIT_TYPES = ("Q4_0", "Q4_1", "Q4_K", "IQ4_NL", "IQ4_XS")


def _same_folder(a, b) -> bool:
    try:
        return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()
    except (OSError, RuntimeError):
        return False


def base_hub_id(model) -> str | None:
    """The hub id of ``model``'s base (a ``PeftModel`` or a plain model), or None when it has none
    (a local folder that is not the lab's converted copy of a registry model, the toy model)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    name = str(getattr(base, "name_or_path", "") or getattr(base.config, "_name_or_path", "") or "")
    if not name:
        return None
    for spec in REGISTRY.values():
        if name in (spec.name, spec.hub_id) or _same_folder(name, converted_path(spec)):
            return spec.hub_id
    if looks_like_path(name) or Path(name).expanduser().exists():
        return None
    try:
        validate_repo_id(name)
    except HFValidationError:
        return None
    return name


# GGUF metadata value types -> bytes (8: string, 9: array are read item by item)
_GGUF_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


def gguf_tensor_types(path) -> dict:
    """``{tensor type: count}`` from a GGUF file's header, read directly: the tokenizer's arrays are
    skipped, not parsed (``gguf.GGUFReader`` parses them, about 15 s of CPU for SmolLM2's file)."""
    import struct

    from gguf import GGMLQuantizationType

    with open(path, "rb") as f:
        def read(fmt):
            return struct.unpack("<" + fmt, f.read(struct.calcsize("<" + fmt)))[0]

        def skip(kind):
            if kind == 8:
                f.seek(read("Q"), 1)
            elif kind == 9:
                item, count = read("I"), read("Q")
                if item in _GGUF_SIZES:
                    f.seek(_GGUF_SIZES[item] * count, 1)
                else:
                    for _ in range(count):
                        skip(item)
            else:
                f.seek(_GGUF_SIZES[kind], 1)

        if f.read(4) != b"GGUF" or read("I") < 2:
            raise ValueError(f"{path}: not a GGUF file (version 2 or later)")
        n_tensors, n_kv = read("Q"), read("Q")
        for _ in range(n_kv):
            f.seek(read("Q"), 1)  # the key
            skip(read("I"))
        types = {}
        for _ in range(n_tensors):
            f.seek(read("Q"), 1)  # the name
            f.seek(8 * read("I"), 1)  # the dimensions
            name = GGMLQuantizationType(read("I")).name
            types[name] = types.get(name, 0) + 1
            f.seek(8, 1)  # the offset
    return types


@lru_cache(maxsize=None)
def local_weights_note(hub_id: str) -> dict | None:
    """For a base the lab loads from a packaged GGUF (the offline model): the file, how many of its
    tensors were 4-bit (counted in the file now), and that the gap to the original weights is not
    measured here. None for a base loaded from its original weights."""
    spec = next((s for s in REGISTRY.values() if s.hub_id == hub_id), None)
    gguf = packaged_gguf_path(spec) if spec else None
    if gguf is None:
        return None
    types = gguf_tensor_types(gguf)
    four_bit = sum(n for k, n in types.items() if k in FOUR_BIT_TYPES)
    return {"file": gguf.name, "tensors": sum(types.values()), "four_bit_tensors": four_bit, "tensor_types": types,
            "prediction_gap": None,
            "why_not_measured": "the original weights are not available offline; this copy is all the lab has",
            "measure_with": "labkit.model_card.prediction_gap(local_model, original_model, tokenizer, prompts)"}


@torch.no_grad()
def prediction_gap(model_a, model_b, tokenizer, prompts) -> dict:
    """How far two copies of one model (the lab's dequantised weights and the original ones) disagree
    on the next token after each prompt: the share of prompts with the same top token, the mean KL
    divergence KL(a || b) in nats, and the largest absolute logit difference."""
    if not prompts:
        raise ValueError("prompts is empty: pass a few texts to compare the models on")
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    batch = tokenizer(list(prompts), return_tensors="pt", padding=True, add_special_tokens=False)
    a, b = (m(**batch.to(next(m.parameters()).device)).logits[:, -1, :].float().cpu() for m in (model_a, model_b))
    if a.shape != b.shape:
        raise ValueError(f"the models have different vocabularies ({a.shape[-1]} and {b.shape[-1]} logits)")
    log_a, log_b = a.log_softmax(-1), b.log_softmax(-1)
    kl = (log_a.exp() * (log_a - log_b)).sum(-1)
    return {"prompts": len(prompts), "same_next_token": float((a.argmax(-1) == b.argmax(-1)).float().mean()),
            "mean_kl_nats": float(kl.mean()), "max_abs_logit_diff": float((a - b).abs().max())}


# --- the card ---------------------------------------------------------------------------------

def method_of(adapter_config: dict, info: dict | None = None) -> str:
    """LoRA, DoRA or QLoRA (a LoRA adapter trained on a 4-bit base: its config is a plain LoRA's)."""
    train = (info or {}).get("train") or {}
    if adapter_config.get("use_dora"):
        return "DoRA"
    if str(train.get("method", "")).lower() == "qlora":
        return "QLoRA"
    return "LoRA"


def _table(values: dict) -> list[str]:
    rows = ["| setting | value |", "|---|---|"]
    rows += [f"| {k} | {json.dumps(v, ensure_ascii=False) if isinstance(v, (dict, list)) else v} |"
             for k, v in values.items() if v is not None]
    return rows


def adapter_card(adapter_config: dict, info: dict | None = None) -> str:
    """The model card of an adapter: YAML metadata the hub reads (``base_model``, ``library_name``),
    then its base, data, prompt format, method, settings and measured results. What ``info`` does
    not say (``data``, ``prompt_format``, ``template``, ``results``...) is written as not recorded."""
    info = info or {}
    base = adapter_config.get("base_model_name_or_path") or "unknown"
    portable = not looks_like_path(str(base)) and base != "unknown"
    method = method_of(adapter_config, info)
    note = local_weights_note(base) if portable else None
    meta = ["---", "library_name: peft"] + ([f"base_model: {base}"] if portable else []) + [
        "tags:", f"- {method.lower()}", "- fine-tuning-lab", "---", ""]
    out = [f"# {method} adapter for {base}", "",
           f"Made by Fine-Tuning Lab (notebook {info.get('notebook', 'not recorded')}).", "", "## Base model", ""]
    if portable:
        out.append(f"`{base}` (the hub id, recorded in `adapter_config.json` as `base_model_name_or_path`).")
    else:
        out.append(f"`{base}`: a local folder, not a hub id; this adapter loads only where that folder exists.")
    if note:
        out += ["", f"**Trained on local weights dequantised from a 4-bit GGUF**: `{note['file']}`, in which "
                f"{note['four_bit_tensors']} of {note['tensors']} tensors are 4-bit ({note['tensor_types']}). "
                "Served against the original weights (vLLM, TGI, a hub user), the base differs slightly from the "
                f"one it was trained on. How far their predictions differ: not measured ({note['why_not_measured']}); "
                f"where both load, measure it with `{note['measure_with']}`."]
    data = info.get("data")
    out += ["", "## Data", "", (json.dumps(data, ensure_ascii=False) if isinstance(data, (dict, list)) else str(data))
            if data else "Not recorded (pass `info={'data': ...}` to `labkit.serving.save_adapter`)."]
    if info.get("domain"):
        out.append(f"Domain: {info['domain']}.")
    fmt, template = info.get("prompt_format"), info.get("template")
    out += ["", "## Prompt format", ""]
    out.append(f"Format: **{fmt}**." if fmt else "Not recorded: prompt it as it was trained (plain text, or the "
               "base model's chat template).")
    if template:
        out += ["", "```", str(template), "```"]
    out += ["", "## Method and settings", "", f"{method} (PEFT).", ""]
    out += _table({k: adapter_config.get(k) for k in ("r", "lora_alpha", "lora_dropout", "target_modules",
                                                        "use_dora", "use_rslora", "task_type")})
    train = info.get("train") or {}
    if train:
        keep = ("method", "learning_rate", "steps", "batch_size", "max_length", "schedule", "warmup_steps",
                "weight_decay", "mixed_precision", "packing", "seed")
        out += ["", "Training (`labkit.TrainConfig`):", ""] + _table({k: train.get(k) for k in keep})
    results = info.get("results")
    out += ["", "## Results measured in the run that saved it", ""]
    out += _table(results) if results else ["Not recorded (pass `info={'results': {...}}` to `save_adapter`)."]
    out += ["", "## Load it", "", "```python", "from peft import PeftModel",
            "from transformers import AutoModelForCausalLM", "",
            f"base = AutoModelForCausalLM.from_pretrained({base!r})",
            "model = PeftModel.from_pretrained(base, 'path/or/hub-id/of/this/adapter')", "```", ""]
    return "\n".join(meta + out)
