"""Image frames of scene files: which pixel is where in the world.

Two conventions are in use, both with the same interface (``size``, ``bounds``, ``side``,
``scale``, ``metres_per_pixel``, ``resized``, ``world_to_pixel``, ``pixel_to_world``,
``box_mask``, ``disk_mask``, ``shift_to_world``):

- :class:`goalgen.data.geometry.NamoFrame`: the planner's (``image_convention`` 1: maze files,
  scenes rendered from MuJoCo XML): row 0 = ``y_min``, no half-pixel offset;
- :class:`GridFrame`: :mod:`goalgen.data.geometry`'s own (``image_convention`` 0: rooms files,
  and files without the key): row 0 = ``y_max``, pixel centres.

:func:`frame_of` picks one from a file's ``image_convention`` and ``world_bounds``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from goalgen.data import geometry as geo
from goalgen.data.geometry import NamoFrame
from goalgen.data.synthetic.maze import IMAGE_CONVENTION


class GridFrame:
    """:mod:`goalgen.data.geometry`'s own convention (the ``rooms`` files, convention 0) with
    :class:`NamoFrame`'s interface: row 0 at ``y_max``, pixel ``(r, c)`` sampled at its centre
    ``x = xmin + (c + 0.5) * s``, ``y = ymax - (r + 0.5) * s``."""

    def __init__(self, bounds: Sequence[float], size: int) -> None:
        self.bounds = tuple(float(v) for v in bounds)
        self.size = int(size)
        self.metres_per_pixel = geo.metres_per_pixel(self.bounds, self.size)
        self.scale = 1.0 / self.metres_per_pixel
        self.side = self.bounds[2] - self.bounds[0]

    def resized(self, size: int) -> GridFrame:
        return GridFrame(self.bounds, size)

    def world_to_pixel(self, xy: np.ndarray) -> np.ndarray:
        """World ``(..., 2)`` -> int pixels ``(..., 2)`` ``(row, col)``, clamped to the image."""
        rc = np.rint(geo.world_to_pixel(xy, self.bounds, self.size)).astype(np.int64)
        return np.clip(rc, 0, self.size - 1)

    def pixel_to_world(self, rc: np.ndarray) -> np.ndarray:
        """Pixels ``(..., 2)`` ``(row, col)`` (ints or floats) -> their sample points."""
        return geo.pixel_to_world(rc, self.bounds, self.size)

    def box_mask(self, cx: float, cy: float, w: float, h: float, theta: float) -> np.ndarray:
        return geo.box_mask(cx, cy, w, h, theta, self.bounds, self.size)

    def disk_mask(self, center: Sequence[float], radius: float) -> np.ndarray:
        return geo.disk_mask(center, radius, self.bounds, self.size)

    def shift_to_world(self, rows: float, cols: float) -> tuple[float, float]:
        return cols * self.metres_per_pixel, -rows * self.metres_per_pixel


Frame = NamoFrame | GridFrame


def frame_of(convention: int, world_bounds: Sequence[float], size: int) -> Frame:
    """The frame of a scene file: ``image_convention`` 1 (planner) or 0 (geometry.py's)."""
    if int(convention) == IMAGE_CONVENTION:
        b = [float(v) for v in world_bounds]
        return NamoFrame(((b[0] + b[2]) / 2, (b[1] + b[3]) / 2), b[2] - b[0], size)
    return GridFrame(world_bounds, size)


def planner_bounds(centers: np.ndarray, half: np.ndarray) -> tuple[float, float, float, float]:
    """The planner's bounds: union of ``centers (M, 2) +- half (M, 2)`` (unrotated half
    extents, as ``geom_size``), padded by ``min(0.1 * range, 0.2)`` m per axis."""
    lo = (centers - half).min(0)
    hi = (centers + half).max(0)
    pad = np.minimum(geo.NAMO_PAD[0] * (hi - lo), geo.NAMO_PAD[1])
    return (*(lo - pad).tolist(), *(hi + pad).tolist())
