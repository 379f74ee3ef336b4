"""Mask geometry: frames, rasterisers, inflation and reachability on hand-made scenes."""

import time

import numpy as np
import pytest
from scipy import ndimage

from goalgen.data import geometry as geo

BOUNDS = (0.0, 0.0, 5.0, 5.0)


def test_world_pixel_round_trip_and_orientation():
    rng = np.random.default_rng(0)
    xy = rng.uniform([-1.0, 2.0], [3.0, 7.0], size=(50, 2))
    for bounds, size in (((-1.0, 2.0, 3.0, 7.0), 224), ((-1.0, 2.0, 3.0, 7.0), (64, 40))):
        np.testing.assert_allclose(
            geo.pixel_to_world(geo.world_to_pixel(xy, bounds, size), bounds, size), xy
        )
    # pixel (0, 0) is the top-left cell: centre at (xmin + sx/2, ymax - sy/2)
    np.testing.assert_allclose(geo.pixel_to_world([0, 0], BOUNDS, 100), [0.025, 4.975])
    np.testing.assert_allclose(geo.world_to_pixel([4.975, 0.025], BOUNDS, 100), [99, 99])


def test_metres_per_pixel_rejects_non_square_pixels():
    assert geo.metres_per_pixel(BOUNDS, 250) == pytest.approx(0.02)
    with pytest.raises(ValueError, match="square"):
        geo.metres_per_pixel(BOUNDS, (100, 50))


def test_disk_mask_area_centre_and_equivalent_radius():
    mask = geo.disk_mask((1.0, 4.0), 0.3, BOUNDS, 224)
    mpp = 5 / 224
    assert mask.dtype == bool and mask.shape == (224, 224)
    assert mask.sum() == pytest.approx(np.pi * (0.3 / mpp) ** 2, rel=0.03)
    row, col = np.rint(geo.world_to_pixel((1.0, 4.0), BOUNDS, 224)).astype(int)
    assert geo.mask_centroid(mask) == (row, col)
    assert geo.equivalent_radius_px(mask) == pytest.approx(0.3 / mpp, rel=0.02)


@pytest.mark.parametrize("theta", [0.0, 0.3, np.pi / 4, 1.2, -2.0])
def test_box_mask_area(theta):
    mask = geo.box_mask(2.5, 2.5, 1.2, 0.5, theta, BOUNDS, 224)
    mpp = 5 / 224
    perimeter_px = 2 * (1.2 + 0.5) / mpp
    assert abs(mask.sum() - 1.2 * 0.5 / mpp**2) < perimeter_px / 2


def test_box_mask_rotation_and_y_up():
    flat = geo.box_mask(2.5, 2.5, 2.0, 0.2, 0.0, BOUNDS, 100)
    rows, cols = np.nonzero(flat)
    assert np.ptp(cols) > 5 * np.ptp(rows)  # theta 0: long side along x (columns)
    upright = geo.box_mask(2.5, 2.5, 2.0, 0.2, np.pi / 2, BOUNDS, 100)
    rows, cols = np.nonzero(upright)
    assert np.ptp(rows) > 5 * np.ptp(cols)
    # +45 degrees rises to the right: y up means rows decrease as columns increase
    rows, cols = np.nonzero(geo.box_mask(2.5, 2.5, 3.0, 0.1, np.pi / 4, BOUNDS, 100))
    assert np.corrcoef(rows, cols)[0, 1] < -0.99
    np.testing.assert_array_equal(
        geo.box_mask(2.5, 2.5, 1.0, 0.4, np.pi / 2 + 0.2, BOUNDS, 100),
        geo.box_mask(2.5, 2.5, 0.4, 1.0, 0.2, BOUNDS, 100),
    )


def test_box_corners_match_the_mask_extent():
    corners = geo.box_corners(1.0, 2.0, 1.0, 0.5, np.pi / 6)
    mask = geo.box_mask(1.0, 2.0, 1.0, 0.5, np.pi / 6, BOUNDS, 200)
    xy = geo.pixel_to_world(np.argwhere(mask), BOUNDS, 200)
    np.testing.assert_allclose(xy.min(0), corners.min(0), atol=2 * 5 / 200)  # sharp corners
    np.testing.assert_allclose(xy.max(0), corners.max(0), atol=2 * 5 / 200)


def test_shapes_are_clipped_at_the_image_border():
    assert geo.box_mask(-0.2, 2.5, 1.0, 1.0, 0.3, BOUNDS, 64).any()
    assert not geo.box_mask(-3.0, 2.5, 1.0, 1.0, 0.3, BOUNDS, 64).any()
    assert not geo.disk_mask((9.0, 9.0), 0.5, BOUNDS, 64).any()


@pytest.mark.parametrize("radius", [0.0, 1.0, 2.5, 6.0])
def test_inflate_is_dilation_by_a_disk(radius):
    rng = np.random.default_rng(1)
    mask = np.zeros((60, 70), dtype=bool)
    mask[20:40, 10:60] = rng.random((20, 50)) > 0.97
    reach = int(radius)
    offsets = np.mgrid[-reach : reach + 1, -reach : reach + 1]
    disk = np.hypot(*offsets) <= radius
    expected = ndimage.binary_dilation(mask, structure=disk)
    np.testing.assert_array_equal(geo.inflate(mask.astype(np.uint8) * 255, radius), expected)
    np.testing.assert_array_equal(geo.distance_to(mask) <= radius, expected)
    assert not geo.inflate(np.zeros((5, 5)), 3).any()


def _room(size: int = 64) -> np.ndarray:
    walls = np.zeros((size, size), dtype=bool)
    walls[:2], walls[-2:], walls[:, :2], walls[:, -2:] = True, True, True, True
    return walls


def _dot(row: int, col: int, size: int = 64) -> np.ndarray:
    mask = np.zeros((size, size), dtype=bool)
    mask[row - 1 : row + 2, col - 1 : col + 2] = True
    return mask


@pytest.mark.parametrize(("gap", "reachable"), [(7, False), (9, True)])
def test_reachability_through_a_gap_vs_the_robot_diameter(gap, reachable):
    walls = _room()
    walls[:, 30:33] = True
    walls[20 : 20 + gap, 30:33] = False  # gap free rows: centre clearance (gap + 1) / 2
    assert geo.robot_can_reach(walls, _dot(40, 12), _dot(40, 50), 4.0) is reachable


def test_reachability_in_a_maze_and_when_the_start_is_in_collision():
    walls = _room()
    walls[2:50, 20:23] = True  # a serpentine: around the bottom, then over the top
    walls[14:62, 42:45] = True
    start, goal = _dot(8, 10), _dot(8, 54)
    assert geo.robot_can_reach(walls, start, goal, 3.0)
    closed = walls.copy()
    closed[50:62, 20:23] = True
    assert not geo.robot_can_reach(closed, start, goal, 3.0)
    assert not geo.robot_can_reach(walls, _dot(8, 18), goal, 3.0)  # robot overlaps the wall
    with pytest.raises(ValueError, match="empty"):
        geo.robot_can_reach(walls, np.zeros_like(walls), goal, 3.0)


def test_path_open_after_move_and_placement_collides():
    static = _room()
    static[:, 30:33] = True
    static[24:40, 30:33] = False  # a doorway 16 px wide
    target = np.zeros_like(static)
    target[25:39, 28:35] = True  # a box filling it
    other = _dot(10, 50)
    movable = target | other
    robot, goal = _dot(32, 10), _dot(32, 54)
    assert not geo.robot_can_reach(static | movable, robot, goal, 4.0)
    aside = np.zeros_like(static)
    aside[48:60, 36:44] = True
    assert geo.path_open_after_move(static, movable, target, aside, robot, goal, 4.0)
    nudged = np.roll(target, 2, axis=1)  # still in the doorway
    assert not geo.path_open_after_move(static, movable, target, nudged, robot, goal, 4.0)
    others = movable & ~target
    assert not geo.placement_collides(static, others, aside, robot, goal)
    assert geo.placement_collides(static, others, np.roll(aside, 25, axis=1))  # into the wall
    assert geo.placement_collides(static, others, _dot(11, 51))  # onto the other box
    on_goal = _dot(32, 52)
    assert not geo.placement_collides(static, others, on_goal)
    assert geo.placement_collides(static, others, on_goal, robot, goal)


def test_reachability_is_fast_at_224():
    walls = np.zeros((224, 224), dtype=bool)
    walls[:6], walls[-6:], walls[:, :6], walls[:, -6:] = True, True, True, True
    walls[:, 110:115] = True
    walls[100:125, 110:115] = False
    robot, goal = _dot(50, 50, 224), _dot(170, 170, 224)
    best = np.inf
    for _ in range(5):
        start = time.perf_counter()
        assert geo.robot_can_reach(walls, robot, goal, 9.0)
        best = min(best, time.perf_counter() - start)
    assert best < 0.02
