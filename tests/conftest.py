import os

import pytest

os.environ.setdefault("LABKIT_PROFILE", "smoke")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


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
def chunked_head_calls(monkeypatch):
    """A list that grows by one each time TRL's fused, chunked LM head runs (a spy in its place)."""
    import trl.trainer.utils as trl_utils

    calls, chunked = [], trl_utils._ChunkedLogProbFunction
    spy = type("Spy", (), {"apply": staticmethod(lambda *a: calls.append(1) or chunked.apply(*a))})
    monkeypatch.setattr(trl_utils, "_ChunkedLogProbFunction", spy)
    return calls
