"""RLHF end to end, and DPO: generate, rank, train a reward model, optimise a policy against it.

    cfg = RLHFConfig.for_profile(P)
    samples = sample_responses(model, tok, prompts, n=4, temperature=1.0)      # 1. generate
    # 2. rank: labkit.preferences.ranking_widget(samples, path)
    rm, rm_tok = load_reward_model()                                           # 3. reward model
    rm_result = train_reward_model(rm, rm_tok, train_pairs, cfg)
    reward_accuracy(rm_result.model, rm_tok, heldout_pairs)
    rl = optimise_policy(policy, tok, rm_result.model, prompts, cfg)           # 4. GRPO
    dpo = train_dpo(policy2, tok, train_pairs, cfg)                            # 5. DPO
    summary, side_by_side = compare_policies({"base": model, "GRPO": rl.model, "DPO": dpo.model},
                                             tok, rm_result.model, rm_tok, prompts)   # 6. compare

Every trainer is TRL's (``RewardTrainer``, ``GRPOTrainer``, ``DPOTrainer``) with a LoRA adapter
from PEFT, run by ``labkit.training.run_trainer`` as SFT is (seed, progress, clean stops); this
module only prepares their data, collects what they log, and measures. What notebook 06 shows of
it (the reward widget, GRPO's live curves, the figures, the verdict) is in ``labkit.rlhf_views``;
its names can be reached from here too (``rlhf.verdict``), so a notebook imports one module.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field, fields

import torch
from transformers import TrainerCallback

from .models import OFFLINE_MODEL, pick_device, resolve
from .patches import guarded
from .predictions import chat_prompt, generate_many
from .reproducibility import seeded
from .rlhf_views import METHOD_COLORS, RewardWidget, RLCurves, accuracy_figure, comparison_figure, verdict, words
from .training import ExperimentConfig, History, in_notebook, is_number, is_whole, run_trainer, unwrap

__all__ = [
    # the experiment
    "RLHFConfig", "StageResult",
    # 1. generate
    "chat", "sample_responses", "answers", "words",
    # 3. the reward model
    "load_reward_model", "reward_input_ids", "one_side_cut", "first_words", "reward_scores", "pairwise_accuracy", "reward_accuracy",
    "reward_dataset", "train_reward_model", "reward_widget",
    # 4. and 5. GRPO and DPO
    "LogRows", "optimise_policy", "train_dpo",
    # 6. compare
    "compare_policies", "correlation",
    # shown in the notebook (labkit.rlhf_views)
    "METHOD_COLORS", "RewardWidget", "RLCurves", "accuracy_figure", "comparison_figure", "verdict",
]


@dataclass
class RLHFConfig(ExperimentConfig):
    """Every knob of the notebook's experiment, with the seed. JSON-serialisable
    (``to_dict``/``from_dict``, as :class:`labkit.training.TrainConfig`)."""
    seed: int = 0
    # 1. generate
    samples_per_prompt: int = 4
    temperature: float = 1.0
    max_new_tokens: int = 40
    # 3. reward model
    reward_steps: int = 30
    reward_batch_size: int = 4          # pairs per step
    reward_learning_rate: float = 1e-3
    reward_max_length: int = 256        # longer texts are cut here, in training and in scoring
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
    # TRL turns gradient checkpointing on by default: less memory, one more forward pass per step, and
    # GRPO's sampling then runs without a KV cache. At 135M parameters the memory saved is small.
    gradient_checkpointing: bool = False
    eval_prompts: int = 16
    eval_max_new_tokens: int = 96       # the comparison's answers: long enough for most to finish
    # DPO and GRPO's speed and precision switches, as measured in benchmarks/RESULTS.md (labkit/patches.py):
    cpu_full_logits: bool = True         # on the CPU, log-probabilities from the full logits, not TRL's chunked head
    adapter_sums_fp32: bool = True       # under bf16, add LoRA's output in float32 (else DPO moves less)

    def validate(self) -> "RLHFConfig":
        """Raise ``ValueError`` naming the first bad field; return the config."""
        need = self.require
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type == "bool":
                need(isinstance(value, bool), f.name, "must be True or False")
            elif f.type == "int":   # the seed may be 0, every count and size at least 1
                least = 0 if f.name == "seed" else 1
                need(is_whole(value, least), f.name, f"must be a whole number of at least {least}")
            elif f.type == "float":
                need(is_number(value), f.name, "must be a finite number >= 0")
        need(self.mixed_precision in ("no", "bf16", "fp16"), "mixed_precision", "choose 'no', 'bf16' or 'fp16'")
        for name in ("reward_learning_rate", "policy_learning_rate", "dpo_learning_rate"):
            need(getattr(self, name) > 0, name, "must be > 0")
        need(self.temperature > 0, "temperature", "must be > 0 to sample")
        need(self.num_generations >= 2, "num_generations",
             "must be at least 2: GRPO compares completions within a group")
        return self

    @classmethod
    def for_profile(cls, profile, **overrides) -> "RLHFConfig":
        """Sizes for the profile (smoke: 1-2 steps per stage; cpu: minutes; gpu: the full lesson)."""
        P = profile
        sizes = dict(
            reward_steps=P.pick(smoke=2, cpu=4, gpu=300),  # cpu: 6 steps took the loss from 0.80 to 0.001
            reward_batch_size=P.pick(smoke=2, cpu=4, gpu=16),
            reward_max_length=P.pick(smoke=64, cpu=256, gpu=256),   # cpu, gpu: every answer whole (up to 218)
            policy_steps=P.pick(smoke=1, cpu=4, gpu=200),   # cpu: 96-98% of samples are cut at 32 tokens: not reproduced
            # cpu: over seeds 0-2 the held-out reward gained +0.48 to +0.94 at 1e-3, -0.01 to +0.41 at 3e-4, and
            # +0.47 to +2.55 at 2e-3 (unsteady); benchmarks/RESULTS.md, "GRPO across seeds"
            policy_learning_rate=P.pick(smoke=3e-4, cpu=1e-3, gpu=3e-4),
            prompts_per_step=P.pick(smoke=1, cpu=2, gpu=8),
            num_generations=P.pick(smoke=2, cpu=4, gpu=8),
            max_completion_length=P.pick(smoke=8, cpu=32, gpu=160),   # gpu: most answers end inside it
            # cpu: sequences cut at 96 tokens (the rambling answers sooner): 6 steps gave 29-47% fewer words
            # over seeds 0-2, beyond noise in each (at 128 tokens, 6 steps gave 14%, within noise; 10 gave 29%)
            dpo_steps=P.pick(smoke=1, cpu=6, gpu=200),
            dpo_batch_size=P.pick(smoke=2, cpu=4, gpu=16),
            dpo_max_length=P.pick(smoke=64, cpu=96, gpu=256),
            max_new_tokens=P.pick(smoke=8, cpu=40, gpu=96),
            samples_per_prompt=P.pick(smoke=2, cpu=4, gpu=4),
            eval_prompts=P.pick(smoke=2, cpu=12, gpu=40),
            eval_max_new_tokens=P.pick(smoke=8, cpu=96, gpu=160),
            mixed_precision=P.mixed_precision,
        )
        return cls(**{**sizes, **overrides}).validate()


@dataclass
class StageResult:
    """What a training stage returns: the model, one row per step of everything the trainer logged
    (reward, KL, margins, ...), the wall time, how it stopped, and the stage's
    :class:`~labkit.training.History` (loss, learning rate, peak memory per step)."""
    model: object
    rows: list[dict] = field(default_factory=list)
    wall_s: float = 0.0
    stopped: str = "finished"
    history: History | None = None

    def to_frame(self):
        import pandas as pd

        return pd.DataFrame(self.rows)

    @classmethod
    def of(cls, model, log: "LogRows", history: History) -> "StageResult":
        return cls(model=model, rows=log.rows, wall_s=history.wall_s, stopped=history.stopped, history=history)


# --- 1. prompts and generation ------------------------------------------------------------------

def chat(prompt: str, response: str | None = None) -> list[dict]:
    """The conversation for ``prompt`` (and the assistant's ``response``)."""
    return [{"role": "user", "content": prompt}] + (
        [{"role": "assistant", "content": response}] if response is not None else [])


def sample_responses(model, tok, prompts: list[str], n: int = 4, temperature: float = 1.0,
                     max_new_tokens: int = 40, seed: int | None = 0) -> list[dict]:
    """``n`` sampled responses per prompt (chat template on): ``[{"prompt", "responses"}]``."""
    if n < 2:
        raise ValueError(f"n={n}: sample at least 2 responses to have something to compare")
    if temperature <= 0:
        raise ValueError(f"temperature={temperature}: must be > 0 to sample different responses")
    flat = generate_many(model, tok, [chat_prompt(tok, p) for p in prompts], max_new_tokens, temperature, seed,
                         n=n, batch_size=4)
    return [{"prompt": p, "responses": [r["text"].strip() for r in flat[i * n:(i + 1) * n]]}
            for i, p in enumerate(prompts)]


def answers(model, tok, prompts: list[str], max_new_tokens: int = 40, batch_size: int = 16) -> list[str]:
    """Greedy answers (deterministic: what the model most likely says), chat template on; up to
    ``batch_size`` prompts generate together (the cpu profile's 12 in one batch)."""
    return [r["text"].strip() for r in generate_many(model, tok, [chat_prompt(tok, p) for p in prompts],
                                                     max_new_tokens, 0.0, None, batch_size=batch_size)]


# --- 3. the reward model ---------------------------------------------------------------------

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


def one_side_cut(tok, pairs: list[dict], max_length: int) -> int:
    """How many pairs have exactly one side longer than ``max_length`` tokens. Cut there, that side
    loses its ending and the other keeps it: a reward model can then learn "this text was cut"
    instead of the preference (seen in issue #22: all rejected answers cut, no chosen one)."""
    cut = [(len(reward_input_ids(tok, p["prompt"], p["chosen"])) > max_length,
            len(reward_input_ids(tok, p["prompt"], p["rejected"])) > max_length) for p in pairs]
    return sum(c != r for c, r in cut)


def reward_dataset(tok, pairs: list[dict], max_length: int):
    """Pairs tokenised the way :func:`reward_scores` reads them. TRL's ``RewardTrainer`` would
    *drop* a pair longer than ``max_length``; cutting it keeps every pair, and a warning says when
    cutting would mark one side only (:func:`one_side_cut`)."""
    from datasets import Dataset

    lopsided = one_side_cut(tok, pairs, max_length)
    if lopsided:
        print(f"[labkit] {lopsided} of {len(pairs)} pairs have one answer longer than reward_max_length="
              f"{max_length} tokens and the other not: cut there, the reward model can learn to spot a cut "
              "text instead of the preference. Raise reward_max_length to cover the longest answer.")
    return Dataset.from_list([{"chosen_ids": reward_input_ids(tok, p["prompt"], p["chosen"], max_length),
                               "rejected_ids": reward_input_ids(tok, p["prompt"], p["rejected"], max_length)}
                              for p in pairs])


def first_words(text: str, n: int) -> str:
    """The first ``n`` words of ``text`` (for probing what a reward model learned)."""
    return " ".join(text.split()[:n])


# --- what the three TRL stages share (running them is labkit.training.run_trainer) ------------

def _lora(cfg: RLHFConfig, task_type: str):
    from peft import LoraConfig

    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=0.0, bias="none",
                      target_modules="all-linear", task_type=task_type)


def _common_args(cfg: RLHFConfig, out: str, steps: int, lr: float, device: str) -> dict:
    """Arguments every TRL config here shares (CPU-friendly: no reports, no checkpoints)."""
    return dict(output_dir=out, max_steps=steps, learning_rate=lr, lr_scheduler_type="constant",
                logging_steps=1, save_strategy="no", report_to=[], disable_tqdm=True, seed=cfg.seed,
                data_seed=cfg.seed, use_cpu=device == "cpu", bf16=cfg.mixed_precision == "bf16",
                fp16=cfg.mixed_precision == "fp16", dataloader_num_workers=0,
                gradient_checkpointing=cfg.gradient_checkpointing)


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


def train_reward_model(model, tok, pairs: list[dict], cfg: RLHFConfig, live: bool | None = None) -> StageResult:
    """Train a LoRA adapter (and the score head) with TRL's ``RewardTrainer`` on ``pairs``.
    The loss is -log sigmoid(r_chosen - r_rejected). Returns the merged model (plain weights,
    fast to score with)."""
    from trl import RewardConfig, RewardTrainer

    cfg.validate()
    if not pairs:
        raise ValueError("pairs is empty")
    device = next(model.parameters()).device.type
    log = LogRows()

    def make_trainer(out, callbacks):
        args = RewardConfig(**_common_args(cfg, out, cfg.reward_steps, cfg.reward_learning_rate, device),
                            per_device_train_batch_size=cfg.reward_batch_size, max_length=None,
                            center_rewards_coefficient=None, remove_unused_columns=False)
        return guarded(RewardTrainer)(
            model=model, args=args, train_dataset=reward_dataset(tok, pairs, cfg.reward_max_length),
            processing_class=tok, peft_config=_lora(cfg, "SEQ_CLS"), callbacks=[*callbacks, log])

    trained, history = run_trainer(make_trainer, "reward model", cfg.reward_steps, seed=cfg.seed,
                                   config=cfg.to_dict(), live=live,
                                   title="Reward model: loss per step (-log sigmoid of the margin)",
                                   loss_name="loss (-log σ(reward margin))")
    return StageResult.of(trained.merge_and_unload().eval(), log, history)


def reward_widget(model, tok, max_length: int = 128, **kwargs) -> RewardWidget:
    """A :class:`~labkit.rlhf_views.RewardWidget` that scores with the reward model ``model``."""
    def score(prompt, responses):
        return reward_scores(model, tok, [prompt] * len(responses), responses, max_length)

    return RewardWidget(score, **kwargs)


# --- 4. policy optimisation (GRPO) ------------------------------------------------------------

def optimise_policy(model, tok, reward_model, prompts: list[str], cfg: RLHFConfig,
                    live: bool | None = None, reward_tok=None) -> StageResult:
    """GRPO (TRL's ``GRPOTrainer``) with a LoRA adapter on ``model``: for each prompt it samples
    ``num_generations`` completions, scores them with ``reward_model``, and pushes up the
    log-probability of those that beat their group's mean, with a KL penalty (``kl_beta``) to the
    reference model (the same model with the adapter switched off). ``result.curves`` draws
    reward, KL and length per step (live in a notebook)."""
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

    def make_trainer(out, callbacks):
        args = GRPOConfig(**_common_args(cfg, out, cfg.policy_steps, cfg.policy_learning_rate, device),
                          per_device_train_batch_size=batch, num_generations=cfg.num_generations,
                          max_completion_length=cfg.max_completion_length, temperature=cfg.temperature,
                          beta=cfg.kl_beta, log_completions=False, shuffle_dataset=True)
        return guarded(GRPOTrainer, full_logits=cfg.cpu_full_logits, float32_adapter_sums=cfg.adapter_sums_fp32)(
            model=model, reward_funcs=reward_model, args=args, train_dataset=data, processing_class=tok,
            reward_processing_classes=reward_tok or tok, peft_config=_lora(cfg, "CAUSAL_LM"),
            callbacks=[*callbacks, log])

    # live=False: no loss chart, the curves above are GRPO's
    policy, history = run_trainer(make_trainer, "GRPO", cfg.policy_steps, seed=cfg.seed, config=cfg.to_dict(),
                                  live=False)
    unwrap(reward_model)  # GRPO prepared it for bf16 scoring; score in full precision again
    result = StageResult.of(policy, log, history)
    result.curves = curves
    return result


# --- 5. DPO ------------------------------------------------------------------------------------

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
    log = LogRows()

    def make_trainer(out, callbacks):
        args = DPOConfig(**_common_args(cfg, out, cfg.dpo_steps, cfg.dpo_learning_rate, device),
                         per_device_train_batch_size=cfg.dpo_batch_size, beta=cfg.dpo_beta,
                         max_length=cfg.dpo_max_length, truncation_mode="keep_start")
        return guarded(DPOTrainer, full_logits=cfg.cpu_full_logits, float32_adapter_sums=cfg.adapter_sums_fp32)(
            model=model, args=args, train_dataset=data, processing_class=tok,
            peft_config=_lora(cfg, "CAUSAL_LM"), callbacks=[*callbacks, log])

    policy, history = run_trainer(make_trainer, "DPO", cfg.dpo_steps, seed=cfg.seed, config=cfg.to_dict(), live=live,
                                  title="DPO: loss per step (-log sigmoid of beta x the log-ratio margin)",
                                  loss_name="loss (-log σ(β × log-ratio margin))")
    return StageResult.of(policy, log, history)


# --- 6. comparison -----------------------------------------------------------------------------

def compare_policies(policies: dict, tok, reward_model, reward_tok, prompts: list[str],
                     max_new_tokens: int = 40, train_times: dict | None = None, max_length: int = 128):
    """Greedy answers of each policy (name -> model) on ``prompts``, scored by the reward model.

    Returns ``(summary, answers)``: a table with one row per policy (mean reward, mean length in
    words, share of answers that finished before ``max_new_tokens``, training time) and a table
    with the answers side by side, with each one's reward and length in words. An answer cut at
    ``max_new_tokens`` counts only the words it got, so a cut base model's length is understated
    and a shortening measured against it is, if anything, too small."""
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
        table[f"{name} words"] = [words(o) for o in outs]
        rows.append({"method": name, "mean reward": sum(scores) / len(scores),
                     "mean words": sum(map(words, outs)) / len(outs),
                     "finished answers": sum(finished) / len(finished),
                     "training time (s)": train_times.get(name, 0.0)})
    return pd.DataFrame(rows), pd.DataFrame(table)


def correlation(xs, ys) -> float:
    """Pearson correlation of two equally long lists (``statistics.correlation``); 0.0 when either
    is constant (then there is no linear relation to measure)."""
    if len(xs) != len(ys) or len(xs) < 2:
        raise ValueError("need two lists of the same length, at least 2 long")
    try:
        return statistics.correlation(xs, ys)
    except statistics.StatisticsError:   # one of them is constant
        return 0.0
