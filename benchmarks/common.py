"""Shared helpers for the benchmark scripts: machine facts and writing RESULTS.md sections."""
from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata as md
import json
import os
import platform
import re
import statistics
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    versions = ", ".join(f"{p} {md.version(p)}" for p in ("torch", "transformers", "peft", "trl", "bitsandbytes"))
    return (f"{dt.date.today().isoformat()}; {cpu}, {os.cpu_count()} cores, {gpu}; "
            f"Python {platform.python_version()}; {versions}")


def write_section(name: str, body: str) -> None:
    """Replace (or add) the section ``## name`` in RESULTS.md, keeping the others."""
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n\nWritten by the scripts in `benchmarks/`; each section names the machine and date it was measured on.\n"
    section = f"## {name}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(name)}\n.*?(?=^## |\Z)", re.S | re.M)
    text = (pattern.sub(lambda _: section + "\n", text) if pattern.search(text)   # the body as is, backslashes too
            else text.rstrip() + "\n\n" + section)
    RESULTS.write_text(text)


def table(rows: list[dict]) -> str:
    cols = list(rows[0])
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        out.append("| " + " | ".join(f"{r[c]:.3g}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")
    return "\n".join(out)


# --- benchmarks that repeat a notebook's experiment with several seeds --------------------------

def seeds_arguments(description: str | None = None) -> argparse.ArgumentParser:
    """The options every seed benchmark takes: ``--profile``, ``--seeds``, ``--no-write``;
    ``description`` (the benchmark's docstring) is what ``--help`` prints above them."""
    ap = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--no-write", action="store_true", help="print the section, leave RESULTS.md alone")
    return ap


def notebook_config(notebook: str, profile: str, marker: str = "EXPERIMENT = labkit.Experiment(") -> dict:
    """The names a notebook's config cell (the code cell containing ``marker``) defines, run for
    ``profile``: the benchmark then repeats the notebook's own experiment, not a copy of its numbers.
    Lines that load a model are left out and ``print`` does nothing."""
    cells = json.loads((NOTEBOOKS / notebook).read_text())["cells"]
    source = next("".join(c["source"]) for c in cells if c["cell_type"] == "code" and marker in "".join(c["source"]))
    source = source.replace("P = labkit.profile()", f"P = labkit.profile({profile!r})")
    source = "\n".join(line for line in source.splitlines() if "load_model(" not in line)
    space: dict = {"print": lambda *args, **kwargs: None}
    exec(source, space)   # noqa: S102 - the repository's own notebook cell
    return space


def across_seeds(values, number: str = ".3g", unit: str = "") -> str:
    """``mean M (standard deviation across seeds S; from A to B)`` for one measure's per-seed values."""
    sd = statistics.stdev(values) if len(values) > 1 else float("nan")
    return (f"mean {statistics.mean(values):{number}}{unit} (standard deviation across seeds {sd:.2g}; "
            f"from {min(values):{number}} to {max(values):{number}})")


def command_line(args, seconds: float, extra: str = "") -> str:
    """The first line of a seed benchmark's section: the machine, the command that measured it (with
    its profile and seeds spelt out) and how long it took."""
    return (f"Measured {machine()}; `benchmarks/{Path(sys.argv[0]).name} --profile {args.profile} --seeds "
            f"{' '.join(map(str, args.seeds))}{extra}` ({seconds:.0f} s in all).")
