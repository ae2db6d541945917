"""benchmarks/build_facilitator.py: docs/facilitator.md is generated from its template, the measured
times in benchmarks/RESULTS.md, the notebooks' prediction cells and the doctor's own output; nothing
measured is typed by hand, and a notebook missing from RESULTS.md or from the template is an error."""
import contextlib
import importlib
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"

RESULTS = """# Benchmark results

## Notebook wall time

Measured 2026-01-02; Test CPU, 4 cores, no GPU.
Each notebook executed with nbclient.

| notebook | smoke (s) | smoke within goal | cpu (s) | cpu within goal |
|---|---|---|---|---|
| 00_intro | 3.5 | yes | 61 | yes |
| 01_train | 12 | yes | 245 | yes |

## Model load

| load | seconds |
|---|---|
| 00_not_a_notebook_table | 99 |

## Notebook wall time (01)

Measured 2026-01-03; Test CPU, 4 cores, no GPU.

| notebook | cpu (s) | cpu within goal |
|---|---|---|
| 01_train | 300 | yes |
"""

TEMPLATE = """# Guide

{{times}}

Morning: {{cpu 00+01}}; smoke {{smoke 00+01}}; gpu {{gpu 00}}.

{{capacity}}

- [01 § 2. Training] What will the loss do?

{{doctor fake}}
"""


def write_notebook(folder: Path, name: str, cells: list[tuple[str, str]]):
    cells = [{"cell_type": kind, "source": text, "metadata": {}, **({"outputs": [], "execution_count": None}
                                                                     if kind == "code" else {})}
             for kind, text in cells]
    (folder / name).write_text(json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))


@pytest.fixture
def bf(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    sys.modules.pop("build_facilitator", None)
    return importlib.import_module("build_facilitator")


@pytest.fixture
def notebooks(tmp_path):
    folder = tmp_path / "notebooks"
    folder.mkdir()
    write_notebook(folder, "00_intro.ipynb", [("markdown", "# 00 · Intro\n\n## 1. Hello")])
    write_notebook(folder, "01_train.ipynb", [
        ("markdown", "# 01 · Training"), ("markdown", "## 1. Data"), ("code", "x = 1"),
        ("markdown", "## 2. Training\n\nWe train.\n\n**What do you expect?** Up or down?"), ("code", "x")])
    return folder


def fake_doctor(name):
    return f"```\n[FAIL] {name}: made up\n```"


def test_times_come_from_results_md(bf, notebooks):
    guide = bf.render(TEMPLATE, RESULTS, notebooks, doctor=fake_doctor)
    assert guide.startswith(bf.HEADER)
    assert "| 00 · Intro | 4 s (0.1 min) | 61 s (1.0 min) | not measured |  |" in guide
    assert "| 01 · Training | 12 s (0.2 min) | 245 s (4.1 min) | not measured | cpu 300 s (5.0 min) (\"Notebook wall time (01)\") |" in guide
    assert "Measured 2026-01-02; Test CPU, 4 cores, no GPU." in guide and "Measured 2026-01-03" in guide
    assert "Morning: 6 min; smoke 1 min; gpu not measured." in guide   # 61 + 245 s, rounded up
    assert "**Not measured yet.**" in guide
    assert '- *Before "2. Training"* (cell 3): What will the loss do?' in guide
    assert "[FAIL] fake: made up" in guide
    assert "99" not in guide   # a table of another section is not read as notebook times


def test_a_notebook_missing_from_results_md_is_an_error(bf, notebooks):
    write_notebook(notebooks, "02_new.ipynb", [("markdown", "# 02 · New")])
    with pytest.raises(ValueError, match="no cpu time for 02_new"):
        bf.render(TEMPLATE, RESULTS, notebooks, doctor=fake_doctor)


def test_a_sum_over_a_notebook_with_no_time_in_that_profile_says_so(bf, notebooks):
    results = RESULTS.replace("| 3.5 | yes |", "| | yes |")
    assert "smoke not measured" in bf.render(TEMPLATE, results, notebooks, doctor=fake_doctor)
    with pytest.raises(ValueError, match="no notebook 07"):
        bf.render(TEMPLATE.replace("{{gpu 00}}", "{{gpu 07}}"), RESULTS, notebooks, doctor=fake_doctor)


def test_the_questions_must_match_the_prediction_cells(bf, notebooks):
    with pytest.raises(ValueError, match=r"notebook 01, \"2. Training\" \(cell 3\): no question"):
        bf.render(TEMPLATE.replace("- [01 § 2. Training] What will the loss do?", ""), RESULTS, notebooks,
                  doctor=fake_doctor)
    with pytest.raises(ValueError, match=r"notebook 01, \"1. Data\": a question in the template, but no prediction"):
        bf.render(TEMPLATE + "- [01 § 1. Data] Which data?\n", RESULTS, notebooks, doctor=fake_doctor)
    # a prediction cell whose heading sits in an earlier cell, and "Predict first" counts too
    write_notebook(notebooks, "00_intro.ipynb", [("markdown", "# 00 · Intro\n\n## 1. Hello"),
                                                 ("markdown", "*Predict first:* what comes next?")])
    with pytest.raises(ValueError, match=r"notebook 00, \"1. Hello\" \(cell 1\)"):
        bf.render(TEMPLATE, RESULTS, notebooks, doctor=fake_doctor)


def test_a_skipped_section_must_exist(bf, notebooks):
    template = TEMPLATE + '\n### 01 Training\nSkip: "1. Data" and\n"3. Gone" when short of time.\n'
    with pytest.raises(ValueError, match=r'notebook 01: the template skips "3. Gone"'):
        bf.render(template, RESULTS, notebooks, doctor=fake_doctor)
    assert "Skip: \"1. Data\"" in bf.render(template.replace("3. Gone", "2. Train"), RESULTS, notebooks,
                                             doctor=fake_doctor)


def test_capacity_comes_from_its_section_when_measured(bf, notebooks):
    results = RESULTS + "\n## Kernels side by side\n\nMeasured 2026-01-04.\n\n| learners | s/step |\n|---|---|\n| 4 | 9.5 |\n"
    guide = bf.render(TEMPLATE, results, notebooks, doctor=fake_doctor)
    assert 'section "Kernels side by side"' in guide and "| 4 | 9.5 |" in guide and "Not measured yet" not in guide


@pytest.mark.parametrize("scenario", ["no_packaged_model", "damaged_cache", "low_memory", "disk_full",
                                      "plotly_front_end_missing"])
def test_doctor_lines_are_the_doctors_own_output_with_the_fault_in_place(bf, scenario):
    lines = bf.doctor_lines(scenario)
    assert lines.startswith("```\n[FAIL] ") and "\n       fix: " in lines
    assert lines.count("[FAIL]") == 1


def test_a_scenario_that_no_longer_fails_the_doctor_is_an_error(bf, monkeypatch):
    @contextlib.contextmanager
    def no_fault(doctor):
        yield doctor.model_checks

    monkeypatch.setitem(bf.SCENARIOS, "no_fault", (no_fault, "free disk"))
    with pytest.raises(ValueError, match="no longer makes the doctor fail"):
        bf.doctor_lines("no_fault")
    with pytest.raises(ValueError, match="no such scenario"):
        bf.doctor_lines("typo")


def test_docs_facilitator_md_is_up_to_date(bf):
    """The committed guide is what the template, RESULTS.md and the notebooks make now (regenerate with
    `.venv/bin/python benchmarks/build_facilitator.py`)."""
    assert bf.main(["--check"]) == 0


def test_learners_per_server_come_from_the_measured_peaks(bf):
    body = ("| profile | batch x tokens | s/step | peak RSS MiB | peak RSS GiB |\n|---|---|---|---|---|\n"
            "| smoke | 2 x 64 | 1.1 | 1.44e+03 | 1.4 |\n| cpu | 8 x 128 | 6.95 | 3.87e+03 | 3.9 |")
    table = bf.learners_table(body)
    # 8 cores, 32 GiB: memory allows (32 - 2) // 3.9 = 7 cpu-profile kernels, cores 8
    assert "| 8 cores, 32 GiB | 8 | 7 |" in table and "cpu profile (3.9 GiB each)" in table
    assert bf.learners_table("no peaks here") == ""
