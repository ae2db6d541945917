"""Integration: the real packaged model predicts, generates and trains."""
import pytest

from labkit import generate, next_token_distribution
from labkit.training import train

pytestmark = pytest.mark.model


def test_it_knows_the_capital_of_france(real_model):
    model, tok = real_model
    table = next_token_distribution(model, tok, "The capital of France is", k=5)
    assert table["token"][0] == " Paris" and table["probability"][0] > 0.3


def test_raw_text_is_continued_chat_is_answered(real_model):
    model, tok = real_model
    raw = generate(model, tok, "Write a poem about summer", max_new_tokens=20)
    chat = generate(model, tok, "Write a poem about summer", chat=True, max_new_tokens=20)
    assert raw != chat and raw.strip() and chat.strip()


def test_same_seed_same_losses_on_the_real_model(toy_text):
    from labkit import load_model

    runs = []
    for _ in range(2):
        model, tok = load_model()
        runs.append(train(model, tok, toy_text, method="lora", steps=2, batch_size=2, max_length=32,
                          seed=1).history.losses)
    assert runs[0] == runs[1]
