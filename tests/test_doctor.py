"""The environment doctor: one line per requirement, and a failing line says how to fix it."""
import importlib.metadata as md
import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from labkit import doctor

ROOT = Path(__file__).resolve().parent.parent


def _fake_versions(monkeypatch, versions):
    real = md.version

    def version(name):
        if name in versions:
            if versions[name] is None:
                raise md.PackageNotFoundError(name)
            return versions[name]
        return real(name)

    monkeypatch.setattr(doctor.md, "version", version)


def test_a_too_old_library_fails_with_the_command_that_fixes_it(monkeypatch):
    _fake_versions(monkeypatch, {"trl": "0.19.1"})
    trl = next(c for c in doctor.package_checks() if c.name == "trl")
    assert not trl.ok
    line = trl.line()
    assert line.startswith("[FAIL] trl: 0.19.1 (tested: ")
    assert "fix: pip install 'trl<1.17,>=1.16'" in line or "fix: pip install 'trl>=1.16,<1.17'" in line


def test_a_missing_library_fails_with_how_to_install_it(monkeypatch):
    _fake_versions(monkeypatch, {"peft": None})
    peft = next(c for c in doctor.package_checks() if c.name == "peft")
    assert not peft.ok and "not installed" in peft.detail and "pip install 'peft" in peft.fix


def test_ranges_come_from_pyproject_including_jupyterlab():
    ranges = doctor.tested_ranges()
    assert ranges["trl"] and "<" in ranges["trl"]
    assert "jupyterlab" in ranges and "ipywidgets" in ranges
    assert "jupyterlab" not in doctor.tested_ranges(extras=())


def test_widget_front_ends_are_seen_and_a_missing_or_disabled_one_fails(monkeypatch):
    checks = {c.name: c for c in doctor.widget_checks()}
    for ext in doctor.FRONT_ENDS:
        assert checks[f"front end: {ext}"].ok, checks[f"front end: {ext}"].line()

    installed = doctor.labextensions()
    monkeypatch.setattr(doctor, "labextensions", lambda: {k: v for k, v in installed.items() if k != "jupyterlab-plotly"})
    monkeypatch.setattr(doctor, "disabled_labextensions", lambda: {"@jupyter-widgets/jupyterlab-manager"})
    checks = {c.name: c for c in doctor.widget_checks()}
    missing, disabled = checks["front end: jupyterlab-plotly"], checks["front end: @jupyter-widgets/jupyterlab-manager"]
    assert not missing.ok and "pip install --force-reinstall --no-deps plotly" in missing.fix
    assert not disabled.ok and "jupyter labextension enable @jupyter-widgets/jupyterlab-manager" in disabled.fix


def test_disabled_extensions_are_read_from_page_config(tmp_path, monkeypatch):
    (tmp_path / "labconfig").mkdir()
    (tmp_path / "labconfig" / "page_config.json").write_text(
        json.dumps({"disabledExtensions": {"anywidget": True, "other": False}}))
    import jupyter_core.paths

    monkeypatch.setattr(jupyter_core.paths, "jupyter_config_path", lambda: [str(tmp_path)])
    assert doctor.disabled_labextensions() == {"anywidget"}


def test_in_colab_the_front_end_is_colabs(monkeypatch):
    monkeypatch.setitem(sys.modules, "google.colab", type(sys)("google.colab"))
    names = [c.name for c in doctor.widget_checks()]
    assert "widgets: front end" in names and not any(n.startswith("front end:") for n in names)
    assert "jupyterlab" not in {c.name for c in doctor.package_checks()}


def test_report_prints_one_line_per_check_and_the_tally(capsys):
    checks = [doctor.Check("a", True, "fine"), doctor.Check("b", False, "broken", "do this")]
    assert doctor.report(checks) is False
    out = capsys.readouterr().out
    assert "[OK] a: fine" in out and "[FAIL] b: broken" in out and "fix: do this" in out
    assert "1 passed, 1 failed" in out


def test_command_line_doctor_passes_here():
    run = subprocess.run([sys.executable, "-m", "labkit", "doctor"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    for needle in ("[OK] transformers", "[OK] trl", "[OK] peft", "device", "profile", "model cache",
                   "free disk", "free memory", "front end: jupyterlab-plotly"):
        assert needle in run.stdout, needle


def test_notebook_00_calls_the_doctor():
    nb = nbformat.read(ROOT / "notebooks" / "00_start_here.ipynb", as_version=4)
    assert any("doctor.report()" in c.source for c in nb.cells if c.cell_type == "code")


@pytest.mark.parametrize("gpu, precision, words", [
    ("T4", "fp16", ["Tesla T4, compute capability 7.5", "emulated", "loss scaling"]),
    ("A100", "bf16", ["compute capability 8.0", "native", "bf16 in hardware"])])
def test_doctor_says_which_precision_a_gpu_trains_in_and_why(monkeypatch, fake_gpu, gpu, precision, words):
    monkeypatch.delenv("LABKIT_PROFILE", raising=False)
    fake_gpu(gpu)
    monkeypatch.setattr(doctor, "bf16_matmul_error", lambda device: None)  # no GPU to run it on
    checks = {c.name: c for c in doctor.device_checks()}
    assert checks["device"].detail.startswith("cuda (")
    assert checks["profile"].detail.startswith(f"gpu, training precision {precision} (")
    text = " | ".join(c.detail for c in checks.values())
    for word in words:
        assert word in text, text
    assert ("emulated" in checks["bfloat16 matmul"].detail) == (gpu == "T4")


@pytest.mark.parametrize("fast", [False, True])
def test_doctor_explains_the_cpus_precision(monkeypatch, fast):
    """Issue #22: "bfloat16 matmul: supported" beside "training precision no" said nothing of why."""
    import torch

    from labkit import profiles

    monkeypatch.delenv("LABKIT_PROFILE", raising=False)
    monkeypatch.delenv("LABKIT_DEVICE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(profiles, "cpu_has_fast_bf16", lambda: fast)
    checks = {c.name: c for c in doctor.device_checks()}
    bf16, prof = checks["bfloat16 matmul"].detail, checks["profile"].detail
    if fast:
        assert "native (AVX512-BF16 or AMX)" in bf16 and prof.startswith("cpu, training precision bf16 (")
    else:
        assert "emulated" in bf16 and "no AVX512-BF16 or AMX" in bf16 and "slower than float32" in bf16
        assert prof.startswith("cpu, training precision no (float32: ") and "emulated" in prof


def test_doctor_says_a_mac_uses_the_cpu_unless_mps_is_chosen(monkeypatch, fake_mac):
    monkeypatch.setattr(doctor, "bf16_matmul_error", lambda device: None)  # no MPS to run it on
    device = next(c for c in doctor.device_checks() if c.name == "device")
    assert device.ok and device.detail.startswith("cpu (")
    assert ("MPS available but not used by default: the lab's tested path is the CPU; "
            "set LABKIT_DEVICE=mps to try it") in device.detail
    monkeypatch.setenv("LABKIT_DEVICE", "mps")
    checks = {c.name: c for c in doctor.device_checks()}
    assert checks["device"].detail.startswith("mps (LABKIT_DEVICE=mps") and checks["profile"].ok
    assert "training precision no (float32" in checks["profile"].detail
    monkeypatch.setenv("LABKIT_DEVICE", "gpu")
    bad = doctor.device_checks()[0]
    assert not bad.ok and "LABKIT_DEVICE='gpu'" in bad.detail and "LABKIT_DEVICE" in bad.fix
