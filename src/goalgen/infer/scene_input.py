"""Scenes as the predictor takes them: ``.npz`` files or mask arrays, resized to the model's
resolution (area resize, as in training)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from goalgen.data.pack import resize_masks
from goalgen.data.scenes import load_scene_file

SceneLike = str | os.PathLike | np.ndarray | Tensor


@dataclass
class SceneInput:
    """One scene at the model's resolution: soft masks in [0, 1]."""

    name: str
    context: np.ndarray  # (5, S, S) float32
    truth: np.ndarray | None  # (S, S) float32
    geometry: dict[str, Any] | None  # world_bounds (4-tuple), robot_radius (m)


def _array_scene(array: np.ndarray | Tensor, name: str) -> np.ndarray:
    if isinstance(array, Tensor):
        array = array.detach().cpu().numpy()
    array = np.asarray(array, dtype=np.float32)
    if array.ndim != 3 or array.shape[0] not in (5, 6) or array.shape[1] != array.shape[2]:
        raise ValueError(f"{name}: expected masks (6, H, H) or (5, H, H), got {array.shape}")
    if not np.isfinite(array).all() or array.min() < -1e-3 or array.max() > 1 + 1e-3:
        raise ValueError(f"{name}: masks must be finite floats in [0, 1] (not the model's [-1, 1])")
    return np.clip(array, 0, 1)


def prepare_scene(
    scene: SceneLike,
    image_size: int,
    name: str | None = None,
    geometry: Mapping[str, Any] | None = None,
) -> SceneInput:
    """Load (``.npz`` path) or check (array) one scene and resize it to ``image_size``."""
    if isinstance(scene, (str, os.PathLike)):
        masks, found = load_scene_file(scene)
        name = name or Path(scene).stem
        geometry = geometry if geometry is not None else found
    else:
        name = name or "scene"
        masks = _array_scene(scene, name)
    masks = resize_masks(np.ascontiguousarray(masks, dtype=np.float32), image_size)
    truth = masks[5] if masks.shape[0] == 6 else None
    return SceneInput(name, masks[:5].copy(), truth, dict(geometry) if geometry else None)
