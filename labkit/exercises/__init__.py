"""Checkable exercises, in the style of Kaggle Learn: each notebook's exercises live in a module
``labkit.exercises.nbNN`` with ``q1``, ``q2``, ``q3`` ... ::

    from labkit.exercises import nb02 as ex
    answer = ____            # your code here
    ex.q1.check(answer)      # checks your actual result and says what is wrong, if anything
    ex.q1.hint()             # a nudge
    ex.q1.solution()         # the code that solves it

An :class:`Exercise` holds its question, a hint, the solution as code, and a check that looks at
the learner's real result (a number, a model, a file, a figure's data). The test suite runs every
solution in the ``smoke`` profile and asserts that the check accepts it and refuses each of the
exercise's ``wrong`` answers (plausible mistakes) with a message of its own.
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Callable

LEVELS = ("easy", "medium", "harder")


class _Blank:
    """The ``____`` placeholder a learner replaces with an answer."""

    def __repr__(self) -> str:
        return "____"


____ = _Blank()


@dataclass
class Exercise:
    """One exercise.

    ``check_answer(answer, **context)`` returns ``None`` when the answer is right, else a message
    that says what is wrong with *this* answer. ``context`` carries what the check needs to compute
    the truth itself (the notebook's model, tokenizer, ...): the notebook cell passes it, and the
    solution's namespace provides it in the tests (``context_names``).
    ``solution_code`` runs after ``setup_code`` (shared by a notebook's exercises) and leaves the
    answer in the variable ``answer``; each entry of ``wrong`` is code that leaves a plausible wrong
    answer there."""

    name: str
    level: str
    question: str
    check_answer: Callable[..., str | None]
    hint_text: str
    solution_code: str
    wrong: list[str] = field(default_factory=list)
    context_names: tuple[str, ...] = ()
    praise: str = "Correct."

    def __post_init__(self):
        if self.level not in LEVELS:
            raise ValueError(f"{self.name}: level must be one of {LEVELS}, not {self.level!r}")

    def check(self, answer=____, **context) -> bool:
        """Print whether ``answer`` is right (and if not, what is wrong with it); return True/False."""
        if isinstance(answer, _Blank):
            print(f"{self.name}: not answered yet. Replace ____ with your answer, then run the cell again.")
            return False
        try:
            problem = self.check_answer(answer, **context)
        except Exception as err:  # a malformed answer: say what it was, never crash the lesson
            problem = f"could not check this answer ({type(err).__name__}: {err})"
        if problem is None:
            print(f"{self.name}: ✓ {self.praise}")
            return True
        print(f"{self.name}: ✗ {problem}")
        return False

    def hint(self) -> None:
        print(f"{self.name}, hint: {self.hint_text}")

    def solution(self) -> None:
        print(f"{self.name}, one solution:\n\n{self.solution_code.strip()}")


def exercises_of(module) -> list[Exercise]:
    """The exercises a notebook module defines, in order (q1, q2, ...)."""
    found = [(int(k[1:]), v) for k, v in vars(module).items()
             if k.startswith("q") and k[1:].isdigit() and isinstance(v, Exercise)]
    return [v for _, v in sorted(found, key=lambda kv: kv[0])]


def modules() -> dict:
    """Every notebook's exercise module: {"nb01": module, ...}."""
    found = {}
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("nb"):
            found[info.name] = importlib.import_module(f"{__name__}.{info.name}")
    return dict(sorted(found.items()))


def cells(module) -> list[tuple[str, str]]:
    """The notebook cells for a module's exercises: (cell_type, source) pairs, ready to insert.
    A question, an answer cell that works unanswered (``check`` says "not answered yet"), and a
    cell with the hint and the solution commented out."""
    name = module.__name__.rsplit(".", 1)[-1]
    out = [("markdown", "## Exercises\n\nCheck your answers with `check()`; stuck? `hint()`, then `solution()`.")]
    out.append(("code", f"from labkit.exercises import {name} as ex, ____"))
    for i, q in enumerate(exercises_of(module), start=1):
        out.append(("markdown", f"### Exercise {i} ({q.level})\n\n{q.question.strip()}"))
        ctx = ", ".join(f"{n}={n}" for n in q.context_names)
        out.append(("code", f"answer = ____  # your code here\nex.q{i}.check(answer{', ' + ctx if ctx else ''})"))
        out.append(("code", f"# ex.q{i}.hint()\n# ex.q{i}.solution()"))
    return out


CLAIMS_HEADING = "## The claims of this notebook"
EXERCISES_HEADING = "## Exercises"


def notebook_for(name: str):
    """The notebook a module's exercises belong to (``nb03`` -> ``notebooks/03_*.ipynb``)."""
    from pathlib import Path

    found = sorted((Path(__file__).resolve().parents[2] / "notebooks").glob(f"{name[2:]}_*.ipynb"))
    if not found:
        raise FileNotFoundError(f"no notebook for exercises {name}")
    return found[0]


def exercise_block(cells_json: list[dict]) -> tuple[int, int]:
    """Where the exercise cells sit in a notebook's cell list: ``(start, end)``, the exercises
    heading up to the claims heading (``start == end`` where there are none yet)."""
    def text(c):
        return "".join(c["source"])

    end = next(i for i, c in enumerate(cells_json) if c["cell_type"] == "markdown"
               and text(c).startswith(CLAIMS_HEADING))
    start = next((i for i, c in enumerate(cells_json) if c["cell_type"] == "markdown"
                  and text(c).startswith(EXERCISES_HEADING)), end)
    return start, end


def sync_notebook(name: str, write: bool = True) -> bool:
    """Write module ``name``'s exercise cells into its notebook, just before the claims, replacing
    any there. Returns True if the notebook changed (with ``write=False``: would change). The tests
    check that every notebook holds exactly the cells its module makes."""
    import json

    path = notebook_for(name)
    nb = json.loads(path.read_text(encoding="utf-8"))
    start, end = exercise_block(nb["cells"])
    new = []
    for i, (kind, source) in enumerate(cells(modules()[name])):
        cell = {"cell_type": kind, "id": f"exercise-{i:02d}", "metadata": {}, "source": source.splitlines(keepends=True)}
        if kind == "code":
            cell.update(execution_count=None, outputs=[])
        new.append(cell)
    if nb["cells"][start:end] == new:
        return False
    if not write:
        return True
    nb["cells"][start:end] = new
    path.write_text(json.dumps(nb, indent=1, ensure_ascii=False, sort_keys=True) + "\n", encoding="utf-8")
    return True
