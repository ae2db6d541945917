"""The GPU check: the training calls behind every notebook, at the gpu profile's sizes, on one GPU,
each under a time cap. Per call: wall time, peak GPU memory, precision, GPU name, pass or fail,
written after every call to gpu_check.json and gpu_check.md (a table for benchmarks/RESULTS.md).

    .venv/bin/python benchmarks/gpu_check.py --bundle    # here, with a network: outputs/gpu_check/bundle
    python3 benchmarks/gpu_check.py --out DIR            # on the GPU machine (README: "Running the GPU check")
    .venv/bin/python benchmarks/gpu_check.py --dry-run   # here, on the CPU: a tiny model, tiny sizes

The model is SmolLM2-135M's architecture (its config and tokenizer) with random weights: the same
shapes, so the same speed and memory, and the same code paths as the real model, but its losses and
replies mean nothing. (The packaged GGUF is 93 MB, more than one call to the GPU machine carries.)
The bundle holds what the GPU image lacks or has in versions outside labkit's ranges (transformers
5.24 against the image's 5.17, trl, datasets, plotly, ipywidgets, bitsandbytes with only its CUDA 13
library, ...), as wheels that this script unpacks there; nothing is downloaded there.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import zipfile
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, table  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BUNDLE = ROOT / "outputs" / "gpu_check" / "bundle"
COLUMNS = ["call", "notebooks", "status", "wall (s)", "steps", "peak GPU memory (MiB)", "precision", "GPU"]
# Not carried: in the GPU image at versions labkit accepts; not needed here (no GGUF file, no widget
# front end); or imported only on use that this check never makes (jedi: IPython's completion;
# hf-xet: hub downloads).
LEAVE_OUT = {"torch", "numpy", "pandas", "pyarrow", "accelerate", "gguf", "anywidget", "psygnal",
             "widgetsnbextension", "jedi", "hf-xet"}
PLATFORM = ["--python-version", "3.12", "--platform", "manylinux_2_28_x86_64",
            "--platform", "manylinux_2_24_x86_64", "--platform", "manylinux_2_17_x86_64"]
BNB_KEEP = re.compile(r"libbitsandbytes_(cuda13\d|cpu)\.so$")   # the image's torch is built for CUDA 13
MAX_BUNDLE_MIB = 58   # 64 MiB travel per call, the repository included


# --- the bundle (made here, unpacked there) ------------------------------------------------------

def closure() -> dict[str, str]:
    """labkit's dependencies and theirs, as installed here (name -> version), less LEAVE_OUT."""
    import importlib.metadata as md
    import tomllib

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    env = {"python_version": "3.12", "python_full_version": "3.12.0", "sys_platform": "linux",
           "platform_system": "Linux", "platform_machine": "x86_64", "extra": ""}
    todo = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    found = {}
    while todo:
        req = Requirement(todo.pop())
        name = canonicalize_name(req.name)
        if name in found or name in LEAVE_OUT or (req.marker and not req.marker.evaluate(env)):
            continue
        found[name] = md.version(name)
        todo += md.requires(name) or []
    return found


def make_bundle(dest: Path = BUNDLE) -> Path:
    """Wheels for Python 3.12 on manylinux x86_64 at the versions installed here, bitsandbytes cut
    down to its CUDA 13 library, and the model's config and tokenizer files."""
    from labkit.models import OFFLINE_MODEL, REGISTRY, convert_gguf

    shutil.rmtree(dest, ignore_errors=True)
    wheels, model = dest / "wheels", dest / "model"
    pins = [f"{n}=={v}" for n, v in sorted(closure().items())]
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                    *PLATFORM, "-d", str(wheels), *pins], check=True)
    for whl in wheels.glob("bitsandbytes-*.whl"):
        slim = whl.with_suffix(".slim")
        with zipfile.ZipFile(whl) as src, zipfile.ZipFile(slim, "w", zipfile.ZIP_DEFLATED) as out:
            for item in src.infolist():
                if not item.filename.endswith(".so") or BNB_KEEP.search(item.filename):
                    out.writestr(item, src.read(item))
        slim.replace(whl)
    model.mkdir(parents=True)
    for f in convert_gguf(REGISTRY[OFFLINE_MODEL]).iterdir():
        if f.name not in ("model.safetensors", "SOURCE.txt"):
            shutil.copy(f, model / f.name)
    mib = sum(f.stat().st_size for f in dest.rglob("*") if f.is_file()) / 2**20
    print(f"bundle: {len(pins)} wheels and the model's config and tokenizer, {mib:.1f} MiB in {dest}")
    if mib > MAX_BUNDLE_MIB:
        raise SystemExit(f"the bundle is {mib:.1f} MiB, over {MAX_BUNDLE_MIB}: leave more out (LEAVE_OUT)")
    return dest


def use_bundle(bundle: Path) -> None:
    """Unpack the bundle's wheels once into a folder beside it and put it first on the path, so
    that its versions win over the image's."""
    site = bundle.parent / "site"
    if not (site / "UNPACKED").is_file():
        shutil.rmtree(site, ignore_errors=True)
        for whl in sorted((bundle / "wheels").glob("*.whl")):
            with zipfile.ZipFile(whl) as z:
                for item in z.infolist():
                    name = re.sub(r"^[^/]+\.data/(purelib|platlib)/", "", item.filename)
                    if ".data/" in name or item.is_dir():
                        continue   # scripts, headers and data files: not needed to import
                    target = site / name
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(z.read(item))
        (site / "UNPACKED").write_text("\n")
    sys.path.insert(0, str(site))
    os.environ["PYTHONPATH"] = os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])


# --- measuring one call ---------------------------------------------------------------------------

@contextmanager
def time_cap(seconds: float):
    """Interrupt the block after ``seconds`` as Ctrl-C would: labkit's trainers stop cleanly at
    the next step and return what they did; a block still running 15 s later is interrupted again."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, seconds, 15)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@contextmanager
def gpu_peak(peak: list):
    """PyTorch's peak-allocation counter over the block, in bytes, into ``peak[0]``. labkit resets
    the counter at the start of each training run; the peak reached before each reset is kept."""
    import torch

    if not torch.cuda.is_available():
        yield peak
        return
    reset = torch.cuda.reset_peak_memory_stats

    def keep_then_reset(*args, **kwargs):
        peak[0] = max(peak[0], torch.cuda.max_memory_allocated())
        reset(*args, **kwargs)

    reset()
    torch.cuda.reset_peak_memory_stats = keep_then_reset
    try:
        yield peak
    finally:
        torch.cuda.reset_peak_memory_stats = reset
        peak[0] = max(peak[0], torch.cuda.max_memory_allocated())


def run_call(name, notebooks, fn, cap_s: float, gpu: str) -> dict:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    row = dict(zip(COLUMNS, [name, notebooks, "fail", 0.0, "", 0, "", gpu]))
    start, out, peak = time.perf_counter(), {}, [0]
    try:
        with gpu_peak(peak), time_cap(cap_s):
            out = fn() or {}
        stopped = out.pop("stopped", "finished")
        row["status"] = ("pass" if stopped == "finished" else
                         f"stopped at the {cap_s:.0f} s cap" if stopped.startswith("interrupted") else f"fail: {stopped}")
    except KeyboardInterrupt:
        row["status"] = f"stopped at the {cap_s:.0f} s cap"
    except Exception as e:
        row["status"] = f"fail: {type(e).__name__}: {str(e)[:200]}"
        row["traceback"] = traceback.format_exc()
    row["wall (s)"] = round(time.perf_counter() - start, 1)
    row["peak GPU memory (MiB)"] = round(peak[0] / 2**20) if torch.cuda.is_available() else "n/a"
    row.update({k: v for k, v in out.items() if k in ("steps", "precision")})
    return row


# --- the calls behind the notebooks --------------------------------------------------------------

def calls(P, work: Path) -> list[tuple]:
    """``(name, notebooks, function)`` for every training call the notebooks make, sized as the
    notebooks size them in the active profile (``smoke`` for the dry run, else ``gpu``)."""
    import labkit
    from labkit import compare, process, rlhf, scoring, serving

    def text(domain):
        return labkit.read_jsonl(f"domains/{domain}.jsonl", "text")

    chat = [r for r in labkit.read_jsonl("instructions.jsonl", "messages") if r["split"] == "train"]
    pairs = [p for p in labkit.read_jsonl("preferences.jsonl", "preference") if p["split"] == "train"]
    cfg = rlhf.RLHFConfig.for_profile(P)

    def dtype(model):
        return str(next(model.parameters()).dtype).replace("torch.", "") + " (no autocast)"

    def autocast(mixed_precision):
        return {"no": "float32 (no autocast)"}.get(mixed_precision, f"{mixed_precision} autocast")

    def generation():
        model, tok = labkit.load_model()
        labkit.generate(model, tok, "Write a poem about summer", chat=True, max_new_tokens=P.max_new_tokens)
        texts = [r["text"] for r in labkit.read_jsonl("general_text.jsonl", "text")][:P.pick(smoke=4, gpu=100)]
        labkit.perplexity(model, tok, texts, max_length=P.max_length)
        return {"precision": dtype(model), "steps": "-"}

    def sft(data, **kw):
        model, tok = labkit.load_model()
        r = labkit.train(model, tok, data, live=False, **kw)
        return {"precision": autocast(r.config.mixed_precision), "steps": f"{len(r.history.rows)}/{r.config.steps}",
                "stopped": r.history.stopped}

    def method(m):
        r = compare.run_method(m, save=False, keep_checkpoint=False)
        nf4 = ", NF4 weights" if m == "qlora" else ""
        return {"precision": autocast(r["config"]["mixed_precision"]) + nf4, "stopped": r["stopped"],
                "steps": f"{len(r['train_losses'])}/{r['config']['steps']}"}

    def stage(result, planned):
        return {"precision": autocast(cfg.mixed_precision), "steps": f"{len(result.rows)}/{planned}", "stopped": result.stopped}

    def reward():
        rm, rm_tok = rlhf.load_reward_model(seed=cfg.seed)
        return stage(rlhf.train_reward_model(rm, rm_tok, pairs, cfg, live=False), cfg.reward_steps)

    def dpo():
        policy, tok = labkit.load_model()
        return stage(rlhf.train_dpo(policy, tok, pairs, cfg, live=False), cfg.dpo_steps)

    def grpo():
        policy, tok = labkit.load_model()
        rm, rm_tok = rlhf.load_reward_model(seed=cfg.seed)
        prompts = [p["prompt"] for p in pairs]
        return stage(rlhf.optimise_policy(policy, tok, rm, prompts, cfg, live=False, reward_tok=rm_tok),
                     cfg.policy_steps)

    def packing():
        steps = P.pick(smoke=2, gpu=10)
        process.packing_comparison(text("medical"), steps=steps, batch_size=P.pick(smoke=2, gpu=16),
                                   max_length=P.pick(smoke=64, gpu=256))
        return {"precision": autocast(P.mixed_precision), "steps": f"2 x {steps}"}

    def serve():
        adapters = {}
        for name in ("medical", "legal", "code"):   # one step each: the serving is what is measured
            model, tok = labkit.load_model()
            r = labkit.train(model, tok, text(name), method="lora", steps=1, batch_size=2, max_length=64, live=False)
            adapters[name] = serving.save_adapter(r.model, work / "adapters" / name)
        base, tok = labkit.load_model()
        model = serving.load_adapters(base, adapters)
        pool = {n: [f"Write two sentences about {n} work."] for n in adapters}
        n = P.pick(smoke=4, gpu=100)
        serving.serve(model, tok, serving.make_requests(pool, n=n), max_new_tokens=P.pick(smoke=4, gpu=40), batch_size=4)
        return {"precision": dtype(base), "steps": f"{n} requests"}

    steps = dict(full=P.pick(smoke=2, gpu=100), chat=P.pick(smoke=2, gpu=150), domain=P.pick(smoke=1, gpu=120))
    length = P.pick(smoke=64, gpu=256)
    return [
        ("generate, perplexity", "00 01", generation),
        ("full fine-tune, text", "02 03 04", lambda: sft(text("code"), method="full", learning_rate=5e-5,
                                                         steps=steps["full"], batch_size=P.batch_size, max_length=length)),
        ("LoRA, instructions (Alpaca)", "05", lambda: sft(scoring.to_alpaca(chat), method="lora", learning_rate=5e-4,
                                                          steps=steps["chat"], batch_size=P.batch_size, max_length=length)),
        ("LoRA, domain text", "07 12", lambda: sft(text("medical"), method="lora", learning_rate=3e-4,
                                                   steps=steps["domain"], batch_size=P.batch_size, max_length=length)),
        ("comparison: full", "08 10", lambda: method("full")),
        ("comparison: LoRA", "08 09 10", lambda: method("lora")),
        ("comparison: QLoRA", "09 10", lambda: method("qlora")),
        ("comparison: DoRA", "10", lambda: method("dora")),
        ("reward model", "06", reward),
        ("DPO", "06", dpo),
        ("GRPO", "06", grpo),
        ("packing", "11", packing),
        ("serving: 3 adapters, mixed batches", "12", serve),
    ]


# --- the run --------------------------------------------------------------------------------------

def stand_in_model(cache: Path, model_files: Path | None) -> str:
    """Write the model ``labkit.load_model()`` will load, where it looks first (the converted copy
    of the packaged model in ``LABKIT_CACHE``): SmolLM2-135M's architecture with random weights
    from ``model_files``' config and tokenizer, or labkit's two-layer toy model without them."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from labkit.models import OFFLINE_MODEL, REGISTRY, converted_path
    from labkit.toy import toy_model

    target = converted_path(REGISTRY[OFFLINE_MODEL])
    if cache not in target.parents:
        raise RuntimeError(f"{target} is outside {cache}: the stand-in must never replace the real model")
    if model_files is None:
        model, tok = toy_model()
        what = "labkit's two-layer toy model"
    else:
        torch.manual_seed(0)
        model, tok = LlamaForCausalLM(LlamaConfig.from_pretrained(model_files)), AutoTokenizer.from_pretrained(model_files)
        what = "SmolLM2-135M's architecture and tokenizer"
    model.save_pretrained(target)
    tok.save_pretrained(target)
    return f"{what} with random weights ({sum(p.numel() for p in model.parameters()):,} parameters)"


def write(out: Path, report: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1))
    rows = [{c: r[c] for c in COLUMNS} for r in report["rows"]]
    what = ("a run of the script, not a measurement" if report["dry_run"] else
            "speed, memory and crashes as with the real model, but its losses mean nothing")
    head = (f"Measured {report['machine']}.\n`benchmarks/gpu_check.py{' --dry-run' if report['dry_run'] else ''}`: "
            f"the training calls behind the notebooks at the `{report['profile']}` profile's sizes, each capped at "
            f"{report['cap_s']:.0f} s, on {report['model']}: {what}. Set-up (unpacking, imports, the model) took {report['setup_s']:.0f} s.\n\n")
    (out / "gpu_check.md").write_text(head + (table(rows) if rows else "(no call finished)") + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", action="store_true", help="make outputs/gpu_check/bundle here (needs a network)")
    ap.add_argument("--dry-run", action="store_true", help="on the CPU, a tiny model and the smoke profile's sizes")
    ap.add_argument("--out", type=Path, default=ROOT / "outputs" / "gpu_check")
    ap.add_argument("--cap-s", type=float, default=60, help="time cap for one call")
    ap.add_argument("--budget-s", type=float, default=400, help="time for all calls; later ones are not run")
    ap.add_argument("--only", nargs="*", help="calls whose name contains one of these words, or notebook numbers")
    args = ap.parse_args()
    args.out = args.out.resolve()
    if args.bundle:
        make_bundle()
        return
    t0 = time.perf_counter()
    model_files = None   # the dry run's toy model
    if not args.dry_run:
        if (BUNDLE / "wheels").is_dir():
            use_bundle(BUNDLE)
        here = Path(os.environ.get("LABKIT_CACHE", Path.home() / ".cache" / "labkit")) / "models" / "smollm2-135m-instruct"
        model_files = BUNDLE / "model" if (BUNDLE / "model").is_dir() else here
        if not (model_files / "config.json").is_file():
            raise SystemExit(f"no model config in {BUNDLE / 'model'}: make the bundle first (--bundle)")
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    os.environ.update(LABKIT_CACHE=str(work / "cache"), LABKIT_PROFILE="smoke" if args.dry_run else "gpu",
                      HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    if args.dry_run:
        os.environ["LABKIT_DEVICE"] = "cpu"
    sys.path.insert(0, str(ROOT))
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU here: run with --dry-run, or on the GPU machine")
    import tomllib

    import labkit
    from labkit.colab import missing

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() and not args.dry_run else "CPU (dry run)"
    os.chdir(work)   # compare.run_method and friends write under ./outputs: keep that out of the repository
    try:
        report = {"machine": machine(), "dry_run": args.dry_run, "profile": labkit.profile().name,
                  "cap_s": args.cap_s, "model": stand_in_model(work / "cache", model_files),
                  "outside_labkit_ranges": missing(deps), "rows": []}
        print(f"[gpu_check] {report['machine']}; outside labkit's ranges: {report['outside_labkit_ranges'] or 'none'}")
        report["setup_s"] = round(time.perf_counter() - t0, 1)
        start = time.perf_counter()
        for name, notebooks, fn in calls(labkit.profile(), work):
            if args.only and not any(w.lower() in name.lower() or w in notebooks.split() for w in args.only):
                continue
            left = args.budget_s - (time.perf_counter() - start)
            if left < 10:
                row = dict(zip(COLUMNS, [name, notebooks, "not run (time budget)", 0, "", "", "", gpu]))
            else:
                row = run_call(name, notebooks, fn, min(args.cap_s, left), gpu)
            print(f"[gpu_check] {name}: {row['status']} in {row['wall (s)']} s, peak {row['peak GPU memory (MiB)']} MiB",
                  flush=True)
            report["rows"].append(row)
            write(args.out, report)
    finally:
        os.chdir(ROOT)
        shutil.rmtree(work, ignore_errors=True)
    print(f"[gpu_check] {sum(r['status'] == 'pass' for r in report['rows'])} of {len(report['rows'])} passed; "
          f"results in {args.out}")


if __name__ == "__main__":
    main()
