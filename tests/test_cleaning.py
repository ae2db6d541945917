"""Cleaning steps on hand-made records: each removes what it should and says why."""
import pytest

from labkit import cleaning
from labkit.toy import toy_tokenizer


def chat(user, reply):
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]}


RECORDS = [
    chat("What is the capital of France?", "The capital of France is Paris."),
    chat("What is the capital of France?", "The capital of France is Paris."),      # exact copy
    chat("what is the capital of france", "The capital of France is Paris!!"),      # near copy
    chat("Name a primary colour.", "Red."),
    chat("Explain photosynthesis briefly.", "Plants turn light, water and carbon dioxide into sugar and oxygen."),
]


def test_exact_dedup_removes_only_identical_records():
    kept, rep = cleaning.exact_dedup(RECORDS)
    assert len(kept) == 4 and rep.removed == [(1, "exact duplicate of record 0")]
    assert rep.summary() == "exact duplicates: kept 4 of 5, removed 1"


def test_near_dedup_catches_case_and_punctuation_changes():
    kept, rep = cleaning.near_dedup(RECORDS, threshold=0.8)
    assert [i for i, _ in rep.removed] == [1, 2]
    assert "near duplicate of record 0" in rep.removed[1][1]
    kept, rep = cleaning.near_dedup(RECORDS[3:], threshold=0.8)
    assert rep.removed == []  # different records stay
    with pytest.raises(ValueError, match="threshold"):
        cleaning.near_dedup(RECORDS, threshold=0)


def test_length_filter_reports_short_and_long():
    kept, rep = cleaning.filter_length(RECORDS, min_tokens=6, max_tokens=12)
    reasons = dict(rep.removed)
    assert reasons[3].startswith("too short") and reasons[4].startswith("too long")
    tok = toy_tokenizer()
    _, rep_tok = cleaning.filter_length(RECORDS, tok, min_tokens=1, max_tokens=10_000)
    assert rep_tok.removed == [] and "tokens" in rep_tok.step


def test_format_check_names_the_problem():
    bad = [RECORDS[0], {"messages": [{"role": "user", "content": "hi"}]},
           {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "  "}]},
           {"foo": 1}]
    kept, rep = cleaning.check_format(bad, "messages")
    assert len(kept) == 1
    reasons = dict(rep.removed)
    assert "last message must be the assistant" in reasons[1]
    assert "'messages[1].content' is empty" in reasons[2]
    assert "missing field 'messages'" in reasons[3]


def test_chat_template_and_whole_pipeline():
    tok = toy_tokenizer()
    kept, rep = cleaning.apply_chat_template(RECORDS[:1], tok)
    assert kept[0]["text"].startswith("<|im_start|>user\nWhat is") and rep.removed == []
    kept, reports = cleaning.clean(RECORDS, tok, min_tokens=3, max_tokens=1000, template=True)
    assert len(kept) == 3 and all("text" in r for r in kept)
    frame = cleaning.reports_frame(reports)
    assert list(frame["step"].str.split().str[0]) == ["exact", "near"]


def test_inject_noise_is_seeded_and_counts():
    records = [chat(f"Question {i}?", f"Answer number {i} is a sentence with several words.") for i in range(20)]
    noisy, rep = cleaning.inject_noise(records, rate=0.25, seed=3)
    again, _ = cleaning.inject_noise(records, rate=0.25, seed=3)
    assert noisy == again and len(rep.removed) == 5
    changed = [i for i, (a, b) in enumerate(zip(records, noisy)) if a != b]
    assert changed == [i for i, _ in rep.removed]
    kinds = {why.split()[0] for _, why in rep.removed}
    assert kinds == {"garbled", "wrong"}
    assert records[0]["messages"][1]["content"].startswith("Answer number 0")  # input untouched
    clean_again, rep0 = cleaning.inject_noise(records, rate=0.0)
    assert clean_again == records and rep0.removed == []
    with pytest.raises(ValueError, match="rate"):
        cleaning.inject_noise(records, rate=1.5)
