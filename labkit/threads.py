"""Share the CPU with the other lab kernels on this machine: how many threads torch uses.

torch gives every process one thread per core. Two notebooks side by side on two cores then run
four threads on two cores, and OpenMP threads that wait for each other at the end of every
operation spin while the thread they wait for is off the CPU: on the 2-core lab machine a notebook
ran about 10x slower beside one other kernel, not 2x (``benchmarks/RESULTS.md``, "Kernels side by
side"). labkit gives each lab process its share instead::

    torch threads = max(1, usable CPUs // lab kernels running), never more than torch's own default

- *usable CPUs*: the CPUs this process may run on (its affinity), capped by its cgroup's CPU quota
  (a container's ``--cpus``; cgroup v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``).
- *lab kernels*: the processes that imported labkit, each with a small file named after its pid in
  a per-user folder (``$XDG_RUNTIME_DIR/labkit-kernels``, else ``labkit-kernels-<uid>`` in the temp
  folder; ``LABKIT_KERNELS_DIR`` to move it). Files of processes that have ended are removed when
  counting; each process removes its own at exit.

**Every training run and every generation** (``labkit.train`` and the RLHF stages through
``training.run_trainer``; ``predictions.generate_many``) calls :func:`size_threads` first: it
registers the process and sets torch's threads (``torch.set_num_threads``), so a kernel that started
alone gives cores back when a second one starts (it costs a directory listing). Importing labkit
does neither. What the learner chose wins: with ``OMP_NUM_THREADS`` or ``MKL_NUM_THREADS`` set, or after
their own ``torch.set_num_threads()``, labkit leaves the count as it is. ``LABKIT_THREADS`` decides
instead: a whole number (that many threads), or ``all`` (labkit leaves torch's default, every core).

Why the thread count and not OpenMP's wait policy (``OMP_WAIT_POLICY=PASSIVE``, which stops the
spinning): torch's OpenMP runtime (libgomp) reads it once, when torch loads; set after ``import
torch`` it is ignored (checked with ``OMP_DISPLAY_ENV``), so labkit could only apply it by changing
the environment before torch loads. One thread per kernel leaves OpenMP no team to spin in.
"""
from __future__ import annotations

import atexit
import math
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

ENV = "LABKIT_THREADS"
USER_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")   # the learner's own choice: left alone

_registered: tuple[int, Path] | None = None   # (pid, file) of this process's registration
_applied: int | None = None                   # the count labkit set last
_default: int | None = None                   # torch's count before labkit changed it


# ---- usable CPUs ---------------------------------------------------------------------------

def affinity_cpus() -> int:
    """How many CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:   # macOS, Windows
        return os.cpu_count() or 1


def quota_cores(text: str, period_text: str | None = None) -> float | None:
    """A CPU quota in cores: cgroup v2 ``cpu.max`` ("200000 100000", or "max 100000" for none), or
    v1's ``cpu.cfs_quota_us`` ("-1" for none) with ``cpu.cfs_period_us`` as ``period_text``."""
    parts = text.split()
    if period_text is not None:
        parts = parts[:1] + period_text.split()[:1]
    if len(parts) < 2 or parts[0] in ("max", "-1"):
        return None
    try:
        quota, period = int(parts[0]), int(parts[1])
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def cgroup_mounts(mountinfo: str) -> list[tuple[str, Path, int]]:
    """``(root, mount point, version)`` of the cgroup hierarchies that can hold a CPU quota, from
    ``/proc/self/mountinfo`` (v2: ``cgroup2``; v1: ``cgroup`` with the ``cpu`` controller)."""
    mounts = []
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if not sep or len(fields) < 5 or len(tail) < 3:
            continue
        if tail[0] == "cgroup2":
            mounts.append((fields[3], Path(fields[4]), 2))
        elif tail[0] == "cgroup" and "cpu" in tail[2].split(","):
            mounts.append((fields[3], Path(fields[4]), 1))
    return mounts


def cgroup_path(cgroup: str, version: int) -> str | None:
    """This process's group in the hierarchy of ``version``, from ``/proc/self/cgroup``."""
    for line in cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if version == 2 and parts[0] == "0" and parts[1] == "":
            return parts[2]
        if version == 1 and "cpu" in parts[1].split(","):
            return parts[2]
    return None


def cgroup_cpu_limit(proc: Path = Path("/proc/self")) -> float | None:
    """The CPU quota of this process in cores: the smallest quota of its cgroups and their parents,
    up to the top of what is mounted; None where there is none (or no cgroups: macOS)."""
    try:
        cgroup = (proc / "cgroup").read_text()
        mountinfo = (proc / "mountinfo").read_text()
    except OSError:
        return None
    limits = []
    for root, mount_point, version in cgroup_mounts(mountinfo):
        path = cgroup_path(cgroup, version)
        if path is None:
            continue
        if root == "/":
            inside = path
        elif path.startswith(root):   # a container's view without its own cgroup namespace
            inside = path[len(root):]
        else:                         # the group is outside what is mounted: the mount's own files
            inside = ""
        folder = mount_point / inside.strip("/")
        while True:   # the group and each parent up to the mount point
            try:
                if version == 2:
                    limit = quota_cores((folder / "cpu.max").read_text())
                else:
                    limit = quota_cores((folder / "cpu.cfs_quota_us").read_text(),
                                        (folder / "cpu.cfs_period_us").read_text())
            except OSError:
                limit = None
            if limit is not None:
                limits.append(limit)
            if folder == mount_point or mount_point not in folder.parents:
                break
            folder = folder.parent
    return min(limits) if limits else None


def usable_cpus() -> int:
    """The CPUs this process may really use: its affinity, capped by its cgroup quota (rounded
    down: 1.5 cores of quota is 1 thread's worth, as 2 threads would be throttled)."""
    cpus = affinity_cpus()
    quota = cgroup_cpu_limit()
    return max(1, min(cpus, math.floor(quota))) if quota is not None else cpus


# ---- lab kernels ---------------------------------------------------------------------------

def kernels_dir() -> Path:
    """The per-user folder of pid files (``LABKIT_KERNELS_DIR`` to move it)."""
    if os.environ.get("LABKIT_KERNELS_DIR"):
        return Path(os.environ["LABKIT_KERNELS_DIR"])
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime):
        return Path(runtime) / "labkit-kernels"
    uid = os.getuid() if hasattr(os, "getuid") else os.environ.get("USERNAME", "user")
    return Path(tempfile.gettempdir()) / f"labkit-kernels-{uid}"


def start_time(pid: int) -> str | None:
    """When ``pid`` started (field 22 of ``/proc/<pid>/stat``), so that a pid the system has given
    to a new process is not taken for the old one; None where there is no /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]   # after "pid (name)": field 3 is the first


def is_alive(pid: int, started: str) -> bool:
    """Whether process ``pid``, started at ``started`` ("" if unknown), is still running."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # another user's process: alive
        pass
    except OSError:
        return False
    return not started or start_time(pid) in (None, started)


def register() -> Path | None:
    """Write this process's pid file (once per process; removed at exit). Where the folder cannot
    be written, the process goes uncounted (None) rather than failing ``import labkit``."""
    global _registered
    pid = os.getpid()
    if _registered is not None and _registered[0] == pid:
        return _registered[1]
    folder = kernels_dir()
    path = folder / str(pid)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{pid}.tmp"
        tmp.write_text(start_time(pid) or "")
        os.replace(tmp, path)
    except OSError:
        return None
    _registered = (pid, path)
    atexit.register(unregister)
    return path


def unregister() -> None:
    """Remove this process's pid file (not a parent's, in a forked child)."""
    global _registered
    if _registered is not None and _registered[0] == os.getpid():
        _registered[1].unlink(missing_ok=True)
        _registered = None


def lab_kernels(folder: Path | None = None) -> int:
    """How many lab processes are running, this one included; pid files of ended processes are
    removed on the way."""
    folder = folder or kernels_dir()
    me = os.getpid()
    others = 0
    try:
        entries = list(os.scandir(folder))
    except OSError:
        entries = []
    for entry in entries:
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            started = Path(entry.path).read_text().strip()
        except OSError:
            continue
        if is_alive(int(entry.name), started):
            others += 1
        else:
            Path(entry.path).unlink(missing_ok=True)
    return others + 1


# ---- the choice ----------------------------------------------------------------------------

@dataclass
class Choice:
    threads: int    # torch's intra-op threads after the call
    usable: int     # CPUs this process may use
    kernels: int    # lab processes running, this one included
    reason: str

    def line(self) -> str:
        return (f"torch uses {self.threads} thread{'s' * (self.threads != 1)}: {self.reason} "
                f"({self.usable} usable CPU{'s' * (self.usable != 1)}, {self.kernels} lab kernel"
                f"{'s' * (self.kernels != 1)} running)")


def fair_share(usable: int, kernels: int, default: int) -> int:
    return max(1, min(default, usable // max(1, kernels)))


def size_threads() -> Choice:
    """Register this process and set torch's thread count to its share of the machine, unless the
    learner chose one (see the module's docstring). Cheap enough to call before every run."""
    import torch

    global _applied, _default
    register()
    usable, kernels = usable_cpus(), lab_kernels()
    current = torch.get_num_threads()
    setting = os.environ.get(ENV, "").strip().lower()
    user_env = next((f"{name}={os.environ[name]}" for name in USER_ENV if os.environ.get(name)), None)

    def left(reason: str) -> Choice:
        return Choice(current, usable, kernels, reason)

    if setting == "all":
        return left(f"{ENV}=all, torch's own default")
    if setting:
        if not setting.isdigit() or int(setting) < 1:
            warnings.warn(f"{ENV}={os.environ[ENV]!r} is neither a whole number of threads nor 'all': ignored",
                          stacklevel=2)
            setting = ""
        else:
            wanted, reason = int(setting), f"{ENV}={setting}"
    if not setting:
        if user_env:
            return left(f"{user_env} set, left as it is")
        if _applied is not None and current != _applied:
            return left("set with torch.set_num_threads outside labkit, left as it is")
        if _default is None:
            _default = current
        wanted = fair_share(usable, kernels, _default)
        reason = "its share of the usable CPUs" if kernels > 1 else "every usable CPU, no other lab kernel"
    if wanted != current:
        torch.set_num_threads(wanted)
    _applied = wanted
    return Choice(wanted, usable, kernels, reason)


def describe() -> str:
    """One line for ``labkit doctor``: the threads chosen and why (sizes them first)."""
    quota = cgroup_cpu_limit()
    where = f"affinity {affinity_cpus()}, cgroup quota " + (f"{quota:g} cores" if quota else "none")
    return f"{size_threads().line()}; {where}"


# ---- how many learners a server holds ------------------------------------------------------

def capacity(cores: int, mem_gib: float, peak_gib_per_kernel: float, cores_per_learner: float = 1.0,
             reserve_gib: float = 2.0) -> int:
    """How many learners a server of ``cores`` CPUs and ``mem_gib`` GiB holds, each kernel peaking at
    ``peak_gib_per_kernel`` (measured: ``benchmarks/RESULTS.md``): memory is the hard limit (past it
    kernels are killed), cores the soft one (past it every learner's training slows in proportion).
    ``reserve_gib`` is left to the system and the Jupyter server."""
    if cores < 1 or mem_gib <= 0 or peak_gib_per_kernel <= 0 or cores_per_learner <= 0 or reserve_gib < 0:
        raise ValueError("capacity: cores >= 1, and mem_gib, peak_gib_per_kernel, cores_per_learner > 0")
    by_memory = math.floor(max(0.0, mem_gib - reserve_gib) / peak_gib_per_kernel)
    by_cores = math.floor(cores / cores_per_learner)
    return max(0, min(by_memory, by_cores))
