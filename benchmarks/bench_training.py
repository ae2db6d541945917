"""Training throughput: labkit.train against a hand-written TRL script, side by side in one run,
and achieved FLOP/s against this machine's matmul peak (measured in the same run).

    .venv/bin/python benchmarks/bench_training.py [--steps 6] [--rounds 2]

Same model (packaged SmolLM2-135M-Instruct), data (data/domains/medical.jsonl), LoRA config (r=8,
alpha=16, all linear layers), batch, sequence length and steps. The first step of every run is
excluded (it includes one-time set-up). Runs alternate (A, B, C, A, B, C) so that a noisy machine
affects all of them alike.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import TrainerCallback

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, table, write_section  # noqa: E402

import labkit  # noqa: E402
from labkit.memory import PeakMemory  # noqa: E402


class StepTimer(TrainerCallback):
    def __init__(self):
        self.starts, self.ends, self.tokens = [], [], []

    def on_step_begin(self, args, state, control, **kw):
        self.starts.append(time.perf_counter())
        self._seen = state.num_input_tokens_seen

    def on_step_end(self, args, state, control, **kw):
        self.ends.append(time.perf_counter())
        self.tokens.append(state.num_input_tokens_seen - self._seen)

    def steady(self):
        """(tokens/s, s/step) over every step but the first."""
        secs = [e - s for s, e in zip(self.starts[1:], self.ends[1:])]
        return sum(self.tokens[1:]) / sum(secs), statistics.mean(secs)


def plain_trl(data, steps, batch, max_length, bf16):
    """What a learner would write from TRL's documentation."""
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    model, tok = labkit.load_model()
    timer = StepTimer()
    with tempfile.TemporaryDirectory() as out:
        args = SFTConfig(output_dir=out, max_steps=steps, per_device_train_batch_size=batch, learning_rate=2e-4,
                         max_length=max_length, logging_steps=1, save_strategy="no", report_to=[],
                         use_cpu=not torch.cuda.is_available(), bf16=bf16, disable_tqdm=True, seed=0,
                         include_num_input_tokens_seen="non_padding")
        trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tok,
                             peft_config=LoraConfig(r=8, lora_alpha=16, target_modules="all-linear",
                                                    task_type="CAUSAL_LM"), callbacks=[timer])
        with PeakMemory() as mem:
            trainer.train()
    losses = [l["loss"] for l in trainer.state.log_history if "loss" in l]
    return timer, mem.peak_mb, losses


def lab(data, steps, batch, max_length):
    model, tok = labkit.load_model()
    timer = StepTimer()
    result = labkit.train(model, tok, data, method="lora", lora_r=8, lora_alpha=16, steps=steps, batch_size=batch,
                          max_length=max_length, learning_rate=2e-4, callbacks=[timer], live=False)
    return timer, result.history.peak_memory_mb, result.history.losses


def matmul_peak(dtype, n=2048, repeats=5) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n**3 / best


def _timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def train_flops_per_token(model, lora: bool, seq_len: int) -> float:
    """Forward: 2 FLOPs per weight per token (every linear layer, the tied lm_head included) plus
    attention (QK^T and AV: 4 * layers * seq * hidden). LoRA's backward computes only input
    gradients (~1x forward); full fine-tuning also weight gradients (~2x forward)."""
    cfg = model.config
    forward = 2 * labkit.models.count_parameters(model) + 4 * cfg.num_hidden_layers * seq_len * cfg.hidden_size
    return forward * (2 if lora else 3)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=128)
    args = ap.parse_args()
    data = labkit.load_jsonl("domains/medical.jsonl", "text")
    print("mixed precision chosen by labkit's profile:", labkit.profile().mixed_precision)
    runs = {"plain TRL (fp32, its default)": [], "plain TRL (bf16 autocast)": [], "labkit.train (defaults)": []}
    for r in range(args.rounds):
        for name in runs:
            if name.startswith("labkit"):
                res = lab(data, args.steps, args.batch, args.max_length)
            else:
                res = plain_trl(data, args.steps, args.batch, args.max_length, bf16="bf16" in name)
            tps, sps = res[0].steady()
            runs[name].append((tps, sps, res[1], res[2]))
            print(f"round {r + 1} {name}: {tps:.0f} tokens/s, {sps:.2f} s/step, peak {res[1]:.0f} MiB")

    peak32, peak16 = matmul_peak(torch.float32), matmul_peak(torch.bfloat16)
    model, _ = labkit.load_model()
    flops_tok = train_flops_per_token(model, lora=True, seq_len=args.max_length)
    base = statistics.mean(x[0] for x in runs["plain TRL (fp32, its default)"])
    rows = []
    for name, rs in runs.items():
        tps = statistics.mean(x[0] for x in rs)
        peak = peak16 if ("bf16" in name or (name.startswith("labkit") and labkit.profile().mixed_precision == "bf16")) else peak32
        rows.append({"run": name, "tokens/s": tps, "s/step": statistics.mean(x[1] for x in rs),
                     "peak MiB": statistics.mean(x[2] for x in rs), "vs plain fp32": tps / base,
                     "GFLOP/s": tps * flops_tok / 1e9, "% of matmul peak": 100 * tps * flops_tok / peak})
    l32, l16 = runs["plain TRL (fp32, its default)"][0][3], runs["plain TRL (bf16 autocast)"][0][3]
    drift = max(abs(a - b) / a for a, b in zip(l32, l16))
    body = f"""Measured {machine()}.
LoRA r=8 on all linear layers, batch {args.batch} x {args.max_length} tokens, {args.steps} steps per run (first
excluded), {args.rounds} alternating rounds; `benchmarks/bench_training.py`.

{table(rows)}

Matmul peak measured in the same run (2048x2048): fp32 {peak32 / 1e9:.0f} GFLOP/s, bf16 {peak16 / 1e9:.0f} GFLOP/s.
FLOPs per token counted as in `train_flops_per_token` ({flops_tok / 1e9:.2f} GFLOP/token for LoRA training).
bf16 autocast against fp32, same seed and data: largest relative difference in per-step loss
{100 * drift:.2f}% (tolerance for using bf16 by default: 2%)."""
    print(body)
    write_section("Training throughput", body)


if __name__ == "__main__":
    main()
