"""benchmarks/bench_reliability.py's classifier is honest: a few of its real cases, and small
fake cases built to pass silently, to give an unclear message, to change or delete a file, to
leave litter, each land in the outcome they were built for. (The whole script takes minutes:
it is run by hand, `OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_reliability.py --write`.)"""
import importlib
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture
def br(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    for name in ("common", "bench_reliability"):
        sys.modules.pop(name, None)
    return importlib.import_module("bench_reliability")


def fake(br, body, expect=("ValueError",), culprit=("d.jsonl:2",), **kwargs):
    """A case not registered in the script's list: ``body(ctx)`` is its generator."""
    return br.Case("fake", body.__name__, body, expect, culprit, **kwargs)


def outcome(br, case, tmp_path):
    return br.run_case(case, tmp_path, 0)


def learner_file(ctx):
    p = ctx.path("d.jsonl")
    p.write_text('{"text": "mine"}\n')
    return p


def test_real_cases_of_the_script_are_clear(br, tmp_path):
    names = {"invalid JSON on line 3", "a Latin-1 file", "chosen == rejected", "an empty file",
             "write_jsonl with a bad record over a file"}
    cases = [c for c in br.CASES if c.name in names]
    assert len(cases) == len(names)
    rows = [br.run_case(c, tmp_path, i) for i, c in enumerate(cases)]
    assert [r["outcome"] for r in rows] == ["clear error"] * len(names), rows
    assert next(r for r in rows if r["case"] == "invalid JSON on line 3")["message"].startswith(
        "ValueError: bad.jsonl:3: not valid JSON")   # the case folder is left out of the message


def test_the_registered_cases_are_many_unique_and_well_formed(br):
    assert 40 <= len(br.CASES) <= 80
    assert len({(c.category, c.name) for c in br.CASES}) == len(br.CASES)
    for c in br.CASES:
        assert c.expect in (br.STOP, br.SURVIVE) or (isinstance(c.expect, tuple) and c.culprit), c.name


def test_a_case_that_does_nothing_passed_silently(br, tmp_path):
    def nothing_raised(ctx):
        learner_file(ctx)
        yield
        return None

    assert outcome(br, fake(br, nothing_raised), tmp_path)["outcome"] == "passed silently"


def test_a_message_that_does_not_name_the_culprit_is_unclear(br, tmp_path):
    def vague(ctx):
        yield
        raise ValueError("something is wrong with your data")

    def wrong_type(ctx):
        yield
        raise TypeError("d.jsonl:2: 'NoneType' object is not subscriptable")

    def named(ctx):
        yield
        raise ValueError("d.jsonl:2: field 'text' is empty")

    r = outcome(br, fake(br, vague), tmp_path / "a")
    assert (r["outcome"], r["message"]) == ("unclear error", "ValueError: something is wrong with your data")
    assert outcome(br, fake(br, wrong_type), tmp_path / "b")["outcome"] == "unclear error"
    assert outcome(br, fake(br, named), tmp_path / "c")["outcome"] == "clear error"


def test_a_changed_or_deleted_file_is_lost_data_even_with_a_clear_error(br, tmp_path):
    def changes(ctx):
        p = learner_file(ctx)
        yield
        p.write_text("")
        raise ValueError("d.jsonl:2: field 'text' is empty")

    def deletes(ctx):
        p = learner_file(ctx)
        yield
        p.unlink()
        raise ValueError("d.jsonl:2: field 'text' is empty")

    r = outcome(br, fake(br, changes), tmp_path / "a")
    assert (r["outcome"], r["message"]) == ("lost data", "d.jsonl was changed")
    r = outcome(br, fake(br, deletes), tmp_path / "b")
    assert (r["outcome"], r["message"]) == ("lost data", "d.jsonl was deleted")


def test_weights_that_moved_are_lost_data(br, tmp_path):
    import torch

    def moves(ctx):
        model, _ = br.toy()
        yield br.kept(model)
        with torch.no_grad():
            next(model.parameters()).add_(1.0)
        raise ValueError("d.jsonl:2: bad")

    r = outcome(br, fake(br, moves), tmp_path)
    assert r["outcome"] == "lost data" and "weights changed" in r["message"]


def test_temporary_files_left_behind_are_litter(br, tmp_path):
    def litters(ctx):
        learner_file(ctx)
        yield
        ctx.path(".labkit-tmp-new.host.1.abc.d.jsonl").write_text("half")
        raise ValueError("d.jsonl:2: bad")

    r = outcome(br, fake(br, litters), tmp_path)
    assert r["outcome"] == "left litter" and ".labkit-tmp-new" in r["message"]


def test_stops_faults_and_broken_setups(br, tmp_path):
    def finished(ctx):
        yield
        return "finished"

    def diverged(ctx):
        yield
        return "diverged at step 2: the loss rose. The weights are restored"

    def interrupted(ctx):
        learner_file(ctx)
        yield
        raise KeyboardInterrupt

    def crashes(ctx):
        yield
        raise RuntimeError("boom")

    def broken_setup(ctx):
        raise ImportError("no module named labkit.gone")
        yield

    stop = dict(expect=br.STOP, culprit=("diverged",))
    assert outcome(br, fake(br, finished, **stop), tmp_path / "a")["outcome"] == "passed silently"
    assert outcome(br, fake(br, diverged, **stop), tmp_path / "b")["outcome"] == "clear error"
    survive = dict(expect=br.SURVIVE, culprit=(), tolerate=("KeyboardInterrupt",))
    assert outcome(br, fake(br, interrupted, **survive), tmp_path / "c")["outcome"] == "handled"
    assert outcome(br, fake(br, crashes, **survive), tmp_path / "d")["outcome"] == "unclear error"
    assert outcome(br, fake(br, broken_setup), tmp_path / "e")["outcome"] == "not run"


def test_the_section_has_totals_the_cases_not_clear_and_how_it_was_made(br, tmp_path, monkeypatch):
    common = sys.modules["common"]
    monkeypatch.setattr(common, "RESULTS", tmp_path / "RESULTS.md")
    monkeypatch.setattr(br, "machine", lambda: "2026-01-01; a CPU, 2 cores, no GPU")
    (tmp_path / "RESULTS.md").write_text("# Benchmark results\n\n## Model load\n\nkept\n")
    rows = [{"category": "data files", "case": "x", "outcome": "clear error", "message": "ValueError: d:1", "seconds": 0},
            {"category": "data files", "case": "y | z", "outcome": "lost data", "message": "d was changed", "seconds": 0},
            {"category": "files", "case": "k", "outcome": "handled", "message": "ok", "seconds": 0}]
    br.write_section("Reliability", "an earlier run")
    rows[0]["case"] = "a lone surrogate (\\ud800)"           # a backslash: no escape when replacing
    br.write_section("Reliability", br.section(rows, 12.0))
    text = (tmp_path / "RESULTS.md").read_text()
    assert "an earlier run" not in text and text.count("## Reliability") == 1
    assert "| a lone surrogate (\\ud800) |" in text
    assert "## Model load\n\nkept" in text and text.index("## Model load") < text.index("## Reliability")
    assert br.COMMAND in text and "2 cores" in text
    assert "| data files | 2 | 1 | 0 | 0 | 0 | 1 | 0 | 0 |" in text
    assert "| **all** | 3 | 1 | 1 | 0 | 0 | 1 | 0 | 0 |" in text
    assert 'Cases not "clear error" or "handled" (1)' in text and "| data files | y \\| z | lost data |" in text
    assert "<details><summary>All 3 cases</summary>" in text
