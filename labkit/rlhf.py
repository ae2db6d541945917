"""RLHF end to end, and DPO: generate, rank, train a reward model, optimise a policy against it.

    cfg = RLHFConfig.for_profile(P)
    samples = sample_responses(model, tok, prompts, n=4, temperature=1.0)      # 1. generate
    # 2. rank: labkit.preferences.ranking_widget(samples, path)
    rm, rm_tok = load_reward_model()                                           # 3. reward model
    rm_result = train_reward_model(rm, rm_tok, train_pairs, cfg)
    reward_accuracy(rm_result.model, rm_tok, heldout_pairs)
    rl = optimise_policy(policy, tok, rm_result.model, prompts, cfg)           # 4. GRPO
    dpo = train_dpo(policy2, tok, train_pairs, cfg)                            # 5. DPO

Every trainer is TRL's (``RewardTrainer``, ``GRPOTrainer``, ``DPOTrainer``) with a LoRA adapter
from PEFT; this module only prepares their data, collects what they log, and measures.
"""
from __future__ import annotations

import math
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields

import torch
from transformers import TrainerCallback

from .memory import PeakMemory
from .models import OFFLINE_MODEL, pick_device, resolve
from .patches import NonFiniteLoss, guarded, quiet
from .predictions import decoding
from .reproducibility import seeded
from .training import History, HistoryCallback, LiveLossPlot, Progress, in_notebook
from .plots import LabFigure, Panel

METHOD_COLORS = {"base": "#7f7f7f", "GRPO": "#17becf", "DPO": "#e377c2", "reward": "#ff7f0e",
                 "chosen": "#2ca02c", "rejected": "#d62728"}


@dataclass
class RLHFConfig:
    """Every knob of the notebook's experiment, with the seed. JSON-serialisable."""
    seed: int = 0
    # 1. generate
    samples_per_prompt: int = 4
    temperature: float = 1.0
    max_new_tokens: int = 40
    # 3. reward model
    reward_steps: int = 30
    reward_batch_size: int = 4          # pairs per step
    reward_learning_rate: float = 1e-3
    reward_max_length: int = 128        # longer texts are cut here, in training and in scoring
    # 4. policy optimisation (GRPO)
    policy_steps: int = 8
    policy_learning_rate: float = 3e-4
    num_generations: int = 4            # completions per prompt (the "group")
    prompts_per_step: int = 2
    max_completion_length: int = 32
    kl_beta: float = 0.04               # weight of the KL penalty to the reference model
    # 5. DPO
    dpo_steps: int = 15
    dpo_batch_size: int = 4
    dpo_learning_rate: float = 5e-4
    dpo_beta: float = 0.1
    dpo_max_length: int = 128
    # shared
    lora_r: int = 8
    lora_alpha: int = 16
    mixed_precision: str = "no"          # "bf16" where the CPU has it (the profile decides)
    eval_prompts: int = 16
    # DPO and GRPO's speed and precision switches, as measured in benchmarks/RESULTS.md (labkit/patches.py):
    cpu_full_logits: bool = True         # on the CPU, log-probabilities from the full logits, not TRL's chunked head
    adapter_sums_fp32: bool = True       # under bf16, add LoRA's output in float32 (else DPO moves less)

    def validate(self) -> "RLHFConfig":
        for f in fields(self):
            v = getattr(self, f.name)
            if f.type in (bool, "bool"):
                if not isinstance(v, bool):
                    raise ValueError(f"{f.name}={v!r}: must be True or False")
            elif f.name == "mixed_precision":
                if v not in ("no", "bf16", "fp16"):
                    raise ValueError(f"mixed_precision={v!r}: choose 'no', 'bf16' or 'fp16'")
            elif f.name in ("seed",):
                if not isinstance(v, int) or v < 0:
                    raise ValueError(f"seed={v!r}: must be a whole number >= 0")
            elif isinstance(v, int) and f.name != "kl_beta":
                if v < 1:
                    raise ValueError(f"{f.name}={v!r}: must be at least 1")
            elif not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ValueError(f"{f.name}={v!r}: must be a finite number >= 0")
            elif f.name.endswith("learning_rate") and v <= 0:
                raise ValueError(f"{f.name}={v!r}: must be > 0")
        if self.temperature <= 0:
            raise ValueError(f"temperature={self.temperature}: must be > 0 to sample")
        if self.num_generations < 2:
            raise ValueError("num_generations must be at least 2: GRPO compares completions within a group")
        return self

    @classmethod
    def for_profile(cls, profile, **overrides) -> "RLHFConfig":
        """Sizes for the profile (smoke: 1-2 steps per stage; cpu: minutes; gpu: the full lesson)."""
        P = profile
        sizes = dict(
            reward_steps=P.pick(smoke=2, cpu=12, gpu=300),  # cpu: the loss is ~0 well before 20
            reward_batch_size=P.pick(smoke=2, cpu=4, gpu=16),
            reward_max_length=P.pick(smoke=64, cpu=128, gpu=256),
            policy_steps=P.pick(smoke=1, cpu=10, gpu=200),
            prompts_per_step=P.pick(smoke=1, cpu=2, gpu=8),
            num_generations=P.pick(smoke=2, cpu=4, gpu=8),
            max_completion_length=P.pick(smoke=8, cpu=32, gpu=96),
            dpo_steps=P.pick(smoke=1, cpu=10, gpu=200),
            dpo_batch_size=P.pick(smoke=2, cpu=4, gpu=16),
            dpo_max_length=P.pick(smoke=64, cpu=128, gpu=256),
            max_new_tokens=P.pick(smoke=8, cpu=40, gpu=96),
            samples_per_prompt=P.pick(smoke=2, cpu=4, gpu=4),
            eval_prompts=P.pick(smoke=2, cpu=16, gpu=40),
            mixed_precision=P.mixed_precision,
        )
        return cls(**{**sizes, **overrides}).validate()

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class StageResult:
    """What a training stage returns: the model, one row per step of what the trainer logged, and
    the wall time."""
    model: object
    rows: list[dict] = field(default_factory=list)
    wall_s: float = 0.0
    stopped: str = "finished"

    def to_frame(self):
        import pandas as pd

        return pd.DataFrame(self.rows)


# --- prompts and generation -------------------------------------------------------------------

def chat(prompt: str, response: str | None = None) -> list[dict]:
    """The conversation for ``prompt`` (and the assistant's ``response``)."""
    return [{"role": "user", "content": prompt}] + (
        [{"role": "assistant", "content": response}] if response is not None else [])


@torch.no_grad()
def _generate(model, tok, prompts, n, max_new_tokens, temperature, seed, batch_size):
    texts = [tok.apply_chat_template(chat(p), tokenize=False, add_generation_prompt=True) for p in prompts]
    device = next(model.parameters()).device
    kwargs = dict(max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id,
                  **decoding(temperature, seed, device))   # sampling with its own generator, seeded
    out = []
    was_training = model.training
    model.eval()
    for start in range(0, len(texts), batch_size):
        batch = tok(texts[start:start + batch_size], return_tensors="pt", padding=True,
                    padding_side="left", add_special_tokens=False).to(device)
        batch = {k: v.repeat_interleave(n, dim=0) for k, v in batch.items()}   # n rows per prompt
        ids = model.generate(**batch, **kwargs)[:, batch["input_ids"].shape[1]:]
        out += [t.strip() for t in tok.batch_decode(ids, skip_special_tokens=True)]
    model.train(was_training)
    return out


def sample_responses(model, tok, prompts: list[str], n: int = 4, temperature: float = 1.0,
                     max_new_tokens: int = 40, seed: int | None = 0) -> list[dict]:
    """``n`` sampled responses per prompt (chat template on): ``[{"prompt", "responses"}]``."""
    if n < 2:
        raise ValueError(f"n={n}: sample at least 2 responses to have something to compare")
    if temperature <= 0:
        raise ValueError(f"temperature={temperature}: must be > 0 to sample different responses")
    flat = _generate(model, tok, prompts, n, max_new_tokens, temperature, seed, batch_size=4)
    return [{"prompt": p, "responses": flat[i * n:(i + 1) * n]} for i, p in enumerate(prompts)]


def answers(model, tok, prompts: list[str], max_new_tokens: int = 40, batch_size: int = 8) -> list[str]:
    """Greedy answers (deterministic: what the model most likely says), chat template on."""
    return _generate(model, tok, prompts, 1, max_new_tokens, 0.0, None, batch_size)


def words(text: str) -> int:
    return len(text.split())


# --- the reward model -------------------------------------------------------------------------

def load_reward_model(name: str = OFFLINE_MODEL, seed: int = 0, device: str = "auto"):
    """``(model, tokenizer)``: the base model with a one-number head (``num_labels=1``) on top.
    The head starts random (seeded), so before training its scores mean nothing."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    source = resolve(name)[0]
    tok = AutoTokenizer.from_pretrained(source)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()  # "score.weight newly initialized": expected, it is the new head
    hf_logging.disable_progress_bar()  # the per-tensor "Loading weights" bar is noise here
    try:
        with seeded(seed):   # the new head's random start; the session's generators are left alone
            model = AutoModelForSequenceClassification.from_pretrained(source, num_labels=1, dtype=torch.float32,
                                                                       use_safetensors=True)
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    model.config.pad_token_id = tok.pad_token_id
    return model.to(pick_device(device)).eval(), tok


def reward_input_ids(tok, prompt: str, response: str, max_length: int | None = None) -> list[int]:
    """The tokens the reward model reads: the conversation through the chat template (as TRL's
    trainers build it), cut at ``max_length``."""
    text = tok.apply_chat_template(chat(prompt, response), tokenize=False)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    return ids[:max_length] if max_length else ids


@torch.no_grad()
def reward_scores(model, tok, prompts: list[str], responses: list[str], max_length: int | None = 128,
                  batch_size: int = 8) -> list[float]:
    """The reward model's score for each (prompt, response)."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    scores = []
    for start in range(0, len(prompts), batch_size):
        ids = [reward_input_ids(tok, p, r, max_length)
               for p, r in zip(prompts[start:start + batch_size], responses[start:start + batch_size])]
        batch = tok.pad({"input_ids": ids}, return_tensors="pt", padding_side="right").to(device)
        scores += model(**batch).logits[:, 0].float().tolist()
    model.train(was_training)
    return scores


def pairwise_accuracy(chosen_scores, rejected_scores) -> float:
    """Share of pairs where the chosen response scores higher (a tie counts half)."""
    if len(chosen_scores) != len(rejected_scores) or not len(chosen_scores):
        raise ValueError("need the same, non-zero number of chosen and rejected scores")
    wins = sum(1.0 if c > r else 0.5 if c == r else 0.0 for c, r in zip(chosen_scores, rejected_scores))
    return wins / len(chosen_scores)


def reward_accuracy(model, tok, pairs: list[dict], max_length: int | None = 128) -> dict:
    """Pairwise accuracy on ``pairs`` (dicts with prompt/chosen/rejected) and the mean margin."""
    prompts = [p["prompt"] for p in pairs]
    chosen = reward_scores(model, tok, prompts, [p["chosen"] for p in pairs], max_length)
    rejected = reward_scores(model, tok, prompts, [p["rejected"] for p in pairs], max_length)
    margins = [c - r for c, r in zip(chosen, rejected)]
    return {"accuracy": pairwise_accuracy(chosen, rejected), "pairs": len(pairs),
            "mean_margin": sum(margins) / len(margins), "chosen_scores": chosen, "rejected_scores": rejected}


def reward_dataset(tok, pairs: list[dict], max_length: int):
    """Pairs tokenised the way :func:`reward_scores` reads them. TRL's ``RewardTrainer`` would
    *drop* a pair longer than ``max_length``; cutting it keeps every pair (the long rambling
    answers are the point)."""
    from datasets import Dataset

    return Dataset.from_list([{"chosen_ids": reward_input_ids(tok, p["prompt"], p["chosen"], max_length),
                               "rejected_ids": reward_input_ids(tok, p["prompt"], p["rejected"], max_length)}
                              for p in pairs])


def _lora(cfg: RLHFConfig, task_type: str):
    from peft import LoraConfig

    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=0.0, bias="none",
                      target_modules="all-linear", task_type=task_type)


def _common_args(cfg: RLHFConfig, out: str, steps: int, lr: float, device: str) -> dict:
    """Arguments every TRL config here shares (CPU-friendly: no reports, no checkpoints)."""
    return dict(output_dir=out, max_steps=steps, learning_rate=lr, lr_scheduler_type="constant",
                logging_steps=1, save_strategy="no", report_to=[], disable_tqdm=True, seed=cfg.seed,
                data_seed=cfg.seed, use_cpu=device == "cpu", bf16=cfg.mixed_precision == "bf16",
                fp16=cfg.mixed_precision == "fp16", dataloader_num_workers=0)


class LogRows(TrainerCallback):
    """Keeps every number a TRL trainer logs, one row per step (reward, kl, margins, ...)."""

    def __init__(self, on_row=None):
        self.rows, self.on_row, self._t0 = [], on_row, time.perf_counter()

    def on_log(self, args, state, control, logs=None, **kw):
        logs = logs or {}
        if "loss" not in logs:
            return
        row = {"step": state.global_step, "elapsed_s": time.perf_counter() - self._t0,
               **{k: float(v) for k, v in logs.items() if isinstance(v, (int, float))}}
        self.rows.append(row)
        if self.on_row:
            self.on_row(row)


def _unwrap(model):
    """Undo what ``accelerate`` did to ``model.forward`` during training (a bf16 autocast
    wrapper), so that later scores and generations run as for any other model."""
    from accelerate.utils import extract_model_from_parallel

    return extract_model_from_parallel(model, keep_fp32_wrapper=False).eval()


def _run(trainer, label: str, steps: int) -> tuple[float, str]:
    """Train with a progress bar; Ctrl-C and a non-finite loss stop it cleanly."""
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    bar = Progress(steps, label)

    class Bar(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            bar.update(state.global_step)

    trainer.add_callback(Bar())
    stopped, start = "finished", time.perf_counter()
    try:
        trainer.train()
    except NonFiniteLoss as e:
        stopped = str(e)
    except KeyboardInterrupt:
        stopped = f"interrupted at step {trainer.state.global_step}"
    finally:
        bar.close()
    if stopped != "finished":
        print(f"[labkit] {label}: {stopped}")
    return time.perf_counter() - start, stopped


def _live_plot(live, title):
    if live is None:
        live = in_notebook()
    if not live:
        return None
    from IPython.display import display

    plot = LiveLossPlot(title=title)
    display(plot.figure)
    return plot


def train_reward_model(model, tok, pairs: list[dict], cfg: RLHFConfig, live: bool | None = None) -> StageResult:
    """Train a LoRA adapter (and the score head) with TRL's ``RewardTrainer`` on ``pairs``.
    The loss is -log sigmoid(r_chosen - r_rejected). Returns the merged model (plain weights,
    fast to score with)."""
    from trl import RewardConfig, RewardTrainer

    cfg.validate()
    if not pairs:
        raise ValueError("pairs is empty")
    device = next(model.parameters()).device.type
    history = History(config=cfg.to_dict())
    plot = _live_plot(live, "Reward model: loss per step (-log sigmoid of the margin)")
    log = LogRows()
    with (seeded(cfg.seed), quiet(),   # for this call only (labkit.reproducibility, labkit.patches)
          tempfile.TemporaryDirectory(prefix="labkit-reward-") as out, PeakMemory() as memory):
        args = RewardConfig(**_common_args(cfg, out, cfg.reward_steps, cfg.reward_learning_rate, device),
                            per_device_train_batch_size=cfg.reward_batch_size, max_length=None,
                            center_rewards_coefficient=None, remove_unused_columns=False)
        trainer = guarded(RewardTrainer)(
            model=model, args=args, train_dataset=reward_dataset(tok, pairs, cfg.reward_max_length),
            processing_class=tok, peft_config=_lora(cfg, "SEQ_CLS"),
            callbacks=[HistoryCallback(history, memory, on_row=plot), log])
        wall, stopped = _run(trainer, "reward model", cfg.reward_steps)
    merged = _unwrap(trainer.model).merge_and_unload().eval()
    return StageResult(model=merged, rows=log.rows, wall_s=wall, stopped=stopped)


class RewardWidget:
    """Type a prompt and two responses; the bars show the reward model's score for each."""

    def __init__(self, model, tok, prompt: str = "What is a fjord?",
                 a: str = "A fjord is a long, narrow sea inlet between steep cliffs, carved by glaciers.",
                 b: str = ("Oh, great question! So, well, fjords are kind of a big topic, and honestly there "
                           "is a lot to say about them, so let me start with a little story first..."),
                 max_length: int = 128):
        import ipywidgets as W

        self.model, self.tok, self.max_length = model, tok, max_length
        self.prompt = W.Text(value=prompt, description="prompt", layout=W.Layout(width="95%"))
        self.response_a = W.Textarea(value=a, description="A", layout=W.Layout(width="95%", height="70px"),
                                     continuous_update=False)
        self.response_b = W.Textarea(value=b, description="B", layout=W.Layout(width="95%", height="70px"),
                                     continuous_update=False)
        self.prompt.continuous_update = False
        self.figure = LabFigure()
        self.figure.add_bar(x=["A", "B"], y=[0, 0], marker_color=[METHOD_COLORS["chosen"]] * 2)
        self.figure.update_layout(height=300, xaxis_title="response", yaxis_title="reward (model score, no unit)",
                                  margin=dict(l=60, r=20, t=60, b=50))
        for w in (self.prompt, self.response_a, self.response_b):
            w.observe(lambda _: self.update(), names="value")
        self.view = Panel([self.prompt, self.response_a, self.response_b, self.figure])
        self.update()

    def update(self) -> list[float]:
        """Score both responses; the preferred one is drawn in the "chosen" colour."""
        a, b = self.response_a.value, self.response_b.value
        if not a.strip() or not b.strip():
            with self.figure.batch_update():
                self.figure.layout.title = "Type both responses"
            return []
        scores = reward_scores(self.model, self.tok, [self.prompt.value] * 2, [a, b], self.max_length)
        winner = "A" if scores[0] > scores[1] else "B" if scores[1] > scores[0] else "neither"
        colors = [METHOD_COLORS["chosen"] if winner in (name, "neither") else METHOD_COLORS["rejected"]
                  for name in ("A", "B")]
        with self.figure.batch_update():
            self.figure.data[0].y = scores
            self.figure.data[0].marker.color = colors
            self.figure.layout.title = (f"The reward model prefers {winner}: A {scores[0]:.2f} vs B {scores[1]:.2f} "
                                        f"({words(a)} vs {words(b)} words)")
        return scores

    def _repr_mimebundle_(self, **kwargs):
        return self.view._repr_mimebundle_(**kwargs)


def reward_widget(model, tok, **kwargs) -> RewardWidget:
    return RewardWidget(model, tok, **kwargs)


# --- policy optimisation (GRPO) ---------------------------------------------------------------

class RLCurves:
    """Live reward, KL-to-reference and completion length per step (three panels)."""

    PANELS = (("reward", "mean reward"), ("kl", "KL to reference (nats/token)"),
              ("completions/mean_length", "completion length (tokens)"))

    def __init__(self, title: str = "GRPO: reward, KL and length per step"):
        from plotly.subplots import make_subplots

        fig = make_subplots(rows=1, cols=3, subplot_titles=[t for _, t in self.PANELS])
        for i, (key, _) in enumerate(self.PANELS, start=1):
            fig.add_scatter(x=[], y=[], mode="lines+markers", name=key, row=1, col=i,
                            line=dict(color=METHOD_COLORS["GRPO"]))
            fig.update_xaxes(title_text="optimizer step", row=1, col=i)
        fig.update_layout(title=title, height=320, showlegend=False, margin=dict(l=50, r=20, t=80, b=50))
        self.figure = LabFigure(fig)

    def __call__(self, row: dict):
        with self.figure.batch_update():
            for trace, (key, _) in zip(self.figure.data, self.PANELS):
                if key in row:
                    trace.x = tuple(trace.x or ()) + (row["step"],)
                    trace.y = tuple(trace.y or ()) + (row[key],)


def optimise_policy(model, tok, reward_model, prompts: list[str], cfg: RLHFConfig,
                    live: bool | None = None, reward_tok=None) -> StageResult:
    """GRPO (TRL's ``GRPOTrainer``) with a LoRA adapter on ``model``: for each prompt it samples
    ``num_generations`` completions, scores them with ``reward_model``, and pushes up the
    log-probability of those that beat their group's mean, with a KL penalty (``kl_beta``) to the
    reference model (the same model with the adapter switched off)."""
    import datasets
    from trl import GRPOConfig, GRPOTrainer

    cfg.validate()
    if not prompts:
        raise ValueError("prompts is empty")
    device = next(model.parameters()).device.type
    data = datasets.Dataset.from_list([{"prompt": chat(p)} for p in prompts])
    curves = RLCurves()
    if live if live is not None else in_notebook():
        from IPython.display import display

        display(curves.figure)
    log = LogRows(on_row=curves)
    batch = cfg.num_generations * cfg.prompts_per_step
    with seeded(cfg.seed), quiet(), tempfile.TemporaryDirectory(prefix="labkit-grpo-") as out:
        args = GRPOConfig(**_common_args(cfg, out, cfg.policy_steps, cfg.policy_learning_rate, device),
                          per_device_train_batch_size=batch, num_generations=cfg.num_generations,
                          max_completion_length=cfg.max_completion_length, temperature=cfg.temperature,
                          beta=cfg.kl_beta, log_completions=False, shuffle_dataset=True)
        trainer = guarded(GRPOTrainer, full_logits=cfg.cpu_full_logits,
                          float32_adapter_sums=cfg.adapter_sums_fp32)(
            model=model, reward_funcs=reward_model, args=args, train_dataset=data, processing_class=tok,
            reward_processing_classes=reward_tok or tok, peft_config=_lora(cfg, "CAUSAL_LM"),
            callbacks=[log])
        wall, stopped = _run(trainer, "GRPO", cfg.policy_steps)
    _unwrap(reward_model)  # GRPO prepared it for bf16 scoring; score in full precision again
    result = StageResult(model=_unwrap(trainer.model), rows=log.rows, wall_s=wall, stopped=stopped)
    result.curves = curves
    return result


# --- DPO --------------------------------------------------------------------------------------

def train_dpo(model, tok, pairs: list[dict], cfg: RLHFConfig, live: bool | None = None) -> StageResult:
    """DPO (TRL's ``DPOTrainer``) with a LoRA adapter: raise the log-probability of each chosen
    answer relative to the rejected one, measured against the reference (adapter off), with no
    reward model and no sampling."""
    import datasets
    from trl import DPOConfig, DPOTrainer

    cfg.validate()
    if not pairs:
        raise ValueError("pairs is empty")
    device = next(model.parameters()).device.type
    data = datasets.Dataset.from_list([{"prompt": chat(p["prompt"]), "chosen": [{"role": "assistant", "content": p["chosen"]}],
                                        "rejected": [{"role": "assistant", "content": p["rejected"]}]} for p in pairs])
    history = History(config=cfg.to_dict())
    plot = _live_plot(live, "DPO: loss per step (-log sigmoid of beta x the log-ratio margin)")
    log = LogRows()
    with (seeded(cfg.seed), quiet(),
          tempfile.TemporaryDirectory(prefix="labkit-dpo-") as out, PeakMemory() as memory):
        args = DPOConfig(**_common_args(cfg, out, cfg.dpo_steps, cfg.dpo_learning_rate, device),
                         per_device_train_batch_size=cfg.dpo_batch_size, beta=cfg.dpo_beta,
                         max_length=cfg.dpo_max_length, truncation_mode="keep_start")
        trainer = guarded(DPOTrainer, full_logits=cfg.cpu_full_logits,
                          float32_adapter_sums=cfg.adapter_sums_fp32)(
            model=model, args=args, train_dataset=data, processing_class=tok,
            peft_config=_lora(cfg, "CAUSAL_LM"), callbacks=[HistoryCallback(history, memory, on_row=plot), log])
        wall, stopped = _run(trainer, "DPO", cfg.dpo_steps)
    return StageResult(model=_unwrap(trainer.model), rows=log.rows, wall_s=wall, stopped=stopped)


# --- comparison -------------------------------------------------------------------------------

def compare_policies(policies: dict, tok, reward_model, reward_tok, prompts: list[str],
                     max_new_tokens: int = 40, train_times: dict | None = None, max_length: int = 128):
    """Greedy answers of each policy (name -> model) on ``prompts``, scored by the reward model.

    Returns ``(summary, answers)``: a table with one row per policy (mean reward, mean length in
    words, share of answers that finished before ``max_new_tokens``, training time) and a table
    with the answers side by side."""
    import pandas as pd

    train_times = train_times or {}
    table = {"prompt": prompts}
    rows = []
    for name, model in policies.items():
        outs = answers(model, tok, prompts, max_new_tokens)
        scores = reward_scores(reward_model, reward_tok, prompts, outs, max_length)
        finished = [len(tok(o, add_special_tokens=False)["input_ids"]) < max_new_tokens - 1 for o in outs]
        table[name] = outs
        table[f"{name} reward"] = scores
        rows.append({"method": name, "mean reward": sum(scores) / len(scores),
                     "mean words": sum(map(words, outs)) / len(outs),
                     "finished answers": sum(finished) / len(finished),
                     "training time (s)": train_times.get(name, 0.0)})
    return pd.DataFrame(rows), pd.DataFrame(table)


def comparison_figure(summary, title: str | None = None):
    """Bars: mean reward and mean length per method, in the lab's colours."""
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=["reward model's mean score", "mean answer length (words)"])
    colors = [METHOD_COLORS.get(m, "#ff7f0e") for m in summary["method"]]
    fig.add_bar(x=list(summary["method"]), y=list(summary["mean reward"]), marker_color=colors, row=1, col=1)
    fig.add_bar(x=list(summary["method"]), y=list(summary["mean words"]), marker_color=colors, row=1, col=2)
    fig.update_yaxes(title_text="reward (no unit)", row=1, col=1)
    fig.update_yaxes(title_text="words", row=1, col=2)
    fig.update_xaxes(title_text="policy", row=1, col=1)
    fig.update_xaxes(title_text="policy", row=1, col=2)
    if title is None:
        best = summary.loc[summary["mean reward"].idxmax(), "method"]
        title = f"On held-out prompts the highest mean reward is {best}'s"
    fig.update_layout(title=title, height=360, showlegend=False, margin=dict(l=60, r=20, t=80, b=50))
    return LabFigure(fig)


def accuracy_figure(before: dict, after: dict):
    """Two bars: held-out pairwise accuracy before and after reward-model training."""
    import plotly.graph_objects as go

    fig = LabFigure(go.Bar(x=["before training", "after training"], y=[before["accuracy"], after["accuracy"]],
                           marker_color=[METHOD_COLORS["base"], METHOD_COLORS["reward"]],
                           text=[f"{before['accuracy']:.0%}", f"{after['accuracy']:.0%}"], textposition="outside"))
    fig.add_hline(y=0.5, line_dash="dot", annotation_text="chance (50%)")
    verb = "rose" if after["accuracy"] > before["accuracy"] else "did not rise"
    fig.update_layout(title=f"Held-out pairwise accuracy {verb}: {before['accuracy']:.0%} -> {after['accuracy']:.0%} "
                            f"({after['pairs']} pairs)", yaxis_title="pairs ranked right (share)",
                      xaxis_title="reward model", yaxis_range=[0, 1.1], height=340,
                      margin=dict(l=60, r=20, t=60, b=50))
    return fig


def correlation(xs, ys) -> float:
    """Pearson correlation of two equally long lists (0.0 when either is constant)."""
    n = len(xs)
    if n != len(ys) or n < 2:
        raise ValueError("need two lists of the same length, at least 2 long")
    mx, my = sum(xs) / n, sum(ys) / n
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    sxx, syy = sum((x - mx) ** 2 for x in xs), sum((y - my) ** 2 for y in ys)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else 0.0


def verdict(summary, steps: dict, profile: str) -> str:
    """Plain-language conclusions from :func:`compare_policies`'s summary, each method against
    the base model: did the reward go up and the answers get shorter, and if not, why not."""
    base = summary.set_index("method").loc["base"]
    lines = []
    if profile == "smoke":
        lines.append("smoke profile: 1-2 steps per stage, so these numbers mean nothing; "
                     "run with LABKIT_PROFILE=cpu to see a real result.")
    for name, row in summary.set_index("method").iterrows():
        if name == "base":
            continue
        d_reward, d_words = row["mean reward"] - base["mean reward"], row["mean words"] - base["mean words"]
        # a clear move: higher reward and at least 10% fewer words (smaller changes are within noise here)
        improved = d_reward > 0 and d_words < -0.1 * base["mean words"]
        line = (f"{name}: mean reward {base['mean reward']:+.2f} -> {row['mean reward']:+.2f} ({d_reward:+.2f}), "
                f"length {base['mean words']:.1f} -> {row['mean words']:.1f} words ({d_words:+.1f}), "
                f"{row['training time (s)']:.0f} s of training. ")
        if improved:
            line += "It moved the answers towards the target."
        else:
            why = [f"only {steps.get(name, '?')} optimizer steps"]
            if base["finished answers"] == 0 and row["finished answers"] == 0:
                why.append("every answer still runs into the max_new_tokens limit, so its length can only fall "
                           "once the model learns to stop early")
            line += "It did NOT clearly improve the target here: " + "; ".join(why) + "."
        lines.append(line)
    return "\n".join(lines)
