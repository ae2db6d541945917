"""Wall time of every notebook, executed top to bottom as a learner would, per profile.

    .venv/bin/python benchmarks/bench_notebooks.py --profiles smoke cpu [--only 01 02]

Goal: every notebook at most 5 minutes in the cpu profile on a 2-core laptop.

The notebooks' claims ledgers (``labkit.claims``) are collected in a folder of their own, one per
profile, and the last profile's ledger is written into ``benchmarks/RESULTS.md`` as "Claims
ledger (<profile>)": every lesson's claims, what this run measured, and the verdicts.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, table, write_section  # noqa: E402


def machine_speed() -> float:
    """float32 matmul GFLOP/s now (best of 5 at 2048x2048): a shared machine's speed drifts over a
    day, so each notebook's time is printed beside the speed measured just before it."""
    import torch

    from bench_training import matmul_peak

    return matmul_peak(torch.float32) / 1e9


NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
GOAL_S = {"smoke": 60, "cpu": 300, "gpu": 300}


class TooLong(Exception):
    pass


def _alarm(signum, frame):
    raise TooLong


def run(path: Path, profile: str, limit_s: int, outputs: Path, save: Path | None = None) -> tuple[float, str]:
    os.environ["LABKIT_PROFILE"] = profile
    os.environ["LABKIT_OUTPUTS"] = str(outputs)   # the claims ledger of this profile
    nb = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(limit_s)
    try:
        NotebookClient(nb, timeout=limit_s, kernel_name="python3",
                       resources={"metadata": {"path": str(path.parent)}}).execute()
        status = "ok"
    except TooLong:
        status = f"stopped at the {limit_s} s limit"
    except Exception as e:  # record and go on: one failing notebook should not hide the others
        status = f"error: {type(e).__name__}"
    finally:
        signal.alarm(0)
    elapsed = time.perf_counter() - start
    if save is not None:   # for benchmarks/build_site.py --executed
        save.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, save / path.name)
    return elapsed, status


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--profiles", nargs="+", default=["smoke", "cpu"])
    ap.add_argument("--only", nargs="*", default=None, help="notebook number prefixes, e.g. 01 02")
    ap.add_argument("--limit-s", type=int, default=900, help="stop a notebook that runs longer than this")
    ap.add_argument("--save-executed", type=Path, default=None,
                    help="keep the last profile's executed notebooks and times.json here (build_site.py --executed)")
    args = ap.parse_args()
    paths = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    if args.only:
        paths = [p for p in paths if p.name[:2] in args.only]
    rows = []
    ledgers = {p: Path(tempfile.mkdtemp(prefix=f"labkit-claims-{p}-")) for p in args.profiles}
    times = {}
    for path in paths:
        row = {"notebook": path.stem}
        row["float32 matmul before (GFLOP/s)"] = round(machine_speed())
        for profile in args.profiles:
            save = args.save_executed if profile == args.profiles[-1] else None
            secs, status = run(path, profile, args.limit_s, ledgers[profile], save)
            if save is not None:
                times[path.stem] = round(secs, 1)
                (save / "times.json").write_text(json.dumps(times, indent=1))
            row[f"{profile} (s)"] = round(secs, 1)
            row[f"{profile} within goal"] = "yes" if secs <= GOAL_S[profile] and status == "ok" else f"NO ({status})"
            print(f"{path.stem} [{profile}]: {secs:.1f} s {status}", flush=True)
        rows.append(row)
    body = (f"Measured {machine()}.\nEach notebook executed with nbclient in a fresh kernel "
            f"(model cache warm). Goals: smoke <= {GOAL_S['smoke']} s, cpu <= {GOAL_S['cpu']} s. The machine's float32 "
            f"matmul speed was measured just before each notebook (the same work takes longer when it is lower).\n\n"
            f"{table(rows)}")
    print(body)
    write_section("Notebook wall time" + ("" if not args.only else f" ({' '.join(args.only)})"), body)
    from labkit import claims

    last = args.profiles[-1]
    ledger = (f"Measured {machine()}, profile `{last}`, by `benchmarks/bench_notebooks.py` (each notebook's last "
              "cell, `labkit.claims`; seed: the notebook's last `labkit.set_seed`, 'none' where it seeds nothing, "
              f"'?' where it ran before labkit recorded seeds).\n\n{claims.markdown(ledgers[last])}")
    print(ledger)
    write_section(f"Claims ledger ({last})" + ("" if not args.only else f" ({' '.join(args.only)})"), ledger)


if __name__ == "__main__":
    main()
