"""benchmarks/gpu_check.py: the dry run (the whole script on the CPU, with a toy model and the smoke
profile's sizes) passes every call and writes the table for RESULTS.md; a call over its time cap is
stopped and says how far it got; the bundle for the GPU machine carries what its image lacks, never
torch."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
import gpu_check  # noqa: E402

COLUMNS = ["call", "notebooks", "status", "wall (s)", "steps", "peak GPU memory (MiB)", "precision", "GPU"]


def test_dry_run_passes_every_call_and_writes_the_table(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--dry-run", "--out", str(tmp_path)],
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert [(r["call"], r["status"]) for r in report["rows"] if r["status"] != "pass"] == []
    lines = (tmp_path / "gpu_check.md").read_text().splitlines()
    table = [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines if line.startswith("|")]
    assert table[0] == COLUMNS
    rows = table[2:]
    assert len(rows) == len(report["rows"]) == 13
    covered = {n for row in rows for n in row[1].split()}
    assert covered == {f"{i:02d}" for i in range(13)}, "every notebook's training calls are checked"


def test_a_call_over_its_cap_is_stopped_and_one_that_raises_fails():
    slow = gpu_check.run_call("slow", "00", lambda: time.sleep(30), cap_s=1, gpu="CPU")
    assert slow["status"] == "stopped at the 1 s cap" and slow["wall (s)"] < 5
    broken = gpu_check.run_call("broken", "00", lambda: 1 / 0, cap_s=5, gpu="CPU")
    assert broken["status"].startswith("fail: ZeroDivisionError") and "traceback" in broken


def test_a_training_run_over_its_cap_stops_cleanly_and_says_how_far_it_got(toy, toy_text):
    import labkit

    model, tok = toy

    def train():
        r = labkit.train(model, tok, toy_text, steps=100_000, batch_size=2, max_length=32, live=False)
        return {"steps": f"{len(r.history.rows)}/{r.config.steps}", "stopped": r.history.stopped}

    row = gpu_check.run_call("train", "02", train, cap_s=8, gpu="CPU")
    assert row["status"] == "stopped at the 8 s cap", row
    assert 0 < int(row["steps"].split("/")[0]) < 100_000


def test_the_bundle_carries_what_the_gpu_image_lacks_and_never_torch():
    carried = gpu_check.closure()
    assert {"transformers", "trl", "datasets", "peft", "bitsandbytes", "plotly", "ipywidgets", "ipython"} <= set(carried)
    assert not {"torch", "numpy", "pandas", "pyarrow", "triton"} & set(carried)
    assert not any(name.startswith("nvidia-") for name in carried)
