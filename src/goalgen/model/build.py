"""Config -> model: the one place a :class:`GenerativeModel` is built from ``cfg.model``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import hydra
from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf

from goalgen.model.generative import GenerativeModel

IN_CHANNELS = 8  # 5 context + 2 coordinate + 1 noisy target


def build_model(cfg: DictConfig | Mapping[str, Any]) -> GenerativeModel:
    """Instantiate the model from ``cfg.model`` (``_target_`` classes), checking its shape.

    ``cfg`` is a composed config or the plain dict a checkpoint stores under ``config``."""
    cfg = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(dict(cfg))
    try:
        model = hydra.utils.instantiate(cfg.model, _convert_="all")
    except InstantiationException as exc:  # surface our own message, not Hydra's wrapper
        raise ValueError(str(exc.__cause__ or exc)) from exc
    if getattr(model.network, "in_ch", IN_CHANNELS) != IN_CHANNELS:
        raise ValueError(
            f"model.network.in_ch={model.network.in_ch}; it must be {IN_CHANNELS} "
            "(5 context + 2 coordinate + 1 noisy channels)"
        )
    return model
