"""Exercises for notebook 06 (RLHF and DPO): pairwise accuracy by hand, a ranking turned into
preference pairs, and DPO's implicit reward margin and loss measured on the learner's own policy and
reference. Checks recompute each answer from the learner's objects."""
from __future__ import annotations

import math
import numbers

from . import Exercise
from .checks import close, fraction, number

# The notebook uses SmolLM2 for the policy and the reward model; the test's setup uses toy models of
# the same architecture (seconds), and trains DPO for two steps so that the margin is not zero.
SETUP = """
import torch
import labkit
from labkit import rlhf, preferences
from labkit.data import read_jsonl
from labkit.toy import toy_model
from transformers import LlamaConfig, LlamaForSequenceClassification

P = labkit.profile()
cfg = rlhf.RLHFConfig.for_profile(P, dpo_steps=2, dpo_learning_rate=5e-3, dpo_max_length=48, lora_r=2, lora_alpha=4)
pairs = read_jsonl("preferences.jsonl", "preference")
train_pairs = [p for p in pairs if p["split"] == "train"]
heldout_pairs = [p for p in pairs if p["split"] == "heldout"]
model, tok = toy_model()
samples = rlhf.sample_responses(model, tok, [heldout_pairs[0]["prompt"]], n=4, temperature=1.0,
                                max_new_tokens=8, seed=cfg.seed)
torch.manual_seed(cfg.seed)
reward_model = LlamaForSequenceClassification(LlamaConfig(
    vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, num_labels=1, pad_token_id=tok.pad_token_id)).eval()
rm_tok = tok
eval_pairs = heldout_pairs[:6]
after = rlhf.reward_accuracy(reward_model, rm_tok, eval_pairs, cfg.reward_max_length)
dpo_policy, _ = toy_model()
dpo = rlhf.train_dpo(dpo_policy, tok, train_pairs[:4], cfg, live=False)
"""


def _check_q1(answer, after):
    from labkit.rlhf import pairwise_accuracy

    chosen, rejected = after["chosen_scores"], after["rejected_scores"]
    truth = pairwise_accuracy(chosen, rejected)
    wins = sum(c > r for c, r in zip(chosen, rejected))
    n = len(chosen)
    if isinstance(answer, numbers.Integral) and not isinstance(answer, bool) and answer == wins and wins != truth:
        return f"{answer} is the NUMBER of pairs won; the accuracy is the share: divide by the {n} pairs"
    if (problem := fraction(answer, truth, "the accuracy")) is not None:
        return problem
    if close(answer, truth, rel=1e-9, abs_=1e-12):
        return None
    if close(answer, 1 - truth, rel=1e-9, abs_=1e-12):
        return "that is the share of pairs where the REJECTED answer scores higher; count the chosen ones"
    ties = sum(c == r for c, r in zip(chosen, rejected))
    if ties and close(answer, wins / n, rel=1e-9):
        return f"{ties} pair(s) are ties: a tie counts half"
    return f"{answer:.4g} is not the share of the {n} pairs in which the chosen answer scores higher"


q1 = Exercise(
    name="Exercise 1",
    level="easy",
    question="""
Pairwise accuracy by hand. `after["chosen_scores"]` and `after["rejected_scores"]` hold the trained reward
model's score for each held-out pair's chosen and rejected answer. What share of the pairs does it rank
as the labellers did (chosen above rejected; a tie counts half)? Give a fraction between 0 and 1, and
compare with `after["accuracy"]`.
""",
    check_answer=_check_q1,
    hint_text="zip the two lists; count 1 where chosen > rejected, 0.5 for a tie; divide by the number of pairs.",
    solution_code="""
wins = [1.0 if c > r else 0.5 if c == r else 0.0 for c, r in zip(after["chosen_scores"], after["rejected_scores"])]
answer = sum(wins) / len(wins)
""",
    wrong=["""answer = sum(c > r for c, r in zip(after["chosen_scores"], after["rejected_scores"]))""",
           """wins = [1.0 if c > r else 0.5 if c == r else 0.0 for c, r in zip(after["chosen_scores"], after["rejected_scores"])]
answer = 100 * sum(wins) / len(wins)"""],
    context_names=("after",),
)


def _check_q2(answer, samples):
    from itertools import combinations

    from labkit import rlhf

    sample = samples[0]
    responses = sample["responses"]
    n = len(responses)
    expected = n * (n - 1) // 2
    if not isinstance(answer, list) or not all(isinstance(p, dict) for p in answer):
        return "give a list of dicts, each with 'prompt', 'chosen' and 'rejected'"
    if any(not {"prompt", "chosen", "rejected"} <= set(p) for p in answer):
        return "each pair needs the keys 'prompt', 'chosen' and 'rejected'"
    if any(p["prompt"] != sample["prompt"] for p in answer):
        return "each pair's 'prompt' must be samples[0]['prompt']"
    if any(p["chosen"] not in responses or p["rejected"] not in responses for p in answer):
        return "every 'chosen' and 'rejected' must be one of samples[0]['responses'], word for word"
    if any(p["chosen"] == p["rejected"] for p in answer):
        return "a pair compares two different answers; one of yours has the same answer on both sides"
    # answers are compared by position, so that two identical sampled answers still count as two
    covered = sorted(tuple(sorted((responses.index(p["chosen"]), responses.index(p["rejected"])))) for p in answer)
    if len(answer) == n - 1 and expected != n - 1:
        return (f"you gave {n - 1} pairs (neighbours in the order?); a ranking of {n} answers implies every pair "
                f"of them: n (n − 1) / 2 = {expected}")
    if len(answer) != expected:
        return f"a ranking of {n} answers gives n (n − 1) / 2 = {expected} pairs; you gave {len(answer)}"
    if len(set(covered)) != len(covered) and len(set(responses)) == n:
        return "some pair of answers appears twice (once each way?); each pair of answers is one judgement"
    if len(set(responses)) == n and set(covered) != set(combinations(range(n), 2)):
        return "your pairs miss some pairs of answers: every two answers of the ranking make one pair"
    longer_chosen = [p for p in answer if rlhf.words(p["chosen"]) > rlhf.words(p["rejected"])]
    if longer_chosen and len(longer_chosen) == sum(rlhf.words(p["chosen"]) != rlhf.words(p["rejected"]) for p in answer):
        return "chosen and rejected are swapped: the shorter answer ranks higher here, so it is the chosen one"
    if longer_chosen:
        return f"{len(longer_chosen)} of your pairs have the longer answer as 'chosen'; shorter answers rank higher here"
    return None


q2 = Exercise(
    name="Exercise 2",
    level="medium",
    question="""
From a ranking to preference pairs. Rank the sampled answers to the first prompt, `samples[0]["responses"]`,
**shortest first** (by `rlhf.words`), as the notebook did with the ranking widget, and turn the ranking into
the preference pairs a DPO dataset takes (`{"prompt", "chosen", "rejected"}`, better answer as "chosen").
How many pairs does a ranking of n answers give? Use `preferences.pairs_from_ranking`, or write it yourself.
""",
    check_answer=_check_q2,
    hint_text="ranked = sorted(samples[0]['responses'], key=rlhf.words); preferences.pairs_from_ranking(samples[0]['prompt'], ranked)",
    solution_code="""
ranked = sorted(samples[0]["responses"], key=rlhf.words)
answer = preferences.pairs_from_ranking(samples[0]["prompt"], ranked)
""",
    wrong=["""ranked = sorted(samples[0]["responses"], key=rlhf.words)
answer = [{"prompt": samples[0]["prompt"], "chosen": a, "rejected": b} for a, b in zip(ranked, ranked[1:])]""",
           """ranked = sorted(samples[0]["responses"], key=rlhf.words, reverse=True)
answer = preferences.pairs_from_ranking(samples[0]["prompt"], ranked)"""],
    context_names=("samples",),
)


def _logprobs(policy, tok, pair):
    from labkit import rlhf
    from labkit.predictions import continuation_logprob

    prompt = tok.apply_chat_template(rlhf.chat(pair["prompt"]), tokenize=False, add_generation_prompt=True)
    return {side: continuation_logprob(policy, tok, prompt, pair[side]) for side in ("chosen", "rejected")}


def _check_q3(answer, dpo, model, tok, train_pairs, cfg):
    if not isinstance(answer, dict) or set(answer) != {"margin", "loss"}:
        return "give a dict {'margin': ..., 'loss': ...}"
    for k in ("margin", "loss"):
        if (problem := number(answer[k], f"the {k}")) is not None:
            return problem
    pair, beta = train_pairs[0], cfg.dpo_beta
    pol, ref = _logprobs(dpo.model, tok, pair), _logprobs(model, tok, pair)
    diff = (pol["chosen"] - ref["chosen"]) - (pol["rejected"] - ref["rejected"])
    truth = beta * diff
    tol = dict(rel=1e-2, abs_=2e-5)
    m, loss = answer["margin"], answer["loss"]
    if not close(m, truth, **tol):
        if close(m, diff, **tol) and not close(diff, truth, **tol):
            return f"your margin leaves out β: multiply the difference of log-ratios by cfg.dpo_beta = {beta}"
        if close(m, -truth, **tol):
            return "your margin's sign is flipped: chosen's log-ratio minus rejected's"
        if close(m, beta * (pol["chosen"] - pol["rejected"]), **tol):
            return ("you used the policy's log-probabilities alone; DPO's reward is the log-RATIO to the reference: "
                    "log π(y|x) − log π_ref(y|x)")
        return (f"{m:.4g} is not β × [(log π − log π_ref)(chosen) − (log π − log π_ref)(rejected)] for train_pairs[0] "
                "with dpo.model as π and model as π_ref")
    expected_loss = math.log1p(math.exp(-m))   # -log sigmoid(m), from the learner's own margin
    if close(loss, expected_loss, rel=1e-4, abs_=1e-9):
        return None
    if close(loss, -expected_loss, rel=1e-4, abs_=1e-9):
        return "your loss has the wrong sign: it is MINUS log σ(margin), a positive number"
    if close(loss, math.log1p(math.exp(m)), rel=1e-4, abs_=1e-9):
        return "that is −log σ(−margin): the loss takes σ of the margin itself"
    return f"your margin is right; the loss is −log σ(margin) = log(1 + exp(−margin)), not {loss:.4g}"


q3 = Exercise(
    name="Exercise 3",
    level="harder",
    question="""
DPO by hand. DPO's implicit reward for an answer is β × (log π(answer | prompt) − log π_ref(answer | prompt)),
and its loss on a pair is −log σ(margin), where the margin is the chosen answer's reward minus the rejected
one's. For `train_pairs[0]`, with the DPO-tuned `dpo.model` as π, the untouched `model` as π_ref and
β = `cfg.dpo_beta`, compute the margin and the loss. Score each answer after the chat prompt
`tok.apply_chat_template(rlhf.chat(prompt), tokenize=False, add_generation_prompt=True)`, with
`labkit.predictions.continuation_logprob`. Give `{"margin": ..., "loss": ...}`. Is the margin positive,
and is the loss below log 2 ≈ 0.693 (its value before any training)?
""",
    check_answer=_check_q3,
    hint_text=("lp(m, side) = continuation_logprob(m, tok, chat_prompt, pair[side]); margin = β × ((lp(dpo.model, 'chosen') − "
               "lp(model, 'chosen')) − (lp(dpo.model, 'rejected') − lp(model, 'rejected'))); loss = −log σ(margin)."),
    solution_code="""
import math
from labkit.predictions import continuation_logprob

pair = train_pairs[0]
prompt = tok.apply_chat_template(rlhf.chat(pair["prompt"]), tokenize=False, add_generation_prompt=True)
ratio = {side: continuation_logprob(dpo.model, tok, prompt, pair[side]) - continuation_logprob(model, tok, prompt, pair[side])
         for side in ("chosen", "rejected")}
margin = cfg.dpo_beta * (ratio["chosen"] - ratio["rejected"])
answer = {"margin": margin, "loss": -math.log(1 / (1 + math.exp(-margin)))}
""",
    wrong=["""import math
from labkit.predictions import continuation_logprob

pair = train_pairs[0]
prompt = tok.apply_chat_template(rlhf.chat(pair["prompt"]), tokenize=False, add_generation_prompt=True)
ratio = {side: continuation_logprob(dpo.model, tok, prompt, pair[side]) - continuation_logprob(model, tok, prompt, pair[side])
         for side in ("chosen", "rejected")}
margin = ratio["chosen"] - ratio["rejected"]
answer = {"margin": margin, "loss": math.log1p(math.exp(-margin))}""",
           """import math
from labkit.predictions import continuation_logprob

pair = train_pairs[0]
prompt = tok.apply_chat_template(rlhf.chat(pair["prompt"]), tokenize=False, add_generation_prompt=True)
margin = cfg.dpo_beta * (continuation_logprob(dpo.model, tok, prompt, pair["chosen"])
                         - continuation_logprob(dpo.model, tok, prompt, pair["rejected"]))
answer = {"margin": margin, "loss": math.log1p(math.exp(-margin))}"""],
    context_names=("dpo", "model", "tok", "train_pairs", "cfg"),
)
