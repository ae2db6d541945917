"""labkit.threads: torch's threads sized from the CPUs this process may use (affinity, cgroup quota)
and the lab kernels running, counted by pid files; the learner's own choice wins. cgroup files are
faked in a temporary folder; the pid-file accounting runs against real live and ended processes."""
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from labkit import threads

THREADS_PY = Path(threads.__file__)


# ---- quotas and cgroups ----------------------------------------------------------------------

@pytest.mark.parametrize("text, period, cores", [
    ("200000 100000\n", None, 2.0), ("150000 100000", None, 1.5), ("max 100000\n", None, None),
    ("50000\n", "100000\n", 0.5), ("-1\n", "100000\n", None), ("", None, None), ("junk here", None, None)])
def test_quota_cores_reads_v2_cpu_max_and_v1_cfs_files(text, period, cores):
    assert threads.quota_cores(text, period) == cores


def fake_proc(tmp_path, cgroup: str, mountinfo: str) -> Path:
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "cgroup").write_text(cgroup)
    (proc / "mountinfo").write_text(mountinfo)
    return proc


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_v2_limit_is_the_smallest_up_the_tree(tmp_path):
    mount = tmp_path / "sys" / "fs" / "cgroup"
    write(mount / "user.slice" / "cpu.max", "300000 100000\n")          # the parent: 3 cores
    write(mount / "user.slice" / "lab" / "cpu.max", "max 100000\n")     # the group itself: none
    proc = fake_proc(tmp_path, "0::/user.slice/lab\n",
                     f"30 23 0:26 / {mount} rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n")
    assert threads.cgroup_cpu_limit(proc) == 3.0
    write(mount / "user.slice" / "lab" / "cpu.max", "100000 100000\n")
    assert threads.cgroup_cpu_limit(proc) == 1.0


def test_cgroup_v1_quota_in_a_container_without_its_own_namespace(tmp_path):
    """/proc/self/cgroup names /docker/abc, the mount's root is /docker/abc: the files are at the mount point."""
    mount = tmp_path / "cpu"
    write(mount / "cpu.cfs_quota_us", "150000\n")
    write(mount / "cpu.cfs_period_us", "100000\n")
    proc = fake_proc(tmp_path, "5:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n0::/\n",
                     f"40 30 0:35 /docker/abc {mount} rw - cgroup cgroup rw,cpu,cpuacct\n"
                     f"41 30 0:36 /docker/abc {tmp_path / 'memory'} rw - cgroup cgroup rw,memory\n")
    assert threads.cgroup_cpu_limit(proc) == 1.5


def test_no_quota_where_cgroups_set_none_or_are_missing(tmp_path):
    mount = tmp_path / "cpu"
    write(mount / "cpu.cfs_quota_us", "-1\n")   # this lab machine: v1 cpu without quota, v2 without cpu.max
    write(mount / "cpu.cfs_period_us", "100000\n")
    proc = fake_proc(tmp_path, "1:cpu:/\n0::/\n",
                     f"40 30 0:35 / {mount} rw - cgroup cgroup rw,cpu\n"
                     f"50 30 0:40 / {tmp_path / 'unified'} rw - cgroup2 cgroup2 rw\n")
    assert threads.cgroup_cpu_limit(proc) is None
    assert threads.cgroup_cpu_limit(tmp_path / "no-proc") is None


@pytest.mark.parametrize("cpus, quota, usable", [(8, 2.5, 2), (8, 0.5, 1), (8, None, 8), (2, 16.0, 2)])
def test_usable_cpus_is_affinity_capped_by_the_quota_rounded_down(monkeypatch, cpus, quota, usable):
    monkeypatch.setattr(threads, "affinity_cpus", lambda: cpus)
    monkeypatch.setattr(threads, "cgroup_cpu_limit", lambda: quota)
    assert threads.usable_cpus() == usable


def test_affinity_is_what_the_process_may_run_on():
    if not hasattr(os, "sched_setaffinity"):
        pytest.skip("no affinity on this system")
    assert threads.affinity_cpus() == len(os.sched_getaffinity(0))


# ---- lab kernels -----------------------------------------------------------------------------

@pytest.fixture
def registry(tmp_path, monkeypatch):
    """An empty folder of pid files, and this process not yet registered in it."""
    folder = tmp_path / "kernels"
    monkeypatch.setenv("LABKIT_KERNELS_DIR", str(folder))
    monkeypatch.setattr(threads, "_registered", None)
    return folder


def sleeper() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def test_live_kernels_count_and_ended_or_reused_pids_are_removed(registry):
    registry.mkdir()
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    live, reused = sleeper(), sleeper()
    try:
        (registry / str(ended.pid)).write_text("")
        (registry / str(live.pid)).write_text(threads.start_time(live.pid) or "")
        (registry / str(reused.pid)).write_text("1")   # started at boot: that process is gone, its pid reused
        (registry / "notes.txt").write_text("not a kernel")
        assert threads.lab_kernels() == 2   # the live one, and this process
        assert sorted(p.name for p in registry.iterdir()) == sorted([str(live.pid), "notes.txt"])
    finally:
        live.kill(), reused.kill()
        live.wait(), reused.wait()
    assert threads.lab_kernels() == 1
    assert not (registry / str(live.pid)).exists()


def test_register_writes_one_file_and_counts_this_process_once(registry):
    path = threads.register()
    assert path == registry / str(os.getpid()) and path.read_text() == (threads.start_time(os.getpid()) or "")
    assert threads.register() == path
    assert threads.lab_kernels() == 1
    threads.unregister()
    assert not path.exists()


def test_an_unwritable_folder_leaves_the_process_uncounted_not_broken(registry, monkeypatch, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("LABKIT_KERNELS_DIR", str(blocker / "kernels"))
    assert threads.register() is None
    assert threads.lab_kernels() == 1
    monkeypatch.setattr(threads, "_applied", None)
    monkeypatch.setattr(threads, "_default", None)
    before = torch.get_num_threads()
    try:
        assert threads.size_threads().kernels == 1
    finally:
        torch.set_num_threads(before)


def test_a_forked_child_does_not_remove_its_parents_file(registry, monkeypatch):
    path = threads.register()
    monkeypatch.setattr(os, "getpid", lambda: 1)   # the child, as unregister sees it at exit
    threads.unregister()
    assert path.exists()


CHILD = f"""
import importlib.util, sys, time
spec = importlib.util.spec_from_file_location("threads", {str(THREADS_PY)!r})
threads = sys.modules["threads"] = importlib.util.module_from_spec(spec); spec.loader.exec_module(threads)
threads.register(); print("ready", flush=True)
time.sleep(float(sys.argv[1]))
"""


def test_other_processes_count_while_they_run_and_not_after(registry):
    """Real processes: one ends normally (removes its own file), one is killed (its file is stale)."""
    env = {**os.environ, "LABKIT_KERNELS_DIR": str(registry)}
    quick, killed = (subprocess.Popen([sys.executable, "-c", CHILD, s], env=env, stdout=subprocess.PIPE, text=True)
                     for s in ("1", "60"))
    try:
        assert quick.stdout.readline().strip() == "ready" and killed.stdout.readline().strip() == "ready"
        assert threads.lab_kernels() == 3
        quick.wait(timeout=30)
        assert not (registry / str(quick.pid)).exists()
        assert threads.lab_kernels() == 2
    finally:
        killed.kill()
        killed.wait()
    assert (registry / str(killed.pid)).exists()   # no exit handler ran
    assert threads.lab_kernels() == 1
    assert not (registry / str(killed.pid)).exists()


# ---- the choice ------------------------------------------------------------------------------

@pytest.fixture
def machine(registry, monkeypatch):
    """A fake machine: ``machine.usable`` CPUs and ``machine.kernels`` lab kernels; torch's threads
    restored and labkit's memory of what it set cleared around the test; no OMP_NUM_THREADS."""
    class Machine:
        usable, kernels = 8, 1

    for name in (*threads.USER_ENV, threads.ENV):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(threads, "usable_cpus", lambda: Machine.usable)
    monkeypatch.setattr(threads, "lab_kernels", lambda: Machine.kernels)
    monkeypatch.setattr(threads, "_applied", None)
    monkeypatch.setattr(threads, "_default", None)
    before = torch.get_num_threads()
    torch.set_num_threads(4)   # torch's "default" in these tests
    yield Machine
    torch.set_num_threads(before)


def test_each_kernel_gets_its_share_and_no_more_than_torchs_default(machine):
    machine.kernels = 3
    choice = threads.size_threads()
    assert (choice.threads, choice.usable, choice.kernels) == (2, 8, 3) == (torch.get_num_threads(), 8, 3)
    machine.kernels = 1
    assert threads.size_threads().threads == 4 == torch.get_num_threads()   # 8 usable, but torch's default is 4
    machine.kernels = 16
    assert threads.size_threads().threads == 1 == torch.get_num_threads()


def test_a_kernel_gives_cores_back_when_another_starts_and_takes_them_again(machine):
    machine.usable = 2
    assert threads.size_threads().threads == 2
    machine.kernels = 2
    assert threads.size_threads().threads == 1 == torch.get_num_threads()
    machine.kernels = 1
    assert threads.size_threads().threads == 2 == torch.get_num_threads()


def test_the_learners_omp_num_threads_is_left_alone(machine, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    machine.kernels = 4
    choice = threads.size_threads()
    assert choice.threads == 4 == torch.get_num_threads() and "OMP_NUM_THREADS=3" in choice.reason


def test_the_learners_own_set_num_threads_is_left_alone(machine):
    machine.kernels = 2
    assert threads.size_threads().threads == 4
    torch.set_num_threads(3)
    machine.kernels = 4
    choice = threads.size_threads()
    assert choice.threads == 3 == torch.get_num_threads() and "outside labkit" in choice.reason


def test_labkit_threads_overrides(machine, monkeypatch):
    machine.kernels = 4
    monkeypatch.setenv("LABKIT_THREADS", "3")
    assert threads.size_threads().threads == 3 == torch.get_num_threads()
    monkeypatch.setenv("LABKIT_THREADS", "all")
    choice = threads.size_threads()
    assert choice.threads == 3 == torch.get_num_threads() and "all" in choice.reason   # left as it is
    monkeypatch.setenv("LABKIT_THREADS", "lots")
    with pytest.warns(UserWarning, match="LABKIT_THREADS='lots'"):
        assert threads.size_threads().threads == 2   # ignored: the share, 8 // 4


def test_size_threads_registers_this_process(machine, registry):
    threads.size_threads()
    assert (registry / str(os.getpid())).exists()
    threads.unregister()


def test_the_doctor_line_says_threads_and_why(machine):
    machine.kernels = 2
    line = threads.describe()
    assert line.startswith("torch uses 4 threads: its share of the usable CPUs (8 usable CPUs, 2 lab kernels")
    assert "affinity" in line and "cgroup quota" in line


# ---- capacity --------------------------------------------------------------------------------

@pytest.mark.parametrize("args, learners", [
    ((32, 64, 2.5), 24),        # memory: (64 - 2) / 2.5 = 24.8 -> 24; cores would hold 32
    ((8, 64, 2.0), 8),          # cores: 8
    ((8, 64, 2.0, 0.5), 16),    # half a core each: 16
    ((2, 2, 1.0), 0),           # all memory reserved
    ((16, 32, 3.0, 1.0, 0), 10)])
def test_capacity_is_the_smaller_of_memory_and_cores(args, learners):
    assert threads.capacity(*args) == learners


def test_capacity_refuses_nonsense():
    with pytest.raises(ValueError):
        threads.capacity(0, 64, 2)
    with pytest.raises(ValueError):
        threads.capacity(8, 64, 0)


def test_the_module_loads_without_labkit_or_torch():
    """The pid-file and cgroup parts use the standard library only (children in tests load it alone)."""
    code = (f"import importlib.util, sys; spec = importlib.util.spec_from_file_location('t', {str(THREADS_PY)!r}); "
            "m = sys.modules['t'] = importlib.util.module_from_spec(spec); spec.loader.exec_module(m); "
            "print('torch' in sys.modules, m.usable_cpus() >= 1)")
    start = time.monotonic()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "True"], out
    assert time.monotonic() - start < 30


def test_train_and_generate_size_the_threads_first(monkeypatch, toy, toy_text):
    """The hooks: labkit.train (run_trainer) and generation call size_threads before any work."""
    import torch

    import labkit
    from labkit.predictions import generate_many

    model, tok = toy
    before = torch.get_num_threads()
    try:
        for name in threads.USER_ENV:
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("LABKIT_THREADS", "1")
        torch.set_num_threads(2)
        labkit.train(model, tok, toy_text, method="full", steps=1, batch_size=2, live=False)
        assert torch.get_num_threads() == 1
        torch.set_num_threads(2)
        threads._applied = None   # as if labkit had never set it
        generate_many(model, tok, ["The capital"], 2, 0.0, None)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
        threads._applied = None
