"""Gradient checkpointing on the CPU: what it costs in time and saves in memory, side by side.

    .venv/bin/python benchmarks/bench_checkpointing.py [--steps 5] [--rounds 2]

TRL turns gradient checkpointing on by default: the forward pass keeps only each block's input
and the backward pass recomputes the rest, trading time for memory. A 135M model in the `cpu`
profile's batches (4 x 128 tokens) needs little memory for activations, so the question is
what the recomputation costs here. Same model, data (data/instructions.jsonl), batch, length,
seed and steps for every run; the first step of each run is left out (set-up); runs alternate
(on, off, on, off, ...) so that a noisy machine affects both alike. Losses are compared step by
step: checkpointing recomputes the same numbers, so they should agree.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_training import StepTimer, matmul_peak  # noqa: E402
from common import machine, table, write_section  # noqa: E402

import torch  # noqa: E402

import labkit  # noqa: E402


def run(method: str, checkpointing: bool, data, steps: int, batch: int, max_length: int):
    model, tok = labkit.load_model()
    timer = StepTimer()
    lr = 5e-5 if method == "full" else 2e-4
    result = labkit.train(model, tok, data, method=method, steps=steps, batch_size=batch, max_length=max_length,
                          learning_rate=lr, seed=0, gradient_checkpointing=checkpointing, callbacks=[timer],
                          live=False)
    return timer.steady()[1], result.history.peak_memory_mb, result.history.losses


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md as it is")
    args = ap.parse_args()
    data = [r for r in labkit.read_jsonl("instructions.jsonl", "messages") if r["split"] == "train"]
    profile = labkit.profile()
    rows = []
    for method in ("lora", "full"):
        secs, peaks, losses = {True: [], False: []}, {}, {}
        for _ in range(args.rounds):
            for ckpt in (True, False):
                s, peak, ls = run(method, ckpt, data, args.steps, args.batch, args.max_length)
                secs[ckpt].append(s)
                peaks[ckpt], losses[ckpt] = peak, ls
                print(f"{method} checkpointing={ckpt}: {s:.2f} s/step, peak {peak:.0f} MiB", flush=True)
        diff = max(abs(a - b) / abs(b) for a, b in zip(losses[True], losses[False]))
        on, off = statistics.median(secs[True]), statistics.median(secs[False])
        rows.append({"method": method, "s/step, checkpointing on": on, "s/step, off": off,
                     "off / on (time)": off / on, "peak MiB, on": peaks[True], "peak MiB, off": peaks[False],
                     "largest loss difference (%)": 100 * diff})
    body = f"""Measured {machine()}; profile `{profile.name}` (training precision: {profile.mixed_precision}).
`benchmarks/bench_checkpointing.py`: labkit.train on data/instructions.jsonl, batch {args.batch} x {args.max_length}
tokens, {args.steps} steps per run (the first left out), {args.rounds} alternating rounds, median s/step.
float32 matmul peak in the same run (2048x2048): {matmul_peak(torch.float32) / 1e9:.0f} GFLOP/s.

{table(rows)}
"""
    print(body)
    if not args.no_write:
        write_section("Gradient checkpointing on the CPU", body)


if __name__ == "__main__":
    main()
