"""Exercises for notebook 02 (weights are knobs): which matrix moved most, how a token's probability
moved, and how much of the change lies in a few directions. Each check compares the learner's
answer with the same measurement made on their own model and its snapshot from before the tune."""
from __future__ import annotations

from . import Exercise
from .checks import close, fraction, number

# The notebook tunes SmolLM2 for a few steps; the test's setup tunes the toy model (same Llama
# architecture and weight names) so that it runs in seconds.
SETUP = """
import labkit
from labkit import weights
from labkit.toy import TOY_TEXT, toy_model
from labkit.widgets import probe_table

P = labkit.profile()
config = labkit.TrainConfig(method="full", learning_rate=1e-2, steps=2, batch_size=2, max_length=32, seed=0)
model, tok = toy_model()
contexts, targets = ["The function", "function"], [" of", " ("]
before = probe_table(model, tok, contexts, targets)
data = [{"text": t} for t in TOY_TEXT]
original = weights.snapshot(model)
result = labkit.train(model, tok, data, config, live=False, label="full fine-tune")
after = probe_table(model, tok, contexts, targets)
"""


def _linear_change(original, model):
    from labkit import weights

    return weights.relative_change(original, model).dropna(subset=["module"]).reset_index(drop=True)


def _check_q1(answer, model, original):
    if not isinstance(answer, str):
        return f"give the weight's name as a string (e.g. 'model.layers.0.mlp.up_proj.weight'), not {type(answer).__name__}"
    change = _linear_change(original, model)
    top = change.loc[change["relative_change"].idxmax()]
    if answer == top["name"]:
        return None
    rows = change[change["name"] == answer]
    if rows.empty:
        everything = set(original)
        if answer in everything:
            return (f"{answer!r} is not one of the attention/MLP matrices (q, k, v, o, gate, up, down); "
                    "the exercise asks among those only")
        return f"there is no weight called {answer!r}; names look like 'model.layers.0.mlp.up_proj.weight'"
    row = rows.iloc[0]
    if answer == change.loc[change["relative_change"].idxmin(), "name"]:
        return f"{answer!r} is the matrix that changed LEAST ({row.relative_change:.3%} of its norm)"
    if answer == change.loc[change["norm_dw"].idxmax(), "name"]:
        return (f"{answer!r} moved most in absolute terms (||ΔW|| = {row.norm_dw:.3g}), but relative to its own "
                f"norm it moved {row.relative_change:.3%}; another matrix moved {top.relative_change:.3%}")
    return (f"{answer!r} moved {row.relative_change:.3%} of its norm; another matrix moved "
            f"{top.relative_change:.3%}")


q1 = Exercise(
    name="Exercise 1",
    level="easy",
    question="""
Among the attention and MLP matrices (the 7 linear maps of each layer, as in the heatmap), which one
changed most **relative to its own size** (||ΔW|| / ||W||) during the tune? Give its full name, e.g.
`'model.layers.0.mlp.up_proj.weight'`. Use `weights.relative_change(original, model)`.
""",
    check_answer=_check_q1,
    hint_text="change = weights.relative_change(original, model); keep the rows with a 'module' (dropna), then idxmax of 'relative_change'.",
    solution_code="""
change = weights.relative_change(original, model).dropna(subset=["module"])
answer = change.loc[change["relative_change"].idxmax(), "name"]
""",
    wrong=["""change = weights.relative_change(original, model).dropna(subset=["module"])
answer = change.loc[change["relative_change"].idxmin(), "name"]""",
           'answer = "model.layers.0.mlp.up_projection.weight"'],
    context_names=("model", "original"),
)


CONTEXT, TARGET = "The function", " ("


def _check_q2(answer, model, tok, before):
    from labkit.widgets import probe_table

    if (problem := number(answer, "a ratio")) is not None:
        return problem
    row = before[(before["context"] == CONTEXT) & (before["target"] == TARGET)]
    if row.empty:
        return f"your `before` table has no row for {TARGET!r} after {CONTEXT!r}: make it with probe_table(..., contexts, targets)"
    p_before = float(row["probability"].iloc[0])
    p_after = float(probe_table(model, tok, [CONTEXT], [TARGET])["probability"].iloc[0])
    truth = p_after / p_before
    if close(answer, truth, rel=1e-3):
        return None
    if close(answer, 1 / truth, rel=1e-3):
        return f"you divided before by after ({answer:.4g}); the ratio asked is p after / p before"
    if close(answer, p_after - p_before, rel=1e-3, abs_=1e-9):
        return f"that is the difference p after − p before ({answer:.3g}); the exercise asks for the ratio"
    if close(answer, p_after, rel=1e-3):
        return "that is p after alone; divide it by p before (from the `before` table)"
    return (f"{answer:.4g} is not P({TARGET!r} | {CONTEXT!r}) after the tune divided by before it; "
            "read 'probability' from `before` and from probe_table(model, tok, ...) now")


q2 = Exercise(
    name="Exercise 2",
    level="medium",
    question=f"""
By what factor did the probability of **{TARGET!r}** after **{CONTEXT!r}** change in the tune? Give
p after / p before as a number (above 1: it became likelier). Take p before from the `before` probe table
and measure p after on `model` with `probe_table`.
""",
    check_answer=_check_q2,
    hint_text="before.query(\"context == 'The function' and target == ' ('\") gives the row; probe_table(model, tok, [context], [target]) measures it now.",
    solution_code=f"""
from labkit.widgets import probe_table
p_before = before.query("context == {CONTEXT!r} and target == {TARGET!r}")["probability"].iloc[0]
p_after = probe_table(model, tok, [{CONTEXT!r}], [{TARGET!r}])["probability"].iloc[0]
answer = float(p_after / p_before)
""",
    wrong=[f"""from labkit.widgets import probe_table
p_before = before.query("context == {CONTEXT!r} and target == {TARGET!r}")["probability"].iloc[0]
answer = float(p_before / probe_table(model, tok, [{CONTEXT!r}], [{TARGET!r}])["probability"].iloc[0])""",
           f"""from labkit.widgets import probe_table
p_before = before.query("context == {CONTEXT!r} and target == {TARGET!r}")["probability"].iloc[0]
answer = float(probe_table(model, tok, [{CONTEXT!r}], [{TARGET!r}])["probability"].iloc[0] - p_before)"""],
    context_names=("model", "tok", "before"),
)


MATRIX, K = "model.layers.0.self_attn.q_proj.weight", 4


def _check_q3(answer, model, original):
    from labkit import weights

    dw = weights.delta(original, model, MATRIX)
    shares = weights.energy_share(weights.singular_values(dw), ks=(1, K, 16))
    truth = shares[K]
    if (problem := fraction(answer, truth, f"the top-{K} energy share")) is not None:
        return problem
    if close(answer, truth, rel=1e-3):
        return None
    w = dict(model.named_parameters())[MATRIX].detach().float().cpu()
    if close(answer, weights.energy_share(weights.singular_values(w), ks=(K,))[K], rel=1e-3):
        return "that is the share for the weight matrix W itself; the exercise asks about the change ΔW = W after − W before"
    for k in (1, 16):
        if close(answer, shares[k], rel=1e-3):
            return f"that is the share of the top {k} direction(s); the exercise asks for the top {K}"
    s = weights.singular_values(dw)
    if close(answer, float(s[:K].sum() / s.sum()), rel=1e-3):
        return "you summed the singular values; energy is their SQUARES: sum(s[:4]**2) / sum(s**2)"
    return f"{answer:.4g} is not the share of ||ΔW||² in the top {K} singular directions of {MATRIX}"


q3 = Exercise(
    name="Exercise 3",
    level="harder",
    question=f"""
How low-rank is the change? For **{MATRIX}**, what share of the energy of ΔW (its squared Frobenius norm,
the sum of its squared singular values) lies in its top **{K}** singular directions? Give a fraction
between 0 and 1. Use `weights.delta(original, model, name)`, `weights.singular_values` and compute the
share yourself (then compare with `weights.energy_share`). The spectrum table above gives the top-16
shares of ΔW and of a random matrix of the same shape: is the change lower-rank than noise?
""",
    check_answer=_check_q3,
    hint_text="s = weights.singular_values(weights.delta(original, model, name)); share = (s[:4]**2).sum() / (s**2).sum().",
    solution_code=f"""
s = weights.singular_values(weights.delta(original, model, {MATRIX!r}))
answer = float((s[:{K}] ** 2).sum() / (s ** 2).sum())
""",
    wrong=[f"""s = weights.singular_values(dict(model.named_parameters())[{MATRIX!r}].detach())
answer = float((s[:{K}] ** 2).sum() / (s ** 2).sum())""",
           f"""s = weights.singular_values(weights.delta(original, model, {MATRIX!r}))
answer = float(s[:{K}].sum() / s.sum())"""],
    context_names=("model", "original"),
)
