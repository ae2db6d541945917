"""Model load: cold (GGUF -> safetensors conversion into an empty cache) and warm (from the cache),
fp32 and 4-bit.

    .venv/bin/python benchmarks/bench_load.py
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, table, write_section  # noqa: E402

SNIPPET = """
import time, labkit
t = time.perf_counter(); labkit.load_model(quantization={q!r}); print(time.perf_counter() - t)
"""


def timed_load(cache: str, quantization=None) -> float:
    env = {**os.environ, "LABKIT_CACHE": cache, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", SNIPPET.format(q=quantization)], env=env,
                         capture_output=True, text=True, check=True).stdout
    return float(out.strip().splitlines()[-1])


def main():
    with tempfile.TemporaryDirectory() as cache:
        rows = [{"load": "cold: convert the packaged GGUF (empty cache)", "seconds": timed_load(cache)},
                {"load": "warm: safetensors from the cache, fp32", "seconds": timed_load(cache)},
                {"load": "warm: 4-bit NF4 (bitsandbytes)", "seconds": timed_load(cache, "4bit")}]
    body = f"Measured {machine()}; each load in a fresh process (import time excluded).\n\n{table(rows)}"
    print(body)
    write_section("Model load", body)


if __name__ == "__main__":
    main()
