"""Goal masks -> object poses: one blob of plausible size, fitted with a minimum-area rectangle.

Conventions (those of :mod:`goalgen.data.geometry`): a mask is ``(H, W)``, row 0 at the top;
pixel ``(r, c)`` has its centre at continuous coordinates ``(r, c)``. ``angle`` is the direction
of the rectangle's long side, counter-clockwise from the image's column axis as seen with rows
growing downwards (so, with square pixels, it is also the angle from the world ``x`` axis:
``y`` points up the image), in ``[0, pi)``. ``size`` is ``(length, width)`` with
``length >= width``; a box's pose is therefore defined modulo ``pi`` and the ``w``/``h`` swap.

The rectangle is fitted to the pixel centres (rotating calipers over their convex hull), then
grown to account for the pixels' own extent: by one pixel per side length when it is
axis-aligned (an ``L x W`` block of pixels fits ``L x W`` exactly), by half a pixel when tilted
(the extreme centres along a tilted edge sample it at many offsets, so they lie close to it).
On rasterised rectangles, sizes come out within about one pixel.

World poses follow the scene's own image convention: pass the ``frame`` its masks are drawn in
(:func:`goalgen.data.frames.frame_of` of the file's ``image_convention``, ``world_bounds`` and
native size; :func:`pose_frame` builds it from a geometry mapping). Convention 1 (maze files,
planner scenes: row 0 = ``y_min``) mirrors the image against convention 0 (rooms: row 0 =
``y_max``), so one pixel-to-world map for both would mirror the poses of one of them. The world
rectangle is fitted to the world points the mask's cells stand for
(:func:`goalgen.infer.fit.cell_centres`: at a coarser resolution than the frame's, the mean of
the native pixels a cell pools), so its ``angle_world`` is the long side's direction in the
world, whatever the convention. ``world_bounds`` alone means convention 0 at the mask's size.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from goalgen.data.frames import Frame, GridFrame, frame_of
from goalgen.infer.fit import cell_centres

AREA_TOLERANCE = 0.35  # kept areas lie within +-35 % of the selected object's area
MIN_AREA_PX = 2  # without a known object area: at least this many pixels ...
MAX_AREA_FRACTION = 0.25  # ... and at most this share of the image
PIXEL_EXTENT = (1.0, 0.5)  # added to the centres' extents: axis-aligned, tilted

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class Pose:
    """A rectangle fitted to one goal mask (see the module docstring for conventions)."""

    center: tuple[float, float]  # (row, col), pixels
    angle: float  # radians in [0, pi), long side vs the column (world x) axis
    size: tuple[float, float]  # (length, width), pixels, length >= width
    area_px: int  # pixels in the mask
    center_world: tuple[float, float] | None = None  # (x, y), metres
    size_world: tuple[float, float] | None = None  # (length, width), metres
    angle_world: float | None = None  # radians in [0, pi), long side vs the world x axis

    @property
    def fill(self) -> float:
        """Mask area / rectangle area (1 for a perfect rectangle)."""
        return self.area_px / max(self.size[0] * self.size[1], 1e-9)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "center_rc": [round(float(v), 4) for v in self.center],
            "angle": round(float(self.angle), 6),
            "angle_deg": round(float(np.degrees(self.angle)), 3),
            "size_px": [round(float(v), 4) for v in self.size],
            "area_px": int(self.area_px),
            "fill": round(self.fill, 4),
        }
        if self.center_world is not None and self.size_world is not None:
            out["center_xy"] = [round(float(v), 6) for v in self.center_world]
            out["size_m"] = [round(float(v), 6) for v in self.size_world]
        if self.angle_world is not None:
            out["angle_world"] = round(float(self.angle_world), 6)
        return out


def convex_hull(points: np.ndarray) -> np.ndarray:
    """Convex hull ``(h, 2)`` of ``points`` ``(n, 2)``, counter-clockwise (Andrew's monotone
    chain), collinear points dropped; 1 or 2 points for degenerate sets."""
    pts = np.unique(np.asarray(points, dtype=np.float64), axis=0)  # sorted lexicographically
    if len(pts) <= 2:
        return pts

    def half(seq: np.ndarray) -> list[np.ndarray]:
        chain: list[np.ndarray] = []
        for p in seq:
            while len(chain) >= 2:
                (ax, ay), (bx, by) = chain[-2], chain[-1]
                if (bx - ax) * (p[1] - ay) - (by - ay) * (p[0] - ax) > 1e-12:
                    break
                chain.pop()
            chain.append(p)
        return chain

    lower, upper = half(pts), half(pts[::-1])
    hull = np.array(lower[:-1] + upper[:-1])
    return hull if len(hull) else pts[:1]


def min_area_rect(points: np.ndarray) -> tuple[np.ndarray, float, float, float]:
    """Minimum-area enclosing rectangle of ``points`` ``(n, 2)`` given as ``(x, y)``.

    Rotating calipers: one side of the optimal rectangle lies on a hull edge, so every edge
    direction is tried (vectorised). Returns ``(center (2,), angle, length, width)`` with the
    angle of the long side, counter-clockwise from ``x``, in ``[0, pi)`` and
    ``length >= width >= 0`` (zero extents for degenerate sets).
    """
    hull = convex_hull(points)
    if len(hull) == 1:
        return hull[0].copy(), 0.0, 0.0, 0.0
    edges = np.roll(hull, -1, axis=0) - hull
    norms = np.hypot(edges[:, 0], edges[:, 1])
    keep = norms > 1e-12
    u = edges[keep] / norms[keep, None]  # (E, 2) edge directions
    n = np.stack([-u[:, 1], u[:, 0]], axis=1)  # normals
    pu, pn = u @ hull.T, n @ hull.T  # (E, h) projections
    extent_u = pu.max(1) - pu.min(1)
    extent_n = pn.max(1) - pn.min(1)
    best = int(np.argmin(extent_u * extent_n + 1e-9 * np.arange(len(u))))
    mid_u = (pu[best].max() + pu[best].min()) / 2
    mid_n = (pn[best].max() + pn[best].min()) / 2
    center = mid_u * u[best] + mid_n * n[best]
    a, b = extent_u[best], extent_n[best]
    direction = u[best] if a >= b else n[best]
    angle = float(np.arctan2(direction[1], direction[0]) % np.pi)
    if np.isclose(angle, np.pi):
        angle = 0.0
    return center, angle, float(max(a, b)), float(min(a, b))


def _row_extremes(mask: np.ndarray) -> np.ndarray:
    """``(row, col)`` of the first and last pixel of each row: their hull is the mask's."""
    rows = np.flatnonzero(mask.any(1))
    sub = mask[rows]
    first = sub.argmax(1)
    last = sub.shape[1] - 1 - sub[:, ::-1].argmax(1)
    return np.concatenate([np.stack([rows, first], 1), np.stack([rows, last], 1)])


def fit_rectangle(mask: np.ndarray) -> tuple[tuple[float, float], float, tuple[float, float]]:
    """Minimum-area rectangle of a non-empty mask: ``((row, col), angle, (length, width))``
    in pixels (see the module docstring)."""
    rc = _row_extremes(np.asarray(mask) != 0).astype(np.float64)
    if rc.size == 0:
        raise ValueError("empty mask has no rectangle")
    xy = np.stack([rc[:, 1], -rc[:, 0]], axis=1)  # column right, row up: world-like frame
    center, angle, length, width = min_area_rect(xy)
    aligned = min(angle, abs(angle - np.pi / 2)) < 1e-6
    pad = PIXEL_EXTENT[0] if aligned else PIXEL_EXTENT[1]
    size = (length + pad, width + pad)
    return (float(-center[1]), float(center[0])), angle, size


def area_bounds(
    object_area: float | None,
    image_pixels: int,
    tolerance: float = AREA_TOLERANCE,
    min_area: float = MIN_AREA_PX,
    max_fraction: float = MAX_AREA_FRACTION,
) -> tuple[float, float]:
    """Plausible ``[lo, hi]`` area in pixels: ``object_area * (1 -+ tolerance)`` when known,
    else ``[min_area, max_fraction * image_pixels]``."""
    if object_area is not None and object_area > 0:
        return object_area * (1 - tolerance), object_area * (1 + tolerance)
    return float(min_area), max_fraction * image_pixels


def rejection_reason(
    mask: np.ndarray,
    object_area: float | None = None,
    tolerance: float = AREA_TOLERANCE,
) -> str | None:
    """Why ``mask`` is no usable object pose, or None: ``"empty"``, ``"fragmented: N blobs"``
    (8-connected components) or ``"area X px outside [lo, hi]"``."""
    mask = np.asarray(mask) != 0
    area = int(mask.sum())
    if area == 0:
        return "empty"
    _, blobs = ndimage.label(mask, structure=_EIGHT_CONNECTED)
    if blobs > 1:
        return f"fragmented: {blobs} blobs"
    lo, hi = area_bounds(object_area, mask.size, tolerance)
    if not lo <= area <= hi:
        return f"area {area} px outside [{lo:.1f}, {hi:.1f}]"
    return None


def pose_frame(geometry: Mapping[str, Any] | None, size: int) -> Frame | None:
    """The frame of masks of ``size`` px from a scene's ``geometry`` (``world_bounds``, and
    when known ``image_convention`` (default 0) and the native ``image_size`` (default
    ``size``)), or None without world bounds."""
    if not geometry or geometry.get("world_bounds") is None:
        return None
    native = int(geometry.get("image_size") or size)
    bounds = [float(v) for v in np.asarray(geometry["world_bounds"]).reshape(-1)]
    return frame_of(int(geometry.get("image_convention", 0)), bounds, native)


def world_rectangle(
    mask: np.ndarray, frame: Frame
) -> tuple[tuple[float, float], float, tuple[float, float]]:
    """Minimum-area rectangle of a non-empty mask ``(S, S)`` in world units: ``((x, y),
    angle_world, (length, width))``, the cells' world points (:func:`cell_centres` of
    ``frame``) grown by the cells' extent as in :func:`fit_rectangle`."""
    rc = _row_extremes(np.asarray(mask) != 0)
    if rc.size == 0:
        raise ValueError("empty mask has no rectangle")
    xs, ys, cell = cell_centres(frame, mask.shape[-1])
    center, angle, length, width = min_area_rect(np.stack([xs[rc[:, 1]], ys[rc[:, 0]]], 1))
    aligned = min(angle, abs(angle - np.pi / 2)) < 1e-6
    pad = (PIXEL_EXTENT[0] if aligned else PIXEL_EXTENT[1]) * cell
    return (float(center[0]), float(center[1])), angle, (length + pad, width + pad)


def mask_to_pose(
    mask: np.ndarray,
    object_area: float | None = None,
    world_bounds: tuple[float, float, float, float] | None = None,
    tolerance: float = AREA_TOLERANCE,
    frame: Frame | None = None,
) -> tuple[Pose | None, str | None]:
    """``(pose, None)`` for a usable mask ``(S, S)``, else ``(None, reason)``.

    ``object_area``: the selected object's area in pixels at this resolution (None: sane
    bounds). ``frame`` (the scene's, at any resolution: :func:`pose_frame`) adds the pose in
    world units; ``world_bounds`` ``(xmin, ymin, xmax, ymax)`` alone means convention 0.
    """
    mask = np.asarray(mask) != 0
    reason = rejection_reason(mask, object_area, tolerance)
    if reason is not None:
        return None, reason
    center, angle, size = fit_rectangle(mask)
    if frame is None and world_bounds is not None:
        frame = GridFrame(world_bounds, mask.shape[-1])
    world = (None, None, None) if frame is None else world_rectangle(mask, frame)
    return Pose(center, angle, size, int(mask.sum()), world[0], world[2], world[1]), None


def masks_to_poses(
    masks: np.ndarray,
    object_area: float | None = None,
    world_bounds: tuple[float, float, float, float] | None = None,
    tolerance: float = AREA_TOLERANCE,
    frame: Frame | None = None,
) -> tuple[list[Pose | None], dict[int, str]]:
    """Poses of ``masks`` ``(K, S, S)``: a list of K (None where rejected) and the rejection
    reason of each dropped sample by index (``frame``, ``world_bounds``: :func:`mask_to_pose`)."""
    poses: list[Pose | None] = []
    rejected: dict[int, str] = {}
    for k, mask in enumerate(masks):
        pose, reason = mask_to_pose(mask, object_area, world_bounds, tolerance, frame)
        poses.append(pose)
        if reason is not None:
            rejected[k] = reason
    return poses, rejected
