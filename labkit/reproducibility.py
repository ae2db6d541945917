"""One seed for everything: Python, NumPy, torch (and transformers' own helper)."""
from __future__ import annotations

import random

import numpy as np
import torch


def set_seed(seed: int = 0, deterministic: bool = True) -> int:
    """Seed every random generator the lab uses. With ``deterministic``, torch picks
    deterministic kernels where it has them, so the same seed and profile give the same losses."""
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        # Deterministic mode also fills every new tensor with NaN before use (a debugging aid for
        # kernels that read memory they never wrote). The profiler put a tenth of a CPU training
        # step in it; side by side, turning it off saved about 4% (benchmarks/RESULTS.md). It
        # changes no result, so it stays off.
        torch.utils.deterministic.fill_uninitialized_memory = False
    return seed
