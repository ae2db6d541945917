"""Every notebook's exercises (labkit.exercises.nbNN): each solution, run after the module's SETUP in
the smoke profile, is accepted by its check; each plausible wrong answer is refused with a message of
its own; every notebook has an easy, a medium and a harder exercise; an unanswered exercise says so."""
import copy
import json
import re
from pathlib import Path

import pytest

from labkit import exercises
from labkit.exercises import ____, LEVELS, exercises_of

MODULES = exercises.modules()
CASES = [(name, i) for name, module in MODULES.items() for i, _ in enumerate(exercises_of(module))]
GENERIC = {"incorrect", "incorrect.", "wrong", "wrong.", "try again", "try again.", "no", "not quite"}
_SETUPS: dict = {}   # the current module's SETUP namespace (one at a time, to bound memory)


def setup_namespace(name, monkeypatch):
    """The module's SETUP, executed once per module (smoke profile), copied for each exercise so that
    one exercise's code cannot change another's objects."""
    monkeypatch.setenv("LABKIT_PROFILE", "smoke")
    if name not in _SETUPS:
        _SETUPS.clear()   # CASES run module by module: free the previous module's models
        ns: dict = {}
        exec(MODULES[name].SETUP, ns)
        _SETUPS[name] = ns
    # containers are copied (shallow) so that one exercise's code cannot reorder another's data;
    # models, tokenizers and tables are shared: the exercises only read them
    return {k: copy.copy(v) if type(v) in (list, dict, set) else v for k, v in _SETUPS[name].items()}


def run(code, ns):
    ns = dict(ns)
    exec(code, ns)
    assert "answer" in ns, "the code must leave its result in `answer`"
    return ns


def context(q, ns):
    missing = [n for n in q.context_names if n not in ns]
    assert not missing, f"{q.name}: SETUP does not define {missing}, which the check needs"
    return {n: ns[n] for n in q.context_names}


@pytest.mark.parametrize("name", sorted(MODULES))
def test_each_notebook_has_graded_exercises(name):
    module = MODULES[name]
    qs = exercises_of(module)
    assert len(qs) >= 3, f"{name} has {len(qs)} exercises; at least three are needed"
    assert {q.level for q in qs} >= set(LEVELS), f"{name}: levels {[q.level for q in qs]} miss one of {LEVELS}"
    assert isinstance(getattr(module, "SETUP", None), str) and module.SETUP.strip(), f"{name} needs a SETUP"
    for q in qs:
        assert q.question.strip() and q.hint_text.strip() and q.solution_code.strip()
        assert q.wrong, f"{name} {q.name}: needs at least one plausible wrong answer"
    cells = exercises.cells(module)
    assert sum(1 for kind, _ in cells if kind == "code") == 1 + 2 * len(qs)


NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
CLAIMS_HEADING = "## The claims of this notebook"


def notebook_code_before_claims(name):
    """The code cells of notebook NN before the claims section, where the exercises are inserted."""
    path = next(NOTEBOOKS.glob(f"{name[2:]}_*.ipynb"))
    code = []
    for cell in json.loads(path.read_text())["cells"]:
        source = "".join(cell["source"])
        if cell["cell_type"] == "markdown" and source.startswith(CLAIMS_HEADING):
            break
        if cell["cell_type"] == "code" and "labkit.exercises" not in source:
            code.append(source)
    return "\n".join(code)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_context_names_exist_where_the_exercises_go(name):
    """The exercise cells pass ``name=name`` for each context name: the notebook must have assigned
    each of them before its claims section (and not deleted it)."""
    code = notebook_code_before_claims(name)
    for q in exercises_of(MODULES[name]):
        for n in q.context_names:
            assigned = re.search(rf"^[ \t]*(?:[\w\[\]\"' ]+,\s*)*{n}\s*(?:,[\w\s,]*)?=(?!=)", code, re.M) or \
                re.search(rf"^[ \t]*(?:for|with)\b[^\n]*\b(?:as\s+)?{n}\b", code, re.M) or \
                re.search(rf"import[^\n]*\bas\s+{n}\b", code)
            assert assigned, f"{name} {q.name}: the notebook defines no {n!r} before its claims section"
            assert not re.search(rf"^\s*del\b[^\n]*\b{n}\b", code, re.M), f"{name}: the notebook deletes {n!r}"


@pytest.mark.parametrize("name,i", CASES)
def test_solution_is_accepted_and_wrong_answers_refused(name, i, monkeypatch, capsys):
    q = exercises_of(MODULES[name])[i]
    ns = setup_namespace(name, monkeypatch)
    ctx = context(q, ns)

    capsys.readouterr()
    assert q.check(____, **ctx) is False
    assert "not answered yet" in capsys.readouterr().out

    solved = run(q.solution_code, ns)
    ok = q.check(solved["answer"], **ctx)
    out = capsys.readouterr().out
    assert ok is True, f"{name} {q.name}: the check refused the solution's answer {solved['answer']!r}: {out}"

    for code in q.wrong:
        wrong = run(code, ns)
        assert q.check(wrong["answer"], **ctx) is False, \
            f"{name} {q.name}: the check accepted the wrong answer {wrong['answer']!r} from\n{code}"
        out = capsys.readouterr().out.strip()
        message = out.split("✗", 1)[-1].strip()
        assert "✗" in out and message, f"{name} {q.name}: no message for a wrong answer"
        assert message.lower() not in GENERIC and len(message) > 20, \
            f"{name} {q.name}: the message {message!r} does not say what is wrong"
        assert "could not check" not in message, f"{name} {q.name}: the check crashed on a wrong answer: {message}"


def test_hint_and_solution_print(capsys):
    for module in MODULES.values():
        for q in exercises_of(module):
            q.hint()
            q.solution()
            out = capsys.readouterr().out
            assert q.hint_text in out and q.solution_code.strip() in out


@pytest.mark.parametrize("name", sorted(exercises.modules()))
def test_each_notebook_holds_its_modules_exercise_cells(name):
    """The cells are generated (labkit.exercises.cells); after editing a module, run
    ``python -c "from labkit import exercises; [exercises.sync_notebook(n) for n in exercises.modules()]"``."""
    assert not exercises.sync_notebook(name, write=False), f"{name}'s notebook is out of date with its exercises"
