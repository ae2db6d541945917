"""Measure memory: the peak while a block of code runs.

On a GPU this is PyTorch's own peak-allocation counter, reset when the block starts: the memory
its tensors take on the GPU (every model there included, the CUDA context and the cache not). On
the CPU there is no such counter, so a background thread samples the resident memory (RSS) of the
whole process every few milliseconds. The two are different quantities: label a figure with
:func:`measure` or :func:`peak_label`, and compare figures measured the same way.
"""
from __future__ import annotations

import threading
import time

import psutil
import torch


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def measure(device: str | None = None) -> str:
    """What :class:`PeakMemory` reads on ``device`` (default: where it measures here)."""
    if (device or default_device()).startswith("cuda"):
        return "CUDA memory allocated"
    return "process RSS"


def peak_label(device: str | None = None) -> str:
    """A table column or axis title for ``PeakMemory.peak_mb`` on ``device``."""
    return f"peak memory (MiB, {measure(device)})"


class PeakMemory:
    """``with PeakMemory() as m: ...`` then ``m.peak_mb`` (highest use) and ``m.delta_mb``
    (highest use above what the process held when the block started)."""

    def __init__(self, device: str | None = None, interval_s: float = 0.005):
        self.device = device or default_device()
        self.interval_s = interval_s
        self.start_mb = self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = None

    @staticmethod
    def rss_mb() -> float:
        return psutil.Process().memory_info().rss / 2**20

    def current_mb(self) -> float:
        if self.device.startswith("cuda"):
            return torch.cuda.memory_allocated(self.device) / 2**20
        return self.rss_mb()

    def _sample(self):
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, self.rss_mb())
            time.sleep(self.interval_s)

    def __enter__(self):
        if self.device.startswith("cuda"):
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        self.start_mb = self.peak_mb = self.current_mb()
        if not self.device.startswith("cuda"):
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def read(self) -> float:
        """The peak so far, in MiB."""
        if self.device.startswith("cuda"):
            self.peak_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        return self.peak_mb

    def __exit__(self, *exc):
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
        self.read()
        return False

    @property
    def delta_mb(self) -> float:
        return self.peak_mb - self.start_mb
