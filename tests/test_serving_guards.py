"""Hot-swapping adapters onto one served model (issue #18): a bad adapter is refused before PEFT
sees it, a failed load leaves the model exactly as it was, and shell commands are quoted."""
import json
import shlex
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from labkit import serving
from labkit.toy import toy_model

PROMPTS = ["The capital of France is", "def add(a, b):"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """One saved adapter (r=4, random non-zero weights) on the toy model."""
    from peft import LoraConfig, get_peft_model

    model, _ = toy_model()
    torch.manual_seed(1)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    model = get_peft_model(model, cfg, adapter_name="medical")
    return serving.save_adapter(model, tmp_path_factory.mktemp("adapters") / "medical", "medical")


@pytest.fixture
def served(saved):
    """A serving model with ``medical`` loaded and active, and its tokenizer."""
    base, tok = toy_model()
    return serving.load_adapters(base, {"medical": saved}), tok


def snapshot(model, tok):
    """What a failed load must not change: adapters, the active one, the layers, the outputs."""
    return {"adapters": sorted(getattr(model, "peft_config", None) or ()),
            "active": getattr(model, "active_adapter", None),
            "layers": [(n, type(m).__name__) for n, m in model.named_modules()],
            "grad": {n: p.requires_grad for n, p in model.named_parameters()},
            "logits": serving.logits(model, tok, PROMPTS)}


def assert_same(before, after):
    logits = before.pop("logits"), after.pop("logits")
    assert before == after
    assert torch.equal(*logits)


def broken_copy(saved, tmp_path, config=None, tensors=None):
    """A copy of the adapter with ``config`` keys changed and ``tensors(dict)`` applied."""
    folder = tmp_path / "broken adapter"
    shutil.copytree(saved, folder)
    if config:
        cfg = json.loads((folder / serving.CONFIG_FILE).read_text())
        (folder / serving.CONFIG_FILE).write_text(json.dumps({**cfg, **config}))
    if tensors:
        weights = load_file(folder / serving.WEIGHTS_FILE)
        tensors(weights)
        save_file(weights, folder / serving.WEIGHTS_FILE)
    return folder


def first(weights, part):
    return next(k for k in sorted(weights) if part in k)


def poison(value):
    def apply(weights):
        weights[first(weights, "lora_B")][0, 0] = value
    return apply


def drop_b(weights):
    del weights[first(weights, "lora_B")]


BROKEN = {
    "r disagrees with the tensors": ({"r": 8}, None, r"not rank r=8 as adapter_config.json says"),
    "r is a word": ({"r": "eight"}, None, r"r='eight'; the LoRA rank must be a whole number"),
    "r is zero": ({"r": 0}, None, r"r=0; the LoRA rank must be a whole number, at least 1"),
    "lora_alpha is not a number": ({"lora_alpha": "16"}, None, r"lora_alpha='16'; it must be a number"),
    "a NaN weight": (None, poison(float("nan")), r"lora_B.weight holds NaN or infinite values"),
    "an infinite weight": (None, poison(float("inf")), r"lora_B.weight holds NaN or infinite values"),
    "lora_A without lora_B": (None, drop_b, r"lora_A.weight has no lora_B.weight"),
}


@pytest.mark.parametrize("case", BROKEN)
def test_a_broken_adapter_is_refused_and_the_served_model_is_unchanged(served, saved, tmp_path, case):
    model, tok = served
    config, tensors, message = BROKEN[case]
    folder = broken_copy(saved, tmp_path, config, tensors)
    before = snapshot(model, tok)
    with pytest.raises(serving.AdapterError, match=message) as refused:
        serving.load_adapters(model, {"legal": folder})
    assert str(folder) in str(refused.value)
    assert_same(before, snapshot(model, tok))
    serving.load_adapters(model, {"legal": saved})  # the name is free: nothing half-registered
    assert sorted(model.peft_config) == ["legal", "medical"]


def test_a_broken_adapter_leaves_a_plain_base_model_plain(saved, tmp_path):
    base, tok = toy_model()
    before = snapshot(base, tok)
    with pytest.raises(serving.AdapterError, match="r='eight'"):
        serving.load_adapters(base, {"medical": saved, "legal": broken_copy(saved, tmp_path, {"r": "eight"})})
    assert_same(before, snapshot(base, tok))


@pytest.mark.parametrize("name, message", [
    (serving.BASE, "'__base__' is reserved"),
    ("medical", r"'medical' is already loaded on this model \(loaded: \['medical'\]\)"),
    ("med.ical", "without dots"), ("", "non-empty")])
def test_reserved_and_duplicate_names_are_refused(served, saved, name, message):
    model, tok = served
    before = snapshot(model, tok)
    with pytest.raises(ValueError, match=message):
        serving.load_adapters(model, {name: saved})
    assert_same(before, snapshot(model, tok))


def fail_in_peft(monkeypatch, after: int = 0):
    """PEFT itself fails while copying the weights in (after it registered the adapter), from the
    load number ``after`` on."""
    import peft.peft_model

    real, calls = peft.peft_model.set_peft_model_state_dict, []

    def fail(*args, **kwargs):
        calls.append(1)
        if len(calls) > after:
            raise RuntimeError("simulated failure inside PEFT")
        return real(*args, **kwargs)

    monkeypatch.setattr(peft.peft_model, "set_peft_model_state_dict", fail)


def test_a_load_that_fails_inside_peft_is_undone(served, saved, monkeypatch):
    model, tok = served
    before = snapshot(model, tok)
    fail_in_peft(monkeypatch)
    with pytest.raises(serving.AdapterError, match=r"medical: PEFT could not load adapter 'legal' "
                                                   r"\(RuntimeError: simulated failure inside PEFT\)"):
        serving.load_adapters(model, {"legal": saved})
    assert_same(before, snapshot(model, tok))
    monkeypatch.undo()
    serving.load_adapters(model, {"legal": saved})
    assert sorted(model.peft_config) == ["legal", "medical"]


@pytest.mark.parametrize("after", [0, 1], ids=["first adapter fails", "second adapter fails"])
def test_a_load_that_fails_inside_peft_leaves_a_plain_base_model_plain(saved, monkeypatch, after):
    base, tok = toy_model()
    before = snapshot(base, tok)
    fail_in_peft(monkeypatch, after)
    failing = ["medical", "legal"][after]
    with pytest.raises(serving.AdapterError, match=f"PEFT could not load adapter '{failing}'"):
        serving.load_adapters(base, {"medical": saved, "legal": saved})
    assert not hasattr(base, "peft_config")
    assert_same(before, snapshot(base, tok))
    monkeypatch.undo()
    assert list(serving.load_adapters(base, {"medical": saved}).peft_config) == ["medical"]


def test_vllm_command_quotes_every_path(saved, tmp_path):
    folder = tmp_path / "my adapters; rm -rf ~" / "medical"
    shutil.copytree(saved, folder)
    command = serving.vllm_command("org/model", {"medical": folder, "legal": "/not here/legal"})
    words = shlex.split(command.replace("\\\n", " "))
    assert words[:3] == ["vllm", "serve", "org/model"]
    modules = words[words.index("--lora-modules") + 1:words.index("--max-loras")]
    assert modules == [f"medical={folder.resolve()}", "legal=/not here/legal"]


def test_loading_onto_the_same_base_again_still_works(saved):
    """A notebook cell re-run: PEFT wrapped ``base`` in place the first time; the same names load
    again (only a ``PeftModel`` refuses a name it already has)."""
    base, tok = toy_model()
    first_run = serving.logits(serving.load_adapters(base, {"medical": saved}), tok, PROMPTS)
    again = serving.load_adapters(base, {"medical": saved})
    assert list(again.peft_config) == ["medical"]
    assert torch.equal(serving.logits(again, tok, PROMPTS), first_run)
