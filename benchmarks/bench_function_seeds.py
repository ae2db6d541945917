"""Run-to-run noise of notebook 02's seed example: with several training seeds, how much more likely
do " (" and " {" become after "function", and how much less likely " of"?

    .venv/bin/python benchmarks/bench_function_seeds.py [--profile cpu] [--seeds 0 1 2]

The experiment is notebook 02's own: its config cell is executed for the profile (contexts,
targets, corpus, training config), so the sizes cannot drift from the notebook. Each training seed
(the batch order) fine-tunes a fresh model; the probabilities are read before and after with the
notebook's ``probe_table``, and each seed's two ratios are summarised as the notebook does
(``probes.probability_shift``), with the notebook's in-run band (across its contexts). Then the mean
and spread of each ratio across seeds.
"""
from __future__ import annotations

import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from common import across_seeds, command_line, seeds_arguments, table, write_section  # noqa: E402

import labkit  # noqa: E402
from labkit import probes  # noqa: E402
from labkit.widgets import probe_table  # noqa: E402


def notebook_config(profile: str) -> tuple:
    """Notebook 02's ``config`` (a TrainConfig) and ``EXPERIMENT`` for ``profile``, from its config
    cell (without its model load)."""
    space = common.notebook_config("02_weights_are_knobs.ipynb", profile)
    return space["config"], dict(space["EXPERIMENT"])


def main():
    args = seeds_arguments(__doc__).parse_args()
    config, exp = notebook_config(args.profile)
    start = time.perf_counter()
    data = labkit.read_jsonl(labkit.data_path(exp["data"]), "text")
    model, tok = labkit.load_model()
    before = probe_table(model, tok, exp["contexts"], exp["targets"])
    del model
    rows = []
    for seed in args.seeds:
        model, tok = labkit.load_model()
        labkit.train(model, tok, data, config, seed=seed, label=f"seed {seed}", live=False)
        after = probe_table(model, tok, exp["contexts"], exp["targets"])
        code, of = probes.probability_shift(before, after, [" (", " {"]), probes.probability_shift(before, after, [" of"])
        first_of = after[(after.context == exp["contexts"][0]) & (after.target == " of")].probability.item()
        rows.append({"seed": seed, "' (' and ' {': ratio": round(code["ratio"], 2),
                     "band (x or /)": round(math.exp(code["noise"]), 2),
                     "' of': ratio": round(of["ratio"], 3), "' of' band (x or /)": round(math.exp(of["noise"]), 2),
                     f"P(' of') after {exp['contexts'][0]!r}, after": round(first_of, 4)})
        print(rows[-1], flush=True)
        del model

    first = before[before.target == " of"].iloc[0]
    code_spread, of_spread = (across_seeds([r[key] for r in rows]) for key in ("' (' and ' {': ratio", "' of': ratio"))
    body = (f"{command_line(args, time.perf_counter() - start)}\n"
            f"Notebook 02's config ({config.steps} steps of full fine-tuning at learning rate {config.learning_rate:g}, "
            f"batch {config.batch_size} x {config.max_length} tokens of `{exp['data']}`); the seed sets the batch order. "
            f"Ratios are p after / p before, the geometric mean over the notebook's contexts (for ' (' and ' {{' "
            f"over each context and both tokens; `probes.probability_shift`); the band is the notebook's in-run "
            f"noise across its contexts (two standard errors of the log-ratios), as a factor. Before training, "
            f"P({first.target!r}) after {first.context!r} = {first.probability:.4f}.\n\n{table(rows)}\n\n"
            f"Across seeds: ' (' and ' {{' {code_spread}; ' of' {of_spread}.")
    print(body)
    if not args.no_write:
        write_section(f"Notebook 02's 'function' example across seeds ({args.profile})", body)


if __name__ == "__main__":
    main()
