"""One seed for everything: Python, NumPy, torch (and transformers' own helper).

``set_seed`` changes the whole session (a notebook calls it once, at the top); ``seeded`` changes it
only inside a ``with`` block, which is how ``labkit.train`` and the RLHF stages use it."""
from __future__ import annotations

import random
from contextlib import contextmanager

import numpy as np
import torch


LAST_SEED: int | None = None   # the seed of this process's last set_seed call


def set_seed(seed: int = 0, deterministic: bool = True, fill_uninitialized_memory: bool = False) -> int:
    """Seed every random generator the lab uses. With ``deterministic``, torch picks
    deterministic kernels where it has them, so the same seed and profile give the same losses."""
    global LAST_SEED
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    LAST_SEED = seed   # what labkit.claims records beside each measurement
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        # Deterministic mode also fills every new tensor with NaN before use (a debugging aid for
        # kernels that read memory they never wrote). It changes no result and costs time on every
        # CPU step (benchmarks/RESULTS.md), so it stays off unless asked for.
        torch.utils.deterministic.fill_uninitialized_memory = fill_uninitialized_memory
    return seed


def _global_state() -> dict:
    """What :func:`set_seed` (or a trainer seeding itself) changes: every generator and torch's flags."""
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "mps": torch.mps.get_rng_state() if torch.backends.mps.is_built() and torch.mps.is_available() else None,
            "deterministic": (torch.are_deterministic_algorithms_enabled(),
                              torch.is_deterministic_algorithms_warn_only_enabled()),
            "fill": torch.utils.deterministic.fill_uninitialized_memory,
            "cudnn": (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)}


def _restore(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None:
        torch.cuda.set_rng_state_all(state["cuda"])
    if state["mps"] is not None:
        torch.mps.set_rng_state(state["mps"])
    enabled, warn_only = state["deterministic"]
    torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
    torch.utils.deterministic.fill_uninitialized_memory = state["fill"]
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = state["cudnn"]


@contextmanager
def seeded(seed: int = 0, deterministic: bool = True, fill_uninitialized_memory: bool = False):
    """:func:`set_seed` for the inside of a ``with`` block only. On leaving it, every random
    generator (Python's, NumPy's, torch's) and torch's determinism flags (deterministic algorithms,
    NaN-filling, cuDNN's) are as they were before, whatever ran inside (a trainer reseeds them too)."""
    state = _global_state()
    try:
        yield set_seed(seed, deterministic, fill_uninitialized_memory)
    finally:
        _restore(state)
