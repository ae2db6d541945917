"""Prose never states a number the run did not produce (issue #17): times and speeds depend on the
machine and the run, so a markdown cell may not type one in. It may name a target or budget, or
cite a source; measured times are printed by code or kept in benchmarks/RESULTS.md."""
import json
import re
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("[0-9][0-9]_*.ipynb"))
RUN_RESULT = re.compile(
    r"(?<![\w.$])\d[\d,]*(?:\.\d+)?\s?(?:s|ms|sec|seconds?|min|minutes?|hours?|tokens/s|steps/s|it/s)\b"
    r"|\b(?:took|ran|runs in|takes)\s+(?:about\s+)?\d", re.IGNORECASE)
SOURCED = re.compile(r"target|budget|et al\.|paper|documentation|\(\d{4}\)", re.IGNORECASE)


def run_results_in_prose(text: str) -> list[str]:
    """Sentences of ``text`` that type in a time or speed with no target, budget or source."""
    text = re.sub(r"\$[^$]*\$|`[^`]*`", "", text)   # maths and code are not claims about this run
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+|\n\n", text)
            if RUN_RESULT.search(s) and not SOURCED.search(s)]


@pytest.mark.parametrize("text, flagged", [
    ("Training takes about 7 s per step on a laptop.", True),
    ("This notebook ran 154 s with outputs/ empty.", True),
    ("It took about 20 seconds.", True),
    ("The course's target is under 0.5 s on a laptop CPU.", False),
    ("Sized for a budget of 5 minutes.", False),
    ("Use `steps=20` and $10^{-4}$.", False),
    ("A 576 × 1536 matrix.", False),
])
def test_the_check_flags_typed_in_times_and_spares_targets(text, flagged):
    assert bool(run_results_in_prose(text)) == flagged


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_markdown_states_no_time_the_run_did_not_measure(path):
    cells = json.loads(path.read_text())["cells"]
    found = [f"cell {i}: {s[:160]!r}" for i, c in enumerate(cells) if c["cell_type"] == "markdown"
             for s in run_results_in_prose("".join(c["source"]))]
    assert not found, (f"{path.name} types in times or speeds a run measures (print them from code, or point to "
                       "benchmarks/RESULTS.md):\n" + "\n".join(found))
