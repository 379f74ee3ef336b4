"""Small synthetic scene files for the data-layer tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from goalgen.data.scenes import LEGACY_ALIASES, SCENE_KEYS


def scene_masks(size: int = 32, seed: int = 0) -> dict[str, np.ndarray]:
    """Six bool masks (canonical keys): a rectangle each at a seeded spot, a 1-px wall."""
    rng = np.random.default_rng(seed)
    masks = {}
    for key in SCENE_KEYS:
        m = np.zeros((size, size), dtype=bool)
        y, x = rng.integers(0, size - size // 4, size=2)
        m[y : y + size // 4, x : x + size // 5] = True
        masks[key] = m
    masks["static_objects_image"][:, size // 2] = True
    return masks


def encode(mask: np.ndarray, dtype: str) -> np.ndarray:
    """A bool mask stored as ``bool``, ``uint8_255``, ``uint8_01`` or ``float32``."""
    return {
        "bool": lambda m: m,
        "uint8_255": lambda m: m.astype(np.uint8) * 255,
        "uint8_01": lambda m: m.astype(np.uint8),
        "float32": lambda m: m.astype(np.float32),
    }[dtype](mask)


def write_scene(
    path: Path,
    size: int = 32,
    *,
    seed: int = 0,
    dtype: str = "bool",
    legacy: bool = False,
    extra: bool = False,
    compressed: bool = False,
    **override: np.ndarray,
) -> Path:
    """Write a scene; ``override`` replaces (or, with value None, drops) arrays by stored key."""
    arrays = {
        (LEGACY_ALIASES.get(k, k) if legacy else k): encode(m, dtype)
        for k, m in scene_masks(size, seed).items()
    }
    if extra:  # what NAMO files also hold; must be ignored, never decoded
        arrays["distance_field"] = np.full((size, size), 7.5, np.float32)
        arrays["metadata"] = np.array({"robot": "namo"}, dtype=object)
        arrays["scene_name"] = np.array("room_1")
    arrays.update(override)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    path.parent.mkdir(parents=True, exist_ok=True)
    (np.savez_compressed if compressed else np.savez)(path, **arrays)
    return path


def write_scenes(folder: Path, n: int, size: int = 32, **kw) -> list[Path]:
    """``n`` distinct scenes ``folder/scene_000.npz ...`` (seed = index)."""
    return [write_scene(folder / f"scene_{i:03d}.npz", size, seed=i, **kw) for i in range(n)]
