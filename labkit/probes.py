"""Probes: small, fixed tests of what a model knows, scored before and after tuning.

- cloze items   ``{"prompt": "The capital of France is", "answer": " Paris"}``: right when greedy
  decoding would produce exactly the answer's tokens.
- sense probes  ``{"word", "sense", "prompt", "continuation"}``: the probability of a continuation
  that signals one sense of an ambiguous word ("discharge": a patient's, or a capacitor's).
"""
from __future__ import annotations

import torch

from .predictions import _device, continuation_logprob


@torch.no_grad()
def cloze_correct(model, tokenizer, prompt: str, answer: str) -> bool:
    """True when the model's most likely token at every answer position is the answer's
    (exactly what greedy decoding would write)."""
    p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    a_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([p_ids + a_ids], device=_device(model))
    predicted = model(input_ids=ids).logits[0, len(p_ids) - 1:-1].argmax(-1).tolist()
    return predicted == a_ids


def cloze_accuracy(model, tokenizer, items) -> float:
    """Share of cloze items the model gets right (0 to 1)."""
    items = list(items)
    if not items:
        raise ValueError("cloze_accuracy needs at least one item")
    return sum(cloze_correct(model, tokenizer, it["prompt"], it["answer"]) for it in items) / len(items)


def sense_table(model, tokenizer, probes):
    """One row per probe: word, sense, prompt, continuation and log P(continuation | prompt)."""
    import pandas as pd

    rows = []
    for p in probes:
        rows.append({"word": p["word"], "sense": p["sense"], "prompt": p["prompt"],
                     "continuation": p["continuation"],
                     "logprob": continuation_logprob(model, tokenizer, p["prompt"], p["continuation"])})
    return pd.DataFrame(rows)
