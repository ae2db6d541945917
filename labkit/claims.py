"""The course's claims ledger: what each lesson claims, what this run measured, and whether it held.

Each notebook ends by recording its headline claims::

    claims.record("02_weights_are_knobs", "code tuning makes '(' likelier after 'function'",
                  says="after tuning on code, '(' and '{' become likely after 'function'",
                  measured={"p before": p0, "p after": p1}, verdict=p1 > 2 * p0)

``verdict`` is computed from the numbers by the notebook: ``True`` (holds), ``False`` (does not
hold), ``"within noise"`` (the difference is smaller than the run-to-run or sampling noise, so
this scale cannot show it) or ``"not reproduced"`` (a measured limit of this run kept the effect
from showing at all, said in ``note`` with its number); :func:`verdict` with :func:`proportion_noise`, :func:`paired_noise` or :func:`bootstrap_noise`
computes it for a difference. The entries go to ``outputs/<notebook>/results.json``, with the
profile, the machine and the date; ``python -m labkit claims`` gathers every notebook's entries
into one table (``LABKIT_OUTPUTS`` moves the ``outputs/`` folder).

A notebook's ledger holds one run: the first entry a new process (a fresh kernel) records drops
the entries an earlier run left, so a claim the notebook no longer makes (another profile's noise
rate, a claim reworded since) does not linger beside this run's numbers.
"""
from __future__ import annotations

import json
import os
import platform
import time
import uuid
from pathlib import Path

from . import files
from .files import outputs_root  # noqa: F401  (claims.outputs_root: where the ledger goes)

RUN = uuid.uuid4().hex   # this process: entries of other runs are replaced, not kept beside

VERDICTS = {True: "holds", False: "does not hold", "within noise": "within noise (not shown at this scale)",
            "not reproduced": "not reproduced at this scale"}


def verdict(effect: float, noise: float = 0.0):
    """``True`` if ``effect`` is positive and larger than ``noise``, ``False`` if it is negative and
    larger, else ``"within noise"``. Give the effect the sign the claim predicts."""
    if abs(effect) <= noise:
        return "within noise"
    return effect > 0


def proportion_noise(p: float, n: int) -> float:
    """About 95% of the chance difference between two shares measured on ``n`` items each (two
    standard errors of a difference of proportions near ``p``; at least one item's worth)."""
    import math

    return 2 * math.sqrt(2 * max(p * (1 - p), 1 / n) / n)


def paired_noise(a, b) -> float:
    """About 95% of the chance difference between the means of paired scores ``a`` and ``b`` (two
    standard errors of the mean per-item difference)."""
    import statistics

    diffs = [x - y for x, y in zip(a, b, strict=True)]
    return 2 * statistics.stdev(diffs) / len(diffs) ** 0.5 if len(diffs) > 1 else float("inf")


def bootstrap_noise(statistic, n: int, draws: int = 2000, seed: int = 0) -> float:
    """About 95% of the chance variation of ``statistic(rows)``, a number computed from ``n`` items
    (``rows``: a list of item indices), for a statistic with no simple standard error, such as a
    ratio: two standard deviations of it over ``draws`` resamples of the items with replacement
    (the bootstrap; seeded, so the same items give the same band). Resamples where the statistic
    is not finite are left out; ``inf`` when fewer than two items or finite resamples."""
    import math
    import random
    import statistics

    rng = random.Random(seed)
    values = [v for v in (statistic([rng.randrange(n) for _ in range(n)]) for _ in range(draws if n > 1 else 0))
              if math.isfinite(v)]
    return 2 * statistics.stdev(values) if len(values) > 1 else float("inf")


def ledger_path(notebook: str) -> Path:
    return outputs_root() / notebook / "results.json"


def machine() -> str:
    """The device this run used, in a few words."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"{platform.machine()} CPU, {os.cpu_count()} cores"


def _value(name: str, value):
    """A number (numpy and torch scalars become floats) or a short text; NaN is kept and shown."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (str, int)):
        return value
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"measured[{name!r}]: a number or a short text, got {type(value).__name__}") from None


def record(notebook: str, claim: str, says: str, measured: dict, verdict, note: str = "", seed="last") -> dict:
    """Add (or replace, by ``claim``) one entry in ``notebook``'s ledger and return it; entries an
    earlier run (another process) recorded there are dropped. ``seed``: the seed the numbers were
    measured with; by default the notebook's last ``labkit.set_seed`` (give it when a later run,
    such as a second seed to measure noise, seeded something else)."""
    if verdict not in VERDICTS:
        raise ValueError(f"verdict={verdict!r}: True (holds), False (does not hold), 'within noise' "
                         "or 'not reproduced'")
    if not measured:
        raise ValueError("measured: give the numbers the verdict was computed from")
    from . import reproducibility
    from .profiles import profile

    entry = {"notebook": notebook, "claim": claim, "says": says,
             "measured": {k: _value(k, v) for k, v in measured.items()},
             "verdict": VERDICTS[verdict], "note": note, "profile": profile().name,
             # the notebook's labkit.set_seed unless given; None: it drew nothing at random
             "seed": reproducibility.LAST_SEED if seed == "last" else seed,
             "machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M"), "run": RUN}
    path = ledger_path(notebook)
    with files.locked(path):
        entries = [e for e in read_ledger(path) if e["claim"] != claim and e.get("run") == RUN]
        files.write_text(path, json.dumps(entries + [entry], indent=1, ensure_ascii=False) + "\n")
    return entry


def read_ledger(path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a claims ledger ({e}); run its notebook again to rewrite it") from None
    if not isinstance(entries, list):
        raise ValueError(f"{path}: not a claims ledger (expected a list of entries)")
    return entries


def gather(root=None) -> list[dict]:
    """Every notebook's entries under ``root`` (default :func:`outputs_root`), in notebook order."""
    root = Path(root) if root else outputs_root()
    # only the notebooks' folders (NN_name): other folders under outputs/ hold other results.json
    # files (notebook 06 keeps its comparison in outputs/rlhf/results.json)
    return [e for path in sorted(root.glob("[0-9][0-9]_*/results.json")) for e in read_ledger(path)]


def show_measured(measured: dict) -> str:
    def fmt(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    return ", ".join(f"{k} {fmt(v)}" for k, v in measured.items())


def table(root=None):
    """The ledger as a ``pandas.DataFrame``: notebook, claim, measured, verdict, profile, date."""
    import pandas as pd

    rows = [{"notebook": e["notebook"], "claim": e["claim"], "measured": show_measured(e["measured"]),
             "verdict": e["verdict"], "profile": e["profile"], "date": e["date"]} for e in gather(root)]
    return pd.DataFrame(rows, columns=["notebook", "claim", "measured", "verdict", "profile", "date"])


def _seed(entry) -> str:
    """The seed an entry was measured with ("none": the notebook seeded nothing; "?": an entry
    written before labkit recorded seeds)."""
    if "seed" not in entry:
        return "?"
    return "none" if entry["seed"] is None else str(entry["seed"])


def markdown(root=None) -> str:
    """The ledger as a Markdown table (for ``benchmarks/RESULTS.md``)."""
    entries = gather(root)
    if not entries:
        return "No claims recorded yet: run the notebooks first.\n"
    lines = ["| notebook | claim | measured | verdict | profile | seed | note |", "|---|---|---|---|---|---|---|"]
    cell = lambda text: str(text).replace("|", "\\|").replace("\n", " ")   # noqa: E731
    lines += [f"| {e['notebook'][:2]} | {cell(e['claim'])} | {cell(show_measured(e['measured']))} | {e['verdict']} | "
              f"{e['profile']} | {_seed(e)} | {cell(e.get('note', ''))} |" for e in entries]
    return "\n".join(lines) + "\n"


def main(root=None) -> int:
    """``python -m labkit claims``: print the ledger and a count per verdict."""
    entries = gather(root)
    if not entries:
        print(f"No claims recorded under {Path(root) if root else outputs_root()}: run the notebooks first.")
        return 1
    for e in entries:
        print(f"{e['notebook'][:2]}  {e['verdict']:<38} {e['claim']}\n      measured: {show_measured(e['measured'])}"
              f"  [{e['profile']}, seed {_seed(e)}, {e['machine']}, {e['date']}]")
    counts = {v: sum(e["verdict"] == v for e in entries) for v in VERDICTS.values()}
    print("\n" + ", ".join(f"{n} {v}" for v, n in counts.items()) + f" ({len(entries)} claims)")
    return 0
