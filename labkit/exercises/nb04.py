"""Exercises for notebook 04 (catastrophic forgetting): the cost on general text, whether replay helps
by the primary measure, and the noise band that verdict rests on. Checks recompute the answer from
the learner's own result rows."""
from __future__ import annotations

import math

from . import Exercise
from .checks import close, number

# The notebook tunes SmolLM2 on code; the test's setup tunes the toy model on the same data and
# scores the same probes (seconds instead of minutes).
SETUP = """
import labkit
from labkit import forgetting as F
from labkit.toy import toy_model

P = labkit.profile()
TRAIN = {"steps": 2, "batch_size": 2, "max_length": 32, "seed": 0}
probes, domain_train, replay_pool = F.forgetting_probes(n_domain_eval=2, n_knowledge=4, n_general_eval=2,
                                                        max_length=32)
model, tok = toy_model()
before = F.measure(model, tok, probes)
n_items = len(probes.knowledge)
rows_full = [F.fine_tune_and_measure(toy_model, domain_train, probes, before, method="full", learning_rate=lr,
                                     **TRAIN) for lr in (1e-3, 3e-2)]
hardest = max(rows_full, key=lambda r: r["learning_rate"])
replay = F.fine_tune_and_measure(toy_model, domain_train, probes, before, method="full",
                                 learning_rate=hardest["learning_rate"], replay_share=0.5,
                                 replay_pool=replay_pool, label="replay", **TRAIN)
"""


def _check_q1(answer, before, hardest):
    if (problem := number(answer, "a percentage")) is not None:
        return problem
    truth = 100 * (hardest["general_ppl"] / before["general_ppl"] - 1)
    if close(answer, truth, rel=1e-4, abs_=1e-6):
        return None
    if close(answer * 100, truth, rel=1e-4, abs_=1e-6):
        return f"you gave a fraction ({answer:.4g}); give the change in percent ({answer:.4g} → {100 * answer:.4g})"
    if close(answer, -truth, rel=1e-4, abs_=1e-6):
        return "your sign is flipped: give after relative to before (a rise in perplexity is positive)"
    if close(answer, 100 * (hardest["domain_ppl"] / before["domain_ppl"] - 1), rel=1e-4):
        return "that is the change of the IN-DOMAIN perplexity; the exercise asks about general text"
    if close(answer, 100 * (hardest["general_ppl"] - before["general_ppl"]), rel=1e-4):
        return "you took the difference of perplexities, not their ratio: (after / before − 1) × 100"
    return (f"{answer:.4g}% is not the change of general-text perplexity from `before` to `hardest` "
            f"({before['general_ppl']:.2f} before)")


q1 = Exercise(
    name="Exercise 1",
    level="easy",
    question="""
What did the hardest run (`hardest`, the highest learning rate) cost on general text? Give the change
of its general-text perplexity against the base model (`before`) **in percent** (+10 means 10% higher,
i.e. worse).
""",
    check_answer=_check_q1,
    hint_text="100 * (hardest['general_ppl'] / before['general_ppl'] - 1)",
    solution_code="""answer = 100 * (hardest["general_ppl"] / before["general_ppl"] - 1)\n""",
    wrong=["""answer = hardest["general_ppl"] / before["general_ppl"] - 1""",
           """answer = 100 * (hardest["domain_ppl"] / before["domain_ppl"] - 1)"""],
    context_names=("before", "hardest"),
)


VERDICTS = ("less", "more", "within noise")


def _check_q2(answer, replay, hardest, n_items):
    from labkit.forgetting import knowledge_verdict

    if answer not in VERDICTS:
        return f"answer one of {VERDICTS}, not {answer!r}"
    v = knowledge_verdict(replay, hardest, n_items)
    if answer == v["verdict"]:
        return None
    lost = (f"replay lost {100 * replay['knowledge_drop']:.0f} points of knowledge, the hardest run "
            f"{100 * hardest['knowledge_drop']:.0f}: a difference of {100 * v['difference']:+.0f} points")
    if v["verdict"] == "within noise":
        return (f"{lost}, inside the noise band of ±{100 * v['noise']:.0f} points on {n_items} items: this probe "
                "cannot tell the two runs apart. (General perplexity is the weaker signal; the primary measure is knowledge.)")
    return f"{lost}, outside the noise band of ±{100 * v['noise']:.0f} points: the verdict is '{v['verdict']}'"


q2 = Exercise(
    name="Exercise 2",
    level="medium",
    question="""
Does replay reduce forgetting **by the primary measure** (knowledge accuracy on the probe items), taking
the probe's noise into account? Compare `replay` with `hardest` (same learning rate, no replay) and
answer `"less"`, `"more"` or `"within noise"` (replay's forgetting compared with the hardest run's).
Decide from the two runs' numbers first, then see what `F.knowledge_verdict(run, reference, n_items)` says.
""",
    check_answer=_check_q2,
    hint_text="F.knowledge_verdict(replay, hardest, n_items)['verdict']: the difference of points lost against two standard errors.",
    solution_code="""answer = F.knowledge_verdict(replay, hardest, n_items)["verdict"]\n""",
    wrong=["""answer = "less" if replay["general_ppl_change"] < hardest["general_ppl_change"] else "more\"""",
           """answer = "replay helps\""""],
    context_names=("replay", "hardest", "n_items"),
)


def _check_q3(answer, replay, hardest, n_items):
    from labkit.forgetting import knowledge_verdict

    if (problem := number(answer, "a noise band in points")) is not None:
        return problem
    truth = 100 * knowledge_verdict(replay, hardest, n_items)["noise"]
    if close(answer, truth, rel=1e-4):
        return None
    if close(answer * 100, truth, rel=1e-4):
        return f"you gave a fraction ({answer:.4g}); give points (percent of the items): {100 * answer:.4g}"
    if close(answer, truth / 2, rel=1e-4):
        return "that is one standard error; the band is two of them (about 95%)"
    p = (replay["knowledge_acc"] + hardest["knowledge_acc"]) / 2
    if close(answer, 100 * 2 * math.sqrt(p * (1 - p) / n_items), rel=1e-4):
        return ("that is the noise of ONE accuracy; the difference of two accuracies has twice its variance: "
                "sqrt(2 p (1 − p) / n)")
    if p * (1 - p) < 1 / n_items and close(answer, 100 * 2 * math.sqrt(2 * p * (1 - p) / n_items), rel=1e-4, abs_=1e-9):
        return (f"with p = {p:.2f}, p (1 − p) is below 1/n and the band would shrink to {answer:.3g}; the rule uses "
                "max(p (1 − p), 1/n) so that a handful of items never looks certain")
    return f"{answer:.4g} is not the noise band (in points) that knowledge_verdict uses for replay against hardest"


q3 = Exercise(
    name="Exercise 3",
    level="harder",
    question="""
Compute that verdict's noise band yourself, **in points**. The accuracies of two runs on the same n items
differ by chance with a standard error of about sqrt(2 p (1 − p) / n), where p is the mean of the two
accuracies (`knowledge_acc`); the rule floors p (1 − p) at 1/n so that a handful of items never looks
certain, and the band is **two** standard errors. Use `replay`, `hardest` and `n_items`, then compare with
`F.knowledge_verdict(...)["noise"]`. How many items would halve it?
""",
    check_answer=_check_q3,
    hint_text="p = mean of the two knowledge_acc; 100 * 2 * math.sqrt(2 * max(p * (1 - p), 1 / n_items) / n_items)",
    solution_code="""
import math
p = (replay["knowledge_acc"] + hardest["knowledge_acc"]) / 2
answer = 100 * 2 * math.sqrt(2 * max(p * (1 - p), 1 / n_items) / n_items)
""",
    wrong=["""import math
p = (replay["knowledge_acc"] + hardest["knowledge_acc"]) / 2
answer = 2 * math.sqrt(2 * max(p * (1 - p), 1 / n_items) / n_items)""",
           """import math
p = (replay["knowledge_acc"] + hardest["knowledge_acc"]) / 2
answer = 100 * math.sqrt(2 * max(p * (1 - p), 1 / n_items) / n_items)"""],
    context_names=("replay", "hardest", "n_items"),
)
