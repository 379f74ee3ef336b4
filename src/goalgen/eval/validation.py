"""Task metrics of the training loop's validation pass, on the model's torch tensors.

:func:`task_metrics` thresholds the model's samples, scores them per scene with
:func:`goalgen.eval.metrics.score_samples` and, for scene files that store a feasible set
(maze), with the near metrics of :func:`goalgen.eval.near.score_near`; it averages over
scenes. Imports point one way: :mod:`goalgen.eval.metrics` <- :mod:`goalgen.eval.near` <- here.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from goalgen.eval import near
from goalgen.eval.metrics import GEOMETRY, THRESHOLD, SceneMasks, aggregate, score_samples

NEAR_VAL_KEYS = (  # near metrics (goalgen.eval.near.score_near) the validation pass reports
    "success_near_at_1",
    "success_near_at_k",
    "in_feasible_at_k",
    "within_half_width_at_k",
    "best_feasible_distance_hw",
    "modes_covered_share",
)


@functools.lru_cache(maxsize=128)  # a validation subset; ~0.5 MB per maze file
def _file_arrays(path: str, mtime_ns: int) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def scene_arrays(scene: str | os.PathLike | Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    """A scene file's arrays (a path: read once and cached; a mapping: as
    is; None: None), or None when the file cannot be read."""
    if scene is None or isinstance(scene, Mapping):
        return scene
    try:
        return _file_arrays(os.fspath(scene), os.stat(scene).st_mtime_ns)
    except (OSError, ValueError):
        return None


def _unit(x: torch.Tensor) -> np.ndarray:
    """Model values in [-1, 1] -> numpy in [0, 1]."""
    return ((x.detach().float().cpu() + 1) / 2).clamp(0, 1).numpy()


def task_metrics(
    context: torch.Tensor,
    truth: torch.Tensor | None,
    samples: torch.Tensor,
    geometry: Mapping[str, Any] | Sequence[Mapping[str, Any] | None] | None = None,
    scenes: Sequence[str | os.PathLike | Mapping[str, Any] | None] | None = None,
    clearance: float = 0.0,
) -> dict[str, float]:
    """Validation metrics for the training loop, on the model's tensors in [-1, 1].

    Args:
        context: ``(N, 5, S, S)``; truth: ``(N, 1, S, S)`` or None; samples ``(N, K, 1, S, S)``
            (or ``(N, 1, S, S)`` for K = 1), thresholded at 0 (= 0.5 on the [0, 1] scale).
        geometry: None (robot radius from the robot mask's area), one mapping with
            ``world_bounds`` and ``robot_radius`` for every scene, or a sequence of N of them
            (None entries allowed).
        scenes: None, or the N scenes' files (paths, or their arrays as mappings; None
            entries allowed): their world geometry stands in for a missing ``geometry``, and
            files with a feasible set (maze) add the near metrics ``NEAR_VAL_KEYS``
            (:func:`goalgen.eval.near.score_near`), averaged over those scenes only.
        clearance: metres the near metrics' judge demands between the placed box, the robot
            and the walls and other boxes (:func:`goalgen.eval.near.score_near`; 0: touching
            suffices).
    Returns:
        Plain floats averaged over scenes: ``validity``, ``success_rate``, ``success_at_1``,
        ``success_at_k``, ``diversity`` (NaN for K = 1), and with a truth ``iou_mean``,
        ``dice_mean``, ``best_iou``, ``best_dice``, ``hit_at_k``; with ``scenes`` of maze
        files, ``NEAR_VAL_KEYS``.
    """
    ctx = _unit(context)
    samp = _unit(samples)
    if samp.ndim == 4:
        samp = samp[:, None]
    samp = samp[:, :, 0] >= THRESHOLD  # (N, K, S, S)
    gt = None if truth is None else _unit(truth)[:, 0]
    n = ctx.shape[0]
    geoms = geometry if isinstance(geometry, Sequence) else [geometry] * n
    if len(geoms) != n:
        raise ValueError(f"geometry has {len(geoms)} entries for {n} scenes")
    files = [None] * n if scenes is None else list(scenes)
    if len(files) != n:
        raise ValueError(f"scenes has {len(files)} entries for {n} scenes")
    scores = []
    for i in range(n):
        arrays, geom = scene_arrays(files[i]), geoms[i]
        if geom is None and arrays is not None and all(k in arrays for k in GEOMETRY):
            geom = {k: arrays[k] for k in (*GEOMETRY, "goal_radius") if k in arrays}
        scene = SceneMasks.from_soft(ctx[i], None if gt is None else gt[i], geom)
        row = score_samples(samp[i], scene)
        if arrays is not None and near.has_feasible_set(arrays):
            got = near.score_near(arrays, samp[i], masks=scene, clearance=clearance)
            row |= {k: got[k] for k in NEAR_VAL_KEYS}
        scores.append(row)
    agg = aggregate(scores)
    return {
        k: (float("nan") if v is None else float(v))
        for k, v in agg.items()
        if k not in ("invalid", "scenes")
    }
