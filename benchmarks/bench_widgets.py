"""Widget latency: the prompt explorer (a new prompt, a slider move), the memory calculator, and
the first loss point of a live training run. Goals: under 0.5 s for inference-only widgets, the
first training point under 10 s.

    .venv/bin/python benchmarks/bench_widgets.py
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, table, write_section  # noqa: E402

import labkit  # noqa: E402
from labkit.calculator import calculator_widget  # noqa: E402
from labkit.widgets import PromptExplorer, time_explorer  # noqa: E402


def calculator_update_s(repeats: int = 5) -> float:
    calc = calculator_widget()
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        calc.controls["batch"].value = [1, 2, 4, 8, 16][i % 5] if calc.controls["batch"].value != [1, 2, 4, 8, 16][i % 5] else 32
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def first_training_point_s(model, tok) -> float:
    """From calling labkit.train (cpu profile sizes) to its first logged loss."""
    data = labkit.load_jsonl("domains/code.jsonl", "text")
    start, first = time.perf_counter(), []

    def on_row(row, ev):
        if row is not None and not first:
            first.append(time.perf_counter() - start)

    class Plot:  # stands in for the live figure: records when the first point arrives
        def __call__(self, row, ev):
            on_row(row, ev)

    labkit.train(model, tok, data, method="lora", steps=1, plot=Plot(), live=False, profile=labkit.profile("cpu"))
    return first[0]


def main():
    model, tok = labkit.load_model()
    explorer = PromptExplorer(model, tok)
    times = time_explorer(explorer, prompts=("The weather today", "The weather today is", "The weather today is sunny",
                                             "My favourite food is", "In 1969, the first"), k_values=(5, 15, 10, 20, 3))
    rows = [
        {"widget": "prompt explorer: new prompt (one forward pass)", "seconds": times["new_prompt_s"], "goal": "< 0.5"},
        {"widget": "prompt explorer: slider move (cached logits)", "seconds": times["slider_s"], "goal": "< 0.5"},
        {"widget": "memory calculator: control change", "seconds": calculator_update_s(), "goal": "< 0.5"},
        {"widget": "live training: first loss point (LoRA, cpu profile batch)", "seconds": first_training_point_s(model, tok), "goal": "< 10"},
    ]
    body = f"Measured {machine()}; medians over repeated updates.\n\n{table(rows)}"
    print(body)
    write_section("Widget latency", body)


if __name__ == "__main__":
    main()
