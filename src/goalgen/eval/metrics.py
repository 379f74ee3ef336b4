"""Metrics of sampled goal masks: agreement with the ground truth, diversity, validity and task
success (does moving the selected object there open the robot's path?).

Everything works on numpy masks at one resolution (the model's ``image_size``); pixels follow
:mod:`goalgen.data.geometry`. Binary masks come from the area-resized soft masks
(:func:`goalgen.data.pack.resize_masks`, values in [0, 1]) by thresholding at ``THRESHOLD``,
except the static walls: area-pooling turns a thin wall into a grey line (a 10 cm wall is
0.64 px wide at 32 px for a 5 m room), which a 0.5 threshold erases, opening passages that do
not exist. Walls use ``STATIC_THRESHOLD`` instead. Robot, goal, selected-object and
ground-truth masks smaller than a pixel fall back to their most covered pixel(s) (an emptied
truth would score an empty sample IoU 1).

The training loop's validation pass scores the model's tensors with
:func:`goalgen.eval.validation.task_metrics`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from goalgen.data import geometry as geo
from goalgen.infer.poses import AREA_TOLERANCE, rejection_reason

THRESHOLD = 0.5
STATIC_THRESHOLD = 0.3
HIT_IOU = 0.5
INVALID_KINDS = ("empty", "fragmented", "area", "outside_map", "collision")
GEOMETRY = ("world_bounds", "robot_radius")  # what SceneMasks takes from a scene's geometry

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


# ----------------------------------------------------------------------------- overlap
def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two masks (non-zero = set); two empty masks give 1."""
    a, b = np.asarray(a) != 0, np.asarray(b) != 0
    union = np.count_nonzero(a | b)
    return 1.0 if union == 0 else np.count_nonzero(a & b) / union


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice coefficient ``2|A & B| / (|A| + |B|)``; two empty masks give 1."""
    a, b = np.asarray(a) != 0, np.asarray(b) != 0
    total = np.count_nonzero(a) + np.count_nonzero(b)
    return 1.0 if total == 0 else 2 * np.count_nonzero(a & b) / total


def _flat(masks: np.ndarray) -> np.ndarray:
    masks = np.asarray(masks) != 0
    return masks.reshape(masks.shape[0], -1)


def pairwise_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(K, L)`` IoU of every mask of ``a`` ``(K, S, S)`` with every mask of ``b`` ``(L, S, S)``."""
    fa, fb = _flat(a).astype(np.float64), _flat(b).astype(np.float64)
    inter = fa @ fb.T
    union = fa.sum(1)[:, None] + fb.sum(1)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def agreement(samples: np.ndarray, truth: np.ndarray, hit_iou: float = HIT_IOU) -> dict[str, float]:
    """Samples ``(K, S, S)`` vs the ground truth ``(S, S)``: mean and best-of-K IoU and Dice,
    and ``hit`` = 1 if the best IoU reaches ``hit_iou`` (hit@K once averaged over scenes)."""
    ious = pairwise_iou(samples, np.asarray(truth)[None])[:, 0]
    dices = np.array([dice(s, truth) for s in samples])
    return {
        "iou_mean": float(ious.mean()),
        "dice_mean": float(dices.mean()),
        "best_iou": float(ious.max()),
        "best_dice": float(dices.max()),
        "hit": float(ious.max() >= hit_iou),
    }


def diversity(samples: np.ndarray) -> float:
    """Mean pairwise ``1 - IoU`` over the ``K (K - 1) / 2`` pairs of samples ``(K, S, S)``
    (0 when they are all equal; NaN for fewer than two samples)."""
    k = len(samples)
    if k < 2:
        return float("nan")
    rows, cols = np.triu_indices(k, 1)
    return float((1 - pairwise_iou(samples, samples)[rows, cols]).mean())


# ----------------------------------------------------------------------------- scenes
def _binary(soft: np.ndarray, threshold: float, fallback: bool = False) -> np.ndarray:
    mask = soft >= threshold
    if fallback and not mask.any() and soft.max() > 0:
        mask = soft >= soft.max() - 1e-6  # a disk smaller than a pixel: its best pixel(s)
    return mask


def map_interior(static: np.ndarray) -> np.ndarray:
    """Pixels inside the map: everything but the free space connected to the image border
    (8-connected), when walls enclose most of the free space (outer walls inset from the
    image edge); else every pixel (no outer walls, or walls on the image edge: the border
    test of :func:`invalid_reason` covers those)."""
    static = np.asarray(static) != 0
    labels, _ = ndimage.label(~static, structure=_EIGHT_CONNECTED)
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    outside = np.isin(labels, border[border > 0])
    enclosed = (~static) & ~outside
    if np.count_nonzero(enclosed) <= np.count_nonzero(outside):  # e.g. a hollow obstacle
        return np.ones_like(static)
    return ~outside


@dataclass
class SceneMasks:
    """Binary masks ``(S, S)`` of one scene at the evaluation resolution, plus what the checks
    need. Build it with :meth:`from_soft`."""

    robot: np.ndarray
    goal: np.ndarray
    movable: np.ndarray  # includes the selected object
    static: np.ndarray
    target_object: np.ndarray
    others: np.ndarray  # movable objects but the selected one
    object_area: float  # selected object's area in pixels (from the soft mask)
    robot_radius_px: float
    radius_from: str  # "world" (robot_radius / metres_per_pixel) or "mask" (robot area)
    interior: np.ndarray
    truth: np.ndarray | None = None
    metres_per_pixel: float | None = None  # when the world bounds are known

    @property
    def size(self) -> int:
        return self.static.shape[-1]

    @classmethod
    def from_soft(
        cls,
        context: np.ndarray,
        truth: np.ndarray | None = None,
        geometry: Mapping[str, Any] | None = None,
    ) -> SceneMasks:
        """``context`` ``(5, S, S)`` soft masks in [0, 1] (robot, goal, movable, static,
        target_object), ``truth`` ``(S, S)`` or None, ``geometry`` with ``world_bounds`` and
        ``robot_radius`` (metres) if known, and ``goal_radius`` if stored.

        With the world known, a robot (goal) drawn larger than it is, as the planners draw it (a
        0.2 m disk, a 0.25 m goal, whatever the world's size), is replaced by the disk of its
        real radius around the drawn one's centroid: a box beside a small robot in a small
        arena does not collide with it."""
        context = np.asarray(context, dtype=np.float32)
        robot_s, goal_s, movable_s, static_s, target_s = context
        size = context.shape[-1]
        if geometry is not None and "world_bounds" in geometry and "robot_radius" in geometry:
            mpp = geo.metres_per_pixel(tuple(np.asarray(geometry["world_bounds"]).tolist()), size)
            radius, source = float(geometry["robot_radius"]) / mpp, "world"
        else:
            mpp = None
            radius, source = float(np.sqrt(robot_s.sum() / np.pi)), "mask"
        static = _binary(static_s, STATIC_THRESHOLD)
        target = _binary(target_s, THRESHOLD, fallback=True)
        robot = _binary(robot_s, THRESHOLD, fallback=True)
        goal = _binary(goal_s, THRESHOLD, fallback=True)
        if mpp is not None:
            robot = _real_disk(robot, radius)
            if "goal_radius" in geometry:
                goal = _real_disk(goal, float(geometry["goal_radius"]) / mpp)
        return cls(
            robot=robot,
            goal=goal,
            movable=_binary(movable_s, THRESHOLD) | target,
            static=static,
            target_object=target,
            others=_binary(np.clip(movable_s - target_s, 0, 1), THRESHOLD) & ~target,
            object_area=float(target_s.sum()),
            robot_radius_px=radius,
            radius_from=source,
            interior=map_interior(static),
            truth=None if truth is None else _binary(np.asarray(truth), THRESHOLD, fallback=True),
            metres_per_pixel=mpp,
        )


def _real_disk(drawn: np.ndarray, radius_px: float) -> np.ndarray:
    """``drawn`` or, where it is more than a pixel wider than ``radius_px``, the disk of that
    radius around its centroid pixel."""
    if not drawn.any() or geo.equivalent_radius_px(drawn) <= radius_px + 1:
        return drawn
    disk = np.zeros_like(drawn)
    disk[geo.mask_centroid(drawn)] = True
    return geo.inflate(disk, radius_px)


# ----------------------------------------------------------------------------- checks
def invalid_reason(
    sample: np.ndarray, scene: SceneMasks, tolerance: float = AREA_TOLERANCE
) -> str | None:
    """Why ``sample`` ``(S, S)`` is no valid placement of the selected object, or None.

    In order: ``empty``, ``fragmented: N blobs``, ``area X px outside [lo, hi]`` (within
    ``tolerance`` of the object's area), ``outside map`` (touches the image border or lies in
    free space outside the walls), ``collision with ...`` (static walls, other movable objects,
    the robot or its goal: :func:`goalgen.data.geometry.placement_collides`).
    """
    sample = np.asarray(sample) != 0
    reason = rejection_reason(sample, scene.object_area, tolerance)
    if reason is not None:
        return reason
    edge = sample[0].any() or sample[-1].any() or sample[:, 0].any() or sample[:, -1].any()
    if edge or (sample & ~scene.interior).any():
        return "outside map"
    if geo.placement_collides(scene.static, scene.others, sample, scene.robot, scene.goal):
        hits = [
            name
            for name, m in (
                ("static", scene.static),
                ("movable", scene.others),
                ("robot", scene.robot),
                ("goal", scene.goal),
            )
            if (sample & m).any()
        ]
        return "collision with " + "+".join(hits)
    return None


def reason_kind(reason: str) -> str:
    """The category of an :func:`invalid_reason` string (one of ``INVALID_KINDS``)."""
    for kind in INVALID_KINDS:
        if reason.startswith(kind.replace("_", " ")):
            return kind
    raise ValueError(f"unknown reason {reason!r}")


def opens_path(sample: np.ndarray, scene: SceneMasks) -> bool:
    """Does the robot reach its goal once the selected object is moved to ``sample``?"""
    return geo.path_open_after_move(
        scene.static,
        scene.movable,
        scene.target_object,
        sample,
        scene.robot,
        scene.goal,
        scene.robot_radius_px,
    )


def displacement_px(sample: np.ndarray, scene: SceneMasks) -> float:
    """Distance in pixels between the centroids of ``sample`` and of the selected object."""
    rows, cols = np.nonzero(sample)
    o_rows, o_cols = np.nonzero(scene.target_object)
    if rows.size == 0 or o_rows.size == 0:
        return float("nan")
    return float(np.hypot(rows.mean() - o_rows.mean(), cols.mean() - o_cols.mean()))


def score_samples(
    samples: np.ndarray, scene: SceneMasks, tolerance: float = AREA_TOLERANCE
) -> dict[str, Any]:
    """All metrics of one scene's ``K`` samples ``(K, S, S)`` (bool or non-zero = set).

    ``validity``: share of valid samples; ``success_rate``: share that are valid and open the
    path (an empty or broken mask would "open" it by deleting the object, so validity is
    required), ``success_at_1`` for the first sample, ``success_at_k`` for any;
    ``iou_mean``/``dice_mean``/``best_iou``/``best_dice``/``hit`` when the truth is known;
    ``diversity``; ``displacement_px`` (and ``displacement_m`` with world bounds): mean
    distance the object travels to the valid samples (NaN if none; compare with the ground
    truth's, the nearest freeing move in synthetic scenes); ``invalid`` counts by kind.
    """
    samples = np.asarray(samples) != 0
    reasons = [invalid_reason(s, scene, tolerance) for s in samples]
    valid = np.array([r is None for r in reasons])
    success = np.array([v and opens_path(s, scene) for s, v in zip(samples, valid, strict=True)])
    counts = dict.fromkeys(INVALID_KINDS, 0)
    for r in reasons:
        if r is not None:
            counts[reason_kind(r)] += 1
    out: dict[str, Any] = {
        "validity": float(valid.mean()),
        "success_rate": float(success.mean()),
        "success_at_1": float(success[0]),
        "success_at_k": float(success.any()),
        "diversity": diversity(samples),
    }
    moves = [displacement_px(s, scene) for s, v in zip(samples, valid, strict=True) if v]
    out["displacement_px"] = float(np.mean(moves)) if moves else float("nan")
    if scene.metres_per_pixel is not None:
        out["displacement_m"] = out["displacement_px"] * scene.metres_per_pixel
    if scene.truth is not None:
        out.update(agreement(samples, scene.truth))
    out["invalid"] = counts
    return out


def aggregate(per_scene: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Means over scenes of every numeric metric (NaN-free scenes only for each metric); the
    ``invalid`` counts are summed; ``hit`` becomes ``hit_at_k``."""
    out: dict[str, Any] = {}
    keys = list(dict.fromkeys(k for s in per_scene for k in s if k != "invalid"))
    for key in keys:
        values = np.array([s[key] for s in per_scene if key in s], dtype=np.float64)
        values = values[~np.isnan(values)]
        out["hit_at_k" if key == "hit" else key] = float(values.mean()) if values.size else None
    out["invalid"] = {k: int(sum(s["invalid"][k] for s in per_scene)) for k in INVALID_KINDS}
    out["scenes"] = len(per_scene)
    return out
