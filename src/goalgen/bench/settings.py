"""What every benchmark section needs: the composed config, the device, the run settings;
the sampler grids."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

SECTIONS = ("train", "data", "sample", "checkpoint", "synth", "propose", "episodes")
QUICK_OVERRIDES = [
    "image_size=16",
    "batch_size=8",
    "sampling_steps=2",
    "model.network.dim=32",
    "model.network.depth=1",
    "model.network.heads=2",
    "model.network.patch_size=4",
]
# (method, steps); steps None = adaptive. Flow methods use an ODE sampler, ddim/ddpm diffusers.
# Kept small: on a CPU every network evaluation of the default model costs ~1.5 s here
# (32 samples batched + 32 sequential), so this grid alone takes ~3 min per repeat.
SAMPLE_GRID = [
    ("euler", 5),
    ("euler", 10),
    ("midpoint", 5),
    ("rk4", 5),
    ("dopri5", None),
    ("ddim", 10),
    ("ddim", 20),
    ("ddpm", 10),
]
QUICK_SAMPLE_GRID = [
    ("euler", 2),
    ("midpoint", 2),
    ("rk4", 2),
    ("dopri5", None),
    ("ddim", 2),
    ("ddpm", 2),
]
DIFFUSION_METHODS = ("ddim", "ddpm")
# --run: sampler settings scored by goalgen-eval, per family; steps None = adaptive
QUALITY_GRID = {
    "flow": [
        ("euler", 5),
        ("euler", 10),
        ("euler", 20),
        ("midpoint", 5),
        ("midpoint", 10),
        ("midpoint", 20),
        ("rk4", 5),
        ("rk4", 10),
        ("dopri5", None),
    ],
    "diffusion": [("ddim", 10), ("ddim", 20), ("ddim", 50), ("ddpm", 50), ("ddpm", 100)],
}
QUICK_QUALITY_GRID = {
    "flow": [("euler", 2), ("midpoint", 2)],
    "diffusion": [("ddim", 2), ("ddpm", 2)],
}
QUALITY_POINTS = 2.0  # "as good as the best": success rate within this many points
PRECISION_DTYPES = {"32": torch.float32, "bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


# ------------------------------------------------------------------------------ settings
@dataclass
class Bench:
    """What every section needs: the composed config, the device and the run settings."""

    cfg: DictConfig
    config_name: str
    overrides: list[str]
    device: torch.device
    quick: bool
    repeats: int
    warmup: int
    work_dir: Path  # kept between runs: synthetic scenes
    scratch: Path  # removed at exit: checkpoints
    data_dir: Path | None
    num_scenes: int
    epoch_steps: int | None
    compile: bool
    compile_backend: str
    samples_per_scene: int
    sample_grid: list[tuple[str, int | None]]
    ckpt: Path | None
    run_dir: Path | None  # --run: score sampler settings on this run's validation scenes
    quality_scenes: int
    precision: str  # trainer.precision as the loop resolves it here (16-mixed -> bf16 on CPU)
    synth_scenes: int = 20  # synth: scenes per family
    propose_samples: int = 32  # propose: samples (proposals) per scene
    propose_scenes: int = 10  # propose: scenes per family (one call each)
    baseline: Path | None = None  # propose: the previous weights, timed on the same scenes
    episode_scenes: int = 10  # episodes: scenes per family (one episode each)
    shared: dict[str, Any] = field(default_factory=dict)  # figures one section hands another
