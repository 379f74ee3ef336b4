"""Pieces of training state that are not the model: LR schedule, EMA, RNG snapshots."""

from __future__ import annotations

import math
import random
from typing import Any

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel


def lr_factor(step: int, warmup_steps: int, decay_steps: int, end_ratio: float) -> float:
    """Multiplier of ``base_lr`` at optimizer step ``step``.

    Linear warmup from 0 over ``warmup_steps``, then cosine decay from 1 to ``end_ratio`` over
    ``decay_steps``, then flat at ``end_ratio``.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if decay_steps <= 0:
        return 1.0
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return end_ratio + (1 - end_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def make_ema(model: torch.nn.Module, decay: float, warmup: bool) -> AveragedModel:
    """Exponential moving average of ``model``'s parameters and buffers (torch's AveragedModel).

    With ``warmup`` the effective decay is ``min(decay, (1 + n) / (10 + n))`` after ``n``
    updates, so the average is not dominated by the initial weights in short runs.
    """

    @torch.no_grad()
    def ema_update(
        averaged: list[torch.Tensor], current: list[torch.Tensor], n: torch.Tensor
    ) -> None:
        d = min(decay, (1 + int(n)) / (10 + int(n))) if warmup else decay
        torch._foreach_lerp_(averaged, current, 1 - d)

    return AveragedModel(model, multi_avg_fn=ema_update, use_buffers=True)


def rng_state() -> dict[str, Any]:
    """This process's RNG states as tensors and primitives (``weights_only``-loadable)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": _to_plain(random.getstate()),
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        # this rank's own device only: a resume may see another number of GPUs per task
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_to_tuple(state["python"]))
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"])
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if isinstance(cuda, list):  # checkpoints of goalgen <= 0.1.0: every visible device
            index = torch.cuda.current_device()
            cuda = cuda[index] if index < len(cuda) else None
        if cuda is not None:
            torch.cuda.set_rng_state(cuda)


def _to_plain(value: Any) -> Any:
    return [_to_plain(v) for v in value] if isinstance(value, tuple) else value


def _to_tuple(value: Any) -> Any:
    return tuple(_to_tuple(v) for v in value) if isinstance(value, list) else value


def per_sample_noise(
    path, shape: tuple[int, ...], indices: torch.Tensor, seed: int, epoch: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise (B, *shape) and time (B,) for the samples ``indices`` of one epoch, on the CPU.

    Each sample's draw depends only on (seed, epoch, sample index): a resumed run draws exactly
    what an uninterrupted one would without saving generator state, and N-process DDP draws
    what one process with the same global batch draws.
    """
    template = torch.empty((1, *shape))
    noises, times = [], []
    for index in indices.tolist():
        mixed = np.random.SeedSequence([seed, epoch + 1, index]).generate_state(1, np.uint64)[0]
        g = torch.Generator().manual_seed(int(mixed) & ((1 << 63) - 1))
        noise, t = path.draw(template, g)
        noises.append(noise)
        times.append(t)
    return torch.cat(noises), torch.cat(times)
