"""The lab's datasets: every file validates with labkit's loaders, has a card, has no duplicates,
and held-out splits never overlap training ones."""
from pathlib import Path

import pytest

from labkit.data import data_dir, duplicate_report, read_jsonl

FILES = {
    "general_text.jsonl": "text",
    "general_knowledge.jsonl": "cloze",
    "general_knowledge_candidates.jsonl": "cloze",
    "instructions.jsonl": "messages",
    "preferences.jsonl": "preference",
    "domains/code.jsonl": "text",
    "domains/medical.jsonl": "text",
    "domains/legal.jsonl": "text",
    "domains/probes.jsonl": "sense",
}
CARDS = {"general_knowledge_candidates.jsonl": "general_knowledge.md"}


@pytest.mark.parametrize("name,fmt", FILES.items())
def test_file_validates_has_a_card_and_no_duplicates(name, fmt):
    records = read_jsonl(name, fmt)
    card = data_dir() / CARDS.get(name, str(Path(name).with_suffix(".md")))
    assert card.is_file(), f"{name} needs a card at {card}"
    text = card.read_text().lower()
    assert "license" in text and ("how made" in text or "how it was made" in text)
    if fmt == "sense":  # one prompt, several senses: the (prompt, continuation) pair is the key
        dups = duplicate_report(records, key=lambda r: r["prompt"] + "|" + r["continuation"])
    else:
        dups = duplicate_report(records)
    assert not dups, f"{name}: duplicate records {dups[:5]}"


@pytest.mark.parametrize("name,minimum", [("instructions.jsonl", 300), ("preferences.jsonl", 200),
                                          ("general_knowledge.jsonl", 100)])
def test_sizes(name, minimum):
    assert len(read_jsonl(name)) >= minimum


@pytest.mark.parametrize("name", ["instructions.jsonl", "preferences.jsonl"])
def test_heldout_split_is_disjoint_from_train(name):
    from labkit.data import normalise, record_key

    records = read_jsonl(name)
    splits = {r["split"] for r in records}
    assert splits == {"train", "heldout"}
    train = {normalise(record_key(r)) for r in records if r["split"] == "train"}
    heldout = [r for r in records if r["split"] == "heldout"]
    assert heldout and not any(normalise(record_key(r)) in train for r in heldout)


def test_preferences_follow_their_stated_target():
    """The card says: concise over rambling. Every chosen answer is the shorter one."""
    for r in read_jsonl("preferences.jsonl"):
        assert len(r["chosen"].split()) < len(r["rejected"].split())


def test_probe_words_and_domains():
    probes = read_jsonl("domains/probes.jsonl", "sense")
    assert {p["word"] for p in probes} == {"discharge", "motion", "function"}
    assert {p["domain"] for p in probes} == {"medical", "legal", "code"}


@pytest.mark.model
def test_general_knowledge_probe_is_known_by_the_base_model(real_model):
    from labkit.probes import cloze_accuracy

    model, tok = real_model
    assert cloze_accuracy(model, tok, read_jsonl("general_knowledge.jsonl")) == 1.0
