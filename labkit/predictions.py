"""Look at what a model predicts: next-token distributions, probabilities of given
continuations, perplexity, and generated text with or without the chat template."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _device(model) -> torch.device:
    return next(model.parameters()).device


def chat_prompt(tokenizer, user_text: str, system: str | None = None) -> str:
    """The text the model actually sees when ``user_text`` is sent through the chat template."""
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": user_text}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def _encode(tokenizer, text: str, model) -> torch.Tensor:
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    if ids.shape[1] == 0:
        raise ValueError("prompt is empty: type at least one character")
    return ids.to(_device(model))


@torch.no_grad()
def next_token_logits(model, tokenizer, prompt: str) -> torch.Tensor:
    """The raw scores (logits) the model gives every vocabulary token after ``prompt``."""
    ids = _encode(tokenizer, prompt, model)
    return model(input_ids=ids).logits[0, -1].float().cpu()


def top_k_from_logits(logits: torch.Tensor, tokenizer, k: int = 10, temperature: float = 1.0):
    """The ``k`` most likely next tokens as a table (token, id, probability, logit)."""
    import pandas as pd

    if k < 1:
        raise ValueError(f"top_k must be at least 1, got {k}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    probs = F.softmax(logits / temperature, dim=-1)
    p, idx = probs.topk(min(k, probs.numel()))
    return pd.DataFrame({
        "token": [tokenizer.decode([int(i)]) for i in idx],
        "id": idx.tolist(),
        "probability": p.tolist(),
        "logit": logits[idx].tolist(),
    })


def next_token_distribution(model, tokenizer, prompt: str, k: int = 10, temperature: float = 1.0):
    """Top-``k`` next tokens after ``prompt``, with probabilities at ``temperature``."""
    return top_k_from_logits(next_token_logits(model, tokenizer, prompt), tokenizer, k, temperature)


@torch.no_grad()
def continuation_logprob(model, tokenizer, prompt: str, continuation: str) -> float:
    """log P(continuation | prompt), summed over the continuation's tokens."""
    p_ids = _encode(tokenizer, prompt, model)
    c_ids = _encode(tokenizer, continuation, model)
    ids = torch.cat([p_ids, c_ids], dim=1)
    logprobs = F.log_softmax(model(input_ids=ids).logits[0, :-1].float(), dim=-1)
    positions = torch.arange(p_ids.shape[1] - 1, ids.shape[1] - 1, device=ids.device)
    return float(logprobs[positions, ids[0, positions + 1]].sum())


def continuation_prob(model, tokenizer, prompt: str, continuation: str) -> float:
    """P(continuation | prompt): the product of its tokens' probabilities."""
    return math.exp(continuation_logprob(model, tokenizer, prompt, continuation))


def continuation_table(model, tokenizer, prompt: str, continuations: list[str]):
    """Probability and first-token logit of each continuation after ``prompt``."""
    import pandas as pd

    logits = next_token_logits(model, tokenizer, prompt)
    rows = []
    for c in continuations:
        first = tokenizer(c, add_special_tokens=False)["input_ids"][0]
        rows.append({"continuation": c, "probability": continuation_prob(model, tokenizer, prompt, c),
                     "first_token_logit": float(logits[first])})
    return pd.DataFrame(rows)


@torch.no_grad()
def perplexity(model, tokenizer, texts: list[str], max_length: int = 256, batch_size: int = 8) -> float:
    """exp(mean negative log-likelihood per predicted token) over ``texts``; lower is better."""
    if not texts:
        raise ValueError("perplexity needs at least one text")
    device = _device(model)
    total_nll, total_tokens = 0.0, 0
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(list(texts[start:start + batch_size]), return_tensors="pt", padding=True,
                          truncation=True, max_length=max_length, add_special_tokens=False).to(device)
        logits = model(**batch).logits[:, :-1].float()
        targets = batch["input_ids"][:, 1:]
        mask = batch["attention_mask"][:, 1:].bool() & batch["attention_mask"][:, :-1].bool()
        nll = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
        total_nll += float(nll[mask].sum())
        total_tokens += int(mask.sum())
    return math.exp(total_nll / total_tokens)


def sampler(temperature: float, seed: int | None, device):
    """A logits processor for ``model.generate`` that samples at ``temperature`` with a
    ``torch.Generator`` of its own, seeded with ``seed`` (``None``: a fresh random seed).

    ``model.generate(do_sample=True)`` would draw from torch's global generator, so each call would
    have to reseed it for the whole session. Instead, with greedy decoding (``do_sample=False``),
    this processor draws the next token itself and leaves only that one for greedy to pick."""
    generator = torch.Generator(device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)

    def draw(input_ids, scores):
        token = torch.multinomial(F.softmax(scores / temperature, dim=-1), 1, generator=generator)
        return torch.full_like(scores, -math.inf).scatter(-1, token, 0.0)

    return draw


def decoding(temperature: float, seed: int | None, device) -> dict:
    """``model.generate`` keywords: greedy at ``temperature=0`` (nothing random), else pure
    sampling (no top-k or top-p cut) from the model's distribution at ``temperature``."""
    kwargs = dict(do_sample=False, temperature=None, top_k=None, top_p=None)
    if temperature > 0:
        kwargs["logits_processor"] = [sampler(temperature, seed, device)]
    return kwargs


@torch.no_grad()
def generate_many(model, tokenizer, texts: list[str], max_new_tokens: int = 40, temperature: float = 0.0,
                  seed: int | None = 0, n: int = 1, batch_size: int = 8,
                  adapter_names: list[str] | None = None) -> list[dict]:
    """labkit's one text-generation routine: ``n`` continuations of each of ``texts``, as they are
    (for the chat template, pass :func:`chat_prompt`'s text), ``batch_size`` texts at a time, padded
    on the left so that every row's new tokens start at the same place.

    ``temperature=0`` is greedy (always the most likely token); above 0 it samples, with a generator
    of its own seeded with ``seed`` once for the whole call (torch's global generator is left alone).
    ``adapter_names`` (one per text) sends each row through its own PEFT adapter. The model runs in
    eval mode (no dropout) and is put back in the mode it was in.

    Returns one ``{"text", "stopped"}`` per continuation, the ``n`` of the first text first: the new
    tokens decoded without special tokens, and whether the model ended the reply itself (an
    end-of-sequence token) within ``max_new_tokens``."""
    from .threads import size_threads

    size_threads()   # this process's share of the CPUs, now (labkit.threads)
    device = _device(model)
    sampling = decoding(temperature, seed, device)   # one generator for every batch
    was_training = model.training
    model.eval()
    results = []
    try:
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(list(texts[start:start + batch_size]), return_tensors="pt", padding=True,
                              padding_side="left", add_special_tokens=False).to(device)
            if batch["input_ids"].shape[1] == 0:
                raise ValueError("prompt is empty: type at least one character")
            routing = {} if adapter_names is None else {   # PEFT's mixed-adapter batch: one name per row
                "adapter_names": [a for a in adapter_names[start:start + batch_size] for _ in range(n)]}
            ids = batch["input_ids"].repeat_interleave(n, dim=0)   # n rows per text
            out = model.generate(input_ids=ids, attention_mask=batch["attention_mask"].repeat_interleave(n, dim=0),
                                 max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                                 **sampling, **routing)
            for row in out[:, ids.shape[1]:]:
                results.append({"text": tokenizer.decode(row, skip_special_tokens=True),
                                "stopped": tokenizer.eos_token_id in row.tolist()})
    finally:
        model.train(was_training)
    return results


def generate(model, tokenizer, prompt: str, chat: bool = False, max_new_tokens: int = 40,
             temperature: float = 0.0, seed: int | None = 0, system: str | None = None) -> str:
    """Generate a continuation. ``chat=True`` wraps ``prompt`` in the chat template first;
    ``temperature=0`` is greedy (always the most likely token); above 0 it samples, and the same
    ``seed`` gives the same text (torch's global random generator is left alone)."""
    text = chat_prompt(tokenizer, prompt, system) if chat else prompt
    return generate_many(model, tokenizer, [text], max_new_tokens, temperature, seed)[0]["text"]


def compare_generations(models: dict, tokenizer, prompts: list[str], chat: bool = True,
                        max_new_tokens: int = 40):
    """A table with one row per prompt and one column per model (name -> model)."""
    import pandas as pd

    rows = []
    for prompt in prompts:
        row = {"prompt": prompt}
        for name, model in models.items():
            row[name] = generate(model, tokenizer, prompt, chat=chat, max_new_tokens=max_new_tokens)
        rows.append(row)
    return pd.DataFrame(rows)


def sample_step(model, tokenizer, text: str, k: int = 10, temperature: float = 1.0,
                generator: torch.Generator | None = None):
    """One step of sampling: the top-``k`` distribution after ``text`` and the token drawn
    from it (top-k sampling at ``temperature``). Returns ``(table, token_text)``."""
    logits = next_token_logits(model, tokenizer, text)
    table = top_k_from_logits(logits, tokenizer, k, temperature)
    weights = torch.tensor(table["probability"].values)
    choice = int(torch.multinomial(weights / weights.sum(), 1, generator=generator))
    return table, table["token"].iloc[choice]
