"""Loading: the registry, the packaged offline model, its cache, 4-bit, and clear errors."""
import json
import re

import pytest
import torch

from labkit import models
from labkit.models import REGISTRY, ModelUnavailable, count_parameters, load_model, pick_device


def test_registry_covers_the_lab_models():
    ids = {s.hub_id for s in REGISTRY.values()}
    for hub_id in ("HuggingFaceTB/SmolLM2-135M", "HuggingFaceTB/SmolLM2-135M-Instruct",
                   "HuggingFaceTB/SmolLM2-360M", "HuggingFaceTB/SmolLM2-360M-Instruct",
                   "Qwen/Qwen2.5-0.5B", "Qwen/Qwen2.5-0.5B-Instruct"):
        assert hub_id in ids


@pytest.mark.parametrize("cuda, mps, env, expected", [
    (True, False, None, "cuda"), (True, True, None, "cuda"), (False, False, None, "cpu"),
    (False, True, None, "cpu"),      # a Mac: the tested CPU path unless MPS is opted into ...
    (False, True, "mps", "mps"),     # ... with LABKIT_DEVICE=mps
    (True, False, "cpu", "cpu")])    # LABKIT_DEVICE=cpu keeps the lab off a GPU
def test_auto_device_decides_from_the_hardware(monkeypatch, cuda, mps, env, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    monkeypatch.delenv("LABKIT_DEVICE", raising=False)
    if env:
        monkeypatch.setenv("LABKIT_DEVICE", env)
    assert pick_device("auto") == expected


def test_mps_is_opt_in_and_bad_devices_are_refused(monkeypatch, fake_mac):
    assert pick_device() == "cpu" and pick_device("mps") == "mps"
    monkeypatch.setenv("LABKIT_DEVICE", "metal")
    with pytest.raises(ValueError, match="LABKIT_DEVICE='metal' is not a device"):
        pick_device()
    monkeypatch.setenv("LABKIT_DEVICE", "cuda")
    with pytest.raises(ValueError, match="LABKIT_DEVICE='cuda', but no CUDA GPU"):
        pick_device()
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ValueError, match="device='mps', but Apple's MPS is not available"):
        pick_device("mps")


def test_bad_dtype_and_quantization_are_refused():
    with pytest.raises(ValueError, match="dtype"):
        load_model(dtype="int3")
    with pytest.raises(ValueError, match="quantization"):
        load_model(quantization="2bit")


@pytest.mark.model
def test_offline_uncached_hub_model_names_the_offline_model(tmp_path):
    """In a fresh process, as a learner would run it: huggingface_hub reads HF_HUB_OFFLINE once,
    at import, so setting it inside this test process would not take effect."""
    import os
    import subprocess
    import sys

    code = ("import labkit\n"
            "try:\n    labkit.load_model('qwen2.5-0.5b')\n"
            "except labkit.models.ModelUnavailable as e:\n    print('ERROR:', e)\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300).stdout
    assert "ERROR:" in out, out
    assert "smollm2-135m-instruct" in out and "HF_HUB_OFFLINE=1" in out


@pytest.mark.model
def test_packaged_model_converts_once_then_loads_from_cache(monkeypatch):
    """The second load reads the converted safetensors and never the GGUF again (how fast that is:
    benchmarks/bench_load.py)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    load_model()  # converts if the cache is cold
    folder = models.converted_path(REGISTRY["smollm2-135m-instruct"])
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config
    written = (folder / "model.safetensors").stat().st_mtime_ns

    def no_gguf(spec):
        raise AssertionError("the cached model was converted again from the GGUF")

    monkeypatch.setattr(models, "packaged_gguf_path", no_gguf)
    assert models.resolve("smollm2-135m-instruct")[0] == str(folder)
    model, tok = load_model()
    assert (folder / "model.safetensors").stat().st_mtime_ns == written
    assert 134e6 < count_parameters(model) < 135e6
    assert not any(p.dtype != torch.float32 for p in model.parameters())
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False).startswith("<|im_start|>")


@pytest.mark.model
def test_four_bit_load_uses_nf4_and_a_third_of_the_memory(real_model):
    fp32, tok = real_model
    q4, _ = load_model(quantization="4bit")
    assert any(type(m).__name__ == "Linear4bit" for m in q4.modules())
    assert models.footprint_bytes(q4) < 0.4 * models.footprint_bytes(fp32)
    assert count_parameters(q4) == count_parameters(fp32)
    from labkit.predictions import next_token_distribution
    assert next_token_distribution(q4, tok, "The capital of France is", k=1)["token"][0] == " Paris"


@pytest.mark.model
def test_weights_are_safetensors_only():
    folder = models.converted_path(REGISTRY["smollm2-135m-instruct"])
    files = {p.suffix for p in folder.iterdir()}
    assert ".safetensors" in files and not files & {".bin", ".pt", ".pkl"}


def test_unreachable_hub_fails_at_once_with_the_offline_model_named(monkeypatch, tmp_path):
    monkeypatch.setattr(models, "hub_reachable", lambda timeout_s=3.0: False)
    monkeypatch.setattr(models, "_cached_on_hub_cache", lambda hub_id: False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    import transformers

    def no_download(*args, **kwargs):   # "at once": no download is tried, so no waiting for its time-outs
        raise AssertionError(f"a download was tried: from_pretrained{args}")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", no_download)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_download)
    with pytest.raises(ModelUnavailable, match="(?s)cannot be reached.*smollm2-135m-instruct"):
        load_model("smollm2-360m")


def no_network(monkeypatch):
    """As on a laptop without a network and without HF_HUB_OFFLINE: any download is an error."""
    import transformers

    monkeypatch.setattr(models, "hub_reachable", lambda timeout_s=3.0: False)
    monkeypatch.setattr(models, "_cached_on_hub_cache", lambda hub_id: False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    def no_download(*args, **kwargs):
        raise AssertionError(f"a download was tried: from_pretrained{args}")

    for auto in ("AutoConfig", "AutoTokenizer", "AutoModelForCausalLM", "AutoModelForSequenceClassification"):
        monkeypatch.setattr(getattr(transformers, auto), "from_pretrained", no_download)


@pytest.mark.parametrize("loader", ["load_tokenizer", "load_reward_model"])
def test_tokenizer_and_reward_model_fail_at_once_offline_like_load_model(monkeypatch, loader):
    """Issue #18: they waited for the download's time-outs (about 47 s), then raised a raw OSError."""
    from labkit import rlhf

    no_network(monkeypatch)
    load = getattr(models, loader, None) or getattr(rlhf, loader)
    with pytest.raises(ModelUnavailable, match=r"(?s)'smollm2-360m'.*cannot be reached.*smollm2-135m-instruct"):
        load("smollm2-360m")


@pytest.mark.parametrize("name", ["./my-modle", "../my-modle", "~/my-modle", "/nowhere/my-modle", "runs/a/b"])
def test_a_path_that_is_no_folder_is_named_as_such(monkeypatch, tmp_path, name):
    """Issue #18: ``load_model("./my-modle")`` said the name was not a valid "Repo id"."""
    no_network(monkeypatch)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    for load in (load_model, models.load_tokenizer):
        with pytest.raises(ValueError, match=f"^no such folder: {re.escape(name)} "):
            load(name)
    (tmp_path / "my-model").mkdir()
    assert models.resolve("~/my-model") == (str(tmp_path / "my-model"), None)


def test_a_name_that_is_no_hub_id_is_refused_with_the_registry_named(monkeypatch):
    no_network(monkeypatch)
    with pytest.raises(ValueError, match="'smollm2 135m' is not a registry name .*smollm2-135m-instruct"):
        load_model("smollm2 135m")
