"""Kernels side by side: 1, 2 and 4 processes training at once on this machine, with torch's
default threads (every process takes every core) and with labkit's sizing (``labkit.threads``:
each process its share), against the ideal slowdown of 1x, 2x and 4x; and the peak memory of one
kernel training at each profile's batch size.

    .venv/bin/python benchmarks/bench_kernels.py [--steps 4] [--kernels 1,2,4] [--no-write]

Run it on an otherwise idle machine (nothing else training or testing): each run's slowdown is
measured against this script's own single kernel. Each kernel is a fresh process that loads the
packaged SmolLM2-135M-Instruct with LoRA (r=8, all linear layers; bf16 autocast where the CPU has
it, as labkit.train), waits until every kernel of its run has loaded, then times ``--steps``
training steps (forward, backward, AdamW) on a fixed batch, after one untimed step. The workers get
no ``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` (torch's defaults), and a lab-kernel folder of their
own, so a run counts its own kernels only. ``--model toy`` does the same on labkit's toy model in
seconds (the test of this script).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, table, write_section  # noqa: E402

SECTION = "Kernels side by side"
MODES = {"torch default": "default", "labkit sizing": "labkit"}
PEAK_PROFILES = ("smoke", "cpu")
MODEL_NAMES = {"real": "the packaged SmolLM2-135M-Instruct", "toy": "labkit's toy model"}
CLEAN_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "LABKIT_THREADS", "LABKIT_KERNELS_DIR")


# ---- one kernel (a worker process) -----------------------------------------------------------

def build(model_name: str, batch: int, length: int):
    """A LoRA model and a fixed batch of token ids; and a function doing one training step."""
    import torch
    from peft import LoraConfig, get_peft_model

    from labkit.profiles import cpu_has_fast_bf16

    if model_name == "toy":
        from labkit.toy import toy_model
        model, tok = toy_model()
    else:
        from labkit import load_model
        model, tok = load_model()
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear",
                                             task_type="CAUSAL_LM"))
    model.train()
    ids = torch.randint(0, len(tok), (batch, length), generator=torch.Generator().manual_seed(0))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    bf16 = cpu_has_fast_bf16()

    def step() -> float:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    return step


def wait_for_all(barrier: Path, kernels: int, timeout: float = 900.0, stage: str = "ready") -> None:
    """Say this kernel has reached ``stage``, then wait until every kernel of the run has."""
    (barrier / f"{stage}-{os.getpid()}").write_text("")
    deadline = time.monotonic() + timeout
    while len(list(barrier.glob(f"{stage}-*"))) < kernels:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(list(barrier.glob(f'{stage}-*')))} of {kernels} kernels reached {stage}")
        time.sleep(0.05)


def worker(args) -> dict:
    import resource

    import torch

    from labkit import threads

    default = threads._default or torch.get_num_threads()   # torch's own count (before labkit's sizing)
    if args.worker == "labkit":
        threads.size_threads()   # registers this kernel, as importing labkit does
    step = build(args.model, args.batch, args.length)
    wait_for_all(Path(args.barrier), args.kernels)
    choice = threads.size_threads() if args.worker == "labkit" else None   # every kernel now counted
    # and no kernel steps (and, on a quick model, ends and leaves the count) before all have counted
    wait_for_all(Path(args.barrier), args.kernels, stage="counted")
    step()   # untimed: one-time set-up
    seconds = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - start)
    return {"mode": args.worker, "kernels": args.kernels, "threads": torch.get_num_threads(), "torch_default": default,
            "kernels_seen": choice.kernels if choice else None, "step_s": seconds,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


# ---- runs ------------------------------------------------------------------------------------

def worker_env(mode: str, kernels_dir: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in CLEAN_ENV}
    env["LABKIT_KERNELS_DIR"] = kernels_dir
    if mode == "default":
        env["LABKIT_THREADS"] = "all"   # labkit leaves torch's default threads (every core)
    return env


def side_by_side(kernels: int, mode: str, steps: int, model: str = "real", batch: int = 4,
                 length: int = 64, timeout: float = 900.0) -> list[dict]:
    """Start ``kernels`` workers at once in ``mode`` ("default" or "labkit"); their results."""
    with tempfile.TemporaryDirectory(prefix="bench-kernels-") as tmp:
        barrier, registry = Path(tmp, "barrier"), Path(tmp, "kernels")
        barrier.mkdir()
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", mode, "--kernels", str(kernels),
               "--steps", str(steps), "--model", model, "--batch", str(batch), "--length", str(length),
               "--barrier", str(barrier)]
        procs = [subprocess.Popen(cmd, env=worker_env(mode, str(registry)), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(kernels)]
        results = []
        try:
            for p in procs:
                out, err = p.communicate(timeout=timeout)
                if p.returncode != 0:
                    raise RuntimeError(f"a {mode} kernel of {kernels} failed:\n{err[-3000:]}")
                results.append(json.loads(out.strip().splitlines()[-1]))
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        return results


def summarize(runs: dict[tuple[str, int], list[dict]]) -> list[dict]:
    """One row per (mode, kernels): each kernel's median step time, their mean, and the slowdown
    against the same mode's single kernel (ideal: as many times as there are kernels)."""
    rows = []
    for (mode, kernels), results in runs.items():
        per_kernel = [statistics.median(r["step_s"]) for r in results]
        alone = runs.get((mode, 1))
        base = statistics.mean(statistics.median(r["step_s"]) for r in alone) if alone else None
        mean = statistics.mean(per_kernel)
        slowdown = mean / base if base else float("nan")
        label = next(name for name, m in MODES.items() if m == mode)
        rows.append({"threads": label, "kernels": kernels,
                     "torch threads each": "/".join(str(t) for t in sorted({r["threads"] for r in results})),
                     "s/step (mean of kernels)": mean, "slowest kernel s/step": max(per_kernel),
                     "slowdown vs 1 kernel": slowdown, "ideal": f"{kernels}x",
                     "slowdown / ideal": slowdown / kernels,
                     "peak RSS MiB per kernel": max(r["peak_rss_mib"] for r in results)})
    return rows


def profile_peaks(steps: int, model: str = "real") -> list[dict]:
    """Peak memory of one kernel alone training at each profile's batch size and length."""
    from labkit.profiles import profile

    rows = []
    for name in PEAK_PROFILES:
        p = profile(name)
        (r,) = side_by_side(1, "labkit", steps, model, p.batch_size, p.max_length)
        rows.append({"profile": name, "batch x tokens": f"{p.batch_size} x {p.max_length}",
                     "s/step": statistics.median(r["step_s"]), "peak RSS MiB": r["peak_rss_mib"],
                     "peak RSS GiB": r["peak_rss_mib"] / 1024})
    return rows


def report(rows: list[dict], peaks: list[dict], args) -> str:
    worst = {m: max((r["slowdown / ideal"] for r in rows if r["threads"] == label and r["kernels"] > 1),
                    default=None) for label, m in MODES.items()}
    lines = [f"Measured {machine()}; `benchmarks/bench_kernels.py --steps {args.steps}`.",
             f"Each kernel a fresh process: {MODEL_NAMES[args.model]}, LoRA r=8 on all "
             f"linear layers, batch {args.batch} x {args.length} tokens, {args.steps} timed steps after one "
             "untimed, all kernels of a run starting their steps together. *torch default*: no "
             "OMP_NUM_THREADS, `LABKIT_THREADS=all` (every process takes every core); *labkit sizing*: "
             "`labkit.threads.size_threads()` (usable CPUs // lab kernels). Slowdown is against the same "
             "row's single kernel; the ideal on a shared machine is one x per kernel.", "", table(rows), ""]
    for label, m in MODES.items():
        if worst[m] is not None:
            lines.append(f"- {label}: worst slowdown {worst[m]:.2f}x the ideal.")
    if peaks:
        lines += ["", "Peak memory of one kernel training alone at each profile's batch (the same step loop; a "
                  "notebook holding several models at once peaks higher):", "", table(peaks), "",
                  "`labkit.threads.capacity(cores, mem_gib, peak_gib_per_kernel)` turns these into learners "
                  "per server."]
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--kernels", default="1,2,4", help="comma-separated numbers of kernels side by side")
    ap.add_argument("--model", choices=("real", "toy"), default="real")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--length", type=int, default=64)
    ap.add_argument("--no-peaks", action="store_true", help="skip the per-profile peak memory")
    ap.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    ap.add_argument("--worker", choices=tuple(MODES.values()), help=argparse.SUPPRESS)
    ap.add_argument("--barrier", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        args.kernels = int(args.kernels)
        print(json.dumps(worker(args)))
        return None
    counts = [int(k) for k in args.kernels.split(",")]
    if 1 not in counts:
        ap.error("--kernels must include 1 (the baseline)")
    runs = {}
    for kernels in counts:
        for mode in MODES.values():   # alternate, so that a drift in the machine hits both alike
            runs[(mode, kernels)] = side_by_side(kernels, mode, args.steps, args.model, args.batch, args.length)
            print(f"{mode}, {kernels} kernel(s): {[round(statistics.median(r['step_s']), 3) for r in runs[(mode, kernels)]]} s/step",
                  flush=True)
    runs = dict(sorted(runs.items()))
    rows = summarize(runs)
    peaks = [] if args.no_peaks else profile_peaks(max(2, min(args.steps, 3)), args.model)
    body = report(rows, peaks, args)
    print(body)
    if not args.no_write:
        write_section(SECTION, body)
    return rows, peaks


if __name__ == "__main__":
    main()
