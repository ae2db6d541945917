"""Exercises for notebook 05 (instruction tuning): build an Alpaca prompt, write a reply that passes
the format checks, and count the tokens the loss is computed on. Checks use labkit.scoring, the same
code the notebook scores and trains with."""
from __future__ import annotations

from . import Exercise
from .checks import number

SETUP = """
import labkit
from labkit import scoring

P = labkit.profile()
CONFIG = dict(seed=0, prompt_format="alpaca", max_length=P.pick(smoke=64, cpu=128, gpu=256))
records = labkit.read_jsonl("instructions.jsonl", "messages")
train_records = [r for r in records if r["split"] == "train"]
alpaca_train = scoring.to_alpaca(train_records)
base, tok = labkit.load_model()
"""

INSTRUCTION = "Name the three primary colours of light."


def _check_q1(answer):
    from labkit.scoring import alpaca_prompt

    if not isinstance(answer, str):
        return f"give the prompt as a string, not {type(answer).__name__}"
    truth = alpaca_prompt(INSTRUCTION)
    if answer == truth:
        return None
    if "<|im_start|>" in answer:
        return "that is the chat template (<|im_start|>...), not the Alpaca format"
    if INSTRUCTION not in answer:
        return f"your prompt does not contain the instruction {INSTRUCTION!r} word for word"
    if answer == truth.rstrip("\n"):
        return "your prompt ends at '### Response:' without the newline; the reply starts on the next line"
    if answer.strip() == truth.strip():
        return "right text, but the whitespace at the start or end differs: every character counts in a prompt"
    if "### Instruction:" not in answer or "### Response:" not in answer:
        return "an Alpaca prompt has two headers: '### Instruction:' and '### Response:'"
    return (f"close, but not the template character for character: compare {answer!r} with "
            "scoring.ALPACA_TEMPLATE (a blank line separates the instruction from '### Response:')")


q1 = Exercise(
    name="Exercise 1",
    level="easy",
    question=f"""
Write the prompt the notebook sends for the instruction **{INSTRUCTION!r}** in the Alpaca format, as a
string, character for character (look at `scoring.ALPACA_TEMPLATE`, then build it with `.format` or
`scoring.alpaca_prompt`).
""",
    check_answer=_check_q1,
    hint_text="scoring.ALPACA_TEMPLATE.format(instruction=...), or scoring.alpaca_prompt(...).",
    solution_code=f"answer = scoring.ALPACA_TEMPLATE.format(instruction={INSTRUCTION!r})\n",
    wrong=[f'answer = "### Instruction:\\n{INSTRUCTION}\\n\\n### Response:"',
           f"answer = labkit.predictions.chat_prompt(tok, {INSTRUCTION!r})"],
    context_names=(),
)


FORMAT_INSTRUCTION = "Give three tips for sleeping well as exactly three bullet points, at most 6 words per line."


def _check_q2(answer):
    from labkit.scoring import format_checks

    if not isinstance(answer, str):
        return f"give the reply as a string, not {type(answer).__name__}"
    checks = format_checks(FORMAT_INSTRUCTION, answer)
    failed = [name for name, ok in checks.items() if not ok]
    if not failed:
        return None
    return (f"your reply fails {len(failed)} of the {len(checks)} checks that apply: {', '.join(failed)} "
            f"(scoring.format_checks shows each). Format score: {1 - len(failed) / len(checks):.2f}")


q2 = Exercise(
    name="Exercise 2",
    level="medium",
    question=f"""
The format score reads the instruction, picks the checks that apply and runs them on the reply. Write a
reply to the instruction below that scores **1.0**; `scoring.format_checks(instruction, reply)` shows which
checks apply. Then ask yourself: would a reply that scores 1.0 necessarily be a good answer?

    instruction = {FORMAT_INSTRUCTION!r}
""",
    check_answer=_check_q2,
    hint_text="Lines that start with '- ' count as bullets; count the words on each line; no '### Instruction' after the reply.",
    solution_code="""
answer = "- Keep a regular bedtime\\n- Avoid screens before bed\\n- Keep your bedroom cool"
""",
    wrong=['answer = "- Keep a regular bedtime\\n- Avoid screens before bed\\n- Keep your bedroom cool\\n- Skip late coffee"',
           'answer = "- Keep a regular bedtime every single night\\n- Avoid screens\\n- Stay cool\\n\\n### Instruction:"'],
    context_names=(),
)


def _mask(base, tok, record, max_length):
    from labkit.scoring import loss_mask

    return loss_mask(base, tok, record, max_length=max_length)


def _check_q3(answer, base, tok, alpaca_train, CONFIG):
    if (problem := number(answer, "a number of tokens")) is not None:
        return problem
    if float(answer) != int(answer):
        return f"a count of tokens is a whole number, not {answer}"
    rows = _mask(base, tok, alpaca_train[0], CONFIG["max_length"])
    truth = sum(r["in_loss"] for r in rows)
    answer = int(answer)
    if answer == truth:
        return None
    if answer == len(rows):
        return (f"that is every token of the example ({len(rows)}); only the completion's tokens carry a label, "
                "the prompt's are context only")
    if answer == len(rows) - truth:
        return f"that is the number of PROMPT tokens ({answer}): those are masked out (label -100); count the others"
    if answer == truth - 1:
        return "one short: TRL appends the end-of-sequence token to the completion, and it is trained on too (so the model learns to stop)"
    n_completion = len(tok(alpaca_train[0]["completion"], add_special_tokens=False)["input_ids"])
    if answer == n_completion and n_completion + 1 > truth:
        return (f"the whole completion has {n_completion} tokens, but the example is cut at "
                f"max_length={CONFIG['max_length']}: count what is left after the cut")
    return (f"{answer} is not the number of tokens with a label in alpaca_train[0] at max_length="
            f"{CONFIG['max_length']} (the example has {len(rows)} tokens in all)")


q3 = Exercise(
    name="Exercise 3",
    level="harder",
    question="""
Completion-only loss: how many tokens of the first training example, `alpaca_train[0]`, count in the
training loss when it is cut at `CONFIG["max_length"]` tokens? Use `scoring.loss_mask(base, tok, record,
max_length=...)` (TRL's own preparation and collator, nothing trained) and count the rows with `in_loss`.
Before you run it: what do you expect, the completion's tokens alone, or one more?
""",
    check_answer=_check_q3,
    hint_text="rows = scoring.loss_mask(base, tok, alpaca_train[0], max_length=CONFIG['max_length']); sum(r['in_loss'] for r in rows)",
    solution_code="""
rows = scoring.loss_mask(base, tok, alpaca_train[0], max_length=CONFIG["max_length"])
answer = sum(r["in_loss"] for r in rows)
""",
    wrong=["""answer = len(scoring.loss_mask(base, tok, alpaca_train[0], max_length=CONFIG["max_length"]))""",
           """answer = len(tok(alpaca_train[0]["completion"], add_special_tokens=False)["input_ids"])"""],
    context_names=("base", "tok", "alpaca_train", "CONFIG"),
)
