"""Shared helpers for the benchmark scripts: machine facts and writing RESULTS.md sections."""
from __future__ import annotations

import datetime as dt
import importlib.metadata as md
import os
import platform
import re
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


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
