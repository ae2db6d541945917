"""One task, one set of metrics: full fine-tuning, LoRA, QLoRA and DoRA side by side.

    result = run_method("lora")                 # trains, measures, saves outputs/method_comparison/lora.json
    results = ensure_results(["full", "lora"])  # reuse saved results of this profile, compute the rest
    results_table(results)                      # the side-by-side table

The task: instruction tuning on ``data/instructions.jsonl`` (train split), the loss on the
assistant's reply only. Every method is measured the same way:

- quality:     held-out loss (nats per reply token) on the heldout split, and its perplexity;
               ``quality_ratio`` = (base loss - method loss) / (base loss - full fine-tuning loss),
               the share of full fine-tuning's improvement the method gets. Each record's loss is
               kept (``heldout_scores``), so differences get a band from the records themselves:
               :func:`quality_ratio_noise`, :func:`loss_difference_noise`
- trainable parameters, step time (median seconds per optimizer step)
- peak memory: the weights' bytes plus the highest memory above what was in use when training
               began (so other models in memory do not count). GPU: CUDA memory allocated, from
               PyTorch's peak counter; CPU: the process's sampled resident memory (RSS). Saved
               with ``peak_memory_measure``, which says which of the two it is.
- size on disk: the adapter (or the full checkpoint), saved with safetensors
- forgetting:  accuracy on a subset of the general-knowledge cloze probe, after against the fp32
               base model (for QLoRA the 4-bit model's own starting loss and accuracy are kept too,
               as ``start_heldout_loss``/``start_probe_accuracy``: part of its change is quantisation)

Results are JSON with the config that produced them (PEFT's method-comparison layout).
"""
from __future__ import annotations

import json
import math
import statistics
import time
from pathlib import Path

from . import files
from .claims import bootstrap_noise, paired_noise
from .data import data_path, read_jsonl
from .memory import PeakMemory, measure
from .models import count_parameters, footprint_bytes, load_model
from .probes import cloze_accuracy, mean_loss, per_token, reply_loss, reply_losses
from .profiles import profile as get_profile
from .training import TrainConfig, train
from .plots import LabFigure, lab_layout

METHODS = ("full", "lora", "qlora", "dora")
# Learning rates: adapters learn at about 10x the rate full fine-tuning tolerates.
# Replies are scored in windows of this many tokens, whatever the training length, so that every
# profile and method is judged on the same tokens.
HELDOUT_MAX_LENGTH = 256
LEARNING_RATES = {"full": 5e-5, "lora": 5e-4, "qlora": 5e-4, "dora": 5e-4}


def output_dir() -> Path:
    """``outputs/method_comparison`` at the repository root (``labkit.files.outputs_root``)."""
    return files.outputs_root() / "method_comparison"


def task_data(profile=None) -> tuple[list[dict], list[dict], list[dict]]:
    """(train records, held-out records, general-probe items) sized by the profile."""
    p = profile or get_profile()
    records = read_jsonl(data_path("instructions.jsonl"), "messages")
    train_set = [r for r in records if r.get("split") == "train"]
    heldout = [r for r in records if r.get("split") == "heldout"][: p.eval_items]
    probe = read_jsonl(data_path("general_knowledge.jsonl"), "cloze")[: p.eval_items]
    return train_set, heldout, probe


def comparison_config(method: str, profile=None, **overrides) -> TrainConfig:
    """The experiment's config for ``method``: same steps, batch, length and seed for all."""
    if method not in METHODS:
        raise ValueError(f"method={method!r}: choose one of {METHODS}")
    p = profile or get_profile()
    base = dict(method=method, learning_rate=LEARNING_RATES[method], lora_r=8, lora_alpha=16,
                steps=p.pick(smoke=2, cpu=16, gpu=200), batch_size=p.pick(smoke=2, cpu=4, gpu=16),
                max_length=p.pick(smoke=64, cpu=128, gpu=256), seed=0)
    return TrainConfig(**{**base, **overrides}).validate()


def heldout_scores(model, tokenizer, records) -> dict:
    """The held-out measure every method gets: ``heldout_loss`` (nats per reply token, over all
    records) and ``heldout_scores``, each record's (summed loss, reply tokens), kept so that two
    methods can be compared record by record (:func:`loss_difference_noise`)."""
    per_record = reply_losses(model, tokenizer, records, HELDOUT_MAX_LENGTH)
    return {"heldout_loss": mean_loss(per_record), "heldout_scores": [list(x) for x in per_record]}


def save_checkpoint(model, method: str, folder: Path) -> int:
    """Save the adapter (LoRA/DoRA/QLoRA) or the whole model (full) as safetensors; return the
    bytes of the weight files. An earlier checkpoint there is replaced only once the new one is
    complete (``labkit.files``)."""
    with files.replacing_folder(folder) as new:
        model.save_pretrained(new, safe_serialization=True)
        if method != "full":   # record the base by its hub id, not this machine's cache path
            from .model_card import base_hub_id
            from .serving import make_portable

            make_portable(Path(new) / "adapter_config.json", base_hub_id(model))
    return sum(f.stat().st_size for f in Path(folder).glob("*.safetensors"))


def step_time(history) -> float:
    """Median seconds per optimizer step (the first step, with its warm-up, left out)."""
    t = [r["elapsed_s"] for r in history.rows]
    diffs = [b - a for a, b in zip(t, t[1:])]
    return statistics.median(diffs) if diffs else (t[0] if t else float("nan"))


def base_metrics(profile=None, save: bool = True) -> dict:
    """Held-out loss and probe accuracy of the untuned model (the reference for every method)."""
    p = profile or get_profile()
    _, heldout, probe = task_data(p)
    model, tok = load_model()
    result = {"method": "base", "profile": p.name, **heldout_scores(model, tok, heldout),
              "probe_accuracy": cloze_accuracy(model, tok, probe), "heldout_items": len(heldout),
              "probe_items": len(probe)}
    if save:
        _save(result)
    return result


def run_method(method: str, profile=None, snapshot_every: int | None = None, save: bool = True,
               keep_checkpoint: bool | None = None, live: bool = False, **overrides) -> dict:
    """Train ``method`` on the task and measure everything; save the JSON (and the adapter)."""
    from .lora import WeightSnapshots

    p = profile or get_profile()
    cfg = comparison_config(method, p, **overrides)
    train_set, heldout, probe = task_data(p)
    model, tok = load_model(quantization="4bit" if method == "qlora" else None)
    weights_mb = footprint_bytes(model) / 2**20
    start_metrics = {}
    if method == "qlora":  # its starting point is the 4-bit model, not the fp32 base
        start_metrics = {"start_heldout_loss": reply_loss(model, tok, heldout, HELDOUT_MAX_LENGTH),
                         "start_probe_accuracy": cloze_accuracy(model, tok, probe)}
    callbacks = []
    if snapshot_every and method != "qlora":
        callbacks.append(WeightSnapshots("q_proj", every=snapshot_every, method=method))
    start, start_mb = time.perf_counter(), PeakMemory().current_mb()  # weights included: counted once below
    res = train(model, tok, train_set, cfg, profile=p, live=live, label=method, callbacks=callbacks)
    model = res.model
    # another seed's run (a measure of run-to-run noise) keeps its own folder: the seed-0 adapter stays
    folder = output_dir() / (f"{method}_checkpoint" if cfg.seed == 0 else f"{method}_seed{cfg.seed}_checkpoint")
    disk = save_checkpoint(model, method, folder)
    if not (keep_checkpoint if keep_checkpoint is not None else method != "full"):
        import shutil

        shutil.rmtree(folder, ignore_errors=True)
    scores = heldout_scores(model, tok, heldout)
    result = {
        "method": method, "profile": p.name, "config": res.config.to_dict(),
        **scores, "heldout_perplexity": math.exp(scores["heldout_loss"]),
        "trainable_params": count_parameters(model, trainable_only=True),
        "total_params": count_parameters(model) - (0 if method == "full" else count_parameters(model, trainable_only=True)),
        "weights_mb": weights_mb,
        "peak_memory_mb": weights_mb + max(0.0, res.history.peak_memory_mb - start_mb),
        "peak_memory_measure": f"weights + training's peak above its start ({measure()})",
        "step_time_s": step_time(res.history),
        "disk_mb": disk / 2**20,
        "probe_accuracy": cloze_accuracy(model, tok, probe),
        "train_losses": res.history.losses, "wall_s": time.perf_counter() - start,
        "stopped": res.history.stopped, "heldout_items": len(heldout), "probe_items": len(probe),
        "magnitude_direction": callbacks[0].rows if callbacks else [],
        **start_metrics,
    }
    if save:
        _save(result)
    result["model"], result["tokenizer"] = model, tok
    return result


def _save(result: dict) -> Path:
    folder = output_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{result['method']}.json"
    clean = {k: v for k, v in result.items() if k not in ("model", "tokenizer")}
    return files.write_text(path, json.dumps(clean, indent=1))


def load_results(profile=None) -> dict[str, dict]:
    """Saved results of this profile, by method (``base`` included when present)."""
    p = profile or get_profile()
    out = {}
    for path in sorted(output_dir().glob("*.json")):
        r = json.loads(path.read_text())
        if r.get("profile") == p.name:
            out[r["method"]] = r
    return out


def finished(result: dict) -> bool:
    """Whether a saved run trained to its end (or to early stopping): a diverged run's weights were
    restored (it scores the base model) and an interrupted one stopped part way."""
    stopped = result.get("stopped", "finished")
    return stopped == "finished" or stopped.startswith("early stopping")


def ensure_results(methods=METHODS, profile=None, **run_kwargs) -> dict[str, dict]:
    """Saved results for ``methods`` (and the base model), computing the missing ones, those whose
    run did not finish and those saved without per-record held-out scores."""
    p = profile or get_profile()
    results = load_results(p)
    if "heldout_scores" not in results.get("base", {}):
        results["base"] = base_metrics(p)
    for m in methods:
        saved = results.get(m)
        if saved is not None and finished(saved) and "heldout_scores" in saved:
            continue
        if saved is not None:
            why = (f"the saved run did not finish ({saved['stopped']})" if not finished(saved)
                   else "the saved run has no per-record held-out scores (saved by an older labkit)")
            print(f"[labkit] {m}: {why}; training it again")
        r = run_method(m, p, **run_kwargs)
        results[m] = {k: v for k, v in r.items() if k not in ("model", "tokenizer")}
    return results


def results_table(results: dict[str, dict]):
    """The side-by-side table: one row per method that has results."""
    import pandas as pd

    base = results.get("base")
    full = results.get("full")
    rows = []
    for m in ("base", *METHODS):
        r = results.get(m)
        if r is None:
            continue
        row = {"method": m, "heldout_loss": r["heldout_loss"],
               "heldout_perplexity": math.exp(r["heldout_loss"]),
               "trainable_params": r.get("trainable_params", 0),
               "trainable_percent": 100 * r.get("trainable_params", 0) / r["total_params"] if "total_params" in r else 0.0,
               "peak_memory_mb": r.get("peak_memory_mb"), "step_time_s": r.get("step_time_s"),
               "disk_mb": r.get("disk_mb"), "probe_accuracy": r["probe_accuracy"]}
        if base and full and m != "base":
            gain_full = base["heldout_loss"] - full["heldout_loss"]
            row["quality_ratio"] = (base["heldout_loss"] - r["heldout_loss"]) / gain_full if gain_full else float("nan")
        if base and m != "base":
            row["start_heldout_loss"] = r.get("start_heldout_loss", base["heldout_loss"])
            row["forgetting_points"] = 100 * (base["probe_accuracy"] - r["probe_accuracy"])
        rows.append(row)
    return pd.DataFrame(rows).set_index("method")


def _per_record(results: dict, methods) -> list | None:
    """Each method's per-record held-out scores, or None when one is missing or they were scored
    on different records."""
    scores = [results.get(m, {}).get("heldout_scores") for m in methods]
    if any(x is None for x in scores) or len({len(x) for x in scores}) != 1:
        return None
    return scores


def loss_difference_noise(results: dict, a: str, b: str) -> float:
    """About 95% of the chance difference between methods ``a`` and ``b``'s held-out losses, from
    their paired per-record losses (``claims.paired_noise``); ``inf`` without per-record scores."""
    scores = _per_record(results, (a, b))
    return paired_noise(per_token(scores[0]), per_token(scores[1])) if scores else float("inf")


def difference_noise(results: dict, a: str, b: str, rerun: dict | None = None) -> dict:
    """The noise of method ``a``'s held-out loss minus ``b``'s, from two sources: the held-out
    records (``records``: :func:`loss_difference_noise`) and, given ``rerun`` (``b`` trained again
    with only the seed changed, :func:`run_method` with ``seed=1``), training's own spread:
    ``seed gap``, how far ``b``'s two runs landed apart, and ``seed``, twice that (one gap is one
    draw of the difference chance alone makes between two runs; twice it is a rough counterpart of
    the two-standard-error bands elsewhere). ``noise`` is the larger of ``records`` and ``seed``."""
    records = loss_difference_noise(results, a, b)
    gap = abs(rerun["heldout_loss"] - results[b]["heldout_loss"]) if rerun else 0.0
    return {"records": records, "seed gap": gap, "seed": 2 * gap, "noise": max(records, 2 * gap)}


def quality_ratio_noise(results: dict, method: str, draws: int = 2000, seed: int = 0) -> float:
    """About 95% of the chance variation of ``method``'s quality ratio from which held-out records
    were drawn: two standard deviations of the ratio over the records resampled with replacement
    (``claims.bootstrap_noise``), the same records for base, full and ``method``."""
    scores = _per_record(results, ("base", "full", method))
    if scores is None:
        return float("inf")

    def ratio(rows):
        base, full, m = (sum(x[k][0] for k in rows) / max(1, sum(x[k][1] for k in rows)) for x in scores)
        return (base - m) / (base - full) if base != full else float("nan")

    return bootstrap_noise(ratio, len(scores[0]), draws=draws, seed=seed)


def comparison_figure(table, metric: str = "heldout_loss", ylabel: str | None = None, title: str | None = None):
    """A bar per method in the lab's colours."""
    import plotly.graph_objects as go

    from .plots import color

    fig = LabFigure(go.Bar(x=list(table.index), y=list(table[metric]),
                           marker_color=[color(m) for m in table.index],
                           text=[f"{v:.3g}" for v in table[metric]], textposition="outside"))
    return lab_layout(fig, 340, title=title or metric, xaxis_title="method", yaxis_title=ylabel or metric)


def sweep_run(label: str, profile=None, **overrides) -> dict:
    """A small, quick run for a sweep (rank, placement, DoRA vs LoRA): smaller batch and
    sequences than the main comparison, held-out loss on a subset (with each record's, for
    :func:`against_best`). Nothing is saved."""
    p = profile or get_profile()
    small = dict(steps=p.pick(smoke=1, cpu=8, gpu=100), batch_size=p.pick(smoke=1, cpu=2, gpu=8),
                 max_length=p.pick(smoke=64, cpu=64, gpu=256))
    method = overrides.pop("method", "lora")
    cfg = comparison_config(method, p, **{**small, **overrides})
    train_set, heldout, _ = task_data(p)
    model, tok = load_model(quantization="4bit" if method == "qlora" else None)
    weights_mb, start_mb = footprint_bytes(model) / 2**20, PeakMemory().current_mb()  # as in run_method
    res = train(model, tok, train_set, cfg, profile=p, live=False, label=label)
    return {"label": label, "method": method, "lora_r": cfg.lora_r,
            "target_modules": cfg.target_modules if isinstance(cfg.target_modules, str) else "+".join(cfg.target_modules),
            "trainable_params": count_parameters(res.model, trainable_only=True),
            **heldout_scores(res.model, tok, heldout[: p.pick(smoke=2, cpu=20, gpu=40)]),
            "step_time_s": step_time(res.history),
            "peak_memory_mb": weights_mb + max(0.0, res.history.peak_memory_mb - start_mb)}


def against_best(runs: list[dict]):
    """Each sweep run (:func:`sweep_run`) against the one with the lowest held-out loss: how far
    above it, the noise of that difference (``claims.paired_noise`` over the same held-out
    records) and whether it is a real difference or within noise. A ``pandas.DataFrame`` by label."""
    import pandas as pd

    best = min(runs, key=lambda r: r["heldout_loss"])
    rows = []
    for r in runs:
        above = r["heldout_loss"] - best["heldout_loss"]
        noise = (paired_noise(per_token(r["heldout_scores"]), per_token(best["heldout_scores"]))
                 if r is not best else 0.0)
        rows.append({"label": r["label"], "heldout_loss": r["heldout_loss"], "above the best": above, "noise": noise,
                     "reads": "the lowest" if r is best else ("worse" if above > noise else "within noise of the lowest")})
    return pd.DataFrame(rows).set_index("label")


def magnitude_direction_figure(results: dict[str, dict], methods=("full", "lora", "dora")):
    """The DoRA paper's Figure 2 on our model: ΔD (x) against ΔM (y), one panel per method, one
    point per (layer, checkpoint); the title gives each method's correlation."""
    import pandas as pd
    from plotly.subplots import make_subplots

    from .plots import color

    rows = [row for m in methods for row in (results.get(m) or {}).get("magnitude_direction", [])]
    df = pd.DataFrame(rows)
    present = [m for m in methods if not df.empty and (df["method"] == m).any()]
    corr = magnitude_direction_correlation(df)
    fig = make_subplots(rows=1, cols=max(1, len(present)), subplot_titles=[
        f"{m}: corr(ΔD, ΔM) = {corr.get(m, float('nan')):+.2f}" for m in present] or ["no snapshots"])
    for i, m in enumerate(present, start=1):
        d = df[df["method"] == m]
        fig.add_scatter(x=d["delta_d"], y=d["delta_m"], mode="markers", name=m, row=1, col=i,
                        marker=dict(color=color(m), size=6, opacity=0.7),
                        text=[f"step {s}, {l}" for s, l in zip(d["step"], d["layer"])])
        fig.update_xaxes(title_text="ΔD (mean 1 − cosine, direction change)", row=1, col=i)
    fig.update_yaxes(title_text="ΔM (mean |Δ row norm|)", row=1, col=1)
    lab_layout(fig, 380, top=80, title="Magnitude against direction change of q_proj, every layer and checkpoint")
    return LabFigure(fig)


def magnitude_direction_correlation(df) -> dict[str, float]:
    """Pearson correlation of ΔD and ΔM per method (the paper: negative for full fine-tuning and
    DoRA, positive for LoRA)."""
    out = {}
    if df is None or len(df) == 0:
        return out
    for m, d in df.groupby("method"):
        out[m] = float(d["delta_d"].corr(d["delta_m"])) if len(d) > 2 else float("nan")
    return out
