"""Exercises for notebook 07 (domain adaptation): how much continued pretraining lowered a domain's
perplexity, which domains an adapter helps, and a domain adapter of the learner's own. Each check
measures perplexity itself, on the learner's models and the notebook's held-out paragraphs.

Also the small answer checks the exercise modules of notebooks 07-12 share (``number``, ``close``,
``whole_number``)."""
from __future__ import annotations


from . import Exercise
from .checks import close, number








# The notebook trains SmolLM2 on each domain; the test's setup trains the toy model (the same Llama
# architecture) on the same corpora for a few steps, so that it runs in seconds.
SETUP = """
import copy
import pandas as pd
import labkit
from labkit import domains
from labkit.toy import toy_model

CONFIG = labkit.Experiment(seed=0, method="lora", lora_r=8, domains=list(domains.DOMAINS), steps=3,
                           batch_size=2, max_length=32, learning_rate=1e-2, heldout_texts=2)
splits = {d: domains.domain_split(d, heldout=CONFIG["heldout_texts"], seed=CONFIG["seed"]) for d in CONFIG["domains"]}
held_out = {d: held for d, (_, held) in splits.items()}
base, tok = toy_model()
ppl_before = domains.domain_perplexities(base, tok, held_out, max_length=CONFIG["max_length"])
trained, rows = {}, []
for d in ["legal"]:
    run = labkit.train(copy.deepcopy(base), tok, domains.as_text_records(splits[d][0]), method=CONFIG["method"],
                       lora_r=CONFIG["lora_r"], learning_rate=CONFIG["learning_rate"], steps=CONFIG["steps"],
                       batch_size=CONFIG["batch_size"], max_length=CONFIG["max_length"], seed=CONFIG["seed"],
                       label=d, live=False)
    trained[d] = run
    rows.append({"domain": d, "perplexity before": ppl_before[d],
                 "perplexity after": labkit.perplexity(run.model, tok, held_out[d], max_length=CONFIG["max_length"])})
summary = pd.DataFrame(rows).set_index("domain")
"""

DOMAIN1 = "legal"


# --- q1 -------------------------------------------------------------------------------------------

def _check_q1(answer, summary):
    if (problem := number(answer, "the drop in percent")) is not None:
        return problem
    before = float(summary.loc[DOMAIN1, "perplexity before"])
    after = float(summary.loc[DOMAIN1, "perplexity after"])
    truth = 100 * (before - after) / before
    if close(answer, truth, rel=1e-3, abs_=1e-6):
        return None
    if close(answer, truth / 100, rel=1e-3, abs_=1e-9):
        return f"that is a fraction ({answer:.4g}); give percent (x 100)"
    if close(answer, -truth, rel=1e-3, abs_=1e-9):
        return "the sign is flipped: a perplexity that fell is a positive drop here"
    if close(answer, before - after, rel=1e-3):
        return (f"that is the drop in perplexity points ({before:.2f} - {after:.2f}); the exercise asks "
                "for it as a percentage of the perplexity before")
    if close(answer, 100 * (before - after) / after, rel=1e-3):
        return "you divided by the perplexity after; a drop is measured against where it started (before)"
    if close(answer, 100 * after / before, rel=1e-3):
        return "that is after as a percentage of before; the drop is 100 minus that"
    return (f"{answer:.4g}% is not the drop of the {DOMAIN1} row of `summary`: "
            "100 x (perplexity before - perplexity after) / perplexity before")


q1 = Exercise(
    name="Exercise 1",
    level="easy",
    question=f"""
By **how many percent** did continued pretraining lower the perplexity on held-out **{DOMAIN1}** text?
Read the two perplexities from `summary` and give the drop as a percentage of the perplexity before
(e.g. `12.5` for a 12.5% drop; negative if it rose).
""",
    check_answer=_check_q1,
    hint_text=f"summary.loc['{DOMAIN1}', 'perplexity before'] and summary.loc['{DOMAIN1}', 'perplexity after']; "
              "100 * (before - after) / before.",
    solution_code=f"""
before, after = summary.loc["{DOMAIN1}", "perplexity before"], summary.loc["{DOMAIN1}", "perplexity after"]
answer = float(100 * (before - after) / before)
""",
    wrong=[f"""before, after = summary.loc["{DOMAIN1}", "perplexity before"], summary.loc["{DOMAIN1}", "perplexity after"]
answer = float((before - after) / before)""",
           f"""answer = float(summary.loc["{DOMAIN1}", "perplexity before"] - summary.loc["{DOMAIN1}", "perplexity after"])""",
           f"""before, after = summary.loc["{DOMAIN1}", "perplexity before"], summary.loc["{DOMAIN1}", "perplexity after"]
answer = float(100 * (before - after) / after)"""],
    context_names=("summary",),
)


# --- q2 -------------------------------------------------------------------------------------------

ADAPTER2 = "legal"


def _check_q2(answer, trained, tok, held_out, ppl_before, CONFIG):
    from labkit import domains

    if not isinstance(answer, dict):
        return f"give a dict {{domain: change in percent}}, e.g. {{'medical': -3.1, ...}}, not {type(answer).__name__}"
    if set(answer) != set(held_out):
        return f"your dict has the keys {sorted(answer)}; give one entry per domain: {sorted(held_out)}"
    after = domains.domain_perplexities(trained[ADAPTER2].model, tok, held_out, max_length=CONFIG["max_length"])
    truth = {d: 100 * (after[d] - ppl_before[d]) / ppl_before[d] for d in held_out}
    for d in held_out:
        if (problem := number(answer[d], f"the change for {d}")) is not None:
            return problem
    wrong = [d for d in held_out if not close(answer[d], truth[d], rel=1e-3, abs_=1e-6)]
    if not wrong:
        return None
    if all(close(answer[d], after[d], rel=1e-3) for d in held_out):
        return "these are the adapter's perplexities; give the change against `ppl_before`, in percent"
    if all(close(answer[d], truth[d] / 100, rel=1e-3, abs_=1e-9) for d in held_out):
        return "these are fractions; give percent (x 100)"
    if all(close(answer[d], -truth[d], rel=1e-3, abs_=1e-9) for d in held_out):
        return "the signs are flipped: a perplexity that fell is a negative change"
    if all(close(answer[d], 0, abs_=1e-6) for d in held_out):
        return (f"every change is 0: you compared the base model with itself; measure "
                f"trained['{ADAPTER2}'].model")
    d = wrong[0]
    return (f"{d}: you gave {answer[d]:.4g}%, which is not the {ADAPTER2} adapter's change on held-out {d} text "
            f"(measure it with domains.domain_perplexities(trained['{ADAPTER2}'].model, tok, held_out, "
            "max_length=CONFIG['max_length']) and compare with ppl_before)")


q2 = Exercise(
    name="Exercise 2",
    level="medium",
    question=f"""
The **{ADAPTER2}** adapter was trained on court documents only. Does it help the other domains too?
Measure its perplexity on the held-out text of **every** domain (`domains.domain_perplexities` with
`max_length=CONFIG["max_length"]`) and give, per domain, the change in percent against the base model's
`ppl_before`: a dict `{{"medical": ..., "legal": ..., "code": ...}}`, negative where perplexity fell.
Which domain did it help most?
""",
    check_answer=_check_q2,
    hint_text=(f"after = domains.domain_perplexities(trained['{ADAPTER2}'].model, tok, held_out, "
               "max_length=CONFIG['max_length']); then 100 * (after[d] - ppl_before[d]) / ppl_before[d] per domain."),
    solution_code=f"""
after = domains.domain_perplexities(trained["{ADAPTER2}"].model, tok, held_out, max_length=CONFIG["max_length"])
answer = {{d: 100 * (after[d] - ppl_before[d]) / ppl_before[d] for d in held_out}}
""",
    wrong=[f"""answer = domains.domain_perplexities(trained["{ADAPTER2}"].model, tok, held_out, max_length=CONFIG["max_length"])""",
           f"""after = domains.domain_perplexities(trained["{ADAPTER2}"].model, tok, held_out, max_length=CONFIG["max_length"])
answer = {{d: 100 * (ppl_before[d] - after[d]) / ppl_before[d] for d in held_out}}""",
           """answer = {d: 100 * (ppl_before[d] - v) / v for d, v in ppl_before.items()}"""],
    context_names=("trained", "tok", "held_out", "ppl_before", "CONFIG"),
)


# --- q3 -------------------------------------------------------------------------------------------

R3, DOMAIN3 = 4, "code"


def _check_q3(answer, base, tok, held_out, CONFIG):
    import torch

    from labkit import perplexity

    if not hasattr(answer, "peft_config"):
        if isinstance(answer, torch.nn.Module):
            return ("this model has no adapter (a full fine-tune, or an untouched model): train with "
                    "method='lora' and give the trained model (run.model)")
        if hasattr(answer, "model") and hasattr(answer, "history"):
            return "that is the training result; give its model: run.model"
        return f"give the trained model (a PEFT model, run.model), not {type(answer).__name__}"
    if answer.get_base_model() is base:
        return ("you trained `base` itself, so the notebook's base model now carries your adapter: train "
                "a copy (copy.deepcopy(base)) and reload `base` with labkit.load_model()")
    name = answer.active_adapter
    config = answer.peft_config[name]
    if getattr(config, "use_dora", False):
        return "this is a DoRA adapter (method='dora'); the exercise asks for LoRA"
    if config.r != R3:
        return f"your adapter has r={config.r}; the exercise asks for r={R3}"
    b_values = [p for n, p in answer.named_parameters() if "lora_B" in n]
    if not b_values:
        return "found no LoRA B matrices in this model; train it with labkit.train(..., method='lora')"
    if not any(bool((p != 0).any()) for p in b_values):
        return ("every lora_B is still zero: the adapter was never trained (B starts at 0, so the model "
                "is exactly the base model); train it with labkit.train")
    max_length = CONFIG["max_length"]
    before = perplexity(base, tok, held_out[DOMAIN3], max_length=max_length)
    after = perplexity(answer, tok, held_out[DOMAIN3], max_length=max_length)
    if not after < before:
        return (f"your adapter did not lower the perplexity on held-out {DOMAIN3} text ({before:.2f} -> "
                f"{after:.2f}): train on splits['{DOMAIN3}'][0] with the notebook's learning rate and steps")
    return None


q3 = Exercise(
    name="Exercise 3",
    level="harder",
    question=f"""
**Your own domain adapter.** Continue pretraining a **copy** of the base model (`import copy`, then
`copy.deepcopy(base)`, so that `base` stays untouched) on the **{DOMAIN3}** corpus's training paragraphs, with a LoRA adapter of
rank **r={R3}** and otherwise the notebook's settings (`CONFIG`: learning rate, steps, batch size,
max_length, seed). Your answer: the trained model (`run.model`). The check reads its adapter's rank,
checks that it was trained, and measures its perplexity on the held-out {DOMAIN3} paragraphs against the
base model's.
""",
    check_answer=_check_q3,
    hint_text=(f"run = labkit.train(copy.deepcopy(base), tok, domains.as_text_records(splits['{DOMAIN3}'][0]), "
               f"method='lora', lora_r={R3}, learning_rate=CONFIG['learning_rate'], steps=CONFIG['steps'], ...); "
               "answer = run.model"),
    solution_code=f"""
import copy
run = labkit.train(copy.deepcopy(base), tok, domains.as_text_records(splits["{DOMAIN3}"][0]), method="lora",
                   lora_r={R3}, learning_rate=CONFIG["learning_rate"], steps=CONFIG["steps"],
                   batch_size=CONFIG["batch_size"], max_length=CONFIG["max_length"], seed=CONFIG["seed"],
                   label="my {DOMAIN3} adapter", live=False)
answer = run.model
""",
    wrong=[f"""import copy
run = labkit.train(copy.deepcopy(base), tok, domains.as_text_records(splits["{DOMAIN3}"][0]), method="lora",
                   lora_r=CONFIG["lora_r"], learning_rate=CONFIG["learning_rate"], steps=CONFIG["steps"],
                   batch_size=CONFIG["batch_size"], max_length=CONFIG["max_length"], seed=CONFIG["seed"], live=False)
answer = run.model""",
           f"""import copy
from peft import LoraConfig, get_peft_model
answer = get_peft_model(copy.deepcopy(base), LoraConfig(r={R3}, target_modules="all-linear"))""",
           f"""import copy
run = labkit.train(copy.deepcopy(base), tok, domains.as_text_records(splits["{DOMAIN3}"][0]), method="full",
                   learning_rate=CONFIG["learning_rate"], steps=1, batch_size=CONFIG["batch_size"],
                   max_length=CONFIG["max_length"], seed=CONFIG["seed"], live=False)
answer = run.model"""],
    context_names=("base", "tok", "held_out", "CONFIG"),
)
