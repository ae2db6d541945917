"""The map of labkit: which modules are core, which serve one lesson, and which notebooks use them.

Core modules are used across lessons (load, predict, data, train, memory, plots, ...); a lesson
module teaches one concept (learning_rate, forgetting, rlhf, lora, ...). The lists live here, next
to the rule they serve, rather than in labkit: nothing in labkit needs them at run time, and a
module listing the modules would be one more row on the map. The README's "The labkit modules"
table and notebook 00's map of the lab show the same facts; these tests keep them true.

The tests read source files only (imports with ``ast``, notebooks as JSON): they take a second.
"""
import ast
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LABKIT = ROOT / "labkit"
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))

CORE = ("__init__", "__main__", "colab", "doctor", "models", "profiles", "data", "predictions", "probes",
        "training", "guards", "claims", "patches", "memory", "plots", "widgets", "reproducibility", "files", "toy",
        "experiment", "threads", "kit")
LESSON = ("weights", "learning_rate", "forgetting", "scoring", "preferences", "rlhf", "rlhf_views", "domains",
          "lora", "compare", "quantization", "calculator", "cleaning", "process", "export", "serving",
          "evaluation", "model_card", "gguf_export")
# The one core -> lesson import allowed, and why: `python -m labkit export` hands over to the export
# lesson's job writer (imported only when that subcommand runs).
ALLOWED = {("__main__", "export")}


def modules() -> list[str]:
    return sorted(p.stem for p in LABKIT.glob("*.py"))


def labkit_imports(source: str) -> set[str]:
    """The labkit modules a module's source imports, anywhere in it (function-level imports too)."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            relative = node.level == 1
            absolute = node.level == 0 and (node.module or "").split(".")[0] == "labkit"
            if not (relative or absolute):
                continue
            parts = (node.module or "").split(".")[1 if absolute else 0:]
            if parts and parts[0]:
                found.add(parts[0])                          # from .x import a / from labkit.x import a
            else:
                found.update(a.name for a in node.names)     # from . import x / from labkit import x
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "labkit" and len(parts) > 1:  # import labkit.x
                    found.add(parts[1])
    return found & set(modules())


def reexports() -> dict[str, str]:
    """Names labkit/__init__.py takes from its modules (``labkit.train`` -> ``training``)."""
    tree = ast.parse((LABKIT / "__init__.py").read_text())
    return {a.asname or a.name: node.module for node in tree.body
            if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module for a in node.names}


def notebook_modules(path: Path) -> set[str]:
    """The labkit modules a notebook's code cells use: ``import labkit`` (the package, __init__),
    ``labkit.X`` and ``from labkit.X import``, ``from labkit import X``, a name labkit/__init__.py
    re-exports (``labkit.train`` is a use of ``training``), and ``labkit/X.py`` run by path (the
    Colab set-up cell)."""
    code = "\n".join("".join(c["source"]) for c in json.loads(path.read_text())["cells"]
                     if c["cell_type"] == "code")
    known, names = set(modules()), reexports()

    def module_of(name):
        return name if name in known else names.get(name)

    used = {"__init__"} if re.search(r"^\s*import labkit\b", code, re.M) else set()
    used |= {module_of(n) for n in re.findall(r"\blabkit\.(\w+)", code)}
    for group in re.findall(r"\bfrom labkit import (\([^)]*\)|[^\n#]+)", code):
        used |= {module_of(item.split()[0]) for item in group.strip("()").split(",") if item.strip()}
    used |= {module_of(n) for n in re.findall(r"\blabkit/(\w+)\.py", code)}
    return used - {None}


def notebook_number(path: Path) -> str:
    return path.name[:2]


def uses_by_module() -> dict[str, set[str]]:
    out = {m: set() for m in modules()}
    for nb in NOTEBOOKS:
        for m in notebook_modules(nb):
            out[m].add(notebook_number(nb))
    return out


def table_rows(markdown: str, first_header: str) -> list[list[str]]:
    """The rows of the markdown table whose header row starts with ``| first_header |``."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(rf"\|\s*{re.escape(first_header)}\s*\|", line))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


def readme_table() -> dict[str, dict[str, str]]:
    """README's "The labkit modules": module -> {kind, job, notebooks}."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## The labkit modules", 1)[1].split("\n## ", 1)[0]
    return {row[0].strip("`"): {"kind": row[1], "job": row[2], "notebooks": row[3]}
            for row in table_rows(section, "module")}


def notebooks_in_cell(cell: str) -> set[str]:
    """``all ...`` -> every notebook; else the two-digit numbers named (``01, 02``); ``-`` -> none."""
    if cell.startswith("all"):
        return {notebook_number(nb) for nb in NOTEBOOKS}
    return set(re.findall(r"\b\d\d\b", cell))


# --- (a) core never imports lesson, (b) every module has one kind --------------------------------

def core_imports_of_lessons(sources: dict[str, str]) -> list[str]:
    return [f"{m} imports {lesson}" for m in CORE for lesson in sorted(labkit_imports(sources[m]) & set(LESSON))
            if (m, lesson) not in ALLOWED]


def test_core_modules_never_import_lesson_modules():
    sources = {m: (LABKIT / f"{m}.py").read_text() for m in modules()}
    bad = core_imports_of_lessons(sources)
    assert not bad, ("core modules import lesson modules (move the shared part into a core module, "
                     f"or call the core module from the lesson): {bad}")


def test_the_import_check_sees_every_form_of_import():
    """A check is worth having only if breaking the rule turns it red: every way of importing a
    lesson module from a core one, top level or inside a function, is caught."""
    for line in ("from .lora import ArchShape", "from . import lora", "from labkit.lora import ArchShape",
                 "from labkit import lora", "import labkit.lora",
                 "def f():\n    from .lora import ArchShape\n    return ArchShape"):
        sources = {m: "" for m in modules()} | {"training": line}
        assert core_imports_of_lessons(sources) == ["training imports lora"], line


def test_every_module_is_either_core_or_lesson():
    both = set(CORE) & set(LESSON)
    assert not both, f"in both lists: {sorted(both)}"
    missing = set(modules()) - set(CORE) - set(LESSON)
    assert not missing, f"labkit modules in neither CORE nor LESSON (tests/test_module_map.py): {sorted(missing)}"
    gone = (set(CORE) | set(LESSON)) - set(modules())
    assert not gone, f"listed but not in labkit/: {sorted(gone)}"


# --- (c) the README's table and notebook 00's map say the same -----------------------------------

def test_readme_lists_every_module_with_its_kind_and_notebooks():
    table, uses = readme_table(), uses_by_module()
    assert sorted(table) == modules(), "README's 'The labkit modules' must have one row per labkit module"
    wrong = []
    for m, row in table.items():
        kind = "core" if m in CORE else "lesson"
        if row["kind"] != kind:
            wrong.append(f"{m}: README says {row['kind']}, tests/test_module_map.py says {kind}")
        if not row["job"]:
            wrong.append(f"{m}: no one-line job")
        if notebooks_in_cell(row["notebooks"]) != uses[m]:
            wrong.append(f"{m}: README says notebooks {sorted(notebooks_in_cell(row['notebooks']))}, "
                         f"the notebooks' code uses it in {sorted(uses[m])}")
    assert not wrong, "\n".join(wrong)


def test_notebook_00_map_names_the_modules_each_notebook_uses():
    """Its column leaves out what every notebook uses (named once, under the table)."""
    start = json.loads((ROOT / "notebooks" / "00_start_here.ipynb").read_text())["cells"]
    cell = next("".join(c["source"]) for c in start
                if c["cell_type"] == "markdown" and "| notebook |" in "".join(c["source"]))
    everywhere = set.intersection(*(notebook_modules(nb) for nb in NOTEBOOKS))
    rows = {row[0].strip("`"): set(re.findall(r"`(\w+)`", row[2])) for row in table_rows(cell, "notebook")}
    assert rows, "notebook 00's map has no rows"
    for nb in NOTEBOOKS:
        if nb.stem in rows:
            assert rows[nb.stem] == notebook_modules(nb) - everywhere, nb.stem
    named_below = set(re.findall(r"`(\w+)`", cell.split("Every notebook also uses", 1)[1].split("\n")[0]))
    assert named_below == everywhere - {"__init__"}


@pytest.mark.parametrize("code, expected", [
    ("import labkit\nlabkit.train(m, t, d)", {"__init__", "training"}),
    ("from labkit import quantization as quant, calculator", {"quantization", "calculator"}),
    ("from labkit import (lora,\n    compare)", {"lora", "compare"}),
    ("from labkit.plots import COLORS", {"plots"}),
    ('runpy.run_path(f"{LAB}/labkit/colab.py")', {"colab"}),
])
def test_notebook_scan_finds_each_way_of_using_a_module(tmp_path, code, expected):
    nb = tmp_path / "99_x.ipynb"
    nb.write_text(json.dumps({"cells": [{"cell_type": "code", "source": [code]},
                                        {"cell_type": "markdown", "source": ["labkit.lora in prose"]}]}))
    assert notebook_modules(nb) == expected


# --- what labkit and the tests import from outside: declared, with a tested range ----------------

# Imported but no distribution to declare: Colab's own package, imported only inside Colab.
UNDECLARED_IMPORTS = {"google"}


def third_party_imports(folder: str) -> dict[str, set[str]]:
    """Top-level third-party modules imported anywhere in ``folder/*.py`` -> the files importing them."""
    import sys

    local = {"labkit", "tests", "benchmarks", "tools"} | {p.stem for d in ("tests", "benchmarks", "tools")
                                                          for p in (ROOT / d).glob("*.py")}
    found = {}
    for path in sorted((ROOT / folder).glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for top in {n.split(".")[0] for n in names} - set(sys.stdlib_module_names) - local - UNDECLARED_IMPORTS:
                found.setdefault(top, set()).add(path.name)
    return found


def test_every_third_party_import_is_declared():
    """labkit's imports are its dependencies; the tests' are those plus the lab and test extras.
    Each is declared in pyproject.toml (and so in requirements.txt and environment.yml, which
    tests/test_api_drift.py keeps in step), not left to arrive with another library."""
    import importlib.metadata as md
    import tomllib

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

    def names(lines):
        return {canonicalize_name(Requirement(line).name) for line in lines}

    runtime = names(project["dependencies"])
    extras = names(line for lines in project["optional-dependencies"].values() for line in lines)
    dists = md.packages_distributions()
    problems = []
    for folder, declared in (("labkit", runtime), ("tests", runtime | extras)):
        for module, files in sorted(third_party_imports(folder).items()):
            provided_by = {canonicalize_name(d) for d in dists.get(module, [])}
            if not provided_by & declared:
                problems.append(f"{folder}/ imports {module} ({', '.join(sorted(files))}), from "
                                f"{sorted(provided_by) or 'no installed distribution'}: not declared")
    assert not problems, "\n".join(problems)
