"""labkit.files, the one way labkit writes a learner's work: atomic files and folders, no temp
litter after a crash, a lock for a second writer. (Killed writers: tests/test_reliability.py.)"""
import os
import subprocess
from pathlib import Path

import pytest

from labkit import files


def dead_pid() -> int:
    """The id of a process that has ended (and been reaped)."""
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def litter(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(files.PREFIX))


def test_temp_names_carry_the_prefix_host_and_process(tmp_path):
    tmp = files.temp_path(tmp_path / "results.json")
    assert tmp.parent == tmp_path
    assert tmp.name.startswith(f"{files.PREFIX}new.{files.HOST}.{os.getpid()}.")
    assert tmp.name.endswith(".results.json")


def test_write_text_replaces_atomically_and_a_failed_rename_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "sub" / "results.json"
    files.write_text(path, '{"loss": 1}')
    files.write_text(path, '{"loss": 2}')
    assert path.read_text() == '{"loss": 2}' and litter(path.parent) == []

    def crash(src, dst):
        raise OSError("disk pulled out")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk pulled out"):
        files.write_text(path, '{"loss": 3}')
    assert path.read_text() == '{"loss": 2}' and litter(path.parent) == []


def test_replacing_folder_swaps_whole_and_a_failure_keeps_the_old_folder(tmp_path):
    target = tmp_path / "adapter"
    with files.replacing_folder(target) as new:
        (new / "weights").write_text("v1")
    with pytest.raises(RuntimeError):
        with files.replacing_folder(target) as new:
            (new / "weights").write_text("half of v2")
            raise RuntimeError("killed by a bug halfway")
    assert (target / "weights").read_text() == "v1"
    with files.replacing_folder(target) as new:
        (new / "weights").write_text("v2")
    assert [p.name for p in target.iterdir()] == ["weights"] and (target / "weights").read_text() == "v2"
    assert litter(tmp_path) == []


def test_clean_temps_removes_only_temps_whose_writer_is_gone(tmp_path):
    gone, alive = dead_pid(), os.getpid()
    names = {
        "gone_file": f"{files.PREFIX}new.{files.HOST}.{gone}.aa.prefs.jsonl",
        "gone_folder": f"{files.PREFIX}new.{files.HOST}.{gone}.bb.medical",
        "alive": f"{files.PREFIX}new.{files.HOST}.{alive}.cc.legal",
        "other_host": f"{files.PREFIX}new.elsewhere-{files.HOST}.{gone}.dd.code",
    }
    (tmp_path / names["gone_file"]).write_text("half a file")
    for key in ("gone_folder", "alive", "other_host"):
        (tmp_path / names[key]).mkdir()
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / ".labkit-tmp-not-ours").write_text("a name this module did not make")
    files.clean_temps(tmp_path)
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted([names["alive"], names["other_host"], "notes.txt", ".labkit-tmp-not-ours"])


def test_clean_temps_puts_back_a_folder_whose_replacement_never_arrived(tmp_path):
    """A crash between the swap's two renames leaves the old folder under a temp name: the next
    write in that folder puts it back (and a folder that is back in place is not touched)."""
    old = tmp_path / f"{files.PREFIX}old.{files.HOST}.{dead_pid()}.ee.medical"
    old.mkdir()
    (old / "adapter_model.safetensors").write_text("the learner's weights")
    files.write_text(tmp_path / "other.json", "{}")          # any write in the folder
    assert (tmp_path / "medical" / "adapter_model.safetensors").read_text() == "the learner's weights"
    assert litter(tmp_path) == []


def test_a_second_writer_waits_then_is_refused_by_name(tmp_path):
    path = tmp_path / "prefs.jsonl"
    with files.locked(path):
        with pytest.raises(files.Busy, match=r"prefs\.jsonl is being written by another process.*nothing was written"):
            with files.locked(path, timeout_s=0.1):
                pass
    with files.locked(path, timeout_s=0.1):  # released: the next writer gets it at once
        pass
    assert issubclass(files.Busy, OSError)


def test_everything_the_notebooks_make_goes_under_one_outputs_root(tmp_path, monkeypatch):
    """One place decides where outputs/ is, so that LABKIT_OUTPUTS (set by the test suite and the
    benchmarks) keeps their runs from overwriting a learner's results and adapters."""
    from labkit import claims, compare, export
    from labkit.files import outputs_root

    monkeypatch.delenv("LABKIT_OUTPUTS", raising=False)
    (tmp_path / "notebooks").mkdir()
    monkeypatch.chdir(tmp_path / "notebooks")            # a notebook's working folder
    assert outputs_root() == tmp_path / "outputs"
    elsewhere = tmp_path / "test-run"
    monkeypatch.setenv("LABKIT_OUTPUTS", str(elsewhere))
    assert outputs_root() == claims.outputs_root() == elsewhere
    assert compare.output_dir() == elsewhere / "method_comparison"
    assert export.default_job_dir(Path("data/domains/medical.jsonl"), "lora") == elsewhere / "jobs" / "medical-lora"
