"""Run-to-run noise of notebook 04's headlines: with several training seeds, does forgetting grow
with the learning rate, and does replay reduce it?

    .venv/bin/python benchmarks/bench_forgetting_seeds.py [--profile cpu] [--seeds 0 1 2]

The experiment is notebook 04's own: its config cell is executed for the profile (so the sizes
cannot drift from the notebook), its probes are drawn once (the notebook's seed), and each training
seed (the batch order, the replay mix) fine-tunes three fresh models: full fine-tuning at the
lowest and the highest learning rate, and at the highest with replay. Knowledge points lost (the
primary measure) per run; per seed the two differences the lesson claims, with the notebook's
noise band for one run (``forgetting.knowledge_verdict``: the probe items' sampling noise); then
the mean and spread of each difference across seeds.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from common import across_seeds, command_line, seeds_arguments, table, write_section  # noqa: E402

import labkit  # noqa: E402
from labkit import forgetting as F  # noqa: E402


def notebook_config(profile: str) -> dict:
    """Notebook 04's ``EXPERIMENT`` for ``profile``, from its config cell."""
    return dict(common.notebook_config("04_catastrophic_forgetting.ipynb", profile)["EXPERIMENT"])


def points(run) -> float:
    return 100 * run["knowledge_drop"]


def main():
    args = seeds_arguments(__doc__).parse_args()
    cfg = notebook_config(args.profile)
    start = time.perf_counter()
    probes, domain_train, replay_pool = F.forgetting_probes(max_length=cfg["max_length"], domain=cfg["domain"],
                                                            seed=cfg["seed"], **cfg["probe_sizes"])
    model, tok = labkit.load_model()
    before = F.measure(model, tok, probes)
    del model
    n_items = len(probes.knowledge)
    low, high = min(cfg["full_rates"]), max(cfg["full_rates"])
    rows = []
    for seed in args.seeds:
        train = {k: cfg[k] for k in ("steps", "batch_size", "max_length")} | {"seed": seed}
        runs = {name: F.fine_tune_and_measure(labkit.load_model, domain_train, probes, before, method="full",
                                              learning_rate=lr, **extra, **train)
                for name, lr, extra in (("low", low, {}), ("high", high, {}),
                                        ("replay", high, {"replay_share": cfg["replay_share"],
                                                          "replay_pool": replay_pool}))}
        trend = F.knowledge_verdict(runs["high"], runs["low"], n_items)
        replay = F.knowledge_verdict(runs["replay"], runs["high"], n_items)
        rows.append({"seed": seed, f"lost, lr {low:g}": points(runs["low"]), f"lost, lr {high:g}": points(runs["high"]),
                     f"lost, lr {high:g} + replay": points(runs["replay"]),
                     "high minus low": 100 * trend["difference"], "replay minus none": 100 * replay["difference"],
                     "noise band (items)": f"±{100 * max(trend['noise'], replay['noise']):.0f}",
                     "in-domain gain, high / replay": f"{runs['high']['domain_gain']:+.3f} / {runs['replay']['domain_gain']:+.3f}"})
        print(rows[-1], flush=True)

    def spread(key):
        return across_seeds([r[key] for r in rows], number="+.1f", unit=" points")

    body = (f"{command_line(args, time.perf_counter() - start)}\n"
            f"Notebook 04's config ({cfg['steps']} steps, batch {cfg['batch_size']} x {cfg['max_length']} tokens of "
            f"code, full fine-tuning; replay {cfg['replay_share']:.0%}); the same {n_items} knowledge items for every run "
            f"(base model {100 * before['knowledge_acc']:.1f}% correct). Points lost: knowledge accuracy before minus after.\n\n"
            f"{table(rows)}\n\n"
            f"Across seeds, the highest rate against the lowest: {spread('high minus low')}; replay against none at "
            f"the highest rate: {spread('replay minus none')}. Negative replay numbers mean replay kept knowledge.")
    print(body)
    if not args.no_write:
        write_section(f"Forgetting across seeds ({args.profile})", body)


if __name__ == "__main__":
    main()
