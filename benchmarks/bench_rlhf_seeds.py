"""Run-to-run noise of notebook 06's headline: does DPO shorten held-out answers by at least 10%,
with several training seeds, not just the notebook's one?

    .venv/bin/python benchmarks/bench_rlhf_seeds.py [--profile cpu] [--seeds 0 1 2] [--set dpo_max_length=96]

Each seed trains DPO from a fresh model with notebook 06's config for the profile (only ``seed``
changes: the order of the pairs, the LoRA initialisation) and answers the same held-out prompts
greedily, up to ``eval_max_new_tokens`` tokens, as section 6 of the notebook does. The base model's
answers are the same for every seed (greedy). Prints and writes the words saved per seed, their
mean and spread across seeds, next to the notebook's own noise band (two standard errors of the
per-prompt differences, ``labkit.claims.paired_noise``). ``--set name=value`` changes one field of
the profile's config (a candidate setting, measured before the profile takes it); its results go to a
section of their own.
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import command_line, seeds_arguments, table, write_section  # noqa: E402

import labkit  # noqa: E402
from labkit import claims, rlhf  # noqa: E402
from labkit.data import read_jsonl  # noqa: E402


def main():
    args, overrides = settings_arguments(__doc__, "dpo_max_length=96")
    P = labkit.profile(args.profile)
    pairs = read_jsonl("preferences.jsonl", "preference")
    train = [p for p in pairs if p["split"] == "train"]
    cfg0 = rlhf.RLHFConfig.for_profile(P, **overrides)
    prompts = [p["prompt"] for p in pairs if p["split"] == "heldout"][:cfg0.eval_prompts]
    start = time.perf_counter()
    base, tok = labkit.load_model()
    base_words = [rlhf.words(a) for a in rlhf.answers(base, tok, prompts, cfg0.eval_max_new_tokens)]
    base_mean = statistics.mean(base_words)
    rows = []
    for seed in args.seeds:
        cfg = rlhf.RLHFConfig.for_profile(P, **overrides, seed=seed)
        model, _ = labkit.load_model()
        dpo = rlhf.train_dpo(model, tok, train, cfg, live=False)
        words = [rlhf.words(a) for a in rlhf.answers(dpo.model, tok, prompts, cfg.eval_max_new_tokens)]
        saved = (base_mean - statistics.mean(words)) / base_mean
        noise = claims.paired_noise(base_words, words) / base_mean
        rows.append({"seed": seed, "mean words, base": round(base_mean, 1), "mean words, DPO": round(statistics.mean(words), 1),
                     "fewer words": f"{saved:.0%}", "noise band (prompts)": f"±{noise:.0%}",
                     "holds (>= 10% beyond noise)": "yes" if saved - 0.1 > noise else "no",
                     "DPO train (s)": round(dpo.wall_s, 1)})
        print(rows[-1], flush=True)
    shares = [(base_mean - r["mean words, DPO"]) / base_mean for r in rows]
    spread = statistics.stdev(shares) if len(shares) > 1 else float("nan")
    body = (f"{command_line(args, time.perf_counter() - start, set_flag(args))}\n"
            f"Notebook 06's DPO stage ({cfg0.dpo_steps} steps, batch {cfg0.dpo_batch_size}, lr {cfg0.dpo_learning_rate}, "
            f"sequences cut at {cfg0.dpo_max_length} tokens) "
            f"trained once per seed from a fresh model; greedy answers to the first {len(prompts)} held-out prompts, "
            f"up to {cfg0.eval_max_new_tokens} tokens.\n\n{table(rows)}\n\n"
            f"Across seeds DPO's answers were {statistics.mean(shares):.0%} shorter on average "
            f"(standard deviation across seeds {spread:.0%}; smallest {min(shares):.0%}, largest {max(shares):.0%}).")
    print(body)
    if not args.no_write:
        write_section(f"DPO shortening across seeds ({P.name}{settings_suffix(overrides)})", body)


def settings_arguments(doc: str, example: str):
    """The seed benchmarks' options plus ``--set NAME=VALUE`` (a candidate value for a field of the
    profile's ``RLHFConfig``): the parsed ``args`` and the ``overrides`` they ask for, each checked
    before any training."""
    ap = seeds_arguments(doc)
    ap.add_argument("--set", nargs="+", action="extend", default=[], metavar="NAME=VALUE",
                    help=f"change a field of the profile's RLHFConfig, e.g. {example}")
    args = ap.parse_args()
    return args, dict(parse_setting(s) for s in args.set)


def set_flag(args) -> str:
    """The ``--set`` part of the command line, for the section's first line ('' when none)."""
    return " --set " + " ".join(args.set) if args.set else ""


def settings_suffix(overrides: dict) -> str:
    """``", dpo_max_length=96"``: what a candidate setting adds to its section's name."""
    return "".join(f", {k}={v}" for k, v in overrides.items())


def parse_setting(text: str) -> tuple[str, object]:
    """``"dpo_max_length=96"`` -> ``("dpo_max_length", 96)``: the value read as a number where it
    is one; a name that is not a field of ``RLHFConfig`` is an error, before any training."""
    import dataclasses
    import json

    name, sep, value = text.partition("=")
    fields = {f.name for f in dataclasses.fields(rlhf.RLHFConfig)}
    if not sep or name not in fields:
        raise SystemExit(f"--set {text!r}: give NAME=VALUE with NAME one of RLHFConfig's fields ({', '.join(sorted(fields))})")
    try:
        return name, json.loads(value)
    except ValueError:
        return name, value


if __name__ == "__main__":
    main()
