"""The preferences writer (append-only, atomic, rerun-safe, checks first) and the ranking widget."""
import json
import os

import pytest

from labkit import files
from labkit import preferences as prefs

PAIR = {"prompt": "What is a fjord?", "chosen": "A sea inlet carved by glaciers.",
        "rejected": "Well, so, fjords, right? Let me start with a story about my friend..."}


LOCK = ".prefs.jsonl.lock"  # the lock file two writers take turns on (labkit.files.locked)


def lines(path):
    return [json.loads(l) for l in path.read_text(encoding="utf-8").splitlines() if l.strip()]


def test_append_creates_then_appends_keeping_earlier_lines_byte_identical(tmp_path):
    path = tmp_path / "prefs.jsonl"
    assert prefs.append_preferences(path, [PAIR]) == 1
    first = path.read_bytes()
    other = {**PAIR, "chosen": "A long, narrow inlet between cliffs."}
    assert prefs.append_preferences(path, [other]) == 1
    assert path.read_bytes().startswith(first)
    got = lines(path)
    assert [r["chosen"] for r in got] == [PAIR["chosen"], other["chosen"]]
    assert got[0]["id"] == prefs.judgement_id(PAIR["prompt"], PAIR["chosen"], PAIR["rejected"])
    assert {p.name for p in tmp_path.iterdir()} == {"prefs.jsonl", LOCK}  # no temp file left


def test_rerun_adds_no_duplicates(tmp_path):
    path = tmp_path / "prefs.jsonl"
    batch = [PAIR, {**PAIR, "rejected": "Hmm, hard to say, it depends on many things really."}]
    assert prefs.append_preferences(path, batch) == 2
    before = path.read_bytes()
    assert prefs.append_preferences(path, batch) == 0       # the same cell run again
    assert prefs.append_preferences(path, [PAIR, PAIR]) == 0
    assert path.read_bytes() == before
    assert len(lines(path)) == 2


def test_existing_records_without_id_are_recognised(tmp_path):
    path = tmp_path / "prefs.jsonl"
    path.write_text(json.dumps({**PAIR, "split": "train"}) + "\n")  # like data/preferences.jsonl
    assert prefs.append_preferences(path, [PAIR]) == 0


def test_write_is_atomic_replace(tmp_path, monkeypatch):
    path = tmp_path / "prefs.jsonl"
    prefs.append_preferences(path, [PAIR])
    before = path.read_bytes()
    calls = []
    real_replace = os.replace

    def spy(src, dst):
        calls.append((str(src), str(dst)))
        assert src != dst and os.path.getsize(src) > len(before)  # the whole new file, written first
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    prefs.append_preferences(path, [{**PAIR, "chosen": "An inlet."}])
    assert calls and calls[0][1] == str(path)

    def crash(src, dst):
        raise OSError("disk pulled out")

    monkeypatch.setattr(os, "replace", crash)
    after_one = path.read_bytes()
    with pytest.raises(OSError):
        prefs.append_preferences(path, [{**PAIR, "chosen": "A glacial inlet."}])
    assert path.read_bytes() == after_one          # the old file is intact
    assert {p.name for p in tmp_path.iterdir()} == {"prefs.jsonl", LOCK}  # and the temp file is gone


@pytest.mark.parametrize("bad_line, why", [
    ('{"prompt": "x", "chosen": "a"', "not valid JSON"),
    ('{"prompt": "x", "chosen": "a"}', "missing field 'rejected'"),
    ('{"prompt": "x", "chosen": "a", "rejected": "a"}', "same text"),
])
def test_malformed_existing_file_is_reported_with_its_line_and_left_untouched(tmp_path, bad_line, why):
    path = tmp_path / "prefs.jsonl"
    path.write_text(json.dumps(PAIR) + "\n" + bad_line + "\n", encoding="utf-8")
    before = path.read_bytes()
    with pytest.raises(ValueError, match=rf"prefs\.jsonl:2: .*{why}"):
        prefs.append_preferences(path, [{**PAIR, "chosen": "new"}])
    assert path.read_bytes() == before


def test_bad_judgement_writes_nothing(tmp_path):
    path = tmp_path / "prefs.jsonl"
    prefs.append_preferences(path, [PAIR])
    before = path.read_bytes()
    with pytest.raises(ValueError, match="judgement 2: field 'chosen' is empty"):
        prefs.append_preferences(path, [{**PAIR, "chosen": "ok"}, {**PAIR, "chosen": " "}])
    assert path.read_bytes() == before


def test_pairs_from_a_ranking():
    pairs = prefs.pairs_from_ranking("p", ["best", "mid", "worst"])
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [("best", "mid"), ("best", "worst"), ("mid", "worst")]
    with pytest.raises(ValueError):
        prefs.pair_from_best_worst("p", "a", "a")


SAMPLES = [{"prompt": "What is a fjord?", "responses": ["Long rambling A ...", "Short B.", "Medium C, ok."]},
           {"prompt": "What is rain?", "responses": ["Water falling.", "Well, rain, hmm..."]}]


def test_ranking_widget_driven_in_code_appends_judgements(tmp_path):
    path = tmp_path / "mine.jsonl"
    w = prefs.ranking_widget(SAMPLES, path)
    # order: B best, C second, A worst
    for control, rank in zip(w.ranks, [3, 1, 2]):
        control.value = rank
    w.save.click()
    got = lines(path)
    assert [(r["chosen"], r["rejected"]) for r in got] == [
        ("Short B.", "Medium C, ok."), ("Short B.", "Long rambling A ..."), ("Medium C, ok.", "Long rambling A ...")]
    assert all(r["prompt"] == "What is a fjord?" and r["source"] == "learner" for r in got)
    assert w.saved == 3 and "Saved 3" in w.status.value
    w.save.click()                                   # a second click adds nothing
    assert len(lines(path)) == 3 and "Saved 0" in w.status.value

    w.prompt_picker.value = 1                        # next prompt, best/worst mode
    w.mode.value = "best and worst"
    assert all(r.disabled for r in w.ranks)
    w.best.value, w.worst.value = 0, 1
    w.save.click()
    assert lines(path)[-1] == {**lines(path)[-1], "prompt": "What is rain?", "chosen": "Water falling.",
                               "rejected": "Well, rain, hmm..."}
    assert len(lines(path)) == 4


def test_ranking_widget_refuses_ties_without_writing(tmp_path):
    path = tmp_path / "mine.jsonl"
    w = prefs.ranking_widget(SAMPLES, path)
    w.ranks[0].value = w.ranks[1].value = 1
    w.save.click()
    assert not path.exists()
    assert "different rank" in w.status.value
    with pytest.raises(ValueError, match="at least 2 responses"):
        prefs.ranking_widget([{"prompt": "p", "responses": ["only one"]}], path)


def test_ranking_widget_says_not_saved_when_another_writer_holds_the_file(tmp_path, monkeypatch):
    """Issue #18: the widget said "Saved" while judgements were lost to a second writer. Now a
    writer that cannot get the file's lock saves nothing and says so; the next click saves."""
    path = tmp_path / "mine.jsonl"
    monkeypatch.setattr(files, "LOCK_TIMEOUT_S", 0.2)
    w = prefs.ranking_widget(SAMPLES, path)
    with files.locked(path):                     # another notebook is writing this file
        w.save.click()
    assert "Not saved" in w.status.value and "another process" in w.status.value
    assert "Saved" not in w.status.value.replace("Not saved", "")
    assert not path.exists() and w.saved == 0
    w.save.click()
    assert "Saved 3" in w.status.value and len(lines(path)) == 3


def test_ranking_widget_says_saved_only_for_judgements_it_reads_back(tmp_path, monkeypatch):
    path = tmp_path / "mine.jsonl"
    w = prefs.ranking_widget(SAMPLES, path)
    monkeypatch.setattr(prefs, "append_preferences", lambda path, judgements: len(judgements))  # writes nothing
    w.save.click()
    assert "Not saved: 3 judgement(s) are not in" in w.status.value and w.saved == 0


def test_ranking_widget_pointed_at_a_folder_says_so_and_leaves_nothing_behind(tmp_path):
    folder = tmp_path / "prefs"
    folder.mkdir()
    w = prefs.ranking_widget(SAMPLES, folder)
    for control, rank in zip(w.ranks, [3, 1, 2]):
        control.value = rank
    w.save.click()
    assert "Not saved" in w.status.value and "is a folder; give a file name" in w.status.value
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prefs"] and not any(folder.iterdir())


def test_a_preferences_file_in_another_encoding_names_its_line(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_bytes('{"prompt": "p", "chosen": "déjà", "rejected": "no"}\n'.encode("latin-1"))
    with pytest.raises(ValueError, match=r"mine.jsonl:1: not UTF-8 text"):
        prefs.read_preferences(path)
