"""Training throughput: labkit.train against a hand-written TRL script, side by side in one run;
achieved FLOP/s against this machine's matmul peak (measured in the same run); and a profile of
where one training step's time goes.

    .venv/bin/python benchmarks/bench_training.py [--steps 6] [--rounds 2]

Same model (packaged SmolLM2-135M-Instruct), data (data/domains/medical.jsonl), LoRA config (r=8,
alpha=16, all linear layers), batch, sequence length and steps. The first step of every run is
excluded (it includes one-time set-up). Runs alternate (A, B, C, ..., A, B, C, ...) so that a
noisy machine affects all of them alike.

Runs:
- plain TRL, fp32 (its default) and with bf16 autocast: what a learner writes from TRL's docs;
- labkit.train with TRL's fused LM head, and with deterministic mode's NaN-filling of new tensors
  (labkit before each change), to record before and after;
- labkit.train with its defaults, and with ``packing=True``.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
from transformers import TrainerCallback

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, table, write_section  # noqa: E402

import labkit  # noqa: E402
import labkit.models  # noqa: E402
from labkit.memory import PeakMemory  # noqa: E402

PLAIN_FP32, PLAIN_BF16 = "plain TRL (fp32, its default)", "plain TRL (bf16 autocast)"
LAB_BEFORE, LAB, LAB_PACKED = ("labkit.train, TRL's fused LM head (ablation)", "labkit.train (defaults)",
                               "labkit.train (packing=True)")
LAB_FILL = "labkit.train, new tensors NaN-filled (ablation)"
LAB_BFD = "labkit.train, TRL's bfd packing (not used)"
LAB_F32SUMS = "labkit.train, adapter sums in float32 (as DPO/GRPO; not used)"


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
        """(tokens/s, s/step, tokens/step) over every step but the first."""
        secs = [e - s for s, e in zip(self.starts[1:], self.ends[1:])]
        return sum(self.tokens[1:]) / sum(secs), statistics.mean(secs), statistics.mean(self.tokens[1:])


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


def lab(data, steps, batch, max_length, callbacks=(), **settings):
    """labkit.train; ``settings`` are TrainConfig fields, among them the switches that ablate a
    speed-up: ``cpu_full_logits=False`` (TRL's own loss: labkit before the CPU change),
    ``fill_uninitialized_memory=True`` (deterministic mode's default: labkit before),
    ``packing=True, packing_strategy="bfd"`` (TRL's default packing), ``adapter_sums_fp32=True``
    (LoRA's output added in float32, as labkit's DPO and GRPO do)."""
    model, tok = labkit.load_model()
    timer = StepTimer()
    result = labkit.train(model, tok, data, method="lora", lora_r=8, lora_alpha=16, steps=steps,
                          batch_size=batch, max_length=max_length, learning_rate=2e-4,
                          callbacks=[timer, *callbacks], live=False, **settings)
    return timer, result.history.peak_memory_mb, result.history.losses


def precision(data, steps, batch, max_length) -> str:
    """labkit.train's per-step losses in float32, bf16 (its CPU default) and bf16 with the adapter
    sums in float32; same seed and batches, so the differences are the precision's alone."""
    runs = {"float32": dict(mixed_precision="no"), "bf16 (labkit's default)": dict(mixed_precision="bf16"),
            "bf16, adapter sums in float32": dict(mixed_precision="bf16", adapter_sums_fp32=True)}
    losses = {name: lab(data, steps, batch, max_length, **kw)[2] for name, kw in runs.items()}
    ref = losses["float32"]
    rows = [{"run": name, "loss per step": " ".join(f"{x:.4f}" for x in ls),
             "largest difference from float32 (%)": 100 * max(abs(x - y) / abs(y) for x, y in zip(ls, ref))}
            for name, ls in losses.items()]
    return f"""Measured {machine()}.
`benchmarks/bench_training.py --precision`: labkit.train, LoRA r=8, batch {batch} x {max_length}, {steps} steps,
same seed and batches. Tolerance for bf16 by default: 2%.

{table(rows)}"""


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


# --- where a step's time goes ---------------------------------------------------------------------

CATEGORIES = (  # (name, test on a profiler op name), first match wins
    ("matrix multiplies (linear layers, LM head, LoRA)", lambda n: n in {"aten::mm", "aten::addmm", "aten::bmm", "aten::addmm_"}),
    ("attention (scaled_dot_product)", lambda n: "scaled_dot_product" in n),
    ("softmax / cross-entropy over the vocabulary", lambda n: "softmax" in n or "nll_loss" in n or n == "aten::exp"),
    ("dtype casts and copies (autocast)", lambda n: n in {"aten::copy_", "aten::_to_copy", "aten::to"}),
    ("filling / zeroing buffers", lambda n: n in {"aten::fill_", "aten::zero_", "aten::zeros"}),
    ("element-wise (norms, activations, LoRA scaling, optimizer)", lambda n: n.startswith("aten::")),
)


class ProfileOneStep(TrainerCallback):
    """torch.profiler around one optimizer step; self CPU time per category and matmul FLOPs."""

    def __init__(self, step: int):
        self.step, self.prof, self.wall = step, None, None

    def on_step_begin(self, args, state, control, **kw):
        if state.global_step == self.step:
            from torch.profiler import ProfilerActivity, profile

            self.prof = profile(activities=[ProfilerActivity.CPU], with_flops=True)
            self.prof.__enter__()
            self._t0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):
        if self.prof is not None and self.wall is None:
            self.wall = time.perf_counter() - self._t0
            self.prof.__exit__(None, None, None)

    def breakdown(self):
        seconds, mm_flops = defaultdict(float), 0.0
        for evt in self.prof.key_averages():
            if not evt.key.startswith("aten::"):
                continue
            name = next((c for c, test in CATEGORIES if test(evt.key)), None)
            if name is not None:
                seconds[name] += evt.self_cpu_time_total / 1e6
            if name == CATEGORIES[0][0]:
                mm_flops += evt.flops or 0
        return self.wall, dict(seconds), mm_flops


def step_profile(data, batch, max_length, peak_bf16, peak_fp32):
    prof = ProfileOneStep(step=2)
    lab(data, 3, batch, max_length, callbacks=[prof])
    wall, seconds, mm_flops = prof.breakdown()
    mm_time = seconds[CATEGORIES[0][0]]
    peak = peak_bf16 if labkit.profile().mixed_precision == "bf16" else peak_fp32
    rows = [{"where": name, "seconds": seconds.get(name, 0.0), "share of the step": f"{100 * seconds.get(name, 0.0) / wall:.0f}%"}
            for name, _ in CATEGORIES]
    rows.append({"where": "outside torch ops (Python, autograd, trainer)", "seconds": wall - sum(seconds.values()),
                 "share of the step": f"{100 * (wall - sum(seconds.values())) / wall:.0f}%"})
    return wall, rows, mm_flops / mm_time / 1e9, 100 * mm_flops / mm_time / peak


def compile_probe(batch, max_length, peak, steps=4):
    """torch.compile on the LoRA model, forward + backward on one fixed-shape batch (packed rows,
    so the shape never changes): compile time, then steady step time against eager mode."""
    from peft import LoraConfig, get_peft_model

    model, _ = labkit.load_model()
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM"))
    model.train()
    ids = torch.randint(0, model.config.vocab_size, (batch, max_length), generator=torch.Generator().manual_seed(0))

    def step(m):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=labkit.profile().mixed_precision == "bf16"):
            loss = m(input_ids=ids, labels=ids).loss
        loss.backward()

    out = {}
    for name, m in (("eager", model), ("compiled", torch.compile(model))):
        times = [_timed(lambda: step(m)) for _ in range(steps + 1)]
        out[name] = (times[0], statistics.median(times[1:]))
    flops = train_flops_per_token(model, lora=True, seq_len=max_length) * batch * max_length
    eager, compiled = out["eager"][1], out["compiled"][1]
    saved = eager - compiled
    payback = (f"Compiling pays for itself after {out['compiled'][0] / saved:.0f} steps ({saved:.2f} s saved per step), "
               if saved > 0 else "Compiling saved nothing per step, ")
    return f"""Measured {machine()}; `bench_training.py --compile`.
Forward and backward of the LoRA model (no optimizer) on one fixed batch of {batch} x {max_length} tokens,
median of {steps} steps after the first.

| mode | first step (s) | step (s) | % of matmul peak |
|---|---|---|---|
| eager (what labkit runs) | {out["eager"][0]:.1f} | {eager:.2f} | {100 * flops / eager / peak:.0f} |
| torch.compile | {out["compiled"][0]:.1f} | {compiled:.2f} | {100 * flops / compiled / peak:.0f} |

{payback}and a new batch shape compiles again (unpacked batches change shape every step).
A lesson's run is 3 to 30 steps, so labkit does not compile by default."""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--compile", action="store_true", help="only measure torch.compile against eager mode")
    ap.add_argument("--precision", action="store_true",
                    help="only measure labkit.train's loss in bf16 (with and without float32 adapter sums) against float32")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=128)
    args = ap.parse_args()
    mixed = labkit.profile().mixed_precision
    if args.compile:
        body = compile_probe(args.batch, args.max_length, matmul_peak(torch.bfloat16 if mixed == "bf16" else torch.float32))
        print(body)
        write_section("torch.compile", body)
        return
    data = labkit.load_jsonl("domains/medical.jsonl", "text")
    if args.precision:
        body = precision(data, args.steps, args.batch, args.max_length)
        print(body)
        write_section("Loss in bf16 against float32", body)
        return
    print("mixed precision chosen by labkit's profile:", mixed)
    plan = {PLAIN_FP32: lambda: plain_trl(data, args.steps, args.batch, args.max_length, bf16=False),
            PLAIN_BF16: lambda: plain_trl(data, args.steps, args.batch, args.max_length, bf16=True),
            LAB_BEFORE: lambda: lab(data, args.steps, args.batch, args.max_length, cpu_full_logits=False),
            LAB_FILL: lambda: lab(data, args.steps, args.batch, args.max_length, fill_uninitialized_memory=True),
            LAB: lambda: lab(data, args.steps, args.batch, args.max_length),
            LAB_PACKED: lambda: lab(data, args.steps, args.batch, args.max_length, packing=True),
            LAB_BFD: lambda: lab(data, args.steps, args.batch, args.max_length, packing=True, packing_strategy="bfd"),
            LAB_F32SUMS: lambda: lab(data, args.steps, args.batch, args.max_length, adapter_sums_fp32=True)}
    runs = {name: [] for name in plan}
    for r in range(args.rounds):
        for name, run in plan.items():
            timer, peak_mb, losses = run()
            tps, sps, tokens = timer.steady()
            runs[name].append((tps, sps, tokens, peak_mb, losses))
            print(f"round {r + 1} {name}: {tps:.0f} tokens/s, {sps:.2f} s/step, {tokens:.0f} tokens/step, "
                  f"peak {peak_mb:.0f} MiB", flush=True)

    peak32, peak16 = matmul_peak(torch.float32), matmul_peak(torch.bfloat16)
    model, _ = labkit.load_model()
    flops_tok = train_flops_per_token(model, lora=True, seq_len=args.max_length)
    mean = lambda name, i: statistics.mean(x[i] for x in runs[name])  # noqa: E731
    rows = []
    for name in runs:
        tps = mean(name, 0)
        bf16 = name == PLAIN_BF16 or (name.startswith("labkit") and mixed == "bf16")
        rows.append({"run": name, "tokens/s": tps, "s/step": mean(name, 1), "real tokens/step": mean(name, 2),
                     "peak MiB": mean(name, 3), "vs plain fp32": tps / mean(PLAIN_FP32, 0),
                     "vs plain bf16": tps / mean(PLAIN_BF16, 0), "GFLOP/s": tps * flops_tok / 1e9,
                     "% of matmul peak": 100 * tps * flops_tok / (peak16 if bf16 else peak32)})

    def drift(a, b):
        return 100 * max(abs(x - y) / abs(x) for x, y in zip(runs[a][0][4], runs[b][0][4]))

    wall, where, mm_gflops, mm_share = step_profile(data, args.batch, args.max_length, peak16, peak32)
    body = f"""Measured {machine()}.
LoRA r=8 on all linear layers, batch {args.batch} x {args.max_length} tokens, {args.steps} steps per run (first
excluded), {args.rounds} alternating rounds; `benchmarks/bench_training.py`. Tokens are real (non-padding) tokens.

{table(rows)}

Matmul peak measured in the same run (2048x2048): fp32 {peak32 / 1e9:.0f} GFLOP/s, bf16 {peak16 / 1e9:.0f} GFLOP/s.
FLOPs per token counted as in `train_flops_per_token` ({flops_tok / 1e9:.2f} GFLOP/token for LoRA training).
Largest relative difference in per-step loss, same seed and data: bf16 autocast against fp32
{drift(PLAIN_FP32, PLAIN_BF16):.2f}% (tolerance for using bf16 by default: 2%); labkit's CPU loss against TRL's
fused LM head {drift(LAB_BEFORE, LAB):.2f}%. For labkit.train against float32, see "Loss in bf16 against float32".

Where one step of `labkit.train` (defaults) goes, from `torch.profiler` (self time of each op;
the step took {wall:.2f} s with the profiler on):

{table(where)}

Inside the matrix multiplies the CPU reaches {mm_gflops:.0f} GFLOP/s, {mm_share:.0f}% of the matmul peak
for the dtype used."""
    print(body)
    write_section("Training throughput", body)


if __name__ == "__main__":
    main()
