"""Measuring tools: timing with device sync, peak memory, FLOP counting, the matmul peak."""

from __future__ import annotations

import ctypes
import gc
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

import torch


# ------------------------------------------------------------------------------ measuring
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_runs(
    fn: Callable[[], object], device: torch.device, repeats: int, warmup: int
) -> list[float]:
    """Seconds of each of ``repeats`` calls of ``fn`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return times


def ms(seconds: list[float]) -> float:
    return 1e3 * statistics.median(seconds)


def load_avg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # not available on this platform
        return []


def matmul_peak_gflop_per_s(
    dtype: torch.dtype, device: torch.device, repeats: int, quick: bool = False
) -> float:
    """Median FLOP rate of a large square matmul in ``dtype`` (the MFU denominator).

    2048² on the CPU (one product ~ 20-100 ms); 8192² on CUDA, where one product is long
    enough (~1-10 ms) for launch overhead not to matter; 512² with ``quick``.
    """
    n = 512 if quick else 8192 if device.type == "cuda" else 2048
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    times = time_runs(lambda: torch.mm(a, b), device, max(5, repeats), warmup=2)
    return 2 * n**3 / statistics.median(times) / 1e9


class PeakMemory:
    """Peak memory while the ``with`` block runs, in MiB (``.peak_mb``, ``.kind``).

    CUDA: ``torch.cuda.max_memory_allocated`` after a reset (all tensors: weights, optimizer
    state, activations). CPU on Linux: the peak resident set above the resident set at entry
    (free heap first returned to the OS with ``malloc_trim``, the high-water mark reset through
    /proc/self/clear_refs), i.e. what the block allocates on top of what is live (activations,
    gradients, temporaries); ``.rss_mb`` is the absolute peak. Elsewhere: the growth of
    ``ru_maxrss``, a lower bound (0 unless the block sets a new lifetime peak).
    """

    def __init__(self, device: torch.device):
        self.device, self.peak_mb, self.rss_mb, self.kind = device, float("nan"), None, ""

    def __enter__(self) -> PeakMemory:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.kind = "cuda_max_allocated"
        elif self._reset_hwm():
            _malloc_trim()
            self.base_kb, self.kind = self._status_kb("VmRSS"), "rss_peak_above_entry"
        else:
            self.base_kb, self.kind = self._maxrss_kb(), "ru_maxrss_growth"
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            sync(self.device)
            self.peak_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        elif self.kind == "rss_peak_above_entry":
            peak_kb = self._status_kb("VmHWM")
            self.peak_mb, self.rss_mb = (peak_kb - self.base_kb) / 1024, peak_kb / 1024
        else:
            self.peak_mb = (self._maxrss_kb() - self.base_kb) / 1024

    @staticmethod
    def _reset_hwm() -> bool:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            return True
        except OSError:
            return False

    @staticmethod
    def _status_kb(key: str) -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
        raise KeyError(key)

    @staticmethod
    def _maxrss_kb() -> int:
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return rss // 1024 if sys.platform == "darwin" else rss


def _malloc_trim() -> None:
    """Return glibc's free heap pages to the OS (no-op elsewhere), so the resident set is what
    is live and the next block's peak above it is not hidden by memory freed earlier."""
    with suppress(OSError, AttributeError):
        ctypes.CDLL(None).malloc_trim(0)


def _flop_formulas() -> dict:
    """FLOP formulas for the CPU flash-attention kernels, which FlopCounterMode lacks (it
    counts the CUDA ones): without them attention would count as zero FLOPs on the CPU."""
    from torch.utils import flop_counter as fc

    def forward(q, k, v, *args, out_shape=None, **kwargs) -> int:
        return fc.sdpa_flop_count(q, k, v)

    def backward(grad_out, q, k, v, *args, out_shape=None, **kwargs) -> int:
        return fc.sdpa_backward_flop_count(grad_out, q, k, v)

    ops = {
        "_scaled_dot_product_flash_attention_for_cpu": forward,
        "_scaled_dot_product_flash_attention_for_cpu_backward": backward,
    }
    return {
        getattr(torch.ops.aten, name): formula
        for name, formula in ops.items()
        if hasattr(torch.ops.aten, name)
    }


@contextmanager
def counting_flops() -> Iterator[Any]:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False, custom_mapping=_flop_formulas()) as counter:
        yield counter


def release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
