"""Run-to-run noise of notebook 06's GRPO stage: with several training seeds, how far does GRPO
raise the reward of greedy answers to held-out prompts, and is that beyond the noise?

    .venv/bin/python benchmarks/bench_grpo_seeds.py [--profile cpu] [--seeds 0 1 2] [--set policy_steps=8]

The reward model is trained once, as in the notebook (its config and seed), and kept fixed, so
only GRPO's seed changes from row to row (the order of the prompts, the samples, the LoRA
initialisation). Each seed optimises a fresh model with notebook 06's config for the profile and
answers the same held-out prompts greedily, up to ``eval_max_new_tokens`` tokens, as section 6 of
the notebook does; the base model's answers are the same for every seed (greedy). Per seed: the
mean reward gain, the notebook's noise band for one run (two standard errors of the per-prompt
differences, ``labkit.claims.paired_noise``), the answers' length and the share of GRPO's samples
cut at ``max_completion_length``; then the mean and spread of the gain across seeds.
``--set name=value`` changes one field of the profile's config (a candidate setting); its results
go to a section of their own.
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_rlhf_seeds import set_flag, settings_arguments, settings_suffix  # noqa: E402
from common import across_seeds, command_line, table, write_section  # noqa: E402

import labkit  # noqa: E402
from labkit import claims, rlhf  # noqa: E402
from labkit.data import read_jsonl  # noqa: E402


def main():
    args, overrides = settings_arguments(__doc__, "policy_steps=8")
    P = labkit.profile(args.profile)
    cfg0 = rlhf.RLHFConfig.for_profile(P, **overrides)
    pairs = read_jsonl("preferences.jsonl", "preference")
    train_pairs = [p for p in pairs if p["split"] == "train"]
    train_prompts = [p["prompt"] for p in train_pairs]
    prompts = [p["prompt"] for p in pairs if p["split"] == "heldout"][:cfg0.eval_prompts]
    start = time.perf_counter()
    labkit.set_seed(cfg0.seed)
    rm, rm_tok = rlhf.load_reward_model(seed=cfg0.seed)
    reward_model = rlhf.train_reward_model(rm, rm_tok, train_pairs, cfg0, live=False).model

    def score(model, tok):
        outs = rlhf.answers(model, tok, prompts, cfg0.eval_max_new_tokens)
        return rlhf.reward_scores(reward_model, rm_tok, prompts, outs, cfg0.reward_max_length), [rlhf.words(o) for o in outs]

    base, tok = labkit.load_model()
    base_rewards, base_words = score(base, tok)
    del base
    rows = []
    for seed in args.seeds:
        cfg = rlhf.RLHFConfig.for_profile(P, **overrides, seed=seed)
        policy, _ = labkit.load_model()
        rl = rlhf.optimise_policy(policy, tok, reward_model, train_prompts, cfg, live=False)
        rewards, words = score(rl.model, tok)
        gain = statistics.mean(rewards) - statistics.mean(base_rewards)
        noise = claims.paired_noise(rewards, base_rewards)
        rows.append({"seed": seed, "mean reward, base": round(statistics.mean(base_rewards), 3),
                     "mean reward, GRPO": round(statistics.mean(rewards), 3), "gain": round(gain, 3),
                     "noise band (prompts)": f"±{noise:.3f}", "beyond noise": "yes" if abs(gain) > noise else "no",
                     "mean words, base / GRPO": f"{statistics.mean(base_words):.1f} / {statistics.mean(words):.1f}",
                     "samples cut": f"{rl.to_frame()['completions/clipped_ratio'].mean():.0%}",
                     "GRPO train (s)": round(rl.wall_s, 1)})
        print(rows[-1], flush=True)
        del policy, rl
    body = (f"{command_line(args, time.perf_counter() - start, set_flag(args))}\n"
            f"Notebook 06's reward model ({cfg0.reward_steps} steps, seed {cfg0.seed}) trained once; its GRPO stage "
            f"({cfg0.policy_steps} steps of {cfg0.prompts_per_step} prompts x {cfg0.num_generations} samples of up to "
            f"{cfg0.max_completion_length} tokens, lr {cfg0.policy_learning_rate:g}, KL weight {cfg0.kl_beta:g}) trained "
            f"once per seed from a fresh model; greedy answers to the first {len(prompts)} held-out prompts, up to "
            f"{cfg0.eval_max_new_tokens} tokens, scored by that reward model. 'Samples cut': GRPO's samples that "
            f"reached the limit before they ended (TRL's clipped ratio).\n\n{table(rows)}\n\n"
            f"Across seeds, GRPO's reward gain: {across_seeds([r['gain'] for r in rows], number='+.3f')}.")
    print(body)
    if not args.no_write:
        write_section(f"GRPO across seeds ({P.name}{settings_suffix(overrides)})", body)


if __name__ == "__main__":
    main()
