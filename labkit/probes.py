"""Probes: small, fixed tests of what a model knows, scored before and after tuning.

- cloze items   ``{"prompt": "The capital of France is", "answer": " Paris"}``: right when greedy
  decoding would produce exactly the answer's tokens.
- sense probes  ``{"word", "sense", "prompt", "continuation"}``: the probability of a continuation
  that signals one sense of an ambiguous word ("discharge": a patient's, or a capacitor's).
- held-out replies  chat ``{"messages": [...]}`` records the model never trained on: the loss on
  the assistant's reply (the number training minimises), per record, so that two models scored on
  the same records can be compared record by record (``labkit.claims.paired_noise``).

Each scores many items in batches (padded, sorted by length) and returns them in their order.
"""
from __future__ import annotations

import torch

from .predictions import _device


@torch.no_grad()
def cloze_correct(model, tokenizer, prompt: str, answer: str) -> bool:
    """True when the model's most likely token at every answer position is the answer's
    (exactly what greedy decoding would write)."""
    return cloze_results(model, tokenizer, [{"prompt": prompt, "answer": answer}])[0]


def _padded(rows: list[list[int]], value: int, device):
    """Right-padded tensor of ``rows`` and its attention mask."""
    width = max(len(r) for r in rows)
    ids = torch.tensor([r + [value] * (width - len(r)) for r in rows], device=device)
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=device)
    return ids, mask


def _by_length(lengths: list[int], batch_size: int):
    """Batches of item indices, similar lengths together (less padding to compute)."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


@torch.no_grad()
def cloze_answers(model, tokenizer, items, batch_size: int = 16) -> list[dict]:
    """For each cloze item, what greedy decoding writes after its prompt and whether that is the
    answer: ``{"correct": bool, "writes": str}``. ``writes`` is the answer when correct; otherwise
    the answer's tokens up to the first one the model gets wrong, with its own token there (the
    text greedy decoding writes up to where it leaves the answer)."""
    device = _device(model)
    encoded = [(tokenizer(it["prompt"], add_special_tokens=False)["input_ids"],
                tokenizer(it["answer"], add_special_tokens=False)["input_ids"]) for it in items]
    out = [None] * len(encoded)
    was_training = model.training
    model.eval()
    try:
        for rows in _by_length([len(p) + len(a) for p, a in encoded], batch_size):
            ids, mask = _padded([encoded[k][0] + encoded[k][1] for k in rows], tokenizer.pad_token_id or 0, device)
            best = model(input_ids=ids, attention_mask=mask).logits.argmax(-1)
            for row, k in enumerate(rows):
                p, a = encoded[k]
                written = best[row, len(p) - 1:len(p) + len(a) - 1].tolist()
                wrong = next((j for j, (w, t) in enumerate(zip(written, a)) if w != t), None)
                out[k] = {"correct": wrong is None,
                          "writes": tokenizer.decode(a if wrong is None else written[:wrong + 1])}
    finally:
        model.train(was_training)
    return out


def cloze_results(model, tokenizer, items, batch_size: int = 16) -> list[bool]:
    """For each cloze item, whether greedy decoding would write exactly its answer."""
    return [a["correct"] for a in cloze_answers(model, tokenizer, items, batch_size)]


def cloze_accuracy(model, tokenizer, items) -> float:
    """Share of cloze items the model gets right (0 to 1)."""
    items = list(items)
    if not items:
        raise ValueError("cloze_accuracy needs at least one item")
    return sum(cloze_results(model, tokenizer, items)) / len(items)


@torch.no_grad()
def continuation_logprobs(model, tokenizer, pairs, batch_size: int = 16) -> list[float]:
    """log P(continuation | prompt), summed over the continuation's tokens, for each
    ``(prompt, continuation)`` of ``pairs``: :func:`labkit.predictions.continuation_logprob` for many
    pairs at once (the prompt and the continuation tokenised apart, as there)."""
    device = _device(model)
    encoded = [(tokenizer(p, add_special_tokens=False)["input_ids"], tokenizer(c, add_special_tokens=False)["input_ids"])
               for p, c in pairs]
    for k, (p, c) in enumerate(encoded):
        if not p or not c:
            raise ValueError(f"pair {k} {pairs[k]!r}: the prompt and the continuation each need at least one token")
    out = [0.0] * len(encoded)
    was_training = model.training
    model.eval()
    try:
        for rows in _by_length([len(p) + len(c) for p, c in encoded], batch_size):
            ids, mask = _padded([encoded[k][0] + encoded[k][1] for k in rows], tokenizer.pad_token_id or 0, device)
            logprobs = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), dim=-1)
            for row, k in enumerate(rows):
                p, c = encoded[k]
                positions = torch.arange(len(p) - 1, len(p) + len(c) - 1, device=device)
                out[k] = float(logprobs[row, positions, torch.tensor(c, device=device)].sum())
    finally:
        model.train(was_training)
    return out


def sense_table(model, tokenizer, probes):
    """One row per probe: word, sense, prompt, continuation and log P(continuation | prompt)."""
    import pandas as pd

    probes = list(probes)
    logprobs = continuation_logprobs(model, tokenizer, [(p["prompt"], p["continuation"]) for p in probes])
    return pd.DataFrame([{"word": p["word"], "sense": p["sense"], "prompt": p["prompt"],
                          "continuation": p["continuation"], "logprob": lp} for p, lp in zip(probes, logprobs)])


def probability_shift(before, after, targets: list[str]) -> dict:
    """How much likelier ``targets`` became, from two next-token tables of the same contexts
    (:func:`labkit.widgets.probe_table`, before and after tuning).

    Returns ``ratio``: p after / p before over every (context, target) row of ``targets``, as a
    geometric mean (a halving and a doubling cancel); ``noise``: two standard errors of the rows'
    log-ratios (how far the contexts disagree; compare with ``log(ratio)``); ``rows``; and the mean
    probabilities ``p before`` and ``p after``."""
    import math
    import statistics

    from .claims import paired_noise

    keep = before["target"].isin(targets).to_numpy()
    if not keep.any():
        raise ValueError(f"none of {targets!r} is a target of the probe table ({sorted(set(before['target']))})")
    if list(before["context"]) != list(after["context"]) or list(before["target"]) != list(after["target"]):
        raise ValueError("before and after must probe the same contexts and targets, in the same order")
    p0, p1 = before["probability"][keep].tolist(), after["probability"][keep].tolist()
    logs = [math.log(b / a) for a, b in zip(p0, p1)]
    noise = paired_noise([math.log(b) for b in p1], [math.log(a) for a in p0])
    return {"ratio": math.exp(statistics.mean(logs)), "noise": noise, "rows": len(logs),
            "p before": statistics.mean(p0), "p after": statistics.mean(p1)}


# --- held-out replies ---------------------------------------------------------------------------

@torch.no_grad()
def reply_losses(model, tokenizer, records, max_length: int = 256, batch_size: int = 8) -> list[tuple[float, int]]:
    """Per record of ``messages`` records: (summed cross-entropy in nats, reply tokens) on the
    assistant's reply, the prompt tokens masked out. A record whose reply lies beyond
    ``max_length`` gives (0.0, 0)."""
    device = _device(model)
    encoded = []
    for r in records:
        prompt = tokenizer.apply_chat_template(r["messages"][:-1], tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(r["messages"], tokenize=False)
        p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        f = tokenizer(full, add_special_tokens=False)["input_ids"][:max_length]
        encoded.append((f, [-100] * min(len(p), len(f)) + f[len(p):]))
    out = [(0.0, 0)] * len(encoded)
    was_training = model.training
    model.eval()
    try:
        for rows in _by_length([len(f) for f, _ in encoded], batch_size):
            ids, mask = _padded([encoded[k][0] for k in rows], tokenizer.pad_token_id, device)
            labels, _ = _padded([encoded[k][1] for k in rows], -100, device)
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
            target = labels[:, 1:]
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                                     ignore_index=-100, reduction="none").view(target.shape)
            for k, total, count in zip(rows, loss.sum(dim=1), (target != -100).sum(dim=1)):
                out[k] = (float(total), int(count))
    finally:
        model.train(was_training)
    return out


def mean_loss(per_record: list[tuple[float, int]]) -> float:
    """Nats per reply token over all records of :func:`reply_losses`."""
    count = sum(c for _, c in per_record)
    if count == 0:
        raise ValueError("no reply tokens to score (are the replies cut off by max_length?)")
    return sum(s for s, _ in per_record) / count


def reply_loss(model, tokenizer, records, max_length: int = 256, batch_size: int = 8) -> float:
    """Mean cross-entropy (nats per token) on the assistant's replies of ``messages`` records,
    the prompt tokens masked out: the number training minimises, measured on data it never saw."""
    return mean_loss(reply_losses(model, tokenizer, records, max_length=max_length, batch_size=batch_size))


def per_token(per_record: list[tuple[float, int]]) -> list[float]:
    """Each scored record's mean loss per reply token (records without reply tokens left out):
    the paired scores for ``claims.paired_noise``."""
    return [s / c for s, c in per_record if c]
