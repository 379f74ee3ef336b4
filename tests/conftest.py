"""Shared fixtures: the real Hydra configs composed with tiny CPU overrides, and small
synthetic NAMO datasets generated once per session."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest
from omegaconf import DictConfig

from goalgen.config import compose

pytest_plugins = ["slurm_cluster"]

TINY = [
    "image_size=16",
    "batch_size=8",
    "num_workers=0",
    "sampling_steps=2",
    "model.network.dim=32",
    "model.network.depth=1",
    "model.network.heads=2",
    "model.network.patch_size=4",
    "trainer.accelerator=cpu",
    "trainer.precision=32",
    "trainer.compile=false",
    "trainer.log_every_n_steps=1",
    "val.num_images=2",
    "val.samples_per_scene=2",
    "optim.warmup_steps=2",
    "data.pack_workers=1",
]


def compose_config(config_name: str, overrides: list[str] | None = None) -> DictConfig:
    """The real primary config with ``overrides`` (run_name must be given: no Hydra run)."""
    return compose(config_name, overrides or [])


def load_job(name: str) -> ModuleType:
    """The script ``jobs/<name>.py`` as a module (jobs/ is not a package)."""
    path = Path(__file__).resolve().parents[1] / "jobs" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory) -> Path:
    """48 synthetic scenes in the guide's format (224x224), generated once."""
    from goalgen.data.synthetic import generate_dataset

    out = tmp_path_factory.mktemp("synth")
    generate_dataset(out, 48, seed=0, workers=1)
    return out


@pytest.fixture
def tiny_cfg(tmp_path, synth_dir):
    """Factory: ``tiny_cfg(config_name, *overrides)`` -> composed tiny CPU config."""

    def make(config_name: str = "train_fb_flow_matching", *overrides: str) -> DictConfig:
        base = TINY + [
            f"data.data_dir={synth_dir}",
            f"output_dir={tmp_path}/outputs",
            "run_name=test",
            f"data.cache_dir={tmp_path}/cache",
        ]
        return compose_config(config_name, base + list(overrides))

    return make
