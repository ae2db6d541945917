import os

import pytest

os.environ.setdefault("LABKIT_PROFILE", "smoke")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The suite runs one notebook kernel at a time beside its own, idle pytest process, which counts as a
# lab kernel once a test has trained (labkit.threads): without this each kernel would get half the
# cores. The thread sizing's own tests set or clear the variable themselves.
os.environ.setdefault("LABKIT_THREADS", "all")


@pytest.fixture
def toy():
    """A fresh two-layer toy model and its tokenizer (no files needed)."""
    from labkit.toy import toy_model

    return toy_model()


@pytest.fixture(scope="session")
def toy_text():
    from labkit.toy import TOY_TEXT

    return [{"text": t} for t in TOY_TEXT]


@pytest.fixture(scope="session")
def real_model():
    """The packaged SmolLM2-135M-Instruct, loaded once for read-only tests."""
    from labkit import load_model

    return load_model()


@pytest.fixture
def reply_nll():
    """``reply_nll(model, tok, messages, max_length=None)``, by hand: the summed cross-entropy of
    the reply's tokens, each given everything before it (the prompt is fed, not scored), and how
    many reply tokens there are within ``max_length``."""
    import torch

    def nll(model, tok, messages, max_length=None):
        prompt = tok.apply_chat_template(messages[:-1], add_generation_prompt=True)["input_ids"]
        full = tok.apply_chat_template(messages)["input_ids"][:max_length]
        with torch.no_grad():
            logits = model(torch.tensor([full])).logits[0]
        reply = range(len(prompt), len(full))
        targets = torch.tensor([full[i] for i in reply])
        return torch.nn.functional.cross_entropy(logits[[i - 1 for i in reply]], targets, reduction="sum").item(), len(reply)

    return nll


@pytest.fixture
def chunked_head_calls(monkeypatch):
    """A list that grows by one each time TRL's fused, chunked LM head runs (a spy in its place:
    at the name labkit.patches.full_logits_on_cpu swaps, so the swap sees the spy as TRL's head)."""
    import trl.trainer.utils as trl_utils

    calls, chunked = [], trl_utils._ChunkedLogProbFunction
    spy = type("Spy", (), {"apply": staticmethod(lambda *a: calls.append(1) or chunked.apply(*a))})
    monkeypatch.setattr(trl_utils, "_ChunkedLogProbFunction", spy)
    return calls


# Compute capability and name of each GPU, as torch reports them.
FAKE_GPUS = {"T4": ((7, 5), "Tesla T4"), "A100": ((8, 0), "NVIDIA A100-SXM4-40GB")}


@pytest.fixture
def fake_gpu(monkeypatch):
    """``fake_gpu("T4")`` or ``fake_gpu("A100")``: torch answers as on that GPU. A T4 (7.5) only
    emulates bf16, so ``is_bf16_supported()`` says True there and ``including_emulation=False``
    says False; an A100 (8.0) says True either way. No GPU code runs: test decisions, not kernels."""
    import torch
    import transformers  # noqa: F401  (it inspects CUDA at import: import it before faking one)

    import labkit  # noqa: F401

    def fake(kind: str = "T4"):
        capability, name = FAKE_GPUS[kind]
        monkeypatch.delenv("LABKIT_DEVICE", raising=False)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported",
                            lambda including_emulation=True: capability >= (8, 0) or including_emulation)
        return name

    return fake


@pytest.fixture
def fake_mac(monkeypatch):
    """torch answers as on an Apple laptop: no CUDA, Apple's MPS available."""
    import torch

    monkeypatch.delenv("LABKIT_DEVICE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
