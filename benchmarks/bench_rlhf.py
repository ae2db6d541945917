"""DPO and GRPO on the CPU: TRL's fused, chunked LM head against labkit's full-logits head,
side by side in one run, at notebook 06's sizes for the profile.

    .venv/bin/python benchmarks/bench_rlhf.py [--profile cpu] [--rounds 2]

Same model (packaged SmolLM2-135M-Instruct), data (data/preferences.jsonl), LoRA config and seed.
Runs alternate (A, B, A, B) so that a noisy machine affects both alike; the first step of every run
is excluded (one-time set-up). Also times the head alone (forward and backward) at a DPO step's shape.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, table, write_section  # noqa: E402

import labkit  # noqa: E402
from labkit import rlhf  # noqa: E402
from labkit.data import read_jsonl  # noqa: E402
from labkit.training import full_logits_log_probs  # noqa: E402

TRL, LAB = "TRL's chunked LM head", "full logits (labkit's default on the CPU)"


def stage(name: str, cfg, head: str):
    """Train one stage (``dpo`` or ``grpo``) from a fresh model; returns its logged rows."""
    pairs = [p for p in read_jsonl("preferences.jsonl", "preference") if p["split"] == "train"]
    original = rlhf.guarded
    if head == TRL:
        rlhf.guarded = lambda cls, **kw: original(cls)
    try:
        model, tok = labkit.load_model()
        if name == "dpo":
            return rlhf.train_dpo(model, tok, pairs, cfg, live=False).rows
        reward_model, reward_tok = rlhf.load_reward_model(seed=cfg.seed)
        return rlhf.optimise_policy(model, tok, reward_model, [p["prompt"] for p in pairs], cfg, live=False,
                                    reward_tok=reward_tok).rows
    finally:
        rlhf.guarded = original


def seconds_per_step(rows) -> float:
    return (rows[-1]["elapsed_s"] - rows[0]["elapsed_s"]) / (len(rows) - 1)


def head_alone(tokens: int, repeats: int = 3) -> dict:
    """Forward + backward of the LM head for ``tokens`` positions, in bf16 autocast as in training."""
    from trl.kernels import ChunkedLogProbFunction

    model, _ = labkit.load_model()
    weight = model.get_output_embeddings().weight.detach()
    outputs = ("log_probs", "entropy", "mean_logits", "is_top1")   # what DPOTrainer asks for
    heads = {TRL: lambda h, t: ChunkedLogProbFunction.apply(h, weight, None, t, 1.0, 32768, None, 1.0, outputs),
             LAB: lambda h, t: full_logits_log_probs(h, weight, None, t, 1.0, outputs=outputs)}
    times = {name: [] for name in heads}
    for _ in range(repeats):
        for name, head in heads.items():
            hidden = torch.randn(tokens, weight.shape[1], requires_grad=True)
            targets = torch.randint(0, weight.shape[0], (tokens,))
            start = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                log_probs, entropy, *_ = head(hidden, targets)
            (log_probs.sum() + entropy.sum()).backward()
            times[name].append(time.perf_counter() - start)
    return {name: min(ts) for name, ts in times.items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=4, help="steps per run (the first is excluded)")
    args = ap.parse_args()
    P = labkit.profile(args.profile)
    cfg = rlhf.RLHFConfig.for_profile(P, dpo_steps=args.steps, policy_steps=args.steps)
    runs = {(s, h): [] for s in ("dpo", "grpo") for h in (TRL, LAB)}
    for r in range(args.rounds):
        for (name, head) in runs:
            rows = stage(name, cfg, head)
            runs[name, head].append(rows)
            print(f"round {r + 1} {name} / {head}: {seconds_per_step(rows):.2f} s/step", flush=True)

    rows = []
    for name in ("dpo", "grpo"):
        trl_s = statistics.mean(seconds_per_step(x) for x in runs[name, TRL])
        lab_s = statistics.mean(seconds_per_step(x) for x in runs[name, LAB])
        a, b = runs[name, TRL][0], runs[name, LAB][0]
        keys = [k for k in a[0] if k not in ("elapsed_s", "step_time", "epoch", "step") and k in b[0]]
        drift = max(abs(x[k] - y[k]) / max(abs(x[k]), 1e-8) for x, y in zip(a, b) for k in keys if k == "loss")
        rows.append({"stage": name.upper(), f"{TRL} s/step": trl_s, f"{LAB} s/step": lab_s,
                     "speed-up": trl_s / lab_s, "largest loss difference, same seed (%)": 100 * drift})
    tokens = 2 * cfg.dpo_batch_size * (cfg.dpo_max_length - 1)
    head = head_alone(tokens)
    body = f"""Measured {machine()}.
`benchmarks/bench_rlhf.py`, profile `{P.name}` (notebook 06's sizes: DPO {cfg.dpo_batch_size} pairs x up to
{cfg.dpo_max_length} tokens; GRPO {cfg.prompts_per_step} prompts x {cfg.num_generations} completions of up to
{cfg.max_completion_length} tokens), {args.steps} steps per run (first excluded), {args.rounds} alternating rounds,
mixed precision `{cfg.mixed_precision}`.

{table(rows)}

The head alone, forward and backward for {tokens} positions (a DPO step's shape), bf16 autocast, best of 3:
{TRL} {head[TRL]:.2f} s, full logits {head[LAB]:.2f} s ({head[TRL] / head[LAB]:.1f}x).
The losses differ slightly because bf16 rounds the two heads' matmuls differently; in float32 they match to
1e-4 (`tests/test_rlhf.py::test_full_logits_on_cpu_match_trls_chunked_head`)."""
    print(body)
    write_section("DPO and GRPO on the CPU", body)


if __name__ == "__main__":
    main()
