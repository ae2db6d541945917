"""Exercises for notebook 03 (the learning rate): read a schedule, spot the diverging runs, size the
updates, and how update size scales with the rate. Checks recompute the answer from the learner's
own sweep (or from the real scheduler)."""
from __future__ import annotations

import math

import numpy as np

from . import Exercise
from .checks import close, fraction, number

# The notebook sweeps SmolLM2; the test's setup sweeps the toy model (seconds), with one rate large
# enough to diverge.
SETUP = """
import labkit
from labkit import learning_rate as LR
from labkit.toy import TOY_TEXT, toy_model

P = labkit.profile()
EXPERIMENT = {"seed": 0, "method": "full", "learning_rates": [1e-3, 3.0], "steps": 2, "batch_size": 2,
              "max_length": 32, "divergence_factor": 1.5}
data = [{"text": t} for t in TOY_TEXT]
sweep = LR.lr_sweep(toy_model, data, EXPERIMENT["learning_rates"], factor=EXPERIMENT["divergence_factor"],
                    measure_updates=True, method=EXPERIMENT["method"], steps=EXPERIMENT["steps"],
                    seed=EXPERIMENT["seed"], batch_size=EXPERIMENT["batch_size"],
                    max_length=EXPERIMENT["max_length"])
"""

SCHEDULE = dict(name="linear", total_steps=100, warmup_steps=10, learning_rate=2e-4)
STEP = 5


def _check_q1(answer):
    from labkit.learning_rate import schedule_curve

    if (problem := number(answer, "a learning rate")) is not None:
        return problem
    curve = schedule_curve(**SCHEDULE)
    truth = curve[STEP - 1]
    if close(answer, truth, rel=1e-6):
        return None
    if close(answer, SCHEDULE["learning_rate"], rel=1e-6):
        return (f"{answer:g} is the peak rate; at step {STEP} warmup (the first {SCHEDULE['warmup_steps']} steps) "
                "is still climbing towards it")
    if close(answer, curve[STEP], rel=1e-6):
        return (f"{answer:g} is step {STEP + 1}'s rate: schedule_curve's list starts with step 1 at index 0, "
                f"so step {STEP} is index {STEP - 1}")
    if close(answer, curve[STEP - 2], rel=1e-6):
        return f"{answer:g} is step {STEP - 1}'s rate: step {STEP} is index {STEP - 1} of the list"
    return (f"{answer:g} is not the rate a linear schedule (warmup {SCHEDULE['warmup_steps']}, "
            f"{SCHEDULE['total_steps']} steps, peak {SCHEDULE['learning_rate']:g}) uses at step {STEP}")


q1 = Exercise(
    name="Exercise 1",
    level="easy",
    question=f"""
A `"linear"` schedule with **{SCHEDULE['warmup_steps']} warmup steps**, **{SCHEDULE['total_steps']} steps** in all
and a peak learning rate of **{SCHEDULE['learning_rate']:g}**: what learning rate does the optimizer use at
step **{STEP}** (counting from 1)? Read it from `LR.schedule_curve(...)`, the rates the real scheduler
gives, and check it against your own reckoning of linear warmup.
""",
    check_answer=_check_q1,
    hint_text="curve = LR.schedule_curve('linear', total_steps=100, warmup_steps=10, learning_rate=2e-4): curve[0] is step 1.",
    solution_code=f"""
curve = LR.schedule_curve("linear", total_steps={SCHEDULE['total_steps']}, warmup_steps={SCHEDULE['warmup_steps']},
                          learning_rate={SCHEDULE['learning_rate']!r})
answer = curve[{STEP} - 1]
""",
    wrong=[f"answer = {SCHEDULE['learning_rate']!r}",
           f"""curve = LR.schedule_curve("linear", total_steps={SCHEDULE['total_steps']}, warmup_steps={SCHEDULE['warmup_steps']},
                          learning_rate={SCHEDULE['learning_rate']!r})
answer = curve[{STEP}]"""],
)


def _diverged(sweep, factor):
    from labkit.learning_rate import detect_divergence

    return sorted(r["learning_rate"] for r in sweep if detect_divergence(r["losses"], factor) is not None)


def _check_q2(answer, sweep, EXPERIMENT):
    if isinstance(answer, (int, float)) and not isinstance(answer, bool):
        answer = [answer]
    if not isinstance(answer, (list, tuple, set)):
        return f"give a list of learning rates (an empty list if none diverged), not {type(answer).__name__}"
    if any(isinstance(a, dict) for a in answer):
        return "give the learning rates themselves (numbers), not the sweep's rows"
    got = sorted(float(a) for a in answer)
    truth = _diverged(sweep, EXPERIMENT["divergence_factor"])
    rates = sorted(r["learning_rate"] for r in sweep)
    if len(got) == len(truth) and all(close(a, b, rel=1e-9) for a, b in zip(got, truth)):
        return None
    calm = [lr for lr in rates if lr not in truth]
    missing = [lr for lr in truth if not any(close(lr, a, rel=1e-9) for a in got)]
    extra = [a for a in got if not any(close(a, lr, rel=1e-9) for lr in truth)]
    if got and all(any(close(a, lr, rel=1e-9) for lr in calm) for a in got) and set(got) == set(calm):
        return ("those are the rates whose runs stayed calm; the exercise asks for the ones that diverged "
                f"(loss non-finite or above {EXPERIMENT['divergence_factor']}x its first value)")
    if extra:
        return (f"lr={extra[0]:g} did not diverge: its losses {[round(x, 3) for x in next(r for r in sweep if close(r['learning_rate'], extra[0], rel=1e-9))['losses']]}"
                f" never went non-finite or above {EXPERIMENT['divergence_factor']}x the first")
    if missing:
        row = next(r for r in sweep if r["learning_rate"] == missing[0])
        return f"you missed lr={missing[0]:g}: its losses {[round(x, 3) for x in row['losses']]} crossed the line"
    return f"not the rates that diverged in your sweep (rates tried: {rates})"


q2 = Exercise(
    name="Exercise 2",
    level="medium",
    question="""
Which learning rates of your sweep **diverged**? By the notebook's rule, a run diverged at the first
step whose loss is not finite or above `EXPERIMENT["divergence_factor"]` times its first loss. Give a list
of learning rates (empty if none), computed from `sweep` (each row has `"learning_rate"` and `"losses"`;
`LR.detect_divergence` applies the rule).
""",
    check_answer=_check_q2,
    hint_text="[r['learning_rate'] for r in sweep if LR.detect_divergence(r['losses'], EXPERIMENT['divergence_factor'])]",
    solution_code="""
answer = [r["learning_rate"] for r in sweep
          if LR.detect_divergence(r["losses"], EXPERIMENT["divergence_factor"]) is not None]
""",
    wrong=["""answer = [r["learning_rate"] for r in sweep
          if LR.detect_divergence(r["losses"], EXPERIMENT["divergence_factor"]) is None]"""],
    context_names=("sweep", "EXPERIMENT"),
)


def _median_update(row):
    from labkit.learning_rate import update_size_summary

    return update_size_summary(row["updates"])["median"]


def _check_q3(answer, sweep):
    measured = [r for r in sweep if r.get("updates")]
    if not measured:
        return "your sweep has no update sizes: run it with measure_updates=True"
    smallest = min(measured, key=lambda r: r["learning_rate"])
    truth = _median_update(smallest)
    if (problem := number(answer, "a fraction")) is not None:
        return problem
    if close(answer, truth, rel=1e-6):
        return None
    for r in measured:
        if r is not smallest and close(answer, _median_update(r), rel=1e-6):
            return (f"that is the median at lr={r['learning_rate']:g}; the exercise asks at the smallest rate, "
                    f"lr={smallest['learning_rate']:g}")
    if (problem := fraction(answer, truth, "the relative update")) is not None:
        return problem
    values = [u["relative_update"] for u in smallest["updates"]]
    if close(answer, float(np.mean(values)), rel=1e-6):
        return "that is the mean; a few large updates pull it up. The exercise asks for the median"
    return f"{answer:.3g} is not the median per-step |ΔW|/|W| at lr={smallest['learning_rate']:g}"


q3 = Exercise(
    name="Exercise 3",
    level="medium",
    question="""
How big is one step? At the **smallest** learning rate of your sweep, what is the median per-step relative
update |ΔW| / |W| over all (step, weight) pairs? Give it as a fraction (1e-4 means 0.01%), using the
row's `"updates"` and `LR.update_size_summary`. Is it inside the often-quoted 0.01%-0.1% band?
""",
    check_answer=_check_q3,
    hint_text="row = min(sweep, key=lambda r: r['learning_rate']); LR.update_size_summary(row['updates'])['median']",
    solution_code="""
row = min(sweep, key=lambda r: r["learning_rate"])
answer = LR.update_size_summary(row["updates"])["median"]
""",
    wrong=["""row = min(sweep, key=lambda r: r["learning_rate"])
answer = 100 * LR.update_size_summary(row["updates"])["median"]""",
           """row = max(sweep, key=lambda r: r["learning_rate"])
answer = LR.update_size_summary(row["updates"])["median"]"""],
    context_names=("sweep",),
)


def _slope_points(sweep):
    rows = sorted((r for r in sweep if r.get("updates")), key=lambda r: r["learning_rate"])
    return (np.log10([r["learning_rate"] for r in rows]), np.log10([_median_update(r) for r in rows]))


def _check_q4(answer, sweep):
    if (problem := number(answer, "a slope")) is not None:
        return problem
    x, y = _slope_points(sweep)
    if len(x) < 2:
        return "a slope needs at least two learning rates with update sizes in your sweep"
    truth = float(np.polyfit(x, y, 1)[0])
    if close(answer, truth, rel=1e-4):
        return None
    if close(answer, float(np.polyfit(y, x, 1)[0]), rel=1e-4):
        return "you fitted log(rate) against log(update): the exercise asks for log(update) against log(rate)"
    if close(answer, float(np.polyfit(10 ** x, 10 ** y, 1)[0]), rel=1e-4):
        return "that slope is on the raw values; fit the logarithms (a straight line on a log-log plot)"
    if math.isclose(answer, -truth, rel_tol=1e-4):
        return "your slope has the wrong sign: a larger rate gives larger updates"
    return f"{answer:.3g} is not the log-log slope of median update size against learning rate in your sweep"


q4 = Exercise(
    name="Exercise 4",
    level="harder",
    question="""
Does the step size grow in proportion to the learning rate? Fit a straight line to
log10(median relative update) against log10(learning rate), over every rate of your sweep with update
sizes, and give its slope (`numpy.polyfit(x, y, 1)[0]`). A slope of 1 means ten times the rate, ten
times the step. Adam normalises the gradient, so what do you expect, and what happens where a run
diverged?
""",
    check_answer=_check_q4,
    hint_text="x = log10 of each rate, y = log10 of LR.update_size_summary(r['updates'])['median']; np.polyfit(x, y, 1)[0].",
    solution_code="""
import numpy as np
rows = [r for r in sweep if r["updates"]]
x = np.log10([r["learning_rate"] for r in rows])
y = np.log10([LR.update_size_summary(r["updates"])["median"] for r in rows])
answer = float(np.polyfit(x, y, 1)[0])
""",
    wrong=["""import numpy as np
rows = [r for r in sweep if r["updates"]]
x = np.log10([r["learning_rate"] for r in rows])
y = np.log10([LR.update_size_summary(r["updates"])["median"] for r in rows])
answer = float(np.polyfit(y, x, 1)[0])""",
           """import numpy as np
rows = [r for r in sweep if r["updates"]]
x = [r["learning_rate"] for r in rows]
y = [LR.update_size_summary(r["updates"])["median"] for r in rows]
answer = float(np.polyfit(x, y, 1)[0])"""],
    context_names=("sweep",),
)
