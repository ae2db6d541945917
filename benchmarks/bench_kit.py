"""The offline classroom kit, end to end: build it, install the lab from it into a fresh folder and
virtual environment with pip's network off (--no-index, no pip configuration, proxies to a closed
port, HF_HUB_OFFLINE=1, an empty model cache), then execute notebook 00 and a training notebook
(03) in the smoke profile with that environment's own Python. Writes the section "Offline classroom
kit" of RESULTS.md: the kit's size per part and per target, the build and install times, the
targets covered and what lacks a wheel. Long (a few GB of downloads and an install): it runs
outside `make test`; tests/test_kit.py tests the machinery.

    .venv/bin/python benchmarks/bench_kit.py                     # build into /tmp/ftlab-kit, then install
    .venv/bin/python benchmarks/bench_kit.py --reuse-kit         # an existing kit: install and notebooks only
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
from common import machine, table, write_section  # noqa: E402

from labkit import kit  # noqa: E402

NOTEBOOKS = ["00_start_here.ipynb", "03_learning_rate.ipynb"]
RUN_NOTEBOOK = """
import sys, nbformat
from nbclient import NotebookClient
nb = nbformat.read(sys.argv[1], as_version=4)
NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": sys.argv[2]}}).execute()
errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.get("output_type") == "error"]
sys.exit(1 if errors else 0)
"""


def mb(n: int) -> str:
    return f"{n / 1e6:,.0f} MB"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kit", default="/tmp/ftlab-kit")
    ap.add_argument("--work", default="/tmp/ftlab-kit-install", help="emptied first: the lab, its .venv, the cache")
    ap.add_argument("--targets", default=",".join(kit.DEFAULT_TARGETS))
    ap.add_argument("--reuse-kit", action="store_true", help="use the kit already in --kit (no build)")
    ap.add_argument("--no-write", action="store_true", help="print the section, leave RESULTS.md alone")
    args = ap.parse_args(argv)
    kit_dir, work = Path(args.kit), Path(args.work)

    if not args.reuse_kit:
        kit.build(kit_dir, targets=[t for t in args.targets.split(",") if t])
    manifest = kit.read_manifest(kit_dir)
    build_s = manifest.get("build", {}).get("seconds")  # measured by build() itself, this run's or the reused kit's
    sizes = kit.kit_size(kit_dir)

    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    env = {**os.environ, "LABKIT_CACHE": str(work / "cache"), "HF_HUB_OFFLINE": "1",
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    # The installer as a laptop runs it: the kit's own kit.py, by the base python3 (not this venv's).
    base_python = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base_python, "-I", str(kit_dir / "kit.py"), "install", "--kit", str(kit_dir),
                    "--dest", str(work / "lab")], env=env, check=True)
    install_s = time.perf_counter() - t0
    load_after = os.getloadavg()[0]
    venv_bytes = sum(p.stat().st_size for p in (work / "lab" / ".venv").rglob("*") if p.is_file())

    nb_rows = []
    python = work / "lab" / ".venv" / "bin" / "python"
    nb_env = {**kit.pip_env(env), "LABKIT_PROFILE": "smoke", "LABKIT_OUTPUTS": str(work / "outputs")}
    for name in NOTEBOOKS:
        t0 = time.perf_counter()
        r = subprocess.run([python, "-c", RUN_NOTEBOOK, str(work / "lab" / "notebooks" / name),
                            str(work / "lab" / "notebooks")], env=nb_env, capture_output=True, text=True)
        nb_rows.append({"notebook (smoke, installed venv)": name, "seconds": time.perf_counter() - t0,
                        "result": "ran, no errors" if r.returncode == 0 else "FAILED"})
        if r.returncode:
            print(r.stdout[-3000:], r.stderr[-3000:])

    parts = [{"part": p, "size": mb(n)} for p, n in sorted(sizes.items()) if p != "total"]
    parts.append({"part": "**total**", "size": mb(sizes["total"])})
    targets = [{"target": n, "wheels": len(t["wheels"]),
                "wheel bytes": mb(sum(manifest["files"][f"wheels/{w}"]["size"] for w in t["wheels"])),
                "no wheel for": ", ".join(manifest.get("lacking", {}).get(n, [])) or "none"}
               for n, t in manifest["targets"].items()]
    ok = all(r["result"] == "ran, no errors" for r in nb_rows)
    body = f"""Measured {machine()}.
The kit's machinery is `labkit/kit.py` (`make kit`, `make install-offline`); this section is written by `benchmarks/bench_kit.py`.

The kit: {f'built in {build_s:.0f} s (downloads included)' if build_s is not None else 'build time not recorded'}{' (a kit built earlier, reused)' if args.reuse_kit else ''},
{mb(sizes['total'])} in all. Installed from it on this machine ({kit.current_target()}) into a fresh folder
and virtual environment, pip with `--no-index`, no pip configuration, its proxies pointed at a closed
port, and an empty model cache: **{install_s:.0f} s**, the checksums, the venv, pip, the model copy and
one offline `labkit.load_model()` included (1-minute load average {load_before:.1f} before, {load_after:.1f} after,
on {os.cpu_count()} cores); the new `.venv` holds {mb(venv_bytes)}.
Then notebooks 00 and 03 ran in that environment in the smoke profile: {'both without an error' if ok else 'NOT ALL RAN'}.

{table(parts)}

{table(targets)}

{table(nb_rows)}

macOS targets are downloaded here with pip's `--platform {kit.MACOS_PLATFORM}` (macOS 14 or later,
Apple silicon); they are not installed on a Mac in this run. Wheel sizes shared by several targets
(pure-Python wheels) count for each.
"""
    print(body)
    if not args.no_write:
        write_section("Offline classroom kit", body)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
