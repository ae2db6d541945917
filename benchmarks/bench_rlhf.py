"""DPO and GRPO on the CPU: what labkit changes in TRL's trainers, side by side in one run, at
notebook 06's sizes for the profile.

    .venv/bin/python benchmarks/bench_rlhf.py [--profile cpu] [--rounds 2]

Runs, each from a fresh model with the same data (data/preferences.jsonl), LoRA config and seed:
- labkit before this change: TRL's fused, chunked LM head, bf16 autocast, adapter sums in bf16;
- float32 throughout (no autocast): the reference for the loss;
- full-logits head, adapter sums in bf16 (ablation: the speed change alone);
- labkit's defaults: full-logits head, adapter sums in float32.
Runs alternate (A, B, C, D, A, ...) so that a noisy machine affects all alike; the first step of
every run is excluded (one-time set-up). Also times the head alone at a DPO step's shape.
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
from labkit.patches import full_logits_log_probs  # noqa: E402

TRL, LAB = "TRL's chunked LM head", "full logits (labkit's default on the CPU)"
BEFORE, FP32, SPEED_ONLY, DEFAULTS = ("labkit before (TRL's chunked head, bf16 sums)", "float32, no autocast",
                                      "full-logits head, bf16 sums (ablation)", "labkit defaults")
SWITCHES = {BEFORE: dict(cpu_full_logits=False, adapter_sums_fp32=False), FP32: dict(mixed_precision="no"),
            SPEED_ONLY: dict(adapter_sums_fp32=False), DEFAULTS: {}}   # RLHFConfig fields


def stage(name: str, cfg, run: str = DEFAULTS):
    """Train one stage (``dpo`` or ``grpo``) from a fresh model as ``run`` says; returns its rows."""
    pairs = [p for p in read_jsonl("preferences.jsonl", "preference") if p["split"] == "train"]
    cfg = rlhf.RLHFConfig(**{**cfg.to_dict(), **SWITCHES[run]}).validate()
    model, tok = labkit.load_model()
    if name == "dpo":
        return rlhf.train_dpo(model, tok, pairs, cfg, live=False).rows
    reward_model, reward_tok = rlhf.load_reward_model(seed=cfg.seed)
    return rlhf.optimise_policy(model, tok, reward_model, [p["prompt"] for p in pairs], cfg, live=False,
                                reward_tok=reward_tok).rows


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
    plan = [("dpo", BEFORE), ("dpo", FP32), ("dpo", SPEED_ONLY), ("dpo", DEFAULTS),
            ("grpo", BEFORE), ("grpo", FP32), ("grpo", DEFAULTS)]
    runs = {key: [] for key in plan}
    for r in range(args.rounds):
        for key in plan:
            rows = stage(key[0], cfg, key[1])
            runs[key].append(rows)
            print(f"round {r + 1} {key[0]} / {key[1]}: {seconds_per_step(rows):.2f} s/step, "
                  f"losses {[round(x['loss'], 4) for x in rows]}", flush=True)

    table_rows = []
    for name, run in plan:
        s_step = statistics.mean(seconds_per_step(x) for x in runs[name, run])
        before = statistics.mean(seconds_per_step(x) for x in runs[name, BEFORE])
        last, ref = runs[name, run][0][-1], runs[name, FP32][0][-1]   # same seed: every round is the same
        signal = "rewards/margins" if name == "dpo" else "reward"
        table_rows.append({"stage": name.upper(), "run": run, "s/step": s_step, "speed vs before": before / s_step,
                           f"loss at step {args.steps}": last["loss"],
                           f"DPO margin / GRPO reward at step {args.steps}": last[signal],
                           "its difference from float32 (%)": 100 * abs(last[signal] - ref[signal]) / abs(ref[signal])})
    tokens = 2 * cfg.dpo_batch_size * (cfg.dpo_max_length - 1)
    head = head_alone(tokens)
    body = f"""Measured {machine()}.
`benchmarks/bench_rlhf.py`, profile `{P.name}` (notebook 06's sizes: DPO {cfg.dpo_batch_size} pairs x up to
{cfg.dpo_max_length} tokens; GRPO {cfg.prompts_per_step} prompts x {cfg.num_generations} completions of up to
{cfg.max_completion_length} tokens), {args.steps} steps per run (first excluded from s/step), {args.rounds}
alternating rounds; mixed precision `{cfg.mixed_precision}` where not float32. DPO's reward margin is
beta x (the policy's log-ratio of chosen to rejected minus the reference's): how far DPO has moved. GRPO's
loss is near 0 by design (advantages are centred in each group), so its signal is the mean reward.

{table(table_rows)}

The head alone, forward and backward for {tokens} positions (a DPO step's shape), bf16 autocast, best of 3:
{TRL} {head[TRL]:.2f} s, full logits {head[LAB]:.2f} s ({head[TRL] / head[LAB]:.1f}x). In float32 the two heads
give the same losses and logged numbers to 1e-4 (`tests/test_rlhf.py::test_full_logits_on_cpu_match_trls_chunked_head`)."""
    print(body)
    write_section("DPO and GRPO on the CPU", body)


if __name__ == "__main__":
    main()
