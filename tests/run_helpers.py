"""Helpers for tests that train: the CPU context, run dirs, logged scalars, weight equality."""

from __future__ import annotations

from pathlib import Path

import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import TINY, compose_config
from goalgen.train.distributed import DistContext
from goalgen.train.loop import train

CPU = DistContext(0, 0, 1, 1, torch.device("cpu"), None)


def run_dir_of(cfg) -> Path:
    """The run dir of a composed config (no Hydra run: ``output_dir/run_name``)."""
    return Path(cfg.output_dir) / cfg.run_name


def scalars(run_dir: Path, tag: str) -> list[tuple[int, float]]:
    """``(step, value)`` of every TensorBoard scalar ``tag`` the run logged, by step.

    Sorted (stably) because the accumulator reads event files in name order, and a resumed
    attempt's file can sort before the first one's (``...<pid>.10`` before ``...<pid>.9`` when
    both start in the same second): its steps then come first, all still there."""
    acc = EventAccumulator(str(run_dir / "tensorboard")).Reload()
    return sorted(((e.step, e.value) for e in acc.Scalars(tag)), key=lambda sv: sv[0])


def steps_logged(run_dir: Path) -> list[int]:
    return [step for step, _ in scalars(run_dir, "train_loss")]


def assert_same_weights(a: Path, b: Path) -> None:
    """Two checkpoints at the same epoch and step with bitwise equal model and EMA weights."""
    sa, sb = (torch.load(p, weights_only=True) for p in (a, b))
    assert (sa["step"], sa["epoch"]) == (sb["step"], sb["epoch"])
    for part in ("model", "ema"):
        for key in sa[part]:
            assert torch.equal(sa[part][key], sb[part][key]), (part, key)


def train_tiny_run(
    root: Path, data_dir: Path, config_name: str = "train_fb_flow_matching", *overrides: str
) -> Path:
    """A tiny CPU run (1-2 s) in ``root/outputs/tiny``; returns its run dir."""
    cfg = compose_config(
        config_name,
        TINY
        + [
            f"data.data_dir={data_dir}",
            f"output_dir={root}/outputs",
            "run_name=tiny",
            f"data.cache_dir={root}/cache",
            "max_epochs=2",
            "val.num_images=0",
            *overrides,
        ],
    )
    run_dir = run_dir_of(cfg)
    train(cfg, run_dir, CPU)
    return run_dir
