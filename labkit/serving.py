"""Serve fine-tuned models: one base model in memory, many small LoRA adapters.

    save_adapter(peft_model, "outputs/adapters/medical")       # adapter_model.safetensors + config
    model = load_adapters(base, {"medical": p1, "legal": p2})  # validated first, then PEFT loads
    model.set_adapter("legal")                                  # switch per request
    mixed_batch_logits(model, tok, prompts, ["medical", "legal", "__base__"])  # one forward pass
    serve(model, tok, requests)                                 # a small multi-tenant request loop
    merged_equals_adapter(model, tok, prompts, "medical")       # merge_and_unload changes nothing

Adapter files are checked before PEFT sees them (``validate_adapter``): a missing or unreadable
``adapter_config.json``, a corrupt ``adapter_model.safetensors``, an adapter made for another base
model or with shapes that do not fit raise :class:`AdapterError` naming the file.

Saving never loses work (``labkit.files``): the new adapter is written beside the old one and
swapped in whole, and ``save_adapter`` refuses a folder that is not an adapter's (it would hold
other adapters or notes) instead of deleting it.
"""
from __future__ import annotations

import json
import math
import os
import shlex
import statistics
import time
from fnmatch import fnmatch
from pathlib import Path

import torch

from . import files, model_card
from .predictions import chat_prompt, generate_many

BASE = "__base__"  # PEFT's name for "no adapter" in a mixed batch
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
# What PEFT's save_pretrained writes into an adapter folder (README.md is its model card).
# lab_info.json is labkit's note of how the adapter was made (save_adapter's ``info``).
INFO_FILE = "lab_info.json"
CARD_FILE = "README.md"  # the model card: labkit writes its own over PEFT's template
ADAPTER_FILES = (CONFIG_FILE, WEIGHTS_FILE, "adapter_model.bin", CARD_FILE, INFO_FILE)
# What save_pretrained writes for a full model and its tokenizer (sharded weights included).
CHECKPOINT_FILES = ("*.safetensors", "*.json", "chat_template.jinja", "merges.txt", "tokenizer.model", "README.md")


class AdapterError(ValueError):
    """An adapter folder that cannot be served; the message names the file and the problem."""


# --- on disk ----------------------------------------------------------------------------------

def dir_size_bytes(path) -> int:
    """Bytes of all files under ``path`` (a file's own size if ``path`` is a file)."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def save_full(model, tokenizer, path) -> Path:
    """A full checkpoint (every weight, safetensors), as a full fine-tune must be shipped. It
    replaces an earlier checkpoint in ``path`` as a whole; anything else there is refused."""
    path = Path(path)
    refuse_to_replace(path, "config.json", CHECKPOINT_FILES, "a model checkpoint")
    with files.replacing_folder(path) as new:
        model.save_pretrained(new, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(new)
    return path


def save_adapter(peft_model, path, adapter_name: str | None = None, info: dict | None = None) -> Path:
    """Save one adapter (safetensors) into ``path`` itself: a new folder, or the folder of an
    earlier adapter, replaced as a whole only once the new one is complete (``labkit.files``).
    ``info`` (JSON values: the notebook, the prompt format, the config) is saved beside it as
    ``lab_info.json``, in the same step.

    The adapter is made portable: ``adapter_config.json`` names its base by hub id
    (``HuggingFaceTB/SmolLM2-135M-Instruct`` for the offline model, not the local cache folder),
    and ``README.md`` is a model card (``labkit.model_card``) built from the config and ``info``:
    keys ``data``, ``prompt_format``, ``template``, ``train`` (``TrainConfig.to_dict()``) and
    ``results`` (the run's measured numbers) fill its sections.

    Anything else at ``path`` is refused with :class:`AdapterError`, never deleted: a folder
    holding other things (sibling adapters, notes) is not this adapter's to replace."""
    path = Path(path)
    if not hasattr(peft_model, "peft_config"):
        raise AdapterError(f"{path}: this model has no adapter to save (a full fine-tune is saved whole: "
                           "serving.save_full(model, tokenizer, path))")
    name = adapter_name or peft_model.active_adapter
    refuse_to_replace(path, CONFIG_FILE, ADAPTER_FILES, "an adapter", suggestion=path / name)
    with files.replacing_folder(path) as new:
        # A card already there is updated by PEFT, not built from its template (a tenth of a second
        # saved); it is replaced by labkit's own below.
        (new / CARD_FILE).write_text("---\nlibrary_name: peft\n---\n")
        peft_model.save_pretrained(new, selected_adapters=[name], safe_serialization=True)
        if name != "default":  # PEFT puts a named adapter in a sub-folder: bring its files up
            for f in (new / name).iterdir():
                f.rename(new / f.name)
            (new / name).rmdir()
        config = make_portable(new / CONFIG_FILE, model_card.base_hub_id(peft_model))
        (new / CARD_FILE).write_text(model_card.adapter_card(config, info))
        if info is not None:
            (new / INFO_FILE).write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n")
    return path


def make_portable(config_file, hub_id: str | None) -> dict:
    """Record the base model by its hub id in ``adapter_config.json`` (PEFT writes its local path,
    which no other machine has); return the config. Left as it is when there is no hub id."""
    config = json.loads(Path(config_file).read_text())
    if hub_id:
        config["base_model_name_or_path"] = hub_id
        Path(config_file).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return config


def refuse_to_replace(path, marker: str, allowed, what: str, suggestion=None) -> None:
    """Raise :class:`AdapterError` unless ``path`` is free, an empty folder, or a folder of
    ``what`` (it holds ``marker``) with nothing in it but files matching ``allowed``."""
    path = Path(path)
    if not path.exists() or (path.is_dir() and not any(path.iterdir())):
        return
    if not path.is_dir():
        raise AdapterError(f"{path}: is a file, not a folder; nothing was written. Choose another path.")
    inside = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir())
    shown = ", ".join(inside[:8]) + (f", ... ({len(inside)} in all)" if len(inside) > 8 else "")
    if marker not in inside:
        raise AdapterError(f"{path}: exists and is not {what} folder (it holds {shown}); nothing was written "
                           f"and nothing deleted. Save into a folder of its own, e.g. {suggestion or path / 'new'}")
    others = [n for n in inside if not any(fnmatch(n, pattern) for pattern in allowed)]
    if others:
        raise AdapterError(f"{path}: is {what} folder but also holds {', '.join(others)}, which saving over "
                           "it would delete; nothing was written. Move those elsewhere, or save in another folder.")


# --- validation -------------------------------------------------------------------------------

def _base_of(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _same_base(recorded: str | None, actual: str | None) -> bool:
    """Names are compared by their last component (a hub id and a local copy of it agree)."""
    if not recorded or not actual:
        return True
    def last(name):
        return Path(str(name).rstrip("/")).name.lower()
    return last(recorded) == last(actual)


def validate_adapter(path, base_model, check_name: bool = True) -> dict:
    """Check an adapter folder against the base model before loading it; return its config.

    Checks: the folder and ``adapter_config.json`` exist and parse; the config names a base model
    that matches (``check_name``); ``adapter_model.safetensors`` opens; every LoRA tensor belongs
    to a module of the base model and has the shape that module needs."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_dir():
        files.clean_temps(path.parent)  # a save killed mid-swap: this puts the previous adapter back
    if not path.is_dir():
        raise AdapterError(f"{path}: no such adapter folder")
    cfg_file = path / CONFIG_FILE
    if not cfg_file.is_file():
        raise AdapterError(f"{cfg_file}: missing (an adapter folder needs {CONFIG_FILE} and {WEIGHTS_FILE})")
    try:
        config = json.loads(cfg_file.read_text())
        if not isinstance(config, dict):
            raise ValueError("not a JSON object")
    except (ValueError, UnicodeDecodeError) as e:
        raise AdapterError(f"{cfg_file}: not valid JSON ({e})") from None
    if config.get("peft_type") not in (None, "LORA"):
        raise AdapterError(f"{cfg_file}: peft_type={config.get('peft_type')!r}; only LoRA adapters are served here")
    base = _base_of(base_model)
    actual = getattr(base, "name_or_path", None) or getattr(base.config, "_name_or_path", None)
    if check_name and not _same_base(config.get("base_model_name_or_path"), actual):
        raise AdapterError(f"{cfg_file}: made for base model {config.get('base_model_name_or_path')!r}, "
                           f"but the loaded base model is {actual!r}")
    weights = path / WEIGHTS_FILE
    if not weights.is_file():
        raise AdapterError(f"{weights}: missing (only safetensors adapters are loaded)")
    r = config.get("r")
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise AdapterError(f"{cfg_file}: r={r!r}; the LoRA rank must be a whole number, at least 1")
    alpha = config.get("lora_alpha")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha):
        raise AdapterError(f"{cfg_file}: lora_alpha={alpha!r}; it must be a number")
    modules = dict(base.named_modules())
    try:
        with safe_open(str(weights), "pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for a bad header or a short file
        raise AdapterError(f"{weights}: cannot be read as safetensors ({e})") from None
    if not tensors:
        raise AdapterError(f"{weights}: contains no tensors")
    for key, t in tensors.items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise AdapterError(f"{weights}: tensor {key} holds NaN or infinite values (a diverged training run?)")
    shapes = {k: tuple(t.shape) for k, t in tensors.items()}
    _check_ranks(weights, shapes, None if config.get("rank_pattern") else r)
    for key, shape in shapes.items():
        for part in (".lora_A.", ".lora_B."):
            if part not in key:
                continue
            module_name = key.split(part)[0].removeprefix("base_model.model.")
            module = modules.get(module_name)
            if module is None:
                raise AdapterError(f"{weights}: tensor {key} is for module {module_name!r}, "
                                   "which this base model does not have (another architecture?)")
            in_f, out_f = getattr(module, "in_features", None), getattr(module, "out_features", None)
            if in_f is None:
                continue
            wrong = (part == ".lora_A." and shape[-1] != in_f) or (part == ".lora_B." and shape[0] != out_f)
            if wrong:
                raise AdapterError(f"{weights}: tensor {key} has shape {list(shape)}, but module "
                                   f"{module_name} is {in_f} -> {out_f} (adapter made for another model size?)")
    return config


# --- loading ----------------------------------------------------------------------------------

def _check_ranks(weights, shapes: dict, r: int | None) -> None:
    """Every ``lora_A`` has its ``lora_B`` and both have rank ``r`` (A is r x in, B is out x r);
    with ``r=None`` (a config with a ``rank_pattern``) A and B need only agree with each other."""
    for a_end, b_end in ((".lora_A.weight", ".lora_B.weight"), (".lora_embedding_A", ".lora_embedding_B")):
        a_keys = {k.removesuffix(a_end) for k in shapes if k.endswith(a_end)}
        b_keys = {k.removesuffix(b_end) for k in shapes if k.endswith(b_end)}
        lone = sorted(a_keys ^ b_keys)
        if lone:
            has, lacks = (a_end, b_end) if lone[0] in a_keys else (b_end, a_end)
            raise AdapterError(f"{weights}: tensor {lone[0]}{has} has no {lacks[1:]} (LoRA needs both)")
        for module in sorted(a_keys):
            a, b = shapes[module + a_end], shapes[module + b_end]
            if r is not None and (a[0], b[1]) != (r, r):
                raise AdapterError(f"{weights}: {module}{a_end} has shape {list(a)} and {b_end[1:]} {list(b)}, "
                                   f"not rank r={r} as {CONFIG_FILE} says (the config and the tensors disagree)")
            if a[0] != b[1]:
                raise AdapterError(f"{weights}: {module}{a_end} has rank {a[0]}, but {b_end[1:]} has {b[1]}")


def check_adapter_names(model, names) -> None:
    """Refuse names that cannot be served: empty or dotted, the reserved ``__base__``, or a name
    already loaded on ``model``, a ``PeftModel`` (loading over it would replace that adapter)."""
    from peft import PeftModel

    loaded = set(model.peft_config) if isinstance(model, PeftModel) else set()
    for name in names:
        if not isinstance(name, str) or not name or "." in name:
            raise ValueError(f"adapter name {name!r}: use a non-empty name without dots, such as 'medical'")
        if name == BASE:
            raise ValueError(f"adapter name {BASE!r} is reserved: it means 'no adapter' in a mixed batch")
        if name in loaded:
            raise ValueError(f"adapter name {name!r} is already loaded on this model (loaded: {sorted(loaded)}); "
                             "choose another name, or delete_adapter it first")


def load_adapters(base_model, adapters: dict, check_name: bool = True):
    """Attach every adapter ``{name: folder}`` to ``base_model`` (validated first); the first one
    is active. Returns the ``PeftModel``. Adding adapters to a ``PeftModel`` works too.

    All or nothing: if PEFT still fails on one, every adapter this call added is removed again
    and :class:`AdapterError` names the folder; ``base_model`` is left as it was."""
    from peft import PeftModel

    if not adapters:
        raise ValueError("adapters is empty: pass {name: folder}")
    check_adapter_names(base_model, adapters)
    for name, folder in adapters.items():
        validate_adapter(folder, base_model, check_name=check_name)
    before = _state(base_model)
    model = base_model
    for name, folder in adapters.items():
        try:
            if isinstance(model, PeftModel):
                model.load_adapter(str(folder), adapter_name=name)
            else:
                model = PeftModel.from_pretrained(model, str(folder), adapter_name=name)
        except Exception as e:
            _restore(base_model, model, before)
            raise AdapterError(f"{folder}: PEFT could not load adapter {name!r} ({type(e).__name__}: {e}); "
                               "no adapter of this call was kept, the model is as it was") from e
    model.set_adapter(next(iter(adapters)))
    model.eval()
    return model


def _state(model) -> dict:
    """What :func:`_restore` puts back: loaded adapters, the active one, which weights train."""
    from peft import PeftModel

    return {"adapters": list(getattr(model, "peft_config", None) or ()), "peft_config": "peft_config" in vars(model),
            "active": model.active_adapter if isinstance(model, PeftModel) else None,
            "grad": {n: p.requires_grad for n, p in model.named_parameters()}}


def _restore(base_model, model, before: dict) -> None:
    """Undo a failed load: delete the adapters it added (PEFT's ``delete_adapter``) or, if
    ``base_model`` was a plain model, put its own layers back where PEFT wrapped them."""
    from peft import PeftModel
    from peft.tuners.tuners_utils import BaseTunerLayer

    if before["adapters"]:  # adapters were loaded before (a PeftModel, or a base wrapped by an earlier call)
        if isinstance(model, PeftModel):
            for name in [n for n in model.peft_config if n not in before["adapters"]]:
                model.delete_adapter(name)
            if before["active"]:
                model.set_adapter(before["active"])
    else:
        for name, module in list(base_model.named_modules()):
            if isinstance(module, BaseTunerLayer):
                parent, _, child = name.rpartition(".")
                setattr(base_model.get_submodule(parent), child, module.get_base_layer())
        if not before["peft_config"]:
            vars(base_model).pop("peft_config", None)
    for name, p in base_model.named_parameters():
        p.requires_grad_(before["grad"].get(name, p.requires_grad))


def load_adapter_model(base_model, path, adapter_name: str = "default", check_name: bool = True):
    """One adapter from disk onto a base model (validated first)."""
    return load_adapters(base_model, {adapter_name: path}, check_name=check_name)


# --- outputs ----------------------------------------------------------------------------------

def _encode(tokenizer, prompts, chat: bool = True):
    if chat and getattr(tokenizer, "chat_template", None):
        prompts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                                 add_generation_prompt=True) for p in prompts]
    tokenizer.padding_side = "left"
    return tokenizer(list(prompts), return_tensors="pt", padding=True, add_special_tokens=False)


@torch.no_grad()
def logits(model, tokenizer, prompts, adapter_names=None, chat: bool = True) -> torch.Tensor:
    """The last position's logits for each prompt, shape (batch, vocab). With ``adapter_names``
    (one per prompt; ``"__base__"`` for none) PEFT routes each row through its own adapter."""
    batch = _encode(tokenizer, prompts, chat).to(next(model.parameters()).device)
    kwargs = {} if adapter_names is None else {"adapter_names": list(adapter_names)}
    return model(**batch, **kwargs).logits[:, -1, :].float()


def mixed_batch_logits(model, tokenizer, prompts, adapter_names, chat: bool = True) -> torch.Tensor:
    """One forward pass, a different adapter per row."""
    if len(prompts) != len(adapter_names):
        raise ValueError(f"{len(prompts)} prompts but {len(adapter_names)} adapter_names")
    known = set(model.peft_config) | {BASE}
    unknown = set(adapter_names) - known
    if unknown:
        raise ValueError(f"adapter_names has unknown adapter(s) {sorted(unknown)}; loaded: {sorted(known)}")
    return logits(model, tokenizer, prompts, adapter_names, chat)


def per_adapter_logits(model, tokenizer, prompts, adapter_names, chat: bool = True) -> torch.Tensor:
    """The same rows, one adapter at a time (``set_adapter``): the reference for a mixed batch."""
    previous = model.active_adapter
    rows = []
    for prompt, name in zip(prompts, adapter_names):
        if name == BASE:
            with model.disable_adapter():
                rows.append(logits(model, tokenizer, [prompt], chat=chat)[0])
        else:
            model.set_adapter(name)
            rows.append(logits(model, tokenizer, [prompt], chat=chat)[0])
    model.set_adapter(previous)
    return torch.stack(rows)


def generate(model, tokenizer, prompts, adapter_names=None, max_new_tokens: int = 20, chat: bool = True):
    """Greedy replies, all prompts in one batch; ``adapter_names`` gives each prompt its own adapter
    (PEFT mixed batch). Through ``labkit.predictions.generate_many``."""
    if chat and getattr(tokenizer, "chat_template", None):
        prompts = [chat_prompt(tokenizer, p) for p in prompts]
    return [r["text"] for r in generate_many(model, tokenizer, list(prompts), max_new_tokens,
                                             batch_size=max(1, len(prompts)), adapter_names=adapter_names)]


# --- latency ----------------------------------------------------------------------------------

def switch_latency(model, names, repeats: int = 20) -> dict:
    """Median seconds for ``set_adapter`` to each adapter (it flips which weights are used;
    nothing is copied)."""
    times = {n: [] for n in names}
    for _ in range(repeats):
        for n in names:
            t = time.perf_counter()
            model.set_adapter(n)
            times[n].append(time.perf_counter() - t)
    return {n: statistics.median(v) for n, v in times.items()}


def reload_latency(path, repeats: int = 3) -> float:
    """Median seconds to load a full checkpoint from disk: the cost of "one model per customer"
    when they do not all fit in memory."""
    from transformers import AutoModelForCausalLM

    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        m = AutoModelForCausalLM.from_pretrained(path, use_safetensors=True)
        times.append(time.perf_counter() - t)
        del m
    return statistics.median(times)


# --- a small multi-tenant service -------------------------------------------------------------

def make_requests(prompts_by_adapter: dict, n: int, seed: int = 0) -> list[tuple[str, str]]:
    """``n`` requests ``(adapter, prompt)`` in a random (seeded) order, as tenants would send them."""
    import random

    rng = random.Random(seed)
    names = list(prompts_by_adapter)
    return [(name, rng.choice(prompts_by_adapter[name])) for name in (rng.choice(names) for _ in range(n))]


def serve(model, tokenizer, requests, max_new_tokens: int = 16, batch_size: int = 1,
          max_requests: int = 100):
    """Answer ``requests`` (a list of ``(adapter, prompt)``) in arrival order, ``batch_size`` at a
    time: one request switches with ``set_adapter``; a batch of several is one mixed-adapter
    ``generate``. Bounded by ``max_requests``. Returns ``(log, stats)`` DataFrames: one row per
    request, and per adapter the count and median/95th-percentile latency in milliseconds."""
    import pandas as pd

    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r}: must be at least 1")
    requests = list(requests)[:max_requests]
    log, start = [], time.perf_counter()
    for i in range(0, len(requests), batch_size):
        chunk = requests[i:i + batch_size]
        names, prompts = [c[0] for c in chunk], [c[1] for c in chunk]
        t = time.perf_counter()
        if batch_size == 1:
            model.set_adapter(names[0])
            replies = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens)
        else:
            replies = generate(model, tokenizer, prompts, adapter_names=names, max_new_tokens=max_new_tokens)
        done = time.perf_counter()
        for name, prompt, reply in zip(names, prompts, replies):
            log.append({"request": len(log), "adapter": name, "prompt": prompt, "reply": reply,
                        "latency_ms": 1000 * (done - t), "finished_s": done - start})
    log = pd.DataFrame(log)
    stats = log.groupby("adapter")["latency_ms"].agg(
        requests="count", median_ms="median", p95_ms=lambda s: s.quantile(0.95)).reset_index()
    return log, stats


# --- merging ----------------------------------------------------------------------------------

def merged_equals_adapter(model, tokenizer, prompts, adapter_name: str, atol: float = 1e-4) -> dict:
    """Merge ``adapter_name`` into a copy of the base weights (``merge_and_unload``) and compare
    its logits with the adapter model's. The original model is left as it was."""
    model.set_adapter(adapter_name)
    with_adapter = logits(model, tokenizer, prompts)
    merged = merged_model(model, adapter_name)
    merged_logits = logits(merged, tokenizer, prompts)
    diff = (with_adapter - merged_logits).abs().max().item()
    same_top = bool((with_adapter.argmax(-1) == merged_logits.argmax(-1)).all())
    return {"adapter": adapter_name, "max_abs_logit_diff": diff, "same_next_token": same_top,
            "equal_within_atol": diff <= atol, "atol": atol, "merged_model": merged}


def merged_model(model, adapter_name: str | None = None):
    """A plain model with ``adapter_name`` (default: the active one) added into a copy of the base
    weights (``merge_and_unload``); ``model`` keeps its adapters. Its ``name_or_path`` is the
    base's hub id where there is one (what a card or a GGUF file written from it names as its base)."""
    import copy

    if not hasattr(model, "peft_config"):
        raise ValueError("model has no adapter to merge (a full fine-tune is already a plain model)")
    name = adapter_name or model.active_adapter
    if name not in model.peft_config:
        raise ValueError(f"adapter_name={name!r} is not loaded on this model (loaded: {sorted(model.peft_config)})")
    hub_id = model_card.base_hub_id(model)
    clone = copy.deepcopy(model)
    for other in [n for n in clone.peft_config if n != name]:
        clone.delete_adapter(other)
    clone.set_adapter(name)
    merged = clone.merge_and_unload()
    if hub_id:
        merged.name_or_path = merged.config._name_or_path = hub_id
    return merged.eval()


def save_merged(model, tokenizer, path, adapter_name: str | None = None, info: dict | None = None) -> Path:
    """Merge an adapter (:func:`merged_model`) and save the result in the transformers format
    (``config.json``, ``model.safetensors``, the tokenizer) with a model card naming the base and
    the adapter's settings: what any server that takes a plain model loads, DoRA included."""
    config = model.peft_config[adapter_name or model.active_adapter].to_dict()
    config["base_model_name_or_path"] = model_card.base_hub_id(model) or config.get("base_model_name_or_path")
    merged = merged_model(model, adapter_name)
    path = save_full(merged, tokenizer, path)
    card = model_card.adapter_card(config, info).replace("library_name: peft", "library_name: transformers", 1)
    card = card.replace(" adapter for ", " adapter merged into ", 1)
    (path / CARD_FILE).write_text(card.split("## Load it")[0] + "## Load it\n\n```python\nfrom transformers import "
                                  "AutoModelForCausalLM\n\nmodel = AutoModelForCausalLM.from_pretrained("
                                  "'path/or/hub-id/of/this/model')\n```\n")
    return path


def roundtrip(model, tokenizer, base_model, prompts, adapter_name: str, folder) -> dict:
    """Save ``adapter_name``, load it onto a fresh ``base_model`` and compare logits bit for bit."""
    model.set_adapter(adapter_name)
    before = logits(model, tokenizer, prompts)
    save_adapter(model, folder, adapter_name)
    reloaded = load_adapter_model(base_model, folder, adapter_name)
    after = logits(reloaded, tokenizer, prompts)
    return {"adapter": adapter_name, "identical": bool(torch.equal(before, after)),
            "max_abs_logit_diff": (before - after).abs().max().item(),
            "size_bytes": dir_size_bytes(folder), "reloaded": reloaded}


def find_adapters(root="outputs/adapters", names=("medical", "legal", "code")) -> dict:
    """The adapter folders that exist under ``root`` (from notebooks 05 and 07), by name."""
    root = Path(root)
    return {n: root / n for n in names if (root / n / CONFIG_FILE).is_file()}


def vllm_command(base_model: str, adapters: dict, max_lora_rank: int = 16) -> str:
    """The command that serves the same adapters with vLLM's multi-LoRA server (not run here).
    Every name and path is shell-quoted, so a folder with spaces is safe to paste. A DoRA adapter is
    refused (vLLM rejects its magnitude vectors): serve it merged (:func:`save_merged`)."""
    dora = [n for n, p in adapters.items() if Path(p, CONFIG_FILE).is_file() and adapter_kind(p) == "DoRA"]
    if dora:
        raise AdapterError(f"{', '.join(dora)}: DoRA adapter(s), which vLLM does not load (it rejects "
                           "lora_magnitude_vector); merge and serve the merged model: serving.save_merged(...)")
    modules = " ".join(shlex.quote(f"{n}={Path(p).resolve() if os.path.exists(p) else p}")
                       for n, p in adapters.items())
    return (f"vllm serve {shlex.quote(str(base_model))} \\\n  --enable-lora \\\n  --lora-modules {modules} \\\n"
            f"  --max-loras {len(adapters)} --max-lora-rank {int(max_lora_rank)}")


# --- which servers take which adapter ---------------------------------------------------------

def adapter_kind(folder) -> str:
    """``LoRA``, ``DoRA`` or ``QLoRA`` for a saved adapter (``use_dora`` in its config; QLoRA from
    ``lab_info.json``'s training method: its config is a plain LoRA's)."""
    folder = Path(folder)
    config = json.loads((folder / CONFIG_FILE).read_text())
    info = json.loads((folder / INFO_FILE).read_text()) if (folder / INFO_FILE).is_file() else {}
    return model_card.method_of(config, info)


# What each server does with each kind of adapter (checked 2026-12-01 in their documentation and
# issue trackers; notebook 12 links the sources). A QLoRA adapter is a plain LoRA adapter on disk,
# trained against 4-bit weights: servers load it as LoRA, usually on the unquantised base.
# "merged" means: serve what save_merged (transformers format) or gguf_export writes.
SERVERS = {
    "vLLM": {"LoRA": "yes (--enable-lora --lora-modules)", "QLoRA": "yes, as LoRA",
             "DoRA": "no: it rejects lora_magnitude_vector; serve it merged"},
    "TGI": {"LoRA": "yes (LORA_ADAPTERS)", "QLoRA": "yes, as LoRA", "DoRA": "not documented; serve it merged"},
    "llama.cpp": {"LoRA": "yes: GGUF adapter (--lora) or merged GGUF", "QLoRA": "yes, as LoRA",
                  "DoRA": "merged GGUF only (its LoRA converter rejects DoRA)"},
    "Ollama": {"LoRA": "yes: ADAPTER (safetensors for Llama, Mistral, Gemma; or GGUF) or merged GGUF",
               "QLoRA": "yes, as LoRA", "DoRA": "merged GGUF only"},
    "transformers + PEFT": {"LoRA": "yes", "QLoRA": "yes", "DoRA": "yes"},
}


def servers_for(folder) -> dict:
    """``{server: what it does with this adapter}`` (:data:`SERVERS`, for :func:`adapter_kind`)."""
    kind = adapter_kind(folder)
    return {server: kinds[kind] for server, kinds in SERVERS.items()}


# --- publishing -------------------------------------------------------------------------------

def push_to_hub(folder, repo_id: str, token: str | None = None, private: bool = True, api=None,
                commit_message: str = "Upload from Fine-Tuning Lab") -> str:
    """Upload a saved adapter (or merged model) folder to the Hugging Face hub as ``repo_id``;
    return the commit's URL. Checked first, before any network: the repo id is valid, the folder
    has its model card, and an adapter names its base by hub id (a local path would be useless
    there). ``api`` defaults to ``huggingface_hub.HfApi(token=token)``; log in with
    ``huggingface-cli login`` or pass ``token``. The repository is created (private by default)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    folder = Path(folder)
    try:
        validate_repo_id(repo_id)
        if "/" not in repo_id:
            raise HFValidationError("it needs your user or organisation: 'me/my-adapter'")
    except HFValidationError as e:
        raise ValueError(f"repo_id={repo_id!r} is not a hub repository id ({e})") from None
    if not folder.is_dir():
        raise AdapterError(f"{folder}: no such folder to upload")
    if not (folder / CARD_FILE).is_file():
        raise AdapterError(f"{folder / CARD_FILE}: missing; save with serving.save_adapter or save_merged, "
                           "which write the model card")
    if (folder / CONFIG_FILE).is_file():
        base = json.loads((folder / CONFIG_FILE).read_text()).get("base_model_name_or_path") or ""
        from .models import looks_like_path

        if not base or looks_like_path(base) or Path(base).exists():
            raise AdapterError(f"{folder / CONFIG_FILE}: base_model_name_or_path={base!r} is not a hub id; "
                               "nobody who downloads this adapter could load its base")
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
    api.create_repo(repo_id=repo_id, private=private, exist_ok=True, repo_type="model")
    commit = api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model",
                               commit_message=commit_message)
    return str(getattr(commit, "commit_url", commit))
