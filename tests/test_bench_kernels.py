"""benchmarks/bench_kernels.py's machinery, on the toy model: kernels really start side by side,
see each other through labkit's pid files and take their share of threads (or torch's default,
with LABKIT_THREADS=all); the table's slowdowns are computed against the single kernel. (The real
measurement takes minutes on an idle machine: `.venv/bin/python benchmarks/bench_kernels.py`.)"""
import importlib
import sys
from pathlib import Path

import pytest

from labkit import threads

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture
def bk(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(BENCH))
    for name in ("common", "bench_kernels"):
        sys.modules.pop(name, None)
    module = importlib.import_module("bench_kernels")
    monkeypatch.setattr(sys.modules["common"], "RESULTS", tmp_path / "RESULTS.md")
    return module


def test_two_labkit_kernels_see_each_other_and_share_the_cpus(bk):
    results = bk.side_by_side(2, "labkit", steps=1, model="toy", batch=2, length=16)
    usable = threads.usable_cpus()   # the workers run on this machine, with this affinity
    assert len(results) == 2
    for r in results:
        assert r["kernels_seen"] == 2
        assert r["threads"] == max(1, min(r["torch_default"], usable // 2))
        assert len(r["step_s"]) == 1 and r["step_s"][0] > 0 and r["peak_rss_mib"] > 50


def test_workers_get_torchs_defaults_and_a_kernel_folder_of_their_own(bk, monkeypatch):
    """The caller's OMP_NUM_THREADS (this test run's own) must not reach the workers, nor its
    LABKIT_THREADS; the default mode turns labkit's sizing off."""
    for name, value in (("OMP_NUM_THREADS", "1"), ("MKL_NUM_THREADS", "1"), ("LABKIT_THREADS", "3"),
                        ("LABKIT_KERNELS_DIR", "/elsewhere")):
        monkeypatch.setenv(name, value)
    labkit_env, default_env = bk.worker_env("labkit", "/tmp/k"), bk.worker_env("default", "/tmp/k")
    for env in (labkit_env, default_env):
        assert "OMP_NUM_THREADS" not in env and "MKL_NUM_THREADS" not in env
        assert env["LABKIT_KERNELS_DIR"] == "/tmp/k" and env["PATH"] == bk.os.environ["PATH"]
    assert "LABKIT_THREADS" not in labkit_env and default_env["LABKIT_THREADS"] == "all"


def fake(mode, kernels, seconds, threads_each=2, rss=400.0):
    return [{"mode": mode, "kernels": kernels, "threads": threads_each, "torch_default": 2,
             "kernels_seen": kernels, "step_s": [s, s * 1.1, s * 0.9], "peak_rss_mib": rss}
            for s in seconds]


def test_slowdowns_are_against_the_same_modes_single_kernel_and_the_section_is_written(bk):
    runs = {("default", 1): fake("default", 1, [2.0]), ("default", 2): fake("default", 2, [10.0, 6.0]),
            ("labkit", 1): fake("labkit", 1, [2.0]), ("labkit", 2): fake("labkit", 2, [4.0, 4.4], 1, 450.0)}
    rows = {(r["threads"], r["kernels"]): r for r in bk.summarize(runs)}
    two = rows[("torch default", 2)]
    assert two["s/step (mean of kernels)"] == pytest.approx(8.0) and two["slowest kernel s/step"] == 10.0
    assert two["slowdown vs 1 kernel"] == pytest.approx(4.0) and two["slowdown / ideal"] == pytest.approx(2.0)
    shared = rows[("labkit sizing", 2)]
    assert shared["torch threads each"] == "1" and shared["slowdown / ideal"] == pytest.approx(1.05)
    assert shared["peak RSS MiB per kernel"] == 450.0

    class Args:
        steps, model, batch, length = 3, "toy", 2, 16

    peaks = [{"profile": "cpu", "batch x tokens": "8 x 128", "s/step": 1.0, "peak RSS MiB": 2048.0,
              "peak RSS GiB": 2.0}]
    body = bk.report(list(rows.values()), peaks, Args)
    assert "- torch default: worst slowdown 2.00x the ideal." in body
    assert "- labkit sizing: worst slowdown 1.05x the ideal." in body
    bk.write_section(bk.SECTION, body)
    assert bk.SECTION in sys.modules["common"].RESULTS.read_text()
    assert "| torch default | 2 | 2 | 8 | 10 | 4 | 2x | 2 | 400 |" in sys.modules["common"].RESULTS.read_text()


def test_the_baseline_single_kernel_is_required(bk):
    with pytest.raises(SystemExit):
        bk.main(["--kernels", "2,4", "--no-write"])
