"""Stop a training run that has gone wrong, and say so truthfully.

A learning rate a thousand times too big does not always crash: the loss can settle at the level of
a model that guesses every token uniformly (ln of the vocabulary size), the run "finishes", and the
model generates nothing. :class:`DivergenceGuard` watches each step and stops the run when

- a trainable weight is no longer a finite number (NaN or infinity),
- the gradient's norm is not finite (the update it drives would be garbage),
- for language modelling (given the vocabulary size): the loss climbs far above where it started
  (more than doubled, by more than 2 nats, and past half the uniform level: a hard batch after an
  easy one can take a healthy run from 0.7 to 2.9), or a loss that started well below the uniform
  level rises to it. (A reward model's, GRPO's or DPO's loss has other scales: only the first two
  checks apply to them.)

It keeps a copy of the trainable weights from the start (on the CPU, when they fit in
``max_copy_mb``) and puts them back when it stops a run, so "restored" is a fact; where no copy
was kept, its message says to reload the model instead.

:func:`interrupts_deferred` holds a Ctrl-C ("interrupt kernel") back until a block ends, for the
steps that must never be half done: importing the training libraries, adding adapters to a model.
"""
from __future__ import annotations

import math
import signal
import threading
from contextlib import contextmanager

import torch
from transformers import TrainerCallback


def non_finite_weights(model) -> list[str]:
    """Names of trainable parameters holding NaN or infinity (at most 3). It runs after every step,
    so it checks each parameter's sum first: a NaN or an infinity makes the sum one too, and a sum
    is one pass with no mask the size of the weights (on a 135M model, 0.03 s against 0.4 s).
    Only a sum that is not finite is checked element by element: huge finite weights can overflow it."""
    bad = []
    for name, p in model.named_parameters():
        if p.requires_grad and not torch.isfinite(p.detach().sum()) and not torch.isfinite(p.detach()).all():
            bad.append(name)
            if len(bad) == 3:
                break
    return bad


class DivergenceGuard(TrainerCallback):
    """A ``transformers`` callback: see the module's docstring. ``reason`` is ``None`` while all is
    well; after a stop it says what happened, at which step and what became of the weights."""

    def __init__(self, vocab_size: int | None = None, max_copy_mb: float = 4096):
        self.uniform = math.log(vocab_size) if vocab_size else None
        self.max_copy_mb = max_copy_mb
        self.first_loss = None
        self.reason = None
        self._copy, self._model = None, None

    def on_train_begin(self, args, state, control, model=None, **kw):
        self._model = model
        trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        size_mb = sum(p.numel() * p.element_size() for _, p in trainable) / 2**20
        if size_mb <= self.max_copy_mb:
            self._copy = {n: p.detach().to("cpu", copy=True) for n, p in trainable}

    def on_log(self, args, state, control, logs=None, **kw):
        logs = logs or {}
        if "loss" not in logs or self.reason:
            return
        loss, grad_norm = float(logs["loss"]), float(logs.get("grad_norm", 0.0))
        if self.first_loss is None:
            self.first_loss = loss
        start = self.first_loss
        if not math.isfinite(grad_norm):
            why = f"the gradient's norm became {grad_norm}"
        elif self.uniform is None:   # the loss rules are for language modelling (SFT)
            return
        elif start < 0.85 * self.uniform and loss > 0.95 * self.uniform:
            why = (f"the loss rose from {start:.2f} to {loss:.2f}, the level of a model that guesses every "
                   f"token uniformly (ln of the vocabulary = {self.uniform:.2f})")
        elif loss > max(2 * start, start + 2, self.uniform / 2):   # one batch's loss varies (0.7 then 2.9)
            why = f"the loss rose from {start:.2f} to {loss:.2f}"
        else:
            return
        self.stop(state.global_step, why, control)

    def on_step_end(self, args, state, control, model=None, **kw):
        if self.reason is None:
            bad = non_finite_weights(model if model is not None else self._model)
            if bad:
                self.stop(state.global_step, f"weights became NaN or infinite ({', '.join(bad)})", control)

    def stop(self, step: int, why: str, control=None) -> None:
        """Stop training (through ``control``) and restore the weights from the start of the run."""
        if control is not None:
            control.should_training_stop = True
        self.reason = f"diverged at step {step}: {why}. {self.restore()}"

    def restore(self) -> str:
        """Put back the weights from the start of the run; a sentence saying what was done."""
        if self._copy is None or self._model is None:
            return ("The weights are damaged and no copy was kept (too large): reload the model. "
                    "Try a learning rate 10x smaller.")
        params = dict(self._model.named_parameters())
        with torch.no_grad():
            for name, saved in self._copy.items():
                params[name].copy_(saved)
        return "The weights are restored to those before this run. Try a learning rate 10x smaller."

    def weights_ok(self) -> bool:
        """Whether the watched model's trainable weights are all finite."""
        return self._model is None or not non_finite_weights(self._model)


@contextmanager
def interrupts_deferred():
    """Inside the block a Ctrl-C waits; it is raised as ``KeyboardInterrupt`` when the block ends.
    (Only in the main thread, where Python delivers signals; elsewhere the block runs as is.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []
    previous = signal.signal(signal.SIGINT, lambda *_: caught.append(True))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.default_int_handler)
    if caught:
        raise KeyboardInterrupt
