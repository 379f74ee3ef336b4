"""Mask-based 2-D geometry for NAMO scenes: rasterisers, inflation and reachability.

Used by the synthetic generator and by the evaluation of model-predicted masks, so everything
past the rasterisers works from masks alone, at any resolution.

Conventions
-----------
- World frame: metres, x to the right, y up. ``bounds = (xmin, ymin, xmax, ymax)``.
- Image: a mask is a 2-D array ``(H, W)``; row 0 is the top (``y = ymax``), column 0 is the
  left (``x = xmin``). Pixel ``(r, c)`` covers a cell of ``(xmax-xmin)/W`` by ``(ymax-ymin)/H``
  metres; its centre is at ``x = xmin + (c + 0.5) * sx``, ``y = ymax - (r + 0.5) * sy``.
- Continuous pixel coordinates ``(row, col)`` put pixel centres on integers, so rounding a
  point's ``(row, col)`` gives the pixel that contains it.
- ``size`` is an ``int`` (square ``size x size`` image) or ``(H, W)``.
- A box is ``(cx, cy, w, h, theta)``: centre in metres, ``w`` along the box's own x axis,
  which is rotated ``theta`` radians counter-clockwise from the world x axis.
- Rasterisers use the pixel-centre test (a pixel is in a shape if its centre is) and return
  ``bool`` masks. Functions that take masks accept any dtype; non-zero means occupied (the
  dataset stores 0/255 ``uint8``).
- Radii in pixels are floats; the disk of radius ``r`` is every pixel whose centre lies within
  ``r`` pixels of the centre pixel's centre.
- :class:`NamoFrame` is the other convention in use: the planner's (the original collection
  code's, row 0 = ``y_min``, no half-pixel offset), used by maze scene files
  (``image_convention`` = 1); everything above is convention 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

Bounds = Sequence[float]
Size = int | tuple[int, int]

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def _hw(size: Size) -> tuple[int, int]:
    return (size, size) if isinstance(size, int | np.integer) else (int(size[0]), int(size[1]))


def _cell(bounds: Bounds, size: Size) -> tuple[float, float]:
    """Pixel size ``(sx, sy)`` in metres."""
    h, w = _hw(size)
    xmin, ymin, xmax, ymax = bounds
    return (xmax - xmin) / w, (ymax - ymin) / h


def metres_per_pixel(bounds: Bounds, size: Size) -> float:
    """Side of a (square) pixel in metres; raises ``ValueError`` if pixels are not square."""
    sx, sy = _cell(bounds, size)
    if not np.isclose(sx, sy, rtol=1e-6):
        raise ValueError(f"pixels are not square: {sx} x {sy} m")
    return sx


def world_to_pixel(xy: np.ndarray, bounds: Bounds, size: Size) -> np.ndarray:
    """World points ``(..., 2)`` as ``(x, y)`` -> continuous pixel coords ``(..., 2)`` ``(row, col)``."""
    xy = np.asarray(xy, dtype=np.float64)
    sx, sy = _cell(bounds, size)
    col = (xy[..., 0] - bounds[0]) / sx - 0.5
    row = (bounds[3] - xy[..., 1]) / sy - 0.5
    return np.stack([row, col], axis=-1)


def pixel_to_world(rc: np.ndarray, bounds: Bounds, size: Size) -> np.ndarray:
    """Pixel coords ``(..., 2)`` as ``(row, col)`` -> world points ``(..., 2)`` ``(x, y)``."""
    rc = np.asarray(rc, dtype=np.float64)
    sx, sy = _cell(bounds, size)
    x = bounds[0] + (rc[..., 1] + 0.5) * sx
    y = bounds[3] - (rc[..., 0] + 0.5) * sy
    return np.stack([x, y], axis=-1)


def _window(
    lo_xy: Sequence[float], hi_xy: Sequence[float], bounds: Bounds, size: Size
) -> tuple[slice, slice, np.ndarray, np.ndarray]:
    """Pixel window covering the world rectangle [lo_xy, hi_xy], clipped to the image.

    Returns the row and column slices and the world ``x`` ``(1, w)`` and ``y`` ``(h, 1)`` of the
    window's pixel centres.
    """
    h, w = _hw(size)
    sx, sy = _cell(bounds, size)
    c0 = min(max(int(np.floor((lo_xy[0] - bounds[0]) / sx - 0.5)), 0), w)
    c1 = min(max(int(np.ceil((hi_xy[0] - bounds[0]) / sx - 0.5)) + 1, c0), w)
    r0 = min(max(int(np.floor((bounds[3] - hi_xy[1]) / sy - 0.5)), 0), h)
    r1 = min(max(int(np.ceil((bounds[3] - lo_xy[1]) / sy - 0.5)) + 1, r0), h)
    x = bounds[0] + (np.arange(c0, c1) + 0.5)[None, :] * sx
    y = bounds[3] - (np.arange(r0, r1) + 0.5)[:, None] * sy
    return slice(r0, r1), slice(c0, c1), x, y


def disk_mask(center: Sequence[float], radius: float, bounds: Bounds, size: Size) -> np.ndarray:
    """``(H, W)`` bool mask of the disk of ``radius`` metres around ``center`` ``(x, y)``."""
    cx, cy = float(center[0]), float(center[1])
    out = np.zeros(_hw(size), dtype=bool)
    rows, cols, x, y = _window((cx - radius, cy - radius), (cx + radius, cy + radius), bounds, size)
    out[rows, cols] = (x - cx) ** 2 + (y - cy) ** 2 <= radius**2
    return out


def box_corners(cx: float, cy: float, w: float, h: float, theta: float) -> np.ndarray:
    """``(4, 2)`` world corners of a rotated box, counter-clockwise."""
    local = np.array([[-w, -h], [w, -h], [w, h], [-w, h]]) / 2.0
    c, s = np.cos(theta), np.sin(theta)
    return local @ np.array([[c, s], [-s, c]]) + np.array([cx, cy])


def box_mask(
    cx: float, cy: float, w: float, h: float, theta: float, bounds: Bounds, size: Size
) -> np.ndarray:
    """``(H, W)`` bool mask of the rotated box ``(cx, cy, w, h, theta)`` (see module docstring)."""
    c, s = np.cos(theta), np.sin(theta)
    half_x = (abs(w * c) + abs(h * s)) / 2  # half extents of the axis-aligned bounding box
    half_y = (abs(w * s) + abs(h * c)) / 2
    out = np.zeros(_hw(size), dtype=bool)
    rows, cols, x, y = _window((cx - half_x, cy - half_y), (cx + half_x, cy + half_y), bounds, size)
    dx, dy = x - cx, y - cy
    out[rows, cols] = (np.abs(dx * c + dy * s) <= w / 2) & (np.abs(dy * c - dx * s) <= h / 2)
    return out


def distance_to(mask: np.ndarray) -> np.ndarray:
    """``(H, W)`` float: distance in pixels from each pixel centre to the nearest occupied one
    (0 on ``mask``, ``inf`` everywhere if ``mask`` is empty)."""
    occupied = np.asarray(mask) != 0
    if not occupied.any():
        return np.full(occupied.shape, np.inf)
    return ndimage.distance_transform_edt(~occupied)


def inflate(mask: np.ndarray, radius_px: float) -> np.ndarray:
    """Binary dilation of ``mask`` ``(H, W)`` by a disk of ``radius_px`` pixels -> bool ``(H, W)``.

    Same as ``distance_to(mask) <= radius_px``, computed on the padded bounding box of the mask
    (so small masks are cheap). ``radius_px < 0`` gives an empty mask.
    """
    occupied = np.asarray(mask) != 0
    out = np.zeros_like(occupied)
    if radius_px < 0 or not occupied.any():
        return out
    pad = int(np.ceil(radius_px)) + 1
    rows, cols = np.nonzero(occupied.any(1))[0], np.nonzero(occupied.any(0))[0]
    window = (
        slice(max(rows[0] - pad, 0), rows[-1] + pad + 1),
        slice(max(cols[0] - pad, 0), cols[-1] + pad + 1),
    )
    out[window] = distance_to(occupied[window]) <= radius_px
    return out


def mask_centroid(mask: np.ndarray) -> tuple[int, int]:
    """Pixel ``(row, col)`` nearest to the centroid of a non-empty mask."""
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        raise ValueError("empty mask has no centroid")
    return int(np.rint(rows.mean())), int(np.rint(cols.mean()))


def equivalent_radius_px(mask: np.ndarray) -> float:
    """Radius in pixels of the disk with the same area as ``mask`` (e.g. the robot mask)."""
    return float(np.sqrt(np.count_nonzero(mask) / np.pi))


def cspace_connected(
    cspace_obstacles: np.ndarray, start_rc: tuple[int, int], goal_rc: tuple[int, int]
) -> bool:
    """Are pixels ``start_rc`` and ``goal_rc`` both free and 8-connected through free pixels?

    ``cspace_obstacles`` ``(H, W)`` is the configuration-space obstacle mask (obstacles already
    inflated by the robot radius).
    """
    labels, _ = ndimage.label(np.asarray(cspace_obstacles) == 0, structure=_EIGHT_CONNECTED)
    start, goal = labels[start_rc], labels[goal_rc]
    return bool(start != 0 and start == goal)


def robot_can_reach(
    obstacles_mask: np.ndarray,
    robot_mask: np.ndarray,
    goal_mask: np.ndarray,
    robot_radius_px: float,
) -> bool:
    """Can a disk robot of ``robot_radius_px`` move from ``robot_mask`` to ``goal_mask``?

    Inflates ``obstacles_mask`` ``(H, W)`` by the radius and checks that the centroid pixels of
    the robot and goal masks are connected through free configuration space.
    """
    cspace = inflate(obstacles_mask, robot_radius_px)
    return cspace_connected(cspace, mask_centroid(robot_mask), mask_centroid(goal_mask))


def path_open_after_move(
    static: np.ndarray,
    movable: np.ndarray,
    target_object: np.ndarray,
    target_goal: np.ndarray,
    robot: np.ndarray,
    goal: np.ndarray,
    robot_radius_px: float,
) -> bool:
    """Is robot -> goal reachable once the selected object moves from ``target_object`` to
    ``target_goal``? All masks ``(H, W)``; ``movable`` includes ``target_object``."""
    others = (np.asarray(movable) != 0) & (np.asarray(target_object) == 0)
    obstacles = (np.asarray(static) != 0) | others | (np.asarray(target_goal) != 0)
    return robot_can_reach(obstacles, robot, goal, robot_radius_px)


def placement_collides(
    static: np.ndarray,
    movable_without_target: np.ndarray,
    candidate_mask: np.ndarray,
    robot: np.ndarray | None = None,
    goal: np.ndarray | None = None,
) -> bool:
    """Does ``candidate_mask`` overlap walls, other objects, or (if given) the robot/goal masks?"""
    candidate = np.asarray(candidate_mask) != 0
    others = [static, movable_without_target] + [m for m in (robot, goal) if m is not None]
    return any(bool(np.any(candidate & (np.asarray(m) != 0))) for m in others)


# ----------------------------------------------------------------------------- the planner's frame
NAMO_IMAGE_SIZE = 224
NAMO_PAD = (0.1, 0.2)  # bounds padding: min(0.1 * range, 0.2) m per axis


def box_extents(boxes: np.ndarray) -> np.ndarray:
    """``(M, 4)`` axis-aligned extents ``(xmin, ymin, xmax, ymax)`` of boxes ``(M, 5)``."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 5)
    c, s = np.abs(np.cos(boxes[:, 4])), np.abs(np.sin(boxes[:, 4]))
    half = np.stack([boxes[:, 2] * c + boxes[:, 3] * s, boxes[:, 2] * s + boxes[:, 3] * c], 1) / 2
    return np.concatenate([boxes[:, :2] - half, boxes[:, :2] + half], 1)


def padded_bounds(boxes: np.ndarray) -> tuple[float, float, float, float]:
    """The planner's scene bounds ``(xmin, ymin, xmax, ymax)``: the union of the extents of
    boxes ``(M, 5)`` (walls, static and movable objects), each axis padded by
    ``min(0.1 * range, 0.2)`` m."""
    ext = box_extents(boxes)
    lo, hi = ext[:, :2].min(0), ext[:, 2:].max(0)
    pad = np.minimum(NAMO_PAD[0] * (hi - lo), NAMO_PAD[1])
    return (*(lo - pad).tolist(), *(hi + pad).tolist())


class NamoFrame:
    """The original collection code's image convention (the planner's scenes rendered to masks).

    A square world of side ``max(w, h)`` of the padded bounds (:func:`padded_bounds`), centred on
    them, is drawn at ``size`` pixels (224 in the original): ``scale = size / side`` px per m,
    ``px = int((x - cx) * scale + size / 2)``, ``py = int((y - cy) * scale + size / 2)``, both
    clamped to ``[0, size - 1]``; a mask is indexed ``[py, px]`` (row 0 is ``y_min``: no flip),
    with no half-pixel offset, so pixel ``(row, col)`` maps back to ``x = (col - size / 2) /
    scale + cx``, ``y = (row - size / 2) / scale + cy`` (its lower-left corner). Rasterisers put
    a pixel in a shape when that point lies in it, so a shape's mean pixel maps back to its
    centre. The same world at another ``size`` (e.g. 224 area-pooled to 64) is the same frame
    with that ``size``. Boxes are ``(cx, cy, w, h, theta)`` as in the module docstring.
    """

    def __init__(self, center: Sequence[float], side: float, size: int = NAMO_IMAGE_SIZE) -> None:
        if side <= 0 or size < 1:
            raise ValueError(f"need side > 0 and size >= 1, got {side}, {size}")
        self.cx, self.cy = float(center[0]), float(center[1])
        self.side, self.size = float(side), int(size)
        self.scale = self.size / self.side
        self.metres_per_pixel = self.side / self.size

    @classmethod
    def from_bounds(cls, bounds: Bounds, size: int = NAMO_IMAGE_SIZE) -> NamoFrame:
        """The frame of padded bounds ``(xmin, ymin, xmax, ymax)`` (not necessarily square)."""
        xmin, ymin, xmax, ymax = (float(v) for v in bounds)
        side = max(xmax - xmin, ymax - ymin)
        return cls(((xmin + xmax) / 2, (ymin + ymax) / 2), side, size)

    @classmethod
    def from_geometry(cls, boxes: np.ndarray, size: int = NAMO_IMAGE_SIZE) -> NamoFrame:
        """The frame of a scene whose walls and objects are the boxes ``(M, 5)``."""
        return cls.from_bounds(padded_bounds(boxes), size)

    def resized(self, size: int) -> NamoFrame:
        """The same world at ``size`` pixels."""
        return NamoFrame((self.cx, self.cy), self.side, size)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """The square world ``(xmin, ymin, xmax, ymax)`` the image covers."""
        h = self.side / 2
        return (self.cx - h, self.cy - h, self.cx + h, self.cy + h)

    def world_to_pixel(self, xy: np.ndarray) -> np.ndarray:
        """World points ``(..., 2)`` ``(x, y)`` -> int pixels ``(..., 2)`` ``(row, col)``."""
        xy = np.asarray(xy, dtype=np.float64)
        half = self.size / 2
        col = ((xy[..., 0] - self.cx) * self.scale + half).astype(np.int64)  # int(): truncation
        row = ((xy[..., 1] - self.cy) * self.scale + half).astype(np.int64)
        return np.clip(np.stack([row, col], axis=-1), 0, self.size - 1)

    def pixel_to_world(self, rc: np.ndarray) -> np.ndarray:
        """Pixels ``(..., 2)`` ``(row, col)`` (ints or floats) -> world points ``(..., 2)``."""
        rc = np.asarray(rc, dtype=np.float64)
        half = self.size / 2
        x = (rc[..., 1] - half) / self.scale + self.cx
        y = (rc[..., 0] - half) / self.scale + self.cy
        return np.stack([x, y], axis=-1)

    def shift_to_world(self, rows: float, cols: float) -> tuple[float, float]:
        """World displacement ``(dx, dy)`` of a shift by ``rows`` rows and ``cols`` columns."""
        return cols / self.scale, rows / self.scale

    def _window(
        self, lo_xy: Sequence[float], hi_xy: Sequence[float]
    ) -> tuple[slice, slice, np.ndarray, np.ndarray]:
        """Pixels whose sample point may lie in ``[lo_xy, hi_xy]``: row and column slices and
        the sample points' ``x`` ``(1, w)`` and ``y`` ``(h, 1)``."""
        half, n = self.size / 2, self.size
        c0 = min(max(int(np.floor((lo_xy[0] - self.cx) * self.scale + half)), 0), n)
        c1 = min(max(int(np.ceil((hi_xy[0] - self.cx) * self.scale + half)) + 1, c0), n)
        r0 = min(max(int(np.floor((lo_xy[1] - self.cy) * self.scale + half)), 0), n)
        r1 = min(max(int(np.ceil((hi_xy[1] - self.cy) * self.scale + half)) + 1, r0), n)
        x = ((np.arange(c0, c1) - half) / self.scale + self.cx)[None, :]
        y = ((np.arange(r0, r1) - half) / self.scale + self.cy)[:, None]
        return slice(r0, r1), slice(c0, c1), x, y

    def disk_mask(self, center: Sequence[float], radius: float) -> np.ndarray:
        """``(size, size)`` bool: the disk of ``radius`` m around ``center`` ``(x, y)``."""
        cx, cy = float(center[0]), float(center[1])
        out = np.zeros((self.size, self.size), dtype=bool)
        rows, cols, x, y = self._window((cx - radius, cy - radius), (cx + radius, cy + radius))
        out[rows, cols] = (x - cx) ** 2 + (y - cy) ** 2 <= radius**2
        return out

    def box_mask(self, cx: float, cy: float, w: float, h: float, theta: float) -> np.ndarray:
        """``(size, size)`` bool: the filled rotated box ``(cx, cy, w, h, theta)``."""
        c, s = np.cos(theta), np.sin(theta)
        half_x, half_y = (abs(w * c) + abs(h * s)) / 2, (abs(w * s) + abs(h * c)) / 2
        out = np.zeros((self.size, self.size), dtype=bool)
        rows, cols, x, y = self._window((cx - half_x, cy - half_y), (cx + half_x, cy + half_y))
        dx, dy = x - cx, y - cy
        out[rows, cols] = (np.abs(dx * c + dy * s) <= w / 2) & (np.abs(dy * c - dx * s) <= h / 2)
        return out
