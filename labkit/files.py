"""Writing a learner's work so that nothing is ever lost.

Everything labkit writes for a learner (adapters, preferences, results, exported jobs, the model
cache, JSONL data) goes through here, with four promises:

1. **Atomic.** The new version is written beside the target under a temporary name, flushed to
   disk (``fsync``), then renamed into place: a crash leaves the old version or the new one, never
   half of one. A folder is swapped with two renames (old aside, new in); if a crash falls between
   them, the next write in that folder (or :func:`clean_temps`) puts the old one back.
2. **Nothing it did not make is deleted.** Only the target is replaced, and only labkit's own
   temporary names are ever removed.
3. **No litter.** Temporary names start with ``.labkit-tmp-`` and carry the writer's host and
   process id; each write removes the ones in its folder whose process is gone (killed, crashed).
4. **One writer at a time** where two could clash (read, change, write back, as an append does):
   :func:`locked` holds an advisory lock (``fcntl.flock``) on ``.<name>.lock`` beside the target.
   A second writer waits up to ``LOCK_TIMEOUT_S`` seconds, then gets :class:`Busy`: nothing written.

    write_text("outputs/results/lora.json", json.dumps(result))
    with replacing_folder("outputs/adapters/medical") as tmp:   # fill tmp; it replaces the folder
        model.save_pretrained(tmp)
    with locked("outputs/prefs.jsonl"):                          # read, add, write: one at a time
        write_text("outputs/prefs.jsonl", old + new)

Locks and the process check are POSIX (Linux, macOS, Colab).
"""
from __future__ import annotations

import os
import secrets
import shutil
import socket
import time
from contextlib import contextmanager
from pathlib import Path

PREFIX = ".labkit-tmp-"
HOST = socket.gethostname().split(".")[0] or "host"
LOCK_TIMEOUT_S = 5.0


class Busy(TimeoutError):
    """Another process holds the lock on a file; nothing was written."""


# --- temporary names --------------------------------------------------------------------------

def temp_path(target, kind: str = "new") -> Path:
    """A temporary name beside ``target``: ``.labkit-tmp-<kind>.<host>.<pid>.<random>.<name>``.
    ``kind`` is ``new`` (being written) or ``old`` (the previous folder, during a swap)."""
    target = Path(target)
    return target.with_name(f"{PREFIX}{kind}.{HOST}.{os.getpid()}.{secrets.token_hex(3)}.{target.name}")


def _writer_gone(host: str, pid: int) -> bool:
    """Has the process that made a temporary name ended? (Another machine's are left to it.)"""
    if host != HOST:
        return False
    try:
        os.kill(pid, 0)  # signal 0 only asks whether the process exists
    except ProcessLookupError:
        return True
    except PermissionError:  # it exists, as another user's process
        return False
    return False


def clean_temps(folder) -> None:
    """Finish what killed writers left in ``folder``: an old folder whose replacement never
    arrived goes back in place; every other temporary name whose writer is gone is removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    for temp in folder.glob(PREFIX + "*"):
        try:
            kind, host, pid, _, name = temp.name[len(PREFIX):].split(".", 4)
            if not _writer_gone(host, int(pid)):
                continue
        except ValueError:  # not a name this module made
            continue
        try:
            if kind == "old" and not (folder / name).exists():
                os.rename(temp, folder / name)
            elif temp.is_dir() and not temp.is_symlink():
                shutil.rmtree(temp)
            else:
                temp.unlink()
        except OSError:  # another process cleaned it first
            pass


# --- flushing to disk -------------------------------------------------------------------------

def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(folder) -> None:
    """Flush every file under ``folder``, and the folders themselves, to disk."""
    for path in sorted(Path(folder).rglob("*"), reverse=True):
        if not path.is_symlink():
            _fsync_path(path)
    _fsync_path(Path(folder))


# --- writing ----------------------------------------------------------------------------------

def write_bytes(path, data: bytes) -> Path:
    """Replace the file ``path`` with ``data`` atomically (temp beside it, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_temps(path.parent)
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_path(path.parent)  # the rename itself reaches the disk
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_text(path, text: str) -> Path:
    """Replace the text file ``path`` with ``text`` (UTF-8) atomically."""
    return write_bytes(path, text.encode("utf-8"))


def copy_file(src, dst) -> Path:
    """Copy ``src`` to ``dst`` atomically (with its timestamps)."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    clean_temps(dst.parent)
    tmp = temp_path(dst)
    try:
        shutil.copy2(src, tmp)
        _fsync_path(tmp)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    return dst


def outputs_root() -> Path:
    """``outputs/`` at the repository root: where the notebooks keep what they make (adapters,
    results, the claims ledger). ``LABKIT_OUTPUTS`` moves it; the test suite and the benchmarks do,
    so that their runs never overwrite a learner's."""
    if os.environ.get("LABKIT_OUTPUTS"):
        return Path(os.environ["LABKIT_OUTPUTS"])
    here = Path.cwd()
    return (here.parent if here.name == "notebooks" else here) / "outputs"


@contextmanager
def replacing_folder(target):
    """Yield a new, empty temporary folder beside ``target``. If the block ends without an error,
    the new folder replaces ``target`` (the old one is set aside first and removed last); if it
    fails, the new folder is removed and ``target`` is as it was."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    clean_temps(target.parent)
    new = temp_path(target)
    new.mkdir()
    try:
        yield new
        fsync_tree(new)
        if target.exists():
            old = temp_path(target, "old")
            os.rename(target, old)
            os.rename(new, target)  # a crash just before this: clean_temps puts `old` back
            shutil.rmtree(old)
        else:
            os.rename(new, target)
        _fsync_path(target.parent)
    finally:
        shutil.rmtree(new, ignore_errors=True)


# --- one writer at a time ---------------------------------------------------------------------

@contextmanager
def locked(path, timeout_s: float | None = None):
    """Hold the advisory lock of ``path`` (``fcntl.flock`` on ``.<name>.lock`` beside it) for the
    block. Waits up to ``timeout_s`` (default ``LOCK_TIMEOUT_S``) seconds, then raises :class:`Busy`.
    The lock file stays (removing it would let two writers lock two different files)."""
    import fcntl

    path = Path(path)
    lock = path.with_name(f".{path.name}.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    timeout_s = LOCK_TIMEOUT_S if timeout_s is None else timeout_s
    deadline = time.monotonic() + timeout_s
    with open(lock, "a") as f:
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise Busy(f"{path} is being written by another process (its lock {lock} has been "
                               f"held for {timeout_s:g} s); nothing was written. Try again in a moment.") from None
                time.sleep(0.02)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
