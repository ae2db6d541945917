import math

import pytest
import torch
import torch.nn.functional as F

from labkit.predictions import (chat_prompt, continuation_logprob, continuation_prob, generate, generate_many,
                                next_token_distribution, next_token_logits, perplexity, sample_step)


def test_top_k_is_sorted_and_sums_to_at_most_one(toy):
    model, tok = toy
    table = next_token_distribution(model, tok, "The capital", k=10)
    probs = list(table["probability"])
    assert len(table) == 10 and probs == sorted(probs, reverse=True)
    assert 0 < sum(probs) <= 1 + 1e-6
    full = next_token_distribution(model, tok, "The capital", k=len(tok))
    assert full["probability"].sum() == pytest.approx(1.0, abs=1e-5)


def test_temperature_flattens_and_sharpens(toy):
    model, tok = toy
    logits = torch.randn(len(tok))
    model_logits = next_token_logits(model, tok, "The")
    hot = next_token_distribution(model, tok, "The", k=1, temperature=5.0)["probability"][0]
    cold = next_token_distribution(model, tok, "The", k=1, temperature=0.2)["probability"][0]
    assert cold > hot
    assert model_logits.shape == logits.shape
    with pytest.raises(ValueError, match="temperature"):
        next_token_distribution(model, tok, "The", temperature=0)


def test_continuation_probability_matches_a_manual_softmax(toy):
    model, tok = toy
    prompt, cont = "The quick brown", " fox jumps"
    p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    c_ids = tok(cont, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([p_ids + c_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0]
    manual = 0.0
    for j, token in enumerate(c_ids):
        probs = torch.exp(logits[len(p_ids) - 1 + j]) / torch.exp(logits[len(p_ids) - 1 + j]).sum()
        manual += math.log(float(probs[token]))
    assert continuation_logprob(model, tok, prompt, cont) == pytest.approx(manual, abs=1e-4)
    assert continuation_prob(model, tok, prompt, cont) == pytest.approx(math.exp(manual), rel=1e-4)


def test_perplexity_matches_the_mean_token_loss(toy):
    model, tok = toy
    texts = ["The quick brown fox jumps over the lazy dog.", "One, two, three."]
    nll, n = 0.0, 0
    for t in texts:
        ids = tok(t, return_tensors="pt", add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, :-1]
        nll += float(F.cross_entropy(logits, ids[0, 1:], reduction="sum"))
        n += ids.shape[1] - 1
    assert perplexity(model, tok, texts, batch_size=2) == pytest.approx(math.exp(nll / n), rel=1e-4)
    with pytest.raises(ValueError):
        perplexity(model, tok, [])


def test_generation_greedy_is_repeatable_and_chat_uses_the_template(toy):
    model, tok = toy
    a = generate(model, tok, "The capital", max_new_tokens=5)
    assert a == generate(model, tok, "The capital", max_new_tokens=5)
    assert "<|im_start|>user\nhi" in chat_prompt(tok, "hi")
    first = int(next_token_logits(model, tok, "The capital").argmax())   # greedy: the most likely token
    assert generate(model, tok, "The capital", max_new_tokens=1) == tok.decode([first], skip_special_tokens=True)
    assert generate(model, tok, "hi", chat=True, max_new_tokens=3) == generate(model, tok, chat_prompt(tok, "hi"),
                                                                               max_new_tokens=3)


def test_generate_many_samples_n_per_text_in_order_and_restores_the_mode(toy):
    model, tok = toy
    model.train()
    texts = ["The capital", "hi"]
    many = generate_many(model, tok, texts, max_new_tokens=4, temperature=1.0, seed=3, n=2, batch_size=1)
    assert len(many) == 4 and all(set(r) == {"text", "stopped"} for r in many) and model.training
    assert many == generate_many(model, tok, texts, max_new_tokens=4, temperature=1.0, seed=3, n=2, batch_size=1)
    model.eval()
    greedy = [generate(model, tok, t, max_new_tokens=4) for t in texts]   # the n rows of a text follow each other
    assert [r["text"] for r in generate_many(model, tok, texts, max_new_tokens=4, n=2, batch_size=1)] == [
        greedy[0], greedy[0], greedy[1], greedy[1]]
    with pytest.raises(ValueError, match="empty"):
        generate_many(model, tok, [""], max_new_tokens=2)


def test_every_generating_helper_goes_through_generate_many(toy):
    """rlhf's answers, serving's replies and scoring's batch give what generate() gives."""
    from labkit import rlhf, scoring, serving

    model, tok = toy
    greedy = generate(model, tok, "Hi?", chat=True, max_new_tokens=5)
    assert rlhf.answers(model, tok, ["Hi?"], max_new_tokens=5) == [greedy.strip()]
    assert serving.generate(model, tok, ["Hi?"], max_new_tokens=5) == [greedy]
    assert scoring.generate_batch(model, tok, [chat_prompt(tok, "Hi?")], max_new_tokens=5)[0]["text"] == greedy.strip()


def test_sample_step_draws_from_the_top_k(toy):
    model, tok = toy
    table, token = sample_step(model, tok, "The", k=5, generator=torch.Generator().manual_seed(0))
    assert token in list(table["token"])
