"""Masks -> poses: minimum-area rectangles on rasterised rotated boxes, and the rejections."""

from __future__ import annotations

import numpy as np
import pytest

from goalgen.data import geometry as geo
from goalgen.infer.poses import (
    convex_hull,
    fit_rectangle,
    mask_to_pose,
    masks_to_poses,
    min_area_rect,
    rejection_reason,
)

SIZE = 64
PIXEL_WORLD = (0.0, 0.0, float(SIZE), float(SIZE))  # 1 m per pixel: world units = pixels


def angle_error(a: float, b: float) -> float:
    """Smallest difference of two undirected angles (modulo pi), in degrees."""
    d = (a - b) % np.pi
    return float(np.degrees(min(d, np.pi - d)))


def test_convex_hull_and_min_area_rect_of_exact_points():
    square = np.array([[0, 0], [2, 0], [2, 2], [0, 2], [1, 1], [1, 0]], dtype=float)
    assert len(convex_hull(square)) == 4  # interior and collinear points dropped
    center, angle, length, width = min_area_rect(square)
    assert np.allclose(center, [1, 1]) and length == pytest.approx(2) and width == pytest.approx(2)
    # a 4 x 1 rectangle rotated by 30 degrees, given by its corners
    theta = np.radians(30)
    corners = geo.box_corners(5.0, -3.0, 4.0, 1.0, theta)
    center, angle, length, width = min_area_rect(corners)
    assert np.allclose(center, [5, -3])
    assert (length, width) == pytest.approx((4.0, 1.0))
    assert angle_error(angle, theta) < 1e-6
    # degenerate sets: one point, a segment
    assert min_area_rect(np.array([[3.0, 4.0]]))[2:] == (0.0, 0.0)
    _, angle, length, width = min_area_rect(np.array([[0.0, 0.0], [3.0, 3.0], [1.0, 1.0]]))
    assert length == pytest.approx(np.hypot(3, 3)) and width == pytest.approx(0.0, abs=1e-9)
    assert angle_error(angle, np.pi / 4) < 1e-6


@pytest.mark.parametrize("degrees", [0, 10, 30, 45, 60, 90, 120, 135, 170])
@pytest.mark.parametrize("length,width", [(20, 8), (30, 14), (12, 6)])
def test_fit_recovers_rasterised_rotated_rectangles(degrees, length, width):
    theta = np.radians(degrees)
    cx, cy = 31.3, 32.6  # off the pixel grid
    mask = geo.box_mask(cx, cy, length, width, theta, PIXEL_WORLD, SIZE)
    center, angle, size = fit_rectangle(mask)
    assert size[0] == pytest.approx(length, abs=1.5) and size[1] == pytest.approx(width, abs=1.5)
    assert angle_error(angle, theta) < 4.0
    assert 0.0 <= angle < np.pi
    expected_rc = geo.world_to_pixel(np.array([cx, cy]), PIXEL_WORLD, SIZE)
    assert np.allclose(center, expected_rc, atol=0.5)


def test_width_and_height_swap_gives_the_same_pose():
    a = geo.box_mask(32, 32, 20, 8, np.radians(20), PIXEL_WORLD, SIZE)
    b = geo.box_mask(32, 32, 8, 20, np.radians(20 + 90), PIXEL_WORLD, SIZE)
    pa, pb = fit_rectangle(a), fit_rectangle(b)
    assert angle_error(pa[1], pb[1]) < 1.0
    assert np.allclose(pa[2], pb[2], atol=0.5)


def test_axis_aligned_block_is_exact():
    mask = np.zeros((16, 16), dtype=bool)
    mask[3:7, 5:15] = True  # 4 rows x 10 columns: long side along the columns (world x)
    (row, col), angle, size = fit_rectangle(mask)
    assert (row, col) == pytest.approx((4.5, 9.5))
    assert size == pytest.approx((10, 4)) and angle == pytest.approx(0.0)
    (_, _), angle, size = fit_rectangle(mask.T)
    assert size == pytest.approx((10, 4)) and angle == pytest.approx(np.pi / 2)


def test_rejections_and_world_pose():
    empty = np.zeros((32, 32), dtype=bool)
    assert rejection_reason(empty) == "empty"
    two = empty.copy()
    two[2:5, 2:5] = True
    two[20:23, 20:23] = True
    assert rejection_reason(two) == "fragmented: 2 blobs"
    one = empty.copy()
    one[10:14, 10:20] = True  # 40 px
    assert rejection_reason(one, object_area=40) is None
    assert rejection_reason(one, object_area=20) == "area 40 px outside [13.0, 27.0]"
    assert rejection_reason(one) is None  # sane bounds: [2, 256]
    assert rejection_reason(np.ones((32, 32))).startswith("area 1024 px outside")

    bounds = (0.0, 0.0, 3.2, 3.2)  # 0.1 m per pixel
    pose, reason = mask_to_pose(one, object_area=40, world_bounds=bounds)
    assert reason is None and pose.area_px == 40 and pose.fill == pytest.approx(1.0)
    assert pose.center == pytest.approx((11.5, 14.5))
    assert pose.center_world == pytest.approx((1.5, 3.2 - 1.2))
    assert pose.size_world == pytest.approx((1.0, 0.4))
    assert pose.to_dict()["size_m"] == pytest.approx([1.0, 0.4])

    poses, rejected = masks_to_poses(np.stack([one, empty, two]), object_area=40)
    assert poses[0] is not None and poses[1] is None and poses[2] is None
    assert rejected == {1: "empty", 2: "fragmented: 2 blobs"}
