"""Profiles: how much work each notebook does on this hardware.

One place decides steps, batch size, sequence length and evaluation sizes:

- ``smoke``: the test suite; seconds per notebook section.
- ``cpu``:   a 2-core laptop; every notebook within 5 minutes.
- ``gpu``:   Colab's T4 (16 GB) and up; fp16 on a T4, bf16 where the GPU has it natively.

The profile is chosen automatically (a CUDA GPU gives ``gpu``, otherwise ``cpu``) and can be
overridden with the environment variable ``LABKIT_PROFILE`` or per call: ``profile("smoke")``.
Mixed precision follows the device the lab trains on (:func:`labkit.models.pick_device`).
Gradient checkpointing (TRL's default) is off in ``smoke`` and ``cpu``: a small model's activations
fit easily there, and the recomputation cost a quarter of a LoRA step's time
(benchmarks/RESULTS.md, "Gradient checkpointing on the CPU"); ``gpu`` keeps it on.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, replace

PROFILE_NAMES = ("smoke", "cpu", "gpu")


@dataclass(frozen=True)
class Profile:
    name: str
    train_steps: int      # optimizer steps for a typical short fine-tune in a notebook
    batch_size: int       # sequences per step
    max_length: int       # tokens per sequence
    eval_items: int       # items scored before/after (probes, held-out prompts)
    eval_every: int       # evaluate on the validation split every N steps
    max_new_tokens: int   # tokens generated per answer
    mixed_precision: str  # "no", "bf16" or "fp16": autocast during training (bf16 only where native)
    gradient_checkpointing: bool  # recompute activations in the backward pass: less memory, more time

    def pick(self, **per_profile):
        """Choose a notebook-specific value: ``P.pick(smoke=2, cpu=30, gpu=200)``."""
        if self.name not in per_profile:
            raise ValueError(f"pick() needs a value for profile {self.name!r}; got {sorted(per_profile)}")
        return per_profile[self.name]

    def to_dict(self) -> dict:
        return asdict(self)


_PROFILES = {
    "smoke": Profile("smoke", train_steps=2, batch_size=2, max_length=64, eval_items=4,
                     eval_every=1, max_new_tokens=8, mixed_precision="auto",
                     gradient_checkpointing=False),
    "cpu": Profile("cpu", train_steps=30, batch_size=8, max_length=128, eval_items=40,
                   eval_every=10, max_new_tokens=40, mixed_precision="auto",
                   gradient_checkpointing=False),
    "gpu": Profile("gpu", train_steps=300, batch_size=16, max_length=256, eval_items=200,
                   eval_every=50, max_new_tokens=80, mixed_precision="bf16",
                   gradient_checkpointing=True),
}


def cpu_has_fast_bf16() -> bool:
    """True where the CPU multiplies bfloat16 in hardware (AVX512-BF16 or AMX): there bf16
    autocast trains faster than float32 (benchmarks/RESULTS.md measures by how much)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def _cpu_mixed_precision() -> str:
    return "bf16" if cpu_has_fast_bf16() else "no"


def gpu_has_native_bf16() -> bool:
    """True where the CUDA GPU computes in bf16 in hardware: compute capability 8.0 and up (A100,
    L4, H100). A T4 (7.5) only emulates bf16, slowly, yet ``torch.cuda.is_bf16_supported()``
    answers True there: hence ``including_emulation=False``."""
    import torch

    if not torch.cuda.is_available():
        return False
    try:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # a torch without the keyword
        return torch.cuda.get_device_capability() >= (8, 0)


def _gpu_mixed_precision() -> str:
    return "bf16" if gpu_has_native_bf16() else "fp16"  # fp16: the Trainer adds loss scaling


def _auto_mixed_precision() -> str:
    """The precision for the device the lab trains on: a GPU's rule on CUDA, the CPU's on the
    CPU, float32 on Apple's MPS (autocast there is untested)."""
    from .models import pick_device

    device = pick_device()
    if device.startswith("cuda"):
        return _gpu_mixed_precision()
    return _cpu_mixed_precision() if device == "cpu" else "no"


def default_profile_name() -> str:
    """The profile for this machine: ``LABKIT_PROFILE`` if set, else ``gpu`` where the lab runs
    on CUDA, else ``cpu``."""
    name = os.environ.get("LABKIT_PROFILE", "").strip().lower()
    if name:
        if name not in PROFILE_NAMES:
            raise ValueError(f"LABKIT_PROFILE={name!r} is not a profile; choose one of {PROFILE_NAMES}")
        return name
    from .models import pick_device

    return "gpu" if pick_device().startswith("cuda") else "cpu"


def profile(name: str | None = None, **overrides) -> Profile:
    """The active profile, or the one named; keyword overrides change single fields."""
    name = (name or default_profile_name()).lower()
    if name not in _PROFILES:
        raise ValueError(f"profile={name!r} is not a profile; choose one of {PROFILE_NAMES}")
    p = _PROFILES[name]
    if p.mixed_precision == "auto":
        p = replace(p, mixed_precision=_auto_mixed_precision())
    if name == "gpu":
        p = replace(p, mixed_precision=_gpu_mixed_precision())
    unknown = set(overrides) - set(p.to_dict())
    if unknown:
        raise ValueError(f"unknown profile field(s) {sorted(unknown)}; fields are {sorted(p.to_dict())}")
    return replace(p, **overrides)
