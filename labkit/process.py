"""The fine-tuning process: choose the method, score on held-out data, run a small grid.

    recommend(gpu_gb=24, model="llama-2-7b", quality="good enough", variants=3)
        -> Recommendation(method="lora", reasons=[...], estimates={...})
    decision_widget()                        # the same with controls and a chart
    reply_loss(model, tok, heldout_records)  # mean loss on the assistant's replies only
    run_grid({"learning_rate": [1e-4, 3e-4], "lora_r": [4, 16]}, run_one)  # results table

``recommend`` is built on :mod:`labkit.calculator` (the memory of each method, from the model's
real architecture: a name from ``labkit.lora.ARCHITECTURES``, a registry name or hub id, or an
``ArchShape``; a bare parameter count only gets an assumed Llama-like shape, and the reasons say
so) plus the rules of thumb of the lesson:

1. Only methods whose estimated memory fits the GPU are candidates.
2. Several variants of one model favour adapters: one base in memory serves them all, and each
   variant ships as a few MB instead of a full copy of the weights.
3. A need for the highest quality favours full fine-tuning where it fits (it can change every
   weight), then LoRA (16-bit base) over QLoRA (4-bit base, a little quality lost to quantisation).
4. Otherwise take the cheapest method that fits: LoRA if it fits, else QLoRA.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

from . import calculator
from .probes import mean_loss, per_token, reply_loss, reply_losses  # noqa: F401  (process.reply_loss: the lesson's name)
from .plots import LabFigure, Panel, lab_layout

QUALITY = ("good enough", "highest")
CANDIDATES = ("full", "lora", "qlora")


@dataclass
class Recommendation:
    method: str | None
    reasons: list[str]
    estimates: dict = field(default_factory=dict)  # method -> total GiB

    def text(self) -> str:
        head = f"Recommendation: {self.method.upper()}" if self.method else "Recommendation: none fits"
        return head + "\n" + "\n".join(f"- {r}" for r in self.reasons)


def recommend(gpu_gb: float, model, quality: str = "good enough", variants: int = 1,
              seq_len: int = 512, batch: int = 4, gradient_checkpointing: bool = True) -> Recommendation:
    """Full, LoRA or QLoRA for a GPU of ``gpu_gb`` GiB, ``model`` (an architecture name such as
    "llama-2-7b", an ``ArchShape``, or a bare parameter count), the quality need and the number
    of variants to serve, with the reasons (see the module docstring for the rules). The
    estimates use the dtypes the libraries allocate: full fine-tuning in bf16 with fp32 master
    weights (16 bytes a parameter with AdamW), LoRA on a bf16 base with fp32 adapters, QLoRA on
    NF4 blocks (see :func:`labkit.calculator.estimate`)."""
    if quality not in QUALITY:
        raise ValueError(f"quality={quality!r}: choose one of {QUALITY}")
    if not isinstance(variants, int) or variants < 1:
        raise ValueError(f"variants={variants!r}: must be a whole number of at least 1")
    if gpu_gb <= 0:
        raise ValueError(f"gpu_gb={gpu_gb!r}: must be > 0")
    kw = dict(seq_len=seq_len, batch=batch, gradient_checkpointing=gradient_checkpointing, weight_dtype="bf16")
    est = {m: calculator.estimate(model, method=m, **kw) for m in CANDIDATES}
    gib = {m: b.total_gb for m, b in est.items()}
    fit = {m: calculator.fits(b, gpu_gb) for m, b in est.items()}
    lora = est["lora"]
    arch = lora.arch
    n = lora.total_params
    size = f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"
    reasons = [lora.shape_note or (f"{arch.name}: {size} parameters, {arch.layers} layers x {arch.hidden} hidden "
                                   "(its published config)"),
               f"estimated training memory (seq {seq_len}, batch {batch}"
               + (", gradient checkpointing" if gradient_checkpointing else "") + "): "
               + ", ".join(f"{m} {gib[m]:.1f} GiB ({'fits' if fit[m] else 'too big'})" for m in CANDIDATES)
               + f" on a {gpu_gb:.1f} GiB GPU"]
    if not any(fit.values()):
        reasons.append("nothing fits: use a smaller model, shorter sequences, a smaller batch, "
                       "or more GPUs")
        return Recommendation(None, reasons, gib)
    full_copy_gb = lora.total_params * 2 / calculator.GIB       # a fine-tuned copy saved in bf16
    adapter_mib = lora.adapter_size / 2**20                      # PEFT saves the fp32 adapter
    if variants > 1:
        reasons.append(f"{variants} variants: as full copies (bf16) {variants * full_copy_gb:.1f} GiB of weights "
                       f"to store and load; as LoRA adapters (r={lora.inputs['r']}, fp32 as PEFT saves them) "
                       f"one base ({full_copy_gb:.1f} GiB) plus {variants} x {adapter_mib:.0f} MiB, and one "
                       "server switches between them")
    if quality == "highest" and fit["full"] and variants <= 2:
        reasons.append("highest quality needed and full fine-tuning fits: it can change every weight")
        return Recommendation("full", reasons, gib)
    if quality == "highest" and fit["full"]:
        reasons.append("full fine-tuning would fit, but serving many full copies costs more than "
                       "the quality it may add; LoRA usually comes close")
    if fit["lora"]:
        why = "LoRA fits: 16-bit base weights (no quantisation loss), a small adapter to train and ship"
        if quality == "highest" and not fit["full"]:
            why += "; full fine-tuning does not fit"
        reasons.append(why)
        return Recommendation("lora", reasons, gib)
    reasons.append("only QLoRA fits: the base's linear layers are stored in 4 bits (NF4), which costs a "
                   "little quality but makes the model fit")
    return Recommendation("qlora", reasons, gib)


# The models the decision widget offers: each a real architecture (labkit.lora.ARCHITECTURES).
MODELS = ("smollm2-135m", "smollm2-360m", "qwen2.5-0.5b", "llama-3.2-1b", "llama-3.2-3b", "llama-2-7b",
          "mistral-7b", "llama-3-8b", "llama-2-13b", "codellama-34b", "llama-2-70b", "llama-3-70b")


def decision_widget(gpu: str = "T4", model: str = "llama-2-7b", quality: str = "good enough",
                    variants: int = 1):
    """Controls (GPU: a short name such as "T4" or a ``calculator.GPUS`` key; model: one of
    ``MODELS``; quality need; variants) and a bar chart of each method's memory against the GPU,
    titled with the recommendation. Returns an object with ``.controls``, ``.figure``,
    ``.recommendation``, ``.reasons`` (an HTML widget) and ``.widget``."""
    import ipywidgets as W

    from .plots import COLORS

    class DecisionWidget:
        pass

    self = DecisionWidget()
    self.controls = {
        "gpu": W.Dropdown(options=list(calculator.GPUS), value=gpu if gpu in calculator.GPUS
                          else calculator.gpu_label(gpu), description="GPU"),
        "model": W.Dropdown(options=list(MODELS), value=model, description="model"),
        "quality": W.ToggleButtons(options=list(QUALITY), value=quality, description="quality"),
        "variants": W.IntSlider(value=variants, min=1, max=20, description="variants"),
    }
    self.figure = lab_layout(LabFigure(), 380, top=70, xaxis_title="method",
                             yaxis_title="estimated training memory (GiB)", showlegend=False)
    self.figure.add_bar(x=list(CANDIDATES), y=[0, 0, 0], marker_color=[COLORS[m] for m in CANDIDATES])
    self.figure.add_scatter(x=list(CANDIDATES), y=[0, 0, 0], mode="lines", name="GPU memory (GiB)",
                            line=dict(color="black", dash="dash"))
    self.reasons = W.HTML()

    def update(*_):
        c = {k: w.value for k, w in self.controls.items()}
        gpu_gb = calculator.GPUS[c["gpu"]]
        rec = recommend(gpu_gb, c["model"], c["quality"], c["variants"])
        self.recommendation = rec
        with self.figure.batch_update():
            self.figure.data[0].y = [rec.estimates[m] for m in CANDIDATES]
            self.figure.data[1].y = [gpu_gb] * 3
            self.figure.layout.title = (f"{c['model']} on {c['gpu']}: "
                                        + (f"use {rec.method.upper()}" if rec.method else "nothing fits"))
        self.reasons.value = "<ul>" + "".join(f"<li>{r}</li>" for r in rec.reasons) + "</ul>"

    for w in self.controls.values():
        w.observe(update, names="value")
    update()
    self.widget = Panel([W.HBox([self.controls["gpu"], self.controls["model"]]),
                         W.HBox([self.controls["quality"], self.controls["variants"]]),
                         self.figure, self.reasons])
    return self


# --- the iterative loop -----------------------------------------------------------------------

def grid(**values) -> list[dict]:
    """Every combination: ``grid(learning_rate=[1e-4, 3e-4], lora_r=[4, 16])`` -> 4 dicts."""
    for k, v in values.items():
        if not isinstance(v, (list, tuple)) or not v:
            raise ValueError(f"{k}={v!r}: give a non-empty list of values")
    keys = list(values)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(values[k] for k in keys))]


def run_grid(points, run_one, sort_by: str | None = None, ascending: bool = True):
    """Call ``run_one(point) -> dict of results`` for each point (a dict of settings) and return a
    DataFrame: one row per point, settings then results, sorted by ``sort_by`` if given."""
    import pandas as pd

    rows = []
    for point in points:
        result = run_one(dict(point))
        rows.append({**point, **result})
    frame = pd.DataFrame(rows)
    if sort_by is not None:
        frame = frame.sort_values(sort_by, ascending=ascending, key=lambda s: s.map(
            lambda x: math.inf if x is None or (isinstance(x, float) and math.isnan(x)) else x))
        frame = frame.reset_index(drop=True)
    return frame


def train_and_score(train_records, heldout_records, label: str = "run", eval_records=None,
                    score_max_length: int = 256, **train_overrides) -> dict:
    """Fine-tune a fresh copy of the default model on ``train_records`` (``labkit.train`` with
    ``train_overrides``) and score it with :func:`reply_loss` on ``heldout_records``.
    Returns the held-out loss, each held-out record's loss per token (``heldout_per_record``, to
    pair with another run's), the training summary and the history."""
    from .models import load_model
    from .training import train

    model, tok = load_model()
    result = train(model, tok, train_records, eval_data=eval_records, live=False, label=label,
                   **train_overrides)
    per_record = reply_losses(result.model, tok, heldout_records, max_length=score_max_length)
    return {"heldout_loss": mean_loss(per_record), "heldout_per_record": per_token(per_record),
            **result.history.summary(), "history": result.history}


def validation_by_record(tokenizer, records, max_length: int = 256, every: int = 2):
    """A ``transformers.TrainerCallback`` for ``labkit.train(callbacks=[...])`` that scores every
    validation record (:func:`reply_losses`) after each ``every`` optimizer steps: ``.rows``, one
    ``{"step", "per_record"}`` per scoring, the paired scores that give a change in validation loss
    its noise band (:func:`overfitting`). It is the run's validation: no ``eval_data`` is needed."""
    from transformers import TrainerCallback

    if not (isinstance(every, int) and every >= 1):
        raise ValueError(f"every={every!r}: score the validation records every N steps, N a whole number >= 1")

    class ValidationByRecord(TrainerCallback):
        def __init__(self):
            self.rows = []

        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step % every == 0:
                self.rows.append({"step": state.global_step,
                                  "per_record": reply_losses(model, tokenizer, records, max_length=max_length)})

    return ValidationByRecord()


def overfitting(history, by_record) -> dict:
    """Did validation loss turn up while training loss fell? From :func:`validation_by_record`'s
    scores: the evaluation with the lowest loss and the last one (mean per-record loss, the same
    records each time), the rise from lowest to last, its noise band (``claims.paired_noise``: two
    standard errors of the per-record rises) and the verdict (``claims.verdict``): ``True`` when the
    training loss fell and validation rose by more than the band; ``False`` when training loss did
    not fall or the last evaluation was the lowest. The lowest of several noisy evaluations sits a
    little low by chance, so the rise is, if anything, overstated."""
    from .claims import VERDICTS, paired_noise, verdict

    evals = [{"step": r["step"], "per_record": per_token(r["per_record"])} for r in by_record.rows]
    if not evals:
        raise ValueError("no validation scores: train for at least `every` steps with validation_by_record's callback")
    for e in evals:
        e["loss"] = sum(e["per_record"]) / len(e["per_record"])
    best, last = min(evals, key=lambda e: e["loss"]), evals[-1]
    rise = last["loss"] - best["loss"]
    train_fell = history.rows[-1]["loss"] < history.rows[0]["loss"]
    band = paired_noise(last["per_record"], best["per_record"]) if best is not last else 0.0
    judged = verdict(rise, band) if train_fell and best is not last else False
    return {"lowest": best["loss"], "lowest step": best["step"], "last": last["loss"], "last step": last["step"],
            "rise": rise, "noise band": band, "records": len(last["per_record"]), "training loss fell": train_fell,
            "verdict": judged, "reads": VERDICTS[judged], "curve": [(e["step"], e["loss"]) for e in evals]}


def packing_comparison(records, steps: int = 4, batch_size: int = 8, max_length: int = 128,
                       seed: int = 0, **train_overrides):
    """Train a fresh copy of the default model twice on plain-text ``records``, one paragraph per
    row (padded to the longest in the batch) and packed (``packing=True``: rows filled end to end),
    and measure both. Returns a ``pandas.DataFrame``: real tokens per step, the share of the
    ``batch_size x max_length`` slots they fill, seconds per step and tokens per second (the first
    step, which includes set-up, is left out)."""
    import pandas as pd

    from .models import load_model
    from .training import train

    if steps < 2:
        raise ValueError(f"steps={steps!r}: need at least 2 (the first step is left out of the timing)")
    rows = []
    for packing in (False, True):
        model, tok = load_model()
        result = train(model, tok, records, method="lora", steps=steps, batch_size=batch_size,
                       max_length=max_length, seed=seed, packing=packing, live=False,
                       label="packed" if packing else "one text per row", **train_overrides)
        timed = result.history.rows[1:]
        tokens = sum(r["tokens"] for r in timed)
        seconds = sum(r["tokens"] / r["tokens_per_s"] for r in timed)
        rows.append({"batches": "packed" if packing else "one text per row, padded",
                     "real tokens per step": tokens / len(timed),
                     "share of the slots used": tokens / len(timed) / (batch_size * max_length),
                     "seconds per step": seconds / len(timed), "tokens per second": tokens / seconds,
                     "last loss": result.history.losses[-1]})
    return pd.DataFrame(rows)


def early_stop_step(evals: list[dict], patience: int, min_delta: float = 1e-4) -> int | None:
    """The step at which early stopping with ``patience`` would stop (the rule ``labkit.train``
    uses), or None if validation loss kept improving often enough."""
    best, bad = math.inf, 0
    for ev in evals:
        if ev["eval_loss"] < best - min_delta:
            best, bad = ev["eval_loss"], 0
        else:
            bad += 1
            if bad >= patience:
                return ev["step"]
    return None


def clean_against_noisy(clean_run: dict, noisy_runs: dict) -> list[dict]:
    """For each noise rate, whether the small clean set beat the larger noisy one on the same
    held-out records: the mean per-record difference in loss (noisy minus clean; positive means
    clean won), the noise band of that difference (``claims.paired_noise``: two standard errors
    over the records) and the verdict (``claims.verdict``): "holds" when clean won by more than the
    band, "does not hold" when noisy did, else "within noise"."""
    from .claims import VERDICTS, paired_noise, verdict

    rows = []
    for rate, run in sorted(noisy_runs.items()):
        clean, noisy = clean_run["heldout_per_record"], run["heldout_per_record"]
        diff = sum(n - c for n, c in zip(noisy, clean, strict=True)) / len(clean)
        band = paired_noise(noisy, clean)
        v = verdict(diff, band)
        rows.append({"noise rate": rate, "loss, small clean": clean_run["heldout_loss"],
                     "loss, larger noisy": run["heldout_loss"], "noisy minus clean (per record)": diff,
                     "noise band": band, "verdict": v, "reads": VERDICTS[v], "records": len(clean)})
    return rows


def noise_widget(base_loss: float, clean_loss: float, noisy_losses: dict, small_n: int, large_n: int,
                 verdicts: dict | None = None):
    """A slider over the precomputed noise rates: held-out loss of the base model, the small clean
    set and the ten-times-larger noisy set at the chosen rate. ``verdicts`` (rate -> the
    ``verdict`` of :func:`clean_against_noisy`) lets the title say when the difference is within
    noise. Returns an object with ``.controls``, ``.figure`` and ``.widget``."""
    import ipywidgets as W

    from .plots import COLORS

    class NoiseWidget:
        pass

    rates = sorted(noisy_losses)
    self = NoiseWidget()
    self.controls = {"noise_rate": W.SelectionSlider(options=rates, value=rates[-1], description="noise rate")}
    self.figure = lab_layout(LabFigure(), 360, top=70, yaxis_title="held-out loss on replies (nats/token)")
    self.figure.add_bar(x=[], y=[], marker_color=[COLORS["base"], COLORS["lora"], COLORS["after"]])

    def update(*_):
        rate = self.controls["noise_rate"].value
        noisy = noisy_losses[rate]
        labels = ["base model", f"{small_n} clean records", f"{large_n} records, {rate:.0%} noisy"]
        winner = "the small clean set" if clean_loss < noisy else "the large noisy set"
        title = f"At {rate:.0%} noise, {winner} gives the lower held-out loss"
        if verdicts is not None and verdicts.get(rate) == "within noise":
            title = f"At {rate:.0%} noise, the two are within noise of each other"
        with self.figure.batch_update():
            self.figure.data[0].x, self.figure.data[0].y = labels, [base_loss, clean_loss, noisy]
            self.figure.layout.title = title

    self.controls["noise_rate"].observe(update, names="value")
    update()
    self.widget = Panel([self.controls["noise_rate"], self.figure])
    return self
