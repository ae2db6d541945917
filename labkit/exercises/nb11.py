"""Exercises for notebook 11 (the process): pick the smallest GPU for full fine-tuning with
``process.recommend``, find the duplicates in a dataset by their place in it, and train with a warm-up
and a cosine decay. The checks run the recommender and the cleaning steps themselves, and compare the
learning rates the learner's run logged with the schedule's formula."""
from __future__ import annotations

import numbers

from . import Exercise
from .checks import close

SETUP = """
import labkit
from labkit import cleaning, process

records = labkit.read_jsonl("instructions.jsonl", "messages")
train = [r for r in records if r["split"] == "train"]

def chat(user, reply):
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]}

first = train[0]["messages"]
dirty = [train[1], train[2], chat(first[0]["content"].upper(), first[1]["content"] + "!!"),
         {"messages": [{"role": "user", "content": "Tell me a joke."}]}, chat("Name a colour.", " "),
         chat("Repeat after me.", "very long text " * 400)]
raw = train + dirty
"""


# --- q1 -------------------------------------------------------------------------------------------

MODEL1 = "llama-3.2-1b"


def _gpu_name(answer):
    """The ``calculator.GPUS`` key for a key or a short name ("T4"), or None."""
    from labkit import calculator

    if answer in calculator.GPUS:
        return answer
    if answer in calculator.GPU_MIB:
        return calculator.gpu_label(answer)
    return None


def _check_q1(answer):
    from labkit import calculator, process

    if not isinstance(answer, str):
        return (f"give the GPU's name as a string (a key of calculator.GPUS, e.g. 'T4 (15 GiB)'), not "
                f"{type(answer).__name__} {answer!r}")
    name = _gpu_name(answer)
    if name is None:
        return f"{answer!r} is not one of the calculator's GPUs: {list(calculator.GPUS)}"
    by_size = sorted(calculator.GPUS.items(), key=lambda kv: kv[1])
    picks = {g: process.recommend(gib, MODEL1, "highest", 1) for g, gib in by_size}
    fitting = [g for g, _ in by_size if picks[g].method == "full"]
    if not fitting:
        return f"full fine-tuning of {MODEL1} fits none of the GPUs (the calculator's estimate changed?)"
    truth = fitting[0]
    if name == truth:
        return None
    rec = picks[name]
    need = rec.estimates["full"]
    if rec.method != "full":
        return (f"on the {name}, full fine-tuning of {MODEL1} needs {need:.1f} GiB, more than its "
                f"{calculator.GPUS[name]:.1f} GiB, so recommend picks {rec.method or 'nothing'}")
    return (f"full fine-tuning fits on the {name} ({need:.1f} GiB), but it also fits on a GPU with less "
            "memory: which is the smallest?")


q1 = Exercise(
    name="Exercise 1",
    level="easy",
    question=f"""
You need the **highest quality** for **one** variant of **{MODEL1}**. On which of the calculator's GPUs
(`process.calculator.GPUS`, by the GiB its driver reports) does `process.recommend` pick **full
fine-tuning**, and which is the **smallest** such GPU? Give its name (a key of `GPUS`). Why does the
same GPU get LoRA for a larger model?
""",
    check_answer=_check_q1,
    hint_text=(f"for name, gib in sorted(process.calculator.GPUS.items(), key=lambda kv: kv[1]): "
               f"process.recommend(gib, '{MODEL1}', 'highest', 1).method is 'full' on the first that fits."),
    solution_code=f"""
by_size = sorted(process.calculator.GPUS.items(), key=lambda kv: kv[1])
answer = next(name for name, gib in by_size if process.recommend(gib, "{MODEL1}", "highest", 1).method == "full")
""",
    wrong=['answer = "T4 (15 GiB)"',
           f"""answer = next(name for name, gib in process.calculator.GPUS.items()
              if process.recommend(gib, "{MODEL1}", "highest", 1).method == "full" and gib > 30)"""],
    context_names=(),
)


# --- q2 -------------------------------------------------------------------------------------------

def _duplicates(raw) -> dict[int, str]:
    """{index in raw: why} for every record that repeats an earlier one exactly or nearly (exact
    duplicates first, then near duplicates among what is left, as ``cleaning.clean`` orders them)."""
    from labkit import cleaning

    _, exact = cleaning.exact_dedup(raw)
    gone = {i: why for i, why in exact.removed}
    rest = [i for i in range(len(raw)) if i not in gone]
    _, near = cleaning.near_dedup([raw[i] for i in rest])
    for j, why in near.removed:
        gone[rest[j]] = why
    return gone


def _check_q2(answer, raw):
    if not isinstance(answer, (list, tuple, set)) or not all(
            isinstance(i, numbers.Integral) and not isinstance(i, bool) for i in answer):
        return f"give a list of whole numbers (indices into raw), not {type(answer).__name__} {answer!r}"
    truth = _duplicates(raw)
    got = {int(i) for i in answer}
    if got == set(truth):
        return None
    outside = sorted(i for i in got if not 0 <= i < len(raw))
    if outside:
        return f"raw has {len(raw)} records (indices 0-{len(raw) - 1}); {outside} are outside it"
    extra = sorted(got - set(truth))
    if extra:
        return (f"raw[{extra[0]}] does not repeat an earlier record (exactly or nearly); if it was removed "
                "by clean(), it was for another reason (its format or its length)")
    missing = sorted(set(truth) - got)
    i = missing[0]
    kind = "an exact" if truth[i].startswith("exact") else "a near"
    return (f"you missed raw[{i}], {kind} duplicate ({truth[i]}, counting in that step's input). A step's "
            "report counts indices in its own input: near_dedup ran after the exact copies were removed, "
            "so map its indices back to raw")


q2 = Exercise(
    name="Exercise 2",
    level="medium",
    question="""
Which records of `raw` are **duplicates**: an exact copy of an earlier record, or a near copy (the
test of `cleaning.near_dedup`, threshold 0.8)? Give their **indices in `raw`**, as a list. Run
`cleaning.exact_dedup` on `raw`, then `cleaning.near_dedup` on what it kept, as `clean` does, and mind
that each report's indices count in *its own* input.
""",
    check_answer=_check_q2,
    hint_text=("kept, exact = cleaning.exact_dedup(raw); rest = the indices of raw not in exact.removed; "
               "_, near = cleaning.near_dedup([raw[i] for i in rest]); near's index j is raw's rest[j]."),
    solution_code="""
_, exact = cleaning.exact_dedup(raw)
gone = [i for i, _ in exact.removed]
rest = [i for i in range(len(raw)) if i not in gone]
_, near = cleaning.near_dedup([raw[i] for i in rest])
answer = sorted(gone + [rest[j] for j, _ in near.removed])
""",
    wrong=["""kept, exact = cleaning.exact_dedup(raw)
_, near = cleaning.near_dedup(kept)
answer = sorted({i for i, _ in exact.removed} | {j for j, _ in near.removed})""",
           """kept, reports = cleaning.clean(raw, min_tokens=4, max_tokens=1024)
answer = [i for i, r in enumerate(raw) if r not in kept]"""],
    context_names=("raw",),
)


# --- q3 -------------------------------------------------------------------------------------------

STEPS3, WARMUP3, LR3 = 8, 3, 1e-2


def _expected_rates(lr: float, warmup: int, steps: int) -> list[float]:
    """The rate each step uses under a linear warm-up then cosine decay (transformers' schedule)."""
    import torch
    from transformers import get_cosine_schedule_with_warmup

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    sched = get_cosine_schedule_with_warmup(opt, warmup, steps)
    rates = []
    for _ in range(steps):
        rates.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    return rates


def _check_q3(answer):
    history = getattr(answer, "history", None)
    if history is None or not hasattr(history, "rows"):
        return f"give the training result (what labkit.train returns), not {type(answer).__name__}"
    rates = [r.get("learning_rate") for r in history.rows]
    if len(rates) != STEPS3:
        return f"your run logged {len(rates)} steps; the exercise asks for {STEPS3}"
    peak = max(rates)
    if not close(peak, LR3, rel=1e-6) and rates.index(peak) == WARMUP3:
        return f"your rates peak at {peak:g}; the exercise asks for a peak learning rate of {LR3:g}"
    if all(close(r, e, rel=1e-6, abs_=1e-12) for r, e in zip(rates, _expected_rates(LR3, WARMUP3, STEPS3))):
        return None
    top = rates.index(peak)
    if top != WARMUP3:
        return (f"your rates rise until step {top + 1}, a warm-up of {top} steps (step 1 uses rate 0 and step "
                f"s the rate after s-1 warm-up steps); the exercise asks for {WARMUP3}")
    after = rates[top:]
    if all(close(r, peak, rel=1e-6) for r in after):
        return "after the warm-up your rate stays constant: add the cosine decay (schedule='cosine')"
    drops = [a - b for a, b in zip(after, after[1:])]
    if all(close(d, drops[0], rel=1e-3) for d in drops):
        return "after the warm-up your rate falls in a straight line (schedule='linear'); the exercise asks for a cosine"
    return ("your learning rates do not follow a linear warm-up of "
            f"{WARMUP3} steps then a cosine decay to 0 over {STEPS3} steps: {[round(r, 5) for r in rates]}")


q3 = Exercise(
    name="Exercise 3",
    level="harder",
    question=f"""
**Warm up, then decay.** Train the toy model (`labkit.toy.toy_model()`, its texts `TOY_TEXT` as `text`
records) with LoRA for **{STEPS3} steps** at a peak learning rate of **{LR3:g}**: a linear **warm-up of
{WARMUP3} steps**, then a **cosine** decay. Your answer: the training result (what `labkit.train`
returns). The check compares the rate logged at every step with the schedule's formula. At which step does
the rate peak, and what does step 1 use?
""",
    check_answer=_check_q3,
    hint_text=(f"labkit.train(model, tok, data, method='lora', steps={STEPS3}, learning_rate={LR3:g}, "
               f"schedule='cosine', warmup_steps={WARMUP3}, live=False); the rates are in "
               "run.history.rows[i]['learning_rate']."),
    solution_code=f"""
from labkit.toy import TOY_TEXT, toy_model
toy, toy_tok = toy_model()
answer = labkit.train(toy, toy_tok, [{{"text": t}} for t in TOY_TEXT], method="lora", steps={STEPS3},
                      learning_rate={LR3!r}, schedule="cosine", warmup_steps={WARMUP3}, batch_size=2,
                      max_length=32, seed=0, live=False, label="warm-up and cosine")
""",
    wrong=[f"""from labkit.toy import TOY_TEXT, toy_model
toy, toy_tok = toy_model()
answer = labkit.train(toy, toy_tok, [{{"text": t}} for t in TOY_TEXT], method="lora", steps={STEPS3},
                      learning_rate={LR3!r}, schedule="cosine", warmup_steps={WARMUP3 - 1}, batch_size=2,
                      max_length=32, seed=0, live=False)""",
           f"""from labkit.toy import TOY_TEXT, toy_model
toy, toy_tok = toy_model()
answer = labkit.train(toy, toy_tok, [{{"text": t}} for t in TOY_TEXT], method="lora", steps={STEPS3},
                      learning_rate={LR3!r}, schedule="linear", warmup_steps={WARMUP3}, batch_size=2,
                      max_length=32, seed=0, live=False)"""],
    context_names=(),
)
