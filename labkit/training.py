"""Train: a thin layer over TRL's ``SFTTrainer`` and PEFT's configs.

    result = train(model, tok, data, TrainConfig(method="lora", learning_rate=2e-4))
    result.history.to_frame()      # per-step loss, learning rate, gradient norm, tokens/s, memory
    result.model                   # the trained model (a PeftModel for LoRA/DoRA/QLoRA)

``train`` changes the model you pass (full fine-tuning updates its weights; LoRA adds adapters to
it). Loading a fresh copy takes well under a second, so keep one if you want a "before".

Guards: bad hyperparameters raise ``ValueError`` naming the parameter before any work; a
non-finite loss stops training before its update is applied (the weights stay finite) and the
history says at which step; Ctrl-C / "interrupt kernel" returns the history so far with the model
usable. Where training reaches into TRL's or PEFT's internals (speed on the CPU, precision under
bf16), the code is in ``labkit.patches``, switched by ``TrainConfig`` fields.
"""
from __future__ import annotations

import json
import math
import tempfile
import time
from dataclasses import asdict, dataclass, field

import torch
from transformers import TrainerCallback

from .guards import DivergenceGuard, interrupts_deferred
from .memory import PeakMemory
from .patches import NonFiniteLoss, guarded, quiet
from .experiment import ExperimentConfig
from .profiles import profile as get_profile
from .reproducibility import seeded
from .threads import size_threads
from .plots import LabFigure, lab_layout

METHODS = ("full", "lora", "dora", "qlora")
SCHEDULES = ("constant", "constant_with_warmup", "linear", "cosine")
PACKING_STRATEGIES = ("wrapped", "bfd")
TRAINING_FORMATS = ("text", "messages", "prompt_completion")


# --- experiment configs -----------------------------------------------------------------------

def is_whole(value, minimum: int = 1) -> bool:
    """A whole number (``True`` does not count) of at least ``minimum``."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def is_number(value, minimum: float = 0.0) -> bool:
    """A finite number (``True`` does not count) of at least ``minimum``."""
    return (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            and value >= minimum)


@dataclass
class TrainConfig(ExperimentConfig):
    """One experiment's settings. JSON-serialisable; ``None`` means "take it from the profile"."""
    method: str = "lora"
    learning_rate: float = 2e-4
    steps: int | None = None
    batch_size: int | None = None
    max_length: int | None = None
    schedule: str = "constant"
    warmup_steps: int = 0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    target_modules: str | list = "all-linear"
    eval_every: int | None = None
    early_stopping_patience: int | None = None
    mixed_precision: str | None = None
    packing: bool = False   # plain text only: fill every row with max_length tokens (more per step)
    seed: int = 0
    # Speed and precision switches, on or off as measured in benchmarks/RESULTS.md (labkit/patches.py):
    cpu_full_logits: bool = True      # on the CPU, the model's own loss instead of TRL's chunked LM head
    adapter_sums_fp32: bool = False   # under bf16, add LoRA's output in float32 (DPO needs it; SFT does not)
    packing_strategy: str = "wrapped"  # with packing: texts end to end; TRL's "bfd" keeps them apart (slower here)
    fill_uninitialized_memory: bool = False  # deterministic mode's NaN-filling of new tensors (a debugging aid)
    gradient_checkpointing: bool | None = None  # recompute activations in the backward pass: less memory,
    #                                              more time; None: the profile's (off on the CPU, on a GPU)

    def validate(self) -> "TrainConfig":
        """Raise ``ValueError`` naming the first bad parameter."""
        need = self.require
        need(self.method in METHODS, "method", f"choose one of {METHODS}")
        need(is_number(self.learning_rate) and self.learning_rate > 0, "learning_rate", "must be a positive number")
        for name in ("steps", "batch_size", "max_length", "eval_every", "early_stopping_patience"):
            value = getattr(self, name)
            need(value is None or is_whole(value, 1), name, "must be a whole number of at least 1")
        need(self.max_length is None or self.max_length >= 8, "max_length", "must be at least 8 tokens")
        need(self.schedule in SCHEDULES, "schedule", f"choose one of {SCHEDULES}")
        need(is_whole(self.warmup_steps, 0), "warmup_steps", "must be a whole number >= 0")
        need(is_number(self.weight_decay), "weight_decay", "must be a finite number >= 0")
        need(self.max_grad_norm is None or (is_number(self.max_grad_norm) and self.max_grad_norm > 0),
             "max_grad_norm", "must be a finite number > 0 (or None for no clipping)")
        if self.method != "full":
            need(is_whole(self.lora_r, 1), "lora_r", "the LoRA rank must be a whole number of at least 1")
            need(is_number(self.lora_alpha) and self.lora_alpha > 0, "lora_alpha", "must be a number > 0")
            need(is_number(self.lora_dropout) and self.lora_dropout < 1, "lora_dropout", "must be a number in [0, 1)")
            need(self.target_modules == "all-linear" or (
                isinstance(self.target_modules, (list, tuple)) and self.target_modules
                and all(isinstance(m, str) and m for m in self.target_modules)),
                "target_modules", "must be 'all-linear' or a non-empty list of layer names")
        need(self.mixed_precision in (None, "no", "bf16", "fp16"), "mixed_precision",
             "choose None (from the profile), 'no', 'bf16' or 'fp16'")
        for name in ("packing", "cpu_full_logits", "adapter_sums_fp32", "fill_uninitialized_memory"):
            need(isinstance(getattr(self, name), bool), name, "must be True or False")
        need(self.gradient_checkpointing is None or isinstance(self.gradient_checkpointing, bool),
             "gradient_checkpointing", "must be True, False or None (the profile's)")
        need(self.packing_strategy in PACKING_STRATEGIES, "packing_strategy", f"choose one of {PACKING_STRATEGIES}")
        need(is_whole(self.seed, 0), "seed", "must be a non-negative whole number")
        return self

    def resolved(self, profile=None) -> "TrainConfig":
        """A copy with every ``None`` filled in from the profile."""
        p = profile or get_profile()
        values = asdict(self)
        for name, from_profile in (("steps", p.train_steps), ("batch_size", p.batch_size),
                                   ("max_length", p.max_length), ("mixed_precision", p.mixed_precision),
                                   ("gradient_checkpointing", p.gradient_checkpointing)):
            if values[name] is None:
                values[name] = from_profile
        return TrainConfig(**values)


@dataclass
class History:
    """What happened during training, one row per optimizer step."""
    rows: list[dict] = field(default_factory=list)
    evals: list[dict] = field(default_factory=list)
    stopped: str = "finished"
    wall_s: float = 0.0
    peak_memory_mb: float = 0.0
    config: dict = field(default_factory=dict)

    @property
    def losses(self) -> list[float]:
        return [r["loss"] for r in self.rows]

    @property
    def eval_losses(self) -> list[float]:
        return [e["eval_loss"] for e in self.evals]

    def to_frame(self):
        import pandas as pd

        return pd.DataFrame(self.rows)

    def summary(self) -> dict:
        tps = [r["tokens_per_s"] for r in self.rows if r.get("tokens_per_s")]
        return {
            "steps": len(self.rows),
            "first_loss": self.rows[0]["loss"] if self.rows else None,
            "last_loss": self.rows[-1]["loss"] if self.rows else None,
            "last_eval_loss": self.evals[-1]["eval_loss"] if self.evals else None,
            "tokens_per_s": sum(tps) / len(tps) if tps else None,
            "wall_s": round(self.wall_s, 2),
            "peak_memory_mb": round(self.peak_memory_mb, 1),
            "stopped": self.stopped,
        }

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TrainResult:
    model: object
    history: History
    config: TrainConfig


# --- PEFT -------------------------------------------------------------------------------------

def lora_config(cfg: TrainConfig, task_type: str = "CAUSAL_LM"):
    """The PEFT ``LoraConfig`` for a LoRA, DoRA or QLoRA run."""
    from peft import LoraConfig

    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=cfg.target_modules, use_dora=cfg.method == "dora",
                      bias="none", task_type=task_type)


def is_4bit(model) -> bool:
    return bool(getattr(model, "is_loaded_in_4bit", False)) or any(
        type(m).__name__ == "Linear4bit" for m in model.modules())


def prepare_model(model, cfg: TrainConfig):
    """Full fine-tuning trains every weight; LoRA/DoRA/QLoRA freeze them and add adapters."""
    if cfg.method == "full":
        if is_4bit(model):
            raise ValueError("method='full' cannot train 4-bit weights; use method='qlora'")
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    from peft import PeftModel, get_peft_model, prepare_model_for_kbit_training

    if cfg.method == "qlora":
        if not is_4bit(model):
            raise ValueError("method='qlora' needs a 4-bit model: load_model(quantization='4bit')")
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    elif is_4bit(model):
        raise ValueError(f"method={cfg.method!r} on a 4-bit model is QLoRA: use method='qlora'")
    if isinstance(model, PeftModel):
        raise ValueError("this model already has adapters; load a fresh model to add new ones")
    check_target_modules(model, cfg.target_modules)
    return get_peft_model(model, lora_config(cfg))


def check_target_modules(model, target_modules) -> None:
    """PEFT accepts a list of layer names if any one matches; a typo in another is then silently
    ignored. Here every name must match a linear layer of ``model``."""
    if target_modules == "all-linear":
        return
    linear = {name.rsplit(".", 1)[-1] for name, m in model.named_modules()
              if isinstance(m, torch.nn.Linear) or type(m).__name__.startswith("Linear")}
    unknown = [t for t in target_modules if t not in linear]
    if unknown:
        raise ValueError(f"target_modules: {unknown} match no linear layer of this model; its linear "
                         f"layers are named {sorted(linear)}")


# --- data -------------------------------------------------------------------------------------

def as_trl_dataset(dataset, name: str = "train_data"):
    """Check every record as the file loaders do (``labkit.data.check_records``: an error names
    ``name[i]`` and the field), then keep only the columns TRL needs. Chat records become
    prompt/completion pairs, so that the loss is computed on the assistant's reply only."""
    from datasets import Dataset

    from .data import check_records, duplicate_report

    records = dataset if isinstance(dataset, list) else None
    if records is None and not isinstance(dataset, Dataset):
        raise ValueError(f"{name} must be a list of records or a datasets.Dataset, got {type(dataset).__name__}")
    check_records(records if records is not None else dataset, name, TRAINING_FORMATS)
    repeats = duplicate_report(records if records is not None else dataset, key=lambda r: json.dumps(
        {k: r[k] for k in ("text", "messages", "prompt", "completion") if k in r}, sort_keys=True))
    if repeats:
        first, again = repeats[0]
        print(f"[labkit] {name}: {len(repeats)} record(s) repeat an earlier one exactly (e.g. {name}[{again - 1}] "
              f"= {name}[{first - 1}]); they are trained on as many times as they appear")
    if records is not None:
        dataset = Dataset.from_list(records)
    cols = set(dataset.column_names)
    if "messages" in cols:
        return dataset.map(lambda r: {"prompt": r["messages"][:-1], "completion": r["messages"][-1:]},
                           remove_columns=dataset.column_names)
    for needed in (("prompt", "completion"), ("text",)):
        if set(needed) <= cols:
            return dataset.select_columns(list(needed))
    raise ValueError(f"training data needs 'text', 'messages' or 'prompt'+'completion' columns; "
                     f"got {sorted(cols)}")


# --- callbacks --------------------------------------------------------------------------------

def in_notebook() -> bool:
    try:
        from IPython import get_ipython

        return get_ipython() is not None and "IPKernelApp" in get_ipython().config
    except Exception:
        return False


class HistoryCallback(TrainerCallback):
    """Collects one row per step: loss, learning rate, gradient norm, tokens/s, memory."""

    def __init__(self, history: History, memory: PeakMemory, patience: int | None = None,
                 on_row=None):
        self.history, self.memory, self.patience, self.on_row = history, memory, patience, on_row
        self._t0 = self._step_start = time.perf_counter()
        self._tokens_at_step_start = 0
        self._best, self._bad_evals = math.inf, 0

    def on_step_begin(self, args, state, control, **kw):
        self._step_start = time.perf_counter()
        self._tokens_at_step_start = state.num_input_tokens_seen

    def on_log(self, args, state, control, logs=None, **kw):
        logs = logs or {}
        if "loss" in logs:
            elapsed = time.perf_counter() - self._step_start
            tokens = state.num_input_tokens_seen - self._tokens_at_step_start
            row = {"step": state.global_step, "loss": float(logs["loss"]),
                   "learning_rate": float(logs.get("learning_rate", float("nan"))),
                   "grad_norm": float(logs.get("grad_norm", float("nan"))),
                   "tokens": int(tokens), "tokens_per_s": tokens / elapsed if elapsed > 0 else None,
                   "elapsed_s": time.perf_counter() - self._t0,
                   "peak_memory_mb": self.memory.read()}
            self.history.rows.append(row)
            if self.on_row:
                self.on_row(row, None)
        if "eval_loss" in logs:
            ev = {"step": state.global_step, "eval_loss": float(logs["eval_loss"])}
            self.history.evals.append(ev)
            if self.on_row:
                self.on_row(None, ev)
            if self.patience:
                if ev["eval_loss"] < self._best - 1e-4:
                    self._best, self._bad_evals = ev["eval_loss"], 0
                else:
                    self._bad_evals += 1
                    if self._bad_evals >= self.patience:
                        self.history.stopped = (f"early stopping at step {state.global_step}: "
                                                f"validation loss did not improve for {self.patience} evaluations")
                        control.should_training_stop = True


class Progress:
    """Steps done, time left and the last loss. In a notebook: one HTML line redrawn in place
    (it renders in every front end and in static HTML, unlike a widget bar); elsewhere a tqdm bar."""

    def __init__(self, total: int, label: str = "training"):
        self.total, self.label, self.done, self.loss = total, label, 0, None
        self.start, self.handle, self.bar = time.perf_counter(), None, None
        if in_notebook():
            from IPython.display import HTML, display

            self.handle = display(HTML(self.html()), display_id=True)
        else:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=label, unit="step")

    def html(self) -> str:
        import html

        elapsed = time.perf_counter() - self.start
        text = f"{html.escape(self.label)}: {self.done}/{self.total} steps, {elapsed:.0f} s"
        if 0 < self.done < self.total:
            text += f", about {elapsed / self.done * (self.total - self.done):.0f} s left"
        if self.loss is not None:
            text += f", loss {self.loss:.3f}"
        return (f'<div><progress value="{self.done}" max="{max(self.total, 1)}" style="width:200px">'
                f"</progress> <code>{text}</code></div>")

    def update(self, step: int, loss: float | None = None):
        self.done, self.loss = step, loss if loss is not None else self.loss
        if self.handle is not None:
            from IPython.display import HTML

            self.handle.update(HTML(self.html()))
        else:
            self.bar.update(step - self.bar.n)
            if loss is not None:
                self.bar.set_postfix(loss=f"{loss:.3f}")

    def close(self):
        if self.bar is not None:
            self.bar.close()


class ProgressCallback(TrainerCallback):
    """A :class:`Progress` line, updated at every logged step."""

    def __init__(self, total: int, label: str = "training"):
        self.total, self.label, self.bar = total, label, None

    def on_train_begin(self, args, state, control, **kw):
        self.bar = Progress(self.total, self.label)

    def on_log(self, args, state, control, logs=None, **kw):
        if self.bar is not None and logs and "loss" in logs:
            self.bar.update(state.global_step, logs["loss"])

    def close(self):
        if self.bar is not None:
            self.bar.close()


class LiveLossPlot:
    """A loss chart that draws each step as training goes (notebooks only); the validation line
    appears with the first evaluation."""

    def __init__(self, title: str = "Training loss", name: str = "train loss", color: str | None = None,
                 figure=None, yaxis_title: str = "loss (cross-entropy, nats/token)"):
        self.name, self.color = name, color
        self.figure = figure or lab_layout(LabFigure(), 320, top=50, bottom=40, title=title,
                                           xaxis_title="optimizer step", yaxis_title=yaxis_title)
        self.figure.add_scatter(x=[], y=[], mode="lines+markers", name=name, line=dict(color=color))
        self.train_trace = self.figure.data[-1]
        self.eval_trace = None

    def __call__(self, row, ev):
        with self.figure.batch_update():
            if row is not None and math.isfinite(row["loss"]):
                self.train_trace.x = tuple(self.train_trace.x) + (row["step"],)
                self.train_trace.y = tuple(self.train_trace.y) + (row["loss"],)
            if ev is not None:
                if self.eval_trace is None:
                    self.figure.add_scatter(x=[], y=[], mode="lines+markers", name=f"{self.name} (validation)",
                                            line=dict(color=self.color, dash="dash"))
                    self.eval_trace = self.figure.data[-1]
                self.eval_trace.x = tuple(self.eval_trace.x) + (ev["step"],)
                self.eval_trace.y = tuple(self.eval_trace.y) + (ev["eval_loss"],)


# --- the trainer ------------------------------------------------------------------------------

def sft_config(cfg: TrainConfig, output_dir: str, has_eval: bool, device: str):
    """TRL's ``SFTConfig`` for this experiment (every keyword here is checked by the drift test)."""
    from trl import SFTConfig

    schedule = cfg.schedule
    if schedule == "constant" and cfg.warmup_steps:
        schedule = "constant_with_warmup"
    eval_every = cfg.eval_every or max(1, cfg.steps // 5)
    return SFTConfig(
        output_dir=output_dir, max_steps=cfg.steps, per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size, learning_rate=cfg.learning_rate,
        lr_scheduler_type=schedule, warmup_steps=cfg.warmup_steps, weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm if cfg.max_grad_norm is not None else 0.0,
        max_length=cfg.max_length, seed=cfg.seed, data_seed=cfg.seed,
        bf16=cfg.mixed_precision == "bf16", fp16=cfg.mixed_precision == "fp16",
        use_cpu=device == "cpu", logging_steps=1, logging_first_step=True,
        eval_strategy="steps" if has_eval else "no", eval_steps=eval_every,
        save_strategy="no", report_to=[], disable_tqdm=True, dataloader_num_workers=0,
        include_num_input_tokens_seen="non_padding", dataset_num_proc=None,
        remove_unused_columns=True, prediction_loss_only=True,  # evaluation keeps the loss, not the logits
        # packing: texts joined end to end (EOS between them) and cut into max_length rows, so no
        # row is padding. "wrapped" lets a row's texts see each other; TRL's default "bfd" keeps
        # them apart with a block mask, which on the CPU ran slower than no packing at all.
        packing=cfg.packing, packing_strategy=cfg.packing_strategy,
        gradient_checkpointing=cfg.gradient_checkpointing,
    )


def unwrap(model):
    """Make a trained model ready to use again. Undo what ``accelerate`` did to ``model.forward``
    for mixed-precision training (an autocast wrapper it leaves in place), so that "after" numbers
    are computed in the model's own precision, like the "before" ones; and what TRL's trainers
    switch on for training: gradient checkpointing, and ``use_cache=False``, with which every
    generated token would recompute the whole text. Returns the model, in eval mode."""
    from accelerate.utils import extract_model_from_parallel

    model = extract_model_from_parallel(model, keep_fp32_wrapper=False)
    with quiet():   # transformers 5 renames these methods; nothing for a learner to do
        if getattr(model, "is_gradient_checkpointing", False):
            model.gradient_checkpointing_disable()
    for settings in (getattr(model, "config", None), getattr(model, "generation_config", None)):
        if getattr(settings, "use_cache", None) is False:
            settings.use_cache = True
    return model.eval()


def run_trainer(make_trainer, label: str, steps: int, *, seed: int, config: dict | None = None,
                live: bool | None = None, plot=None, title: str | None = None, patience: int | None = None,
                callbacks: list | None = None, fill_uninitialized_memory: bool = False,
                vocab_size: int | None = None, loss_name: str = "loss (cross-entropy, nats/token)"):
    """Run one TRL trainer the way every labkit stage does: SFT (:func:`train`), and the reward
    model, GRPO and DPO (``labkit.rlhf``). Returns ``(model, history)``: the trained model
    (:func:`unwrap`-ped, in eval mode) and a :class:`History` with one row per step.

    ``make_trainer(output_dir, callbacks)`` builds the trainer with those callbacks; it is called
    with the seed set, so adapters added there start the same way every time. Around it, for this
    call only: the seed, deterministic kernels and quieter libraries (afterwards the session's
    random generators, torch's flags, warning filters and log levels are as they were); a
    throwaway output folder; peak memory; a progress line; the loss drawn as it goes (``live``,
    default: in a notebook, titled ``title``, its axis named ``loss_name``; or into your ``plot``).
    A non-finite loss and Ctrl-C stop training cleanly: the history says where, and the model is usable. A run that diverges
    (``labkit.guards``; ``vocab_size`` adds the uniform-guessing check) stops with its weights
    restored to those before the run, and the history says so."""
    from transformers.trainer_callback import PrinterCallback

    size_threads()   # this process's share of the CPUs, now (labkit.threads)
    history = History(config=config or {})
    if plot is None and (in_notebook() if live is None else live):
        from IPython.display import display

        plot = LiveLossPlot(title=title or f"{label}: loss per step", yaxis_title=loss_name)
        display(plot.figure)
    progress = ProgressCallback(steps, label)
    with (seeded(seed, fill_uninitialized_memory=fill_uninitialized_memory), quiet(),
          tempfile.TemporaryDirectory(prefix="labkit-train-") as out, PeakMemory() as memory):
        guard = DivergenceGuard(vocab_size)
        trainer = make_trainer(out, [HistoryCallback(history, memory, patience, on_row=plot), guard, progress,
                                     *(callbacks or [])])
        trainer.remove_callback(PrinterCallback)
        start = time.perf_counter()
        try:
            trainer.train()
        except NonFiniteLoss as e:
            if guard.weights_ok():   # true: the guard stopped before this update
                history.stopped = str(e)
            else:                    # an earlier update broke the weights (e.g. weight_decay=nan)
                guard.stop(e.step, f"loss became {e.value}")
        except KeyboardInterrupt:
            history.stopped = f"interrupted at step {trainer.state.global_step}"
        finally:
            progress.close()
            history.wall_s = time.perf_counter() - start
    if guard.reason:
        history.stopped = guard.reason
    history.peak_memory_mb = memory.peak_mb
    if history.stopped != "finished":
        print(f"[labkit] {label}: {history.stopped}")
    return unwrap(trainer.model), history


def train(model, tokenizer, train_data, config: TrainConfig | None = None, eval_data=None,
          live: bool | None = None, plot=None, profile=None, label: str = "training",
          callbacks: list | None = None, **overrides) -> TrainResult:
    """Fine-tune ``model`` on ``train_data`` (a ``datasets.Dataset`` or list of records in the
    ``text``, ``messages`` or ``prompt``/``completion`` format) and return a :class:`TrainResult`.

    ``config`` is a :class:`TrainConfig`; keyword overrides change single fields
    (``train(m, tok, data, method="full", learning_rate=1e-5)``). ``live`` draws the loss curve
    as it goes (default: in a notebook); pass ``plot=LiveLossPlot(...)`` to draw into your own.
    ``callbacks`` are extra ``transformers.TrainerCallback`` objects (e.g. to snapshot weights).

    The seed, deterministic kernels and quieter libraries hold for this call only: afterwards the
    session's random generators, torch's flags, warning filters and log levels are as they were
    (:func:`run_trainer`).
    """
    cfg = TrainConfig.from_dict({**(config or TrainConfig()).to_dict(), **overrides})
    cfg = cfg.validate().resolved(profile).validate()
    with interrupts_deferred():   # a Ctrl-C here would leave these libraries half imported
        import datasets, peft, trl  # noqa: F401,E401
    with quiet():   # no progress bars from datasets' map
        train_ds = as_trl_dataset(train_data, "train_data")
        if cfg.packing and "text" not in train_ds.column_names:
            raise ValueError("packing=True is for plain-text data (a 'text' column): chat and "
                             "prompt/completion records train one per row, so the loss stays on the reply")
        eval_ds = as_trl_dataset(eval_data, "eval_data") if eval_data is not None else None
    device = str(next(model.parameters()).device.type)
    prepared = []

    def make_trainer(output_dir, run_callbacks):
        from trl import SFTTrainer

        with interrupts_deferred():   # adapters are added whole or not at all
            prepared.append(prepare_model(model, cfg))
        return guarded(SFTTrainer, model_loss_on_cpu=cfg.cpu_full_logits, float32_adapter_sums=cfg.adapter_sums_fp32)(
            model=prepared[0], args=sft_config(cfg, output_dir, eval_ds is not None, device),
            train_dataset=train_ds, eval_dataset=eval_ds, processing_class=tokenizer, callbacks=run_callbacks)

    try:
        trained, history = run_trainer(
            make_trainer, label, cfg.steps, seed=cfg.seed, config=cfg.to_dict(), live=live, plot=plot,
            patience=cfg.early_stopping_patience, callbacks=callbacks,
            fill_uninitialized_memory=cfg.fill_uninitialized_memory,
            vocab_size=getattr(getattr(model, "config", None), "vocab_size", None))
    except KeyboardInterrupt:   # before training started (run_trainer handles it once training runs)
        if prepared and prepared[0] is not model:
            prepared[0].unload()   # take the adapters out again: the model is as it was given
        history = History(config=cfg.to_dict(), stopped="interrupted before training started; the model is unchanged")
        print(f"[labkit] {label}: {history.stopped}")
        return TrainResult(model=model.eval(), history=history, config=cfg)
    return TrainResult(model=trained, history=history, config=cfg)
