"""The packaged Hydra configs: where they live, and composing one without ``@hydra.main``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig


def config_dir() -> Path:
    """``configs/`` of a source checkout, else the copy shipped inside the wheel."""
    package = Path(__file__).resolve().parent
    checkout = package.parents[1] / "configs"
    return checkout if checkout.is_dir() else package / "configs"


def compose(
    config_name: str, overrides: Sequence[str] = (), return_hydra_config: bool = False
) -> DictConfig:
    """The primary config ``config_name`` with ``overrides`` (Hydra's ``compose``, so no run
    dir and no ``HydraConfig``; ``return_hydra_config`` adds the ``hydra`` node). Clears any
    global Hydra state first, so it also works inside a process that already ran Hydra."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return hydra_compose(
            config_name=config_name,
            overrides=list(overrides),
            return_hydra_config=return_hydra_config,
        )
