"""Exercises for notebook 01 (what a pretrained model does): next-token probability, temperature,
perplexity computed by hand. Every check measures the truth on the learner's own model."""
from __future__ import annotations

import math
import numbers

from . import Exercise
from .checks import close, fraction, number

SETUP = """
import labkit
P = labkit.profile()
model, tok = labkit.load_model()
"""


# --- small helpers the exercise modules share --------------------------------------------------







# --- q1 -------------------------------------------------------------------------------------------

PROMPT = "The capital of France is"


def _check_q1(answer, model, tok):
    from labkit.predictions import continuation_logprob, continuation_prob

    truth = continuation_prob(model, tok, PROMPT, " Paris")
    if isinstance(answer, numbers.Real) and not isinstance(answer, bool) and answer < 0 \
            and close(answer, math.log(truth)):
        return "that is the log-probability of ' Paris'; the question asks for the probability (exp of it)"
    if (problem := fraction(answer, truth, "the probability of ' Paris'")) is not None:
        return problem
    if close(answer, truth):
        return None
    if close(answer, continuation_prob(model, tok, PROMPT, "Paris")):
        return ("that is the probability of 'Paris' without the leading space; the token the model "
                "would write after 'is' is ' Paris', with its space")
    if close(answer, math.exp(continuation_logprob(model, tok, PROMPT + " ", "Paris"))):
        return ("you put the space at the end of the prompt: that is P('Paris' | 'The capital of France is '), "
                "a token split this model rarely sees; the space belongs to the word: ' Paris'")
    return (f"{answer:.4g} is not the model's probability of ' Paris' after {PROMPT!r}; "
            "measure it with labkit.continuation_prob(model, tok, prompt, continuation)")


q1 = Exercise(
    name="Exercise 1",
    level="easy",
    question=f"""
What probability does the model give to **" Paris"** (with its leading space) as the continuation
of **{PROMPT!r}**? Give a fraction between 0 and 1, measured on `model` with `labkit.continuation_prob`.
""",
    check_answer=_check_q1,
    hint_text="labkit.continuation_prob(model, tok, prompt, continuation); the space belongs to the word.",
    solution_code=f'answer = labkit.continuation_prob(model, tok, {PROMPT!r}, " Paris")\n',
    wrong=[f'answer = labkit.continuation_prob(model, tok, {PROMPT!r}, "Paris")',
           f'answer = 100 * labkit.continuation_prob(model, tok, {PROMPT!r}, " Paris")',
           f'import math\nanswer = math.log(labkit.continuation_prob(model, tok, {PROMPT!r}, " Paris"))'],
    context_names=("model", "tok"),
)


# --- q2 -------------------------------------------------------------------------------------------

TEMPERATURES = (0.5, 1.0, 2.0)


def _top_probability(model, tok, temperature):
    from labkit import next_token_distribution

    return float(next_token_distribution(model, tok, PROMPT, k=1, temperature=temperature)["probability"][0])


def _check_q2(answer, model, tok):
    if not isinstance(answer, dict):
        return f"give a dict {{temperature: probability}}, e.g. {{0.5: ..., 1.0: ..., 2.0: ...}}, not {type(answer).__name__}"
    keys = {float(k) for k in answer}
    if keys != set(TEMPERATURES):
        return f"your dict has the temperatures {sorted(keys)}; the exercise asks for exactly {list(TEMPERATURES)}"
    got = {float(k): v for k, v in answer.items()}
    for t in TEMPERATURES:
        if (problem := number(got[t], f"the probability at temperature {t}")) is not None:
            return problem
    truth = {t: _top_probability(model, tok, t) for t in TEMPERATURES}
    if all(close(got[t], truth[1.0]) for t in TEMPERATURES):
        return ("your three values are the same: all at temperature 1.0. Pass temperature=t to "
                "labkit.next_token_distribution for each t")
    if close(got[0.5], truth[2.0]) and close(got[2.0], truth[0.5]):
        return ("your values for 0.5 and 2.0 are swapped: a low temperature sharpens the distribution, "
                "so the top token gets MORE probability at 0.5, less at 2.0")
    for t in TEMPERATURES:
        if not 0 <= got[t] <= 1:
            return f"the value at temperature {t} ({got[t]:.4g}) is not a probability between 0 and 1"
        if not close(got[t], truth[t]):
            return (f"at temperature {t} your value {got[t]:.4g} is not the top token's probability after "
                    f"{PROMPT!r}; read row 0 of labkit.next_token_distribution(model, tok, prompt, temperature={t})")
    return None


q2 = Exercise(
    name="Exercise 2",
    level="medium",
    question=f"""
Temperature divides the logits before the softmax. For the prompt **{PROMPT!r}**, what probability does
the most likely next token get at temperatures 0.5, 1.0 and 2.0? Give a dict
`{{0.5: p, 1.0: p, 2.0: p}}`. What do you expect before you measure: does a higher temperature raise or
lower the top token's share?
""",
    check_answer=_check_q2,
    hint_text="labkit.next_token_distribution(model, tok, prompt, k=1, temperature=t)['probability'][0], for each t.",
    solution_code=f"""
answer = {{t: float(labkit.next_token_distribution(model, tok, {PROMPT!r}, k=1, temperature=t)["probability"][0])
          for t in (0.5, 1.0, 2.0)}}
""",
    wrong=[f"""p = float(labkit.next_token_distribution(model, tok, {PROMPT!r}, k=1)["probability"][0])
answer = {{0.5: p, 1.0: p, 2.0: p}}""",
           f"""answer = {{t: float(labkit.next_token_distribution(model, tok, {PROMPT!r}, k=1, temperature=1 / t)["probability"][0])
          for t in (0.5, 1.0, 2.0)}}"""],
    context_names=("model", "tok"),
)


# --- q3 -------------------------------------------------------------------------------------------

PPL_TEXT = "The capital of France is Paris. It is known for its museums and its cafes."


def _check_q3(answer, model, tok):
    from labkit import perplexity

    if (problem := number(answer, "a perplexity")) is not None:
        return problem
    truth = perplexity(model, tok, [PPL_TEXT])
    if close(answer, truth, rel=1e-3):
        return None
    n = len(tok(PPL_TEXT, add_special_tokens=False)["input_ids"]) - 1   # predicted tokens
    mean_nll = math.log(truth)
    if close(answer, mean_nll, rel=1e-3):
        return (f"{answer:.4g} is the mean loss in nats per token; perplexity is exp of it")
    if close(answer, n * mean_nll, rel=1e-3):
        return "that is the total negative log-likelihood; perplexity is exp of the MEAN per predicted token"
    if answer > 1e6 or close(math.log(max(answer, 1e-300)), n * mean_nll, rel=1e-3):
        return (f"that looks like exp of the summed loss over all {n} predicted tokens; "
                "average the loss per token first, then take exp")
    if close(answer, 1 / truth, rel=1e-3):
        return "you took exp(+mean log-probability): perplexity is exp of MINUS the mean log-probability"
    if answer < 1:
        return f"a perplexity is at least 1 (one guess out of one); {answer:.4g} cannot be one"
    return (f"{answer:.4g} is not this text's perplexity under the model; compare with "
            "labkit.perplexity(model, tok, [text]) and look for the difference")


q3 = Exercise(
    name="Exercise 3",
    level="harder",
    question=f"""
Perplexity by hand. Compute the model's perplexity on the text below **without** `labkit.perplexity`:
tokenise it (no special tokens), run the model once, take the cross-entropy of each token given the ones
before it (every token but the first is predicted), average, and exponentiate. Then compare with
`labkit.perplexity(model, tok, [text])`.

    text = {PPL_TEXT!r}
""",
    check_answer=_check_q3,
    hint_text=("ids = tok(text, return_tensors='pt', add_special_tokens=False)['input_ids']; the logits at position i "
               "predict token i+1, so compare logits[0, :-1] with ids[0, 1:] in torch.nn.functional.cross_entropy."),
    solution_code=f"""
import math
import torch
import torch.nn.functional as F

text = {PPL_TEXT!r}
ids = tok(text, return_tensors="pt", add_special_tokens=False)["input_ids"].to(model.device)
with torch.no_grad():
    logits = model(input_ids=ids).logits[0, :-1].float()
loss = F.cross_entropy(logits, ids[0, 1:])   # mean negative log-likelihood per predicted token
answer = math.exp(float(loss))
""",
    wrong=[f"""import torch, torch.nn.functional as F
ids = tok({PPL_TEXT!r}, return_tensors="pt", add_special_tokens=False)["input_ids"].to(model.device)
with torch.no_grad():
    answer = float(F.cross_entropy(model(input_ids=ids).logits[0, :-1].float(), ids[0, 1:]))""",
           f"""import math, torch, torch.nn.functional as F
ids = tok({PPL_TEXT!r}, return_tensors="pt", add_special_tokens=False)["input_ids"].to(model.device)
with torch.no_grad():
    answer = math.exp(float(F.cross_entropy(model(input_ids=ids).logits[0, :-1].float(), ids[0, 1:], reduction="sum")))"""],
    context_names=("model", "tok"),
)
