"""The project's promises: the README's two commands, CI, environments in step, notebook setup."""
import re
import tomllib
from pathlib import Path

import nbformat

from labkit.colab import SETUP_CELL

ROOT = Path(__file__).resolve().parent.parent


def requirement_names(lines):
    names = {}
    for line in lines:
        line = line.split("#")[0].strip()
        if line:
            name = re.split(r"[<>=!~ ]", line, maxsplit=1)[0].lower()
            names[name] = line[len(name):].strip()
    return names


def test_readme_has_the_two_commands_and_ci_runs_the_test_one():
    readme = (ROOT / "README.md").read_text()
    assert "make lab" in readme and "make test" in readme
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_environment_yml_and_requirements_stay_in_step():
    req = requirement_names((ROOT / "requirements.txt").read_text().splitlines())
    yml = (ROOT / "environment.yml").read_text()
    pip_lines = [l.strip()[2:] for l in yml.split("- pip:")[1].splitlines() if l.strip().startswith("- ")]
    assert requirement_names(pip_lines) == req


def test_every_notebook_starts_with_the_colab_setup_cell_and_badge():
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        assert nb.cells[0].source == SETUP_CELL, path.name
        assert "colab.research.google.com" in nb.cells[1].source, path.name
        assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), f"{path.name}: strip outputs"


def test_setup_cell_never_installs_torch():
    """The cell runs no pip itself: it installs through labkit.colab.setup, from pyproject's
    dependencies less Colab's own torch and ipywidgets (tests/test_colab.py runs it in a fake Colab)."""
    from labkit.colab import requirements

    assert not re.search(r"\bpip\b", SETUP_CELL), "the setup cell runs pip itself"
    declared = set(requirement_names(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]))
    installed = set(requirement_names(requirements(ROOT)))
    assert {"torch", "ipywidgets"} <= declared
    assert declared - installed == {"torch", "ipywidgets"}


def test_widgets_use_labkits_figure_widget():
    """go.FigureWidget loses its first changes in a browser still loading plotly's front end
    (tests/test_browser.py); labkit.plots.FigureWidget keeps the whole state synced."""
    for path in sorted((ROOT / "labkit").glob("*.py")):
        if path.name != "plots.py":
            assert "go.FigureWidget" not in path.read_text(), path.name
