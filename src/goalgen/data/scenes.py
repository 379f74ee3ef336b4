"""Scene files: key names, legacy aliases, loading and validation.

A scene is one ``.npz`` archive with six same-sized square masks (224x224 in the guide):
``robot_image``, ``goal_image``, ``movable_objects_image``, ``static_objects_image``,
``target_object`` and ``target_goal``. The first four may use the legacy names ``robot``,
``goal``, ``movable`` and ``static``. Masks may be bool, integers (0/1 or 0..255) or floats in
[0, 1]; any other key in the archive is ignored and never read.
"""

from __future__ import annotations

import os
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

CONTEXT_KEYS = (
    "robot_image",
    "goal_image",
    "movable_objects_image",
    "static_objects_image",
    "target_object",
)
TARGET_KEY = "target_goal"
SCENE_KEYS = CONTEXT_KEYS + (TARGET_KEY,)
LEGACY_ALIASES = {
    "robot_image": "robot",
    "goal_image": "goal",
    "movable_objects_image": "movable",
    "static_objects_image": "static",
}
NONEMPTY_KEYS = ("target_object", TARGET_KEY)
CACHE_DIRNAME = ".goalgen_cache"  # packed caches live here; never searched for scenes
MIN_SIZE = 16
FLOAT_TOLERANCE = 1e-3

PathLike = str | os.PathLike[str]
Sources = PathLike | Sequence[PathLike]

_READ_ERRORS = (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error)


class SceneError(ValueError):
    """A scene file that cannot be used; ``str(err)`` is ``"<path>: <problem>"``."""

    def __init__(self, path: PathLike, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = str(path)
        self.problem = problem

    def __reduce__(self):  # keep picklable across process pools despite the 2-arg __init__
        return type(self), (self.path, self.problem)


def _accepted_names() -> str:
    return ", ".join(
        f"{k} (or {LEGACY_ALIASES[k]})" if k in LEGACY_ALIASES else k for k in SCENE_KEYS
    )


def _not_npz_reason(path: Path) -> str:
    with open(path, "rb") as f:
        head = f.read(6)
    if not head:
        return "file is empty (0 bytes); expected an .npz archive"
    if head == b"\x93NUMPY":
        return "is a single-array .npy file, not an .npz archive of named masks"
    if head.startswith(b"PK"):
        return "is a truncated or corrupt .npz (zip) archive (no central directory)"
    return f"is not an .npz (zip) archive (file starts with {head!r})"


def _read_masks(path: Path) -> dict[str, np.ndarray]:
    """Read the six masks (canonical names) from ``path``; other keys are never decompressed."""
    try:
        if not zipfile.is_zipfile(path):
            raise SceneError(path, _not_npz_reason(path))
        npz = np.load(path, allow_pickle=False)
    except SceneError:
        raise
    except _READ_ERRORS as e:
        raise SceneError(path, f"cannot open as .npz: {e}") from e
    with npz:
        found = list(npz.files)
        arrays = {}
        for key in SCENE_KEYS:
            stored = key if key in found else LEGACY_ALIASES.get(key)
            if stored not in found:
                raise SceneError(
                    path,
                    f"missing key {key!r}; found keys {sorted(found)}; "
                    f"accepted names: {_accepted_names()}",
                )
            try:
                arrays[key] = npz[stored]
            except _READ_ERRORS as e:  # corrupt member, bad CRC, object (pickled) arrays
                raise SceneError(path, f"cannot read key {stored!r}: {e}") from e
    return arrays


def _check_shapes(path: Path, arrays: dict[str, np.ndarray]) -> None:
    for key, a in arrays.items():
        if a.ndim != 2:
            raise SceneError(path, f"{key!r} has shape {a.shape}; masks must be 2-D (H, W)")
    shapes = {key: a.shape for key, a in arrays.items()}
    if len(set(shapes.values())) > 1:
        raise SceneError(path, f"masks differ in shape: {shapes}; all six must be equal")
    h, w = arrays[TARGET_KEY].shape
    if h != w or h < MIN_SIZE:
        raise SceneError(
            path,
            f"masks have shape {(h, w)}; expected square masks of at least "
            f"{MIN_SIZE}x{MIN_SIZE} (e.g. 224x224)",
        )


def _to_unit(path: Path, key: str, a: np.ndarray) -> np.ndarray:
    """Convert one mask to float32 in [0, 1]: bool as is, ints 0/1 as is or 0..255 / 255."""
    if a.dtype == np.bool_:
        return a.astype(np.float32)
    if np.issubdtype(a.dtype, np.integer):
        lo, hi = (int(a.min()), int(a.max())) if a.size else (0, 0)
        if lo < 0 or hi > 255:
            raise SceneError(
                path,
                f"{key!r} ({a.dtype}) has values in [{lo}, {hi}]; integer masks must be "
                "0/1 or 0..255",
            )
        return a.astype(np.float32) if hi <= 1 else a.astype(np.float32) / 255.0
    if np.issubdtype(a.dtype, np.floating):
        if not np.isfinite(a).all():
            raise SceneError(path, f"{key!r} contains NaN or inf")
        lo, hi = float(a.min()), float(a.max())
        if lo < -FLOAT_TOLERANCE or hi > 1 + FLOAT_TOLERANCE:
            raise SceneError(
                path,
                f"{key!r} ({a.dtype}) has values in [{lo:g}, {hi:g}]; float masks must "
                "lie in [0, 1]",
            )
        return np.clip(a, 0.0, 1.0).astype(np.float32)
    raise SceneError(
        path,
        f"{key!r} has dtype {a.dtype}; masks must be bool, integer (0/1 or 0..255) or "
        "float in [0, 1]",
    )


def load_scene(path: PathLike) -> np.ndarray:
    """Load and validate one scene.

    Returns float32 ``(6, H, W)`` in [0, 1], channels in ``SCENE_KEYS`` order (5 context masks,
    then ``target_goal``). Raises :class:`SceneError` naming the file and the problem.
    """
    path = Path(path)
    arrays = _read_masks(path)
    _check_shapes(path, arrays)
    out = np.stack([_to_unit(path, key, arrays[key]) for key in SCENE_KEYS])
    for key in NONEMPTY_KEYS:
        if not out[SCENE_KEYS.index(key)].any():
            raise SceneError(path, f"{key!r} is empty (all zeros); every scene needs one")
    return out


def as_path_list(sources: Sources) -> list[PathLike]:
    """``sources`` as a list: one path, or any non-str sequence of paths."""
    if isinstance(sources, (str, bytes, os.PathLike)):
        return [sources]
    if isinstance(sources, Sequence):
        return list(sources)
    raise TypeError(f"expected a path or a list of paths, got {type(sources).__name__}")


def find_scene_files(data_dir: Sources) -> list[Path]:
    """Scene files under ``data_dir``: absolute, de-duplicated and sorted.

    ``data_dir`` is a folder (searched recursively for ``*.npz``, skipping ``CACHE_DIRNAME``),
    a single file, or a sequence (list, tuple, OmegaConf ListConfig) of either.
    """
    entries = [Path(os.fsdecode(p)).expanduser() for p in as_path_list(data_dir)]
    if not entries:
        raise FileNotFoundError("no data path given (empty list)")
    files: set[Path] = set()
    for entry in entries:
        if entry.is_dir():
            files.update(
                p.resolve()
                for p in entry.rglob("*.npz")
                if p.is_file() and CACHE_DIRNAME not in p.relative_to(entry).parts
            )
        elif entry.exists():
            files.add(entry.resolve())
        else:
            raise FileNotFoundError(f"data path does not exist: {entry}")
    if not files:
        raise FileNotFoundError(
            "no .npz scene files found in " + ", ".join(str(e) for e in entries)
        )
    return sorted(files)


GEOMETRY_KEYS = ("world_bounds", "robot_radius")


def read_geometry(path: str | os.PathLike) -> dict[str, Any] | None:
    """``world_bounds``, ``robot_radius``, ``image_convention`` (0 when not stored: the rooms
    family's), ``image_size`` (the file's mask side) and, when stored, ``goal_radius`` of a
    scene file, or None."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            if not all(k in npz.files for k in GEOMETRY_KEYS):
                return None
            bounds = np.asarray(npz["world_bounds"], dtype=np.float64).reshape(-1)
            radius = float(np.asarray(npz["robot_radius"], dtype=np.float64))
            convention = (
                int(np.asarray(npz["image_convention"])) if "image_convention" in npz.files else 0
            )
            stored = (
                "target_object"
                if "target_object" in npz.files
                else LEGACY_ALIASES.get("target_object")
            )
            size = int(npz[stored].shape[-1]) if stored in npz.files else None
            goal = float(np.asarray(npz["goal_radius"])) if "goal_radius" in npz.files else None
    except (OSError, ValueError, TypeError):
        return None
    if bounds.shape != (4,):
        return None
    geometry = {"world_bounds": tuple(float(v) for v in bounds), "robot_radius": radius}
    geometry["image_convention"] = convention
    if size is not None:
        geometry["image_size"] = size
    if goal is not None:
        geometry["goal_radius"] = goal
    return geometry


def _read_context_only(path: Path) -> np.ndarray:
    """The five context masks ``(5, H, W)`` of a file without a usable ``target_goal``."""
    with np.load(path, allow_pickle=False) as npz:
        arrays = []
        for key in CONTEXT_KEYS:
            stored = key if key in npz.files else LEGACY_ALIASES.get(key)
            if stored not in npz.files:
                raise SceneError(path, f"missing key {key!r}; found keys {sorted(npz.files)}")
            arrays.append(_to_unit(path, key, npz[stored]))
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1 or arrays[0].ndim != 2:
        raise SceneError(path, f"context masks must be equal 2-D shapes, got {sorted(shapes)}")
    h, w = arrays[0].shape
    if h != w or h < MIN_SIZE:
        raise SceneError(path, f"masks have shape {(h, w)}; expected square, >= {MIN_SIZE}")
    if not arrays[4].any():
        raise SceneError(path, "'target_object' is empty (all zeros)")
    return np.stack(arrays)


def load_scene_file(path: str | os.PathLike) -> tuple[np.ndarray, dict[str, Any] | None]:
    """``(masks, geometry)``: masks ``(6, H, W)`` with a ground truth, else ``(5, H, W)``."""
    path = Path(path)
    if not path.is_file():
        raise SceneError(path, "no such file")
    try:
        masks = load_scene(path)
    except SceneError as error:
        absent = error.problem.startswith(
            f"missing key {TARGET_KEY!r}"
        ) or error.problem.startswith(f"{TARGET_KEY!r} is empty")
        if not absent:
            raise
        masks = _read_context_only(path)
    return masks, read_geometry(path)
