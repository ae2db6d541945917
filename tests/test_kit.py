"""The offline classroom kit's machinery (labkit/kit.py), on tiny files: nothing big is downloaded.
The real kit (build, offline install, two notebooks) is benchmarks/bench_kit.py, outside make test."""
import importlib.util
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Loaded from its file, as the kit's own copy runs: without labkit's package (and torch) imported.
_spec = importlib.util.spec_from_file_location("labkit_kit_file", ROOT / "labkit" / "kit.py")
kit = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = kit  # dataclasses look their module up
_spec.loader.exec_module(kit)
LINUX = "linux-x86_64-py311"
MAC = "macos-arm64-py311"


def make_wheel(folder: Path, name: str, version: str, requires=(), tag="py3-none-any") -> Path:
    """A real, installable wheel holding one module ``<name>.py``."""
    dist = f"{name}-{version}.dist-info"
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n" + "".join(
        f"Requires-Dist: {r}\n" for r in requires)
    files = {f"{name}.py": f"VERSION = {version!r}\n", f"{dist}/METADATA": meta,
             f"{dist}/WHEEL": f"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: {tag}\n"}
    files[f"{dist}/RECORD"] = "".join(f"{n},,\n" for n in files) + f"{dist}/RECORD,,\n"
    path = folder / f"{name}-{version}-{tag}.whl"
    with zipfile.ZipFile(path, "w") as z:
        for n, text in files.items():
            z.writestr(n, text)
    return path


def fake_kit(tmp_path) -> Path:
    k = tmp_path / "kit"
    (k / "wheels").mkdir(parents=True)
    (k / "lab").mkdir()
    (k / "lab" / "requirements.txt").write_text("demo-pkg\n")
    make_wheel(k / "wheels", "demo_pkg", "1.0")
    make_wheel(k / "wheels", "other", "2.0", tag="cp311-cp311-manylinux_2_28_x86_64")
    kit.write_manifest(k, {LINUX: ["demo_pkg-1.0-py3-none-any.whl", "other-2.0-cp311-cp311-manylinux_2_28_x86_64.whl"],
                           MAC: ["demo_pkg-1.0-py3-none-any.whl"]})
    return k


def test_manifest_lists_every_file_with_size_and_checksum(tmp_path):
    k = fake_kit(tmp_path)
    m = kit.read_manifest(k)
    assert set(m["files"]) == {"wheels/demo_pkg-1.0-py3-none-any.whl", "lab/requirements.txt",
                               "wheels/other-2.0-cp311-cp311-manylinux_2_28_x86_64.whl"}
    f = m["files"]["lab/requirements.txt"]
    assert f["size"] == len("demo-pkg\n") and f["sha256"] == kit.sha256(k / "lab" / "requirements.txt")
    assert m["no_deps"] == kit.NO_DEPS and set(m["targets"]) == {LINUX, MAC}
    assert kit.verify(k) == [] and kit.verify(k, LINUX) == []


def test_manifest_refuses_a_target_whose_wheel_is_absent(tmp_path):
    k = fake_kit(tmp_path)
    with pytest.raises(kit.KitError, match=r"target macos-arm64-py311: wheels not in .*torch-2.13.0-x.whl"):
        kit.write_manifest(k, {MAC: ["torch-2.13.0-x.whl"]})


def test_a_corrupted_file_fails_verification(tmp_path):
    k = fake_kit(tmp_path)
    wheel = k / "wheels" / "demo_pkg-1.0-py3-none-any.whl"
    data = bytearray(wheel.read_bytes())
    data[100] ^= 0xFF  # same size, one byte changed
    wheel.write_bytes(bytes(data))
    assert kit.verify(k) == ["wheels/demo_pkg-1.0-py3-none-any.whl: its sha256 differs from the manifest's (damaged copy)"]
    (k / "lab" / "requirements.txt").write_text("demo")  # cut short
    assert any("lab/requirements.txt: 4 bytes, the manifest says 9" in p for p in kit.verify(k))
    assert kit.main(["verify", "--kit", str(k)]) == 1


def test_a_missing_wheel_is_named_with_the_target_that_needs_it(tmp_path):
    k = fake_kit(tmp_path)
    (k / "wheels" / "other-2.0-cp311-cp311-manylinux_2_28_x86_64.whl").unlink()
    assert kit.verify(k, LINUX) == [
        "wheels/other-2.0-cp311-cp311-manylinux_2_28_x86_64.whl: missing (a wheel linux-x86_64-py311 needs)"]
    assert kit.verify(k, MAC) == []  # the Mac does not need it
    assert "no wheels for linux-aarch64-py311; it was built for: linux-x86_64-py311, macos-arm64-py311" in \
        kit.verify(k, "linux-aarch64-py311")[0]


def test_install_stops_before_touching_anything_when_the_kit_is_damaged(tmp_path):
    k = fake_kit(tmp_path)
    (k / "wheels" / "demo_pkg-1.0-py3-none-any.whl").unlink()
    dest = tmp_path / "lab"
    with pytest.raises(kit.KitError, match=r"demo_pkg-1.0-py3-none-any.whl: missing \(a wheel linux-x86_64-py311"):
        kit.install(k, dest, target=LINUX)
    assert not dest.exists()


def test_every_install_command_is_offline(tmp_path):
    cmds = kit.install_commands("/v/bin/python", "/k", "/lab", LINUX)
    assert len(cmds) == 3
    for c in cmds:
        assert c[:4] == ["/v/bin/python", "-m", "pip", "install"]
        assert "--no-index" in c and c[c.index("--find-links") + 1] == "/k/wheels"
        assert not any("index-url" in a for a in c)
    assert cmds[0][-4:] == ["-r", "/lab/requirements.txt", "-c", f"/k/locks/{LINUX}.txt"]
    assert cmds[1][-3:] == ["--no-deps", *kit.NO_DEPS]
    assert cmds[2][-3:] == ["--no-deps", "-e", "/lab"]


def test_pip_env_sets_the_laptops_pip_settings_aside():
    env = kit.pip_env({"PATH": "/bin", "PIP_INDEX_URL": "https://x", "PIP_FIND_LINKS": "/opt/w",
                       "https_proxy": "http://proxy:3128"})
    assert env["PATH"] == "/bin" and "PIP_INDEX_URL" not in env and "PIP_FIND_LINKS" not in env
    assert env["PIP_CONFIG_FILE"] == kit.os.devnull and env["https_proxy"] == "http://127.0.0.1:9"


def test_offline_pip_installs_from_the_folder_and_nothing_else(tmp_path):
    """The real pip, with the kit's environment and --no-index: a wheel in the folder installs; a
    version that is not there fails (it is not looked for anywhere else)."""
    k = fake_kit(tmp_path)
    base = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--find-links", str(k / "wheels"),
            "--target", str(tmp_path / "site")]
    ok = subprocess.run(base + ["demo-pkg==1.0"], env=kit.pip_env(), capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "site" / "demo_pkg.py").read_text() == "VERSION = '1.0'\n"
    missing = subprocess.run(base + ["demo-pkg==2.0"], env=kit.pip_env(), capture_output=True, text=True)
    assert missing.returncode != 0 and "No matching distribution found for demo-pkg==2.0" in missing.stderr


def test_wheel_names_make_exact_pins():
    assert kit.wheel_name_version("torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl") == ("torch", "2.13.0+cpu")
    assert kit.wheel_name_version("Jupyter_Core-5.9.1-py3-none-any.whl") == ("jupyter-core", "5.9.1")
    assert kit.lock_lines(["a_b-1.0-py3-none-any.whl", "torch-2.13.0+cpu-cp311-cp311-linux_x86_64.whl"]) == \
        ["a-b==1.0", "torch==2.13.0+cpu"]


def test_macos_only_dependencies_are_found_from_the_wheels_markers(tmp_path):
    make_wheel(tmp_path, "ipykernel", "7.0", requires=['appnope>=0.1.2; platform_system == "Darwin"',
                                                       'cuda-bindings; platform_system == "Linux"',
                                                       'pytest; extra == "test"', "comm>=0.1"])
    make_wheel(tmp_path, "torch", "2.13.0", requires=['nvidia-cublas; sys_platform == "linux"',
                                                      'comm; python_version < "3.12"'])
    make_wheel(tmp_path, "comm", "0.2")
    wheels = sorted(tmp_path.glob("*.whl"))
    assert kit.missing_for_markers(wheels, kit.TARGETS[MAC]) == ["appnope>=0.1.2"]
    assert kit.missing_for_markers(wheels, kit.TARGETS[LINUX]) == ["cuda-bindings", "nvidia-cublas"]


def test_the_lab_copy_leaves_out_environments_and_outputs(tmp_path):
    for name in ["notebooks/00.ipynb", "labkit/kit.py", ".venv/bin/python", "outputs/x.json",
                 "labkit/__pycache__/kit.cpython-311.pyc", "data/a.jsonl"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    assert kit.lab_files(tmp_path) == ["data/a.jsonl", "labkit/kit.py", "notebooks/00.ipynb"]


def test_the_installer_runs_on_a_bare_python():
    """kit.py is copied into the kit and run before anything is installed: standard library only
    (-S: no site-packages; -I: not even this folder on the path)."""
    r = subprocess.run([sys.executable, "-I", "-S", str(ROOT / "labkit" / "kit.py"), "install", "--help"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "--dest" in r.stdout and "--kit" in r.stdout


def test_macos_targets_assume_a_python_release_that_current_packages_accept():
    """pip's --python-version 3.11 means 3.11.0, which soupsieve 4.1 (Requires-Python >=3.11.5)
    refuses: the build found no macOS wheel for it until the targets named a full release."""
    from packaging.markers import Marker

    for name in (MAC, "macos-arm64-py312"):
        t = kit.TARGETS[name]
        assert t.python_full.startswith(t.python + ".")
        assert Marker('python_full_version >= "3.11.5"').evaluate(kit._marker_env(t))
