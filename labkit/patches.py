"""Every place labkit changes how another library works inside, in one module.

TRL's own example scripts use only public API. labkit does too, except for the patches below. Each
one replaces a named piece of a library, is switched by a config field (so a benchmark can measure
with and without it), and has two tests: a behaviour test, and a fast test in
``tests/test_patches.py`` that fails as soon as the name it patches disappears or changes its
arguments in the installed version. Figures: ``benchmarks/RESULTS.md``, sections "What changed after
measuring (issue #11)", "DPO and GRPO on the CPU" and "Loss in bf16 against float32".

1. :func:`full_logits_on_cpu` (DPO, GRPO)
   replaces ``trl.trainer.utils._ChunkedLogProbFunction`` (an alias of
   ``trl.kernels.ChunkedLogProbFunction``, which ``trl.trainer.utils.add_fused_lm_head`` calls) by
   :func:`full_logits_log_probs`, for tensors on the CPU.
   Why: on the CPU TRL's chunked LM head is a slow loop of torch operations; one matmul over the
   whole vocabulary gives the same log-probabilities (to 1e-4 in float32) in less time.
   Switch: ``RLHFConfig.cpu_full_logits``.
   Test: ``tests/test_rlhf.py::test_full_logits_on_cpu_match_trls_chunked_head``.
2. ``model_loss_on_cpu`` in :func:`guarded` (SFT)
   replaces ``trl.SFTTrainer.compute_loss`` by ``transformers.Trainer.compute_loss`` (the
   model's own cross-entropy) on the CPU.
   Why: the same reason as 1, for ``SFTTrainer``, which offers no switch for its head either.
   Switch: ``TrainConfig.cpu_full_logits``.
   Test: ``tests/test_training.py::test_model_loss_on_cpu_matches_trls_fused_head``.
3. :func:`adapter_sums_in_float32` (DPO, GRPO; SFT when asked)
   changes the output of each PEFT layer's frozen layer
   (``peft.tuners.tuners_utils.BaseTunerLayer.get_base_layer``) with a forward hook, so that
   ``peft.tuners.lora.layer.Linear.forward`` adds the adapter's output in float32.
   Why: under bf16 a young adapter's contribution is smaller than bf16's rounding step of the
   frozen output, and DPO then learns clearly less than in float32.
   Switch: ``RLHFConfig.adapter_sums_fp32``, ``TrainConfig.adapter_sums_fp32``.
   Test: ``tests/test_training.py::test_adapter_sums_in_float32_keep_an_adapter_smaller_than_bf16_rounding``.

4. :func:`no_gguf_progress_bar` (reading a GGUF file back, ``labkit.gguf_export``)
   replaces ``transformers.modeling_gguf_pytorch_utils.tqdm`` by the same bar, switched off.
   Why: in a notebook that bar is a widget, blank in every static copy of the page, and
   transformers' ``disable_progress_bar()`` does not reach it (it calls tqdm directly).
   Switch: none (a bar over 272 tensors teaches nothing).
   Test: ``tests/test_notebooks.py`` (notebook 12 shows no widget without a static copy).

:func:`guarded` itself only subclasses a trainer and overrides its ``compute_loss`` (public API):
it stops on a non-finite loss (``tests/test_training.py::test_non_finite_loss_stops_and_keeps_finite_weights``)
and applies the patches above while ``train()`` runs. :func:`quiet` is no patch either: it silences
library noise a learner can do nothing about, only while labkit's training functions run.
"""
from __future__ import annotations

import logging
import warnings
from contextlib import contextmanager

import torch


class NonFiniteLoss(RuntimeError):
    def __init__(self, step: int, value: float):
        super().__init__(f"loss became {value} at step {step}; training stopped before applying "
                         "that update (the weights are those of the step before)")
        self.step, self.value = step, value


# --- TRL's chunked LM head --------------------------------------------------------------------

def full_logits_log_probs(hidden, weight, bias, targets, temperature, chunk_size=None,
                          final_logit_softcapping=None, logit_scale=1.0, outputs=("log_probs",)):
    """What TRL's fused LM head computes (``ChunkedLogProbFunction``, same arguments), from the full
    ``tokens x vocabulary`` logits: one matmul (bf16 under autocast) and one float32 log-softmax.

    TRL scores the vocabulary in chunks so the full logits never exist: a Triton kernel on a GPU,
    but on the CPU a loop of torch operations over each chunk that recomputes it in the backward
    pass and multiplies the gradient in float32. At a DPO step's shape that loop is slower than one
    matmul over the whole vocabulary (``benchmarks/RESULTS.md``). ``chunk_size`` is accepted and unused."""
    z = torch.nn.functional.linear(hidden, weight, bias).float() * logit_scale
    if final_logit_softcapping is not None:
        z = final_logit_softcapping * torch.tanh(z / final_logit_softcapping)
    z = z / temperature
    log_p = z.log_softmax(-1)
    log_probs = log_p.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    entropy = -(log_p.exp() * log_p).sum(-1) if "entropy" in outputs else None
    with torch.no_grad():   # metrics only, as in TRL
        log_sum_sq_probs = torch.logsumexp(2 * log_p, -1) if "log_sum_sq_probs" in outputs else None
        mean_logits = z.mean(-1) if "mean_logits" in outputs else None
        is_top1 = z.argmax(-1) == targets if "is_top1" in outputs else None   # the first maximum, as TRL
    return log_probs, entropy, log_sum_sq_probs, mean_logits, is_top1


@contextmanager
def full_logits_on_cpu(enabled: bool = True):
    """While inside, TRL's fused LM head (DPO, GRPO) takes :func:`full_logits_log_probs` for tensors
    on the CPU, and its own chunked kernel elsewhere. Replaces ``trl.trainer.utils._ChunkedLogProbFunction``
    (private: TRL offers no switch) and puts it back on leaving."""
    import trl.trainer.utils as trl_utils

    chunked = trl_utils._ChunkedLogProbFunction

    class CPUFirst:
        @staticmethod
        def apply(hidden, *args):
            return (full_logits_log_probs if hidden.device.type == "cpu" else chunked.apply)(hidden, *args)

    trl_utils._ChunkedLogProbFunction = CPUFirst if enabled else chunked
    try:
        yield
    finally:
        trl_utils._ChunkedLogProbFunction = chunked


# --- PEFT's adapter sums ----------------------------------------------------------------------

@contextmanager
def adapter_sums_in_float32(model, enabled: bool = True):
    """While inside, each LoRA/DoRA layer adds its adapter's output to the frozen layer's output in
    float32.

    Under bf16 autocast the frozen layer's output is rounded to bf16 (8 bits of mantissa), and PEFT
    adds the adapter's output to it in that precision: an adapter whose contribution is still
    smaller than the rounding step is partly rounded away, and DPO, which learns from small
    differences against the reference model, moved clearly less than in float32
    (``benchmarks/RESULTS.md``). A hook returns the frozen output in float32 (exactly the bf16
    value: the matmul still runs in bf16), so the sum keeps the adapter's contribution. Layers whose
    adapter is switched off (the reference model) get the same hook, so both see the same precision.
    SFT's loss stays close to float32's without it and the hook costs time, so ``labkit.train``
    leaves it off by default (``TrainConfig.adapter_sums_fp32``)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    hooks = []
    if enabled:
        for module in model.modules():
            if isinstance(module, BaseTunerLayer):
                hooks.append(module.get_base_layer().register_forward_hook(lambda m, args, out: out.float()))
    try:
        yield
    finally:
        for h in hooks:
            h.remove()


# --- the trainers -----------------------------------------------------------------------------

def guarded(trainer_cls, model_loss_on_cpu: bool = False, full_logits: bool = False,
            float32_adapter_sums: bool = False):
    """``trainer_cls`` (any TRL/transformers trainer) that refuses to apply an update computed from
    a non-finite loss: it raises :class:`NonFiniteLoss` before the backward pass.

    Two speed-ups for the CPU, where TRL's fused, chunked LM head is slow (see
    :func:`full_logits_log_probs`):

    - ``model_loss_on_cpu`` (``SFTTrainer``): take the model's own cross-entropy
      (``transformers.Trainer.compute_loss``) instead of ``SFTTrainer.compute_loss`` and its head.
      The same loss, in less time. (TRL's extra logged metrics, entropy and token accuracy, are not
      computed; labkit does not show them.)
    - ``full_logits`` (``DPOTrainer``, ``GRPOTrainer``): their log-probabilities come from the full
      logits while training runs (:func:`full_logits_on_cpu`).

    And one for precision: ``float32_adapter_sums``, under bf16 autocast, adds each adapter's output
    in float32 while training runs (:func:`adapter_sums_in_float32`)."""
    from transformers import Trainer

    class Guarded(trainer_cls):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if model_loss_on_cpu and self.accelerator.device.type == "cpu":
                compute = Trainer.compute_loss.__get__(self)   # model(**inputs).loss, labels -100 ignored
            else:
                compute = super().compute_loss
            out = compute(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
            loss = out[0] if return_outputs else out
            if model.training and not torch.isfinite(loss.detach()).all():
                raise NonFiniteLoss(self.state.global_step + 1, float(loss.detach().float().mean()))
            return out

        def train(self, *args, **kwargs):
            with (full_logits_on_cpu(full_logits),
                  adapter_sums_in_float32(self.model, float32_adapter_sums and self.args.bf16)):
                return super().train(*args, **kwargs)

    Guarded.__name__ = f"Guarded{trainer_cls.__name__}"
    return Guarded


# --- quieter libraries, for one call ----------------------------------------------------------

@contextmanager
def quiet():
    """While inside: no FutureWarning about transformers renaming ``gradient_checkpointing`` to
    ``activation_checkpointing`` (TRL still uses the old names; nothing a learner can change), no
    warning from bitsandbytes that it could not fetch an optional CPU kernel from a hub (its
    built-in CPU path works, and is what the lab measures; it warns once, when first imported), and
    no progress bars from ``datasets`` (TRL's tokenising passes take milliseconds here).

    On leaving, the warning filters, the log level and the progress bars are as they were: labkit's
    training functions run inside it; importing labkit changes none of them."""
    import datasets

    bnb_logger = logging.getLogger("bitsandbytes.backends.cpu.ops")
    level, bars = bnb_logger.level, datasets.is_progress_bar_enabled()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*gradient_checkpointing.*deprecated", category=FutureWarning)
        bnb_logger.setLevel(logging.ERROR)
        datasets.disable_progress_bars()
        try:
            yield
        finally:
            bnb_logger.setLevel(level)
            if bars:
                datasets.enable_progress_bars()


@contextmanager
def no_gguf_progress_bar():
    """While inside: transformers' GGUF loader draws no progress bar (patch 4 above)."""
    import functools

    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    original = gguf_utils.tqdm
    gguf_utils.tqdm = functools.partial(original, disable=True)
    try:
        yield
    finally:
        gguf_utils.tqdm = original
