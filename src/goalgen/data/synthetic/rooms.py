"""The ``rooms`` family: a walled room whose only robot -> goal route is blocked by one box.

Each scene is a 5 m x 5 m room (``WORLD_BOUNDS``; geometry conventions in
:mod:`goalgen.data.geometry`) with outer walls and 1-3 interior walls that split it into rooms
joined by doorways. The robot and its goal (a disk of the robot's size) sit in different rooms.
The *selected* box stands in a doorway on the only route between them, leaving gaps narrower
than the robot; 2-7 other boxes stand elsewhere without closing the route.

``target_goal`` is the selected box moved, orientation kept, to the *nearest* translation on a
``PUSH_STEP`` grid such that: the robot can push it there from where it stands, sliding it
without touching walls or other boxes (:class:`.feasible.PushLattice`: from behind, on the
line through its centre, never pulled, checked step by step); it keeps ``MARGIN`` from walls,
boxes, robot and goal; it leaves the doorway and a robot diameter on both sides of it free;
and the robot reaches its goal.
Exact ties are broken at random. This is pushing through the doorway and to one side: several
modes per scene, picked by small differences in the layout. (Version 1 let the box slide either
way: about a quarter of its goals were pulls back to the robot's side.)

Reachability is checked on the rasterised masks with the robot ``DELTA`` metres thinner
(blocked) and ``DELTA`` fatter (open) than it is, so both hold with the true radius and
survive moderate down-sampling. Layouts are rejection-sampled until every check passes.

Masks follow :mod:`goalgen.data.geometry`'s convention (row 0 = ``y_max``, pixel-centre
sampling; ``image_convention`` 0, a key these files do not carry).

Files (``scene_00000.npz``, ...) hold the guide's six ``(size, size)`` uint8 0/255 masks plus
the geometry (float64 unless noted): ``world_bounds`` (4,), ``robot_pose`` (2,),
``goal_pose`` (2,), ``robot_radius`` (), ``movable_boxes`` (M, 5), ``target_index`` int64 (),
``target_goal_box`` (5,), ``static_walls`` (K, 5), ``seed`` int64 (), ``spawn_key`` int64 (k,);
boxes are ``(cx, cy, w, h, theta)``. Scene ``i`` of a data set with seed ``s`` is
``generate_scene(np.random.SeedSequence(s, spawn_key=(i,)), size)``, whatever the number of
scenes or workers, and its file is byte-identical across runs (same size, same versions of
numpy and zlib). Scenes of different ``size`` are different layouts.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
from scipy import fft

from goalgen.data import geometry as geo
from goalgen.data.pushing import shifted
from goalgen.data.scenes import SCENE_KEYS
from goalgen.data.synthetic import feasible
from goalgen.data.synthetic.feasible import rejection_sample

VERSION = 2  # bump when the scenes of a seed change (2: goals pushed, not pulled)
WORLD_BOUNDS = (0.0, 0.0, 5.0, 5.0)
MIN_SIZE = 64  # below this, 10 cm walls may rasterise with holes

OUTER_WALL = 0.15  # m
INNER_WALL = (0.10, 0.16)
ROBOT_RADIUS = (0.17, 0.23)
DELTA = 0.06  # reachability margin on the robot radius, m
MARGIN = 0.05  # clearance between placed objects, m
MIN_ROOM = 1.1  # smallest room side, m
DOOR_CLEARANCE = 0.5  # how far a later wall stays from an existing doorway, m
MAX_TILT = np.deg2rad(8.0)  # tilt of the selected box in its doorway
PUSH_STEP = 0.05  # grid of candidate goal displacements, m
MAX_PUSH = 1.6  # largest displacement searched per axis, m
MAX_ATTEMPTS = 200  # layouts tried per scene before giving up
MAX_PATH_CHECKS = 60  # goal candidates checked for an open path per layout
REASONS = ("placement", "reachability", "no_goal")


@dataclass
class _Door:
    center: np.ndarray  # (2,) world
    axis: int  # axis of the doorway's normal: 0 = wall runs along y, 1 = along x
    width: float
    thick: float  # of its wall
    leaves: list[int]  # the two rooms it joins


@dataclass
class _Layout:
    walls: list[tuple[float, float, float, float, float]]
    leaves: list[np.ndarray]  # free rectangles (x0, y0, x1, y1) of the rooms
    doors: list[_Door]


def _axis_box(axis: int, at: float, thick: float, lo: float, hi: float) -> tuple:
    """Wall box across ``axis`` at ``at`` spanning ``[lo, hi]`` on the other axis."""
    mid, length = (lo + hi) / 2, hi - lo
    return (at, mid, thick, length, 0.0) if axis == 0 else (mid, at, length, thick, 0.0)


def _try_split(rng: np.random.Generator, layout: _Layout, robot_radius: float) -> None:
    """Split one room with a wall that has a doorway, unless the sampled wall does not fit."""
    areas = np.array([np.prod(leaf[2:] - leaf[:2]) for leaf in layout.leaves])
    i = int(rng.choice(len(areas), p=areas / areas.sum()))
    leaf = layout.leaves[i]
    extent = leaf[2:] - leaf[:2]
    k = int(rng.choice(2, p=extent / extent.sum()))  # the axis the wall cuts
    j, thick = 1 - k, rng.uniform(*INNER_WALL)
    width = 2 * (robot_radius + DELTA) + rng.uniform(0.1, 0.45)
    slack = extent[k] - 2 * MIN_ROOM - thick
    if slack <= 0 or extent[j] < width + 0.6:
        return
    at = leaf[k] + MIN_ROOM + thick / 2 + rng.uniform(0, slack)
    door_mid = rng.uniform(leaf[j] + 0.3 + width / 2, leaf[j + 2] - 0.3 - width / 2)
    wall = np.array(_axis_box(k, at, thick, leaf[j], leaf[j + 2]))
    for door in layout.doors:  # keep existing doorways usable
        gap = np.maximum(np.abs(door.center - wall[:2]) - wall[2:4] / 2, 0)
        if np.hypot(*gap) < door.width / 2 + DOOR_CLEARANCE:
            return
    overlap = OUTER_WALL / 2  # run into the walls it meets, so the masks join
    layout.walls.append(_axis_box(k, at, thick, leaf[j] - overlap, door_mid - width / 2))
    layout.walls.append(_axis_box(k, at, thick, door_mid + width / 2, leaf[j + 2] + overlap))
    low, high = leaf.copy(), leaf.copy()
    low[k + 2], high[k] = at - thick / 2, at + thick / 2
    layout.leaves[i] = low
    layout.leaves.append(high)
    new = len(layout.leaves) - 1
    for door in layout.doors:  # doorways of the old room now open into one of its halves
        if i in door.leaves:
            side = door.center.copy()  # a point just inside the old room
            side[door.axis] += 0.2 * np.sign(
                leaf[door.axis] + leaf[door.axis + 2] - 2 * side[door.axis]
            )
            if np.all(side >= high[:2]) and np.all(side <= high[2:]):
                door.leaves[door.leaves.index(i)] = new
    center = np.array([at, door_mid]) if k == 0 else np.array([door_mid, at])
    layout.doors.append(_Door(center, k, width, thick, [i, new]))


def _sample_layout(rng: np.random.Generator, robot_radius: float) -> _Layout:
    x0, y0, x1, y1 = WORLD_BOUNDS
    t = OUTER_WALL
    walls = [_axis_box(0, x0 + t / 2, t, y0, y1), _axis_box(0, x1 - t / 2, t, y0, y1)]
    walls += [_axis_box(1, y0 + t / 2, t, x0, x1), _axis_box(1, y1 - t / 2, t, x0, x1)]
    layout = _Layout(walls, [np.array([x0 + t, y0 + t, x1 - t, y1 - t])], [])
    num_walls = int(rng.choice([1, 2, 3], p=[0.3, 0.4, 0.3]))
    for _ in range(10 * num_walls):
        if len(layout.doors) == num_walls:
            break
        _try_split(rng, layout, robot_radius)
    return layout


def _route(doors: list[_Door], start: int, goal: int) -> list[int]:
    """Indices of the doorways on the (unique) route between two rooms (breadth-first)."""
    previous: dict[int, tuple[int, int]] = {start: (start, -1)}
    frontier = [start]
    while frontier:
        room = frontier.pop(0)
        for d, door in enumerate(doors):
            if room in door.leaves:
                other = door.leaves[1 - door.leaves.index(room)]
                if other not in previous:
                    previous[other] = (room, d)
                    frontier.append(other)
    route, room = [], goal
    while room != start:
        room, d = previous[room]
        route.append(d)
    return route


def _doorway_box(rng: np.random.Generator, door: _Door, robot_radius: float) -> np.ndarray:
    """A box ``(5,)`` standing in ``door`` that leaves each side a gap thinner than the robot."""
    gaps = rng.uniform(0.04, robot_radius - DELTA, size=2)
    along = door.width - gaps.sum()  # the box's extent along the wall
    tilt, across = rng.uniform(-MAX_TILT, MAX_TILT), rng.uniform(0.25, 0.45)
    length = (along - across * abs(np.sin(tilt))) / np.cos(tilt)
    center = door.center.copy()
    center[1 - door.axis] += gaps[0] + along / 2 - door.width / 2
    center[door.axis] += rng.uniform(-0.25, 0.25) * across
    w, h = (across, length) if door.axis == 0 else (length, across)
    return np.array([center[0], center[1], w, h, tilt])


def _sample_disk(
    rng: np.random.Generator, leaf: np.ndarray, radius: float, occupied: np.ndarray
) -> np.ndarray | None:
    """Centre ``(2,)`` of a disk in room ``leaf`` clear of ``occupied`` by ``MARGIN``, or None."""
    size = occupied.shape[0]
    lo, hi = leaf[:2] + radius + DELTA + MARGIN, leaf[2:] - radius - DELTA - MARGIN
    for _ in range(20):
        center = rng.uniform(lo, hi)
        if not (geo.disk_mask(center, radius + MARGIN, WORLD_BOUNDS, size) & occupied).any():
            return center
    return None


def _grown(box: np.ndarray, by: float) -> np.ndarray:
    """The box ``(5,)`` with ``by`` metres added on every side."""
    return box + np.array([0, 0, 2 * by, 2 * by, 0])


def _place_boxes(
    rng: np.random.Generator, layout: _Layout, near: np.ndarray, count: int
) -> list[np.ndarray]:
    """Up to ``count`` random boxes ``(5,)`` off ``near`` and ``MARGIN`` away from each other."""
    size = near.shape[0]
    areas = np.array([np.prod(leaf[2:] - leaf[:2]) for leaf in layout.leaves])
    near, boxes = near.copy(), []
    for _ in range(count * 25):
        if len(boxes) == count:
            break
        leaf = layout.leaves[int(rng.choice(len(areas), p=areas / areas.sum()))]
        box = (*rng.uniform(leaf[:2], leaf[2:]), *rng.uniform([0.25, 0.2], [0.75, 0.5]))
        box = np.array([*box, rng.uniform(-np.pi / 2, np.pi / 2)])
        if not (geo.box_mask(*box, WORLD_BOUNDS, size) & near).any():
            boxes.append(box)
            near |= geo.box_mask(*_grown(box, MARGIN), WORLD_BOUNDS, size)
    return boxes


def _shift_collisions(
    obstacles: np.ndarray, piece: np.ndarray, reach: int, outside: bool
) -> np.ndarray:
    """``(2*reach+1,)*2`` bool: does ``piece`` ``(H, W)`` shifted by ``(dr, dc)`` pixels overlap
    ``obstacles`` ``(H, W)`` (beyond the image: ``outside``)? Entry ``[dr + reach, dc + reach]``."""
    rows, cols = np.nonzero(piece.any(1))[0], np.nonzero(piece.any(0))[0]
    r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    padded = np.pad(obstacles, reach, constant_values=outside).astype(np.float32)
    window = padded[r0 : r1 + 2 * reach, c0 : c1 + 2 * reach]
    kernel = piece[r0:r1, c0:c1].astype(np.float32)
    spectrum = fft.rfft2(window) * np.conj(fft.rfft2(kernel, window.shape))
    overlap = fft.irfft2(spectrum, window.shape)  # circular; no wrap-around in the part kept
    return overlap[: 2 * reach + 1, : 2 * reach + 1] > 0.5


@dataclass
class _Scene:
    """Masks ``(size, size)`` bool of one layout and what the goal search needs."""

    static: np.ndarray
    others: np.ndarray  # the movable boxes but the selected one
    target: np.ndarray
    forbidden: np.ndarray  # where a moved box may not go: walls, boxes, robot, goal + MARGIN
    fat: np.ndarray  # walls and other boxes inflated by the fattened robot
    fat_px: float
    radius: float  # the robot's, m
    start: tuple[int, int]  # robot and goal pixels
    end: tuple[int, int]

    def opens_with(self, swollen: np.ndarray) -> bool:
        """Does the fattened robot reach its goal with ``swollen`` (an inflated box) added?"""
        return geo.cspace_connected(self.fat | swollen, self.start, self.end)


def _find_target_goal(
    rng: np.random.Generator, scene: _Scene, box: np.ndarray, door: _Door
) -> tuple[np.ndarray, np.ndarray] | None:
    """Nearest goal pose ``(box (5,), mask)`` for the selected ``box`` in ``door``, or None.

    Candidates are the box's translations on a ``PUSH_STEP`` grid that the robot pushes it to
    from where it stands without touching walls or other boxes (:class:`.feasible.PushLattice`,
    the push checked step by step), that clear ``forbidden`` and that leave the doorway and its
    approaches (a robot diameter on both sides) free for the fattened robot. The nearest (ties
    in random order) that lets it reach its goal wins.
    """
    size = scene.static.shape[0]
    mpp = geo.metres_per_pixel(WORLD_BOUNDS, size)
    reach, step = int(np.ceil(MAX_PUSH / mpp)), max(1, round(PUSH_STEP / mpp))
    lo, hi = door.center[1 - door.axis] + np.array([-0.5, 0.5]) * door.width
    lane_depth = door.thick + 4 * scene.fat_px * mpp
    lane = _axis_box(door.axis, door.center[door.axis], lane_depth, lo, hi)
    lane = geo.box_mask(*lane, WORLD_BOUNDS, size) & ~scene.fat
    swollen = geo.inflate(scene.target, scene.fat_px)
    fits = ~_shift_collisions(scene.static | scene.others, scene.target, reach, outside=True)
    pushes = feasible.PushLattice(
        box,
        scene.target[None],
        fits[None],
        np.zeros_like(fits[None]),
        reach,
        np.array([[0.0, -mpp], [mpp, 0.0]]),  # a row down is -y, a column right +x
        ~scene.fat,
        scene.start,
        scene.radius,
        0.0,
        np.inf,
    )
    ok = np.isfinite(pushes.dist[0])
    ok &= ~_shift_collisions(scene.forbidden, scene.target, reach, outside=True)
    ok &= ~_shift_collisions(lane, swollen, reach, outside=False)
    dr, dc = np.mgrid[-reach : reach + 1, -reach : reach + 1]
    ok &= (dr % step == 0) & (dc % step == 0)
    candidates = rng.permutation(np.flatnonzero(ok))
    candidates = candidates[np.argsort(np.hypot(dr, dc).flat[candidates], kind="stable")]
    for flat in candidates[:MAX_PATH_CHECKS]:
        shift = int(dr.flat[flat]), int(dc.flat[flat])
        if not scene.opens_with(shifted(swollen, -shift[0], -shift[1])):
            continue
        if not pushes.pushes_along((0, shift[0] + reach, shift[1] + reach)):
            continue
        # the shifted mask is the moved box's rasterisation up to round-off: check the latter
        moved = box + np.array([shift[1] * mpp, -shift[0] * mpp, 0, 0, 0])
        mask = geo.box_mask(*moved, WORLD_BOUNDS, size)
        if not (mask & scene.forbidden).any() and scene.opens_with(geo.inflate(mask, scene.fat_px)):
            return moved, mask
    return None


def _union(masks: list[np.ndarray], size: int) -> np.ndarray:
    out = np.zeros((size, size), dtype=bool)
    for mask in masks:
        out |= mask
    return out


def _attempt(rng: np.random.Generator, size: int) -> dict[str, np.ndarray] | str:
    """One try at a scene, or the name of the check it failed (``REASONS``; the caller samples
    again)."""
    mpp = geo.metres_per_pixel(WORLD_BOUNDS, size)
    radius = rng.uniform(*ROBOT_RADIUS)
    layout = _sample_layout(rng, radius)
    room_a, room_b = (int(v) for v in rng.choice(len(layout.leaves), 2, replace=False))
    route = [layout.doors[d] for d in _route(layout.doors, room_a, room_b)]
    door = route[int(rng.integers(len(route)))]
    target_box = _doorway_box(rng, door, radius)
    static = _union([geo.box_mask(*wall, WORLD_BOUNDS, size) for wall in layout.walls], size)
    target = geo.box_mask(*target_box, WORLD_BOUNDS, size)
    robot_xy = _sample_disk(rng, layout.leaves[room_a], radius, target)
    goal_xy = _sample_disk(rng, layout.leaves[room_b], radius, target)
    if robot_xy is None or goal_xy is None or (target & static).any():
        return "placement"
    # other boxes keep MARGIN off walls, the selected box, robot, goal, other doorways en route
    near = [geo.box_mask(*_grown(np.array(w), MARGIN), WORLD_BOUNDS, size) for w in layout.walls]
    near.append(geo.box_mask(*_grown(target_box, MARGIN), WORLD_BOUNDS, size))
    disks = [(xy, radius + DELTA) for xy in (robot_xy, goal_xy)]
    disks += [(d.center, d.width / 2 + 2 * radius) for d in route if d is not door]
    near += [geo.disk_mask(xy, r + MARGIN, WORLD_BOUNDS, size) for xy, r in disks]
    others_boxes = _place_boxes(rng, layout, _union(near, size), int(rng.integers(2, 8)))
    others = _union([geo.box_mask(*b, WORLD_BOUNDS, size) for b in others_boxes], size)
    robot = geo.disk_mask(robot_xy, radius, WORLD_BOUNDS, size)
    goal = geo.disk_mask(goal_xy, radius, WORLD_BOUNDS, size)
    start, end = geo.mask_centroid(robot), geo.mask_centroid(goal)
    clearance = geo.distance_to(static | others)
    thin_px, fat_px = (radius - DELTA) / mpp, (radius + DELTA) / mpp
    blocked = (clearance <= thin_px) | geo.inflate(target, thin_px)
    fat = clearance <= fat_px
    if geo.cspace_connected(blocked, start, end) or not geo.cspace_connected(fat, start, end):
        return "reachability"
    forbidden = (clearance <= MARGIN / mpp) | geo.inflate(robot, MARGIN / mpp)
    forbidden |= geo.inflate(goal, MARGIN / mpp)
    scene = _Scene(static, others, target, forbidden, fat, fat_px, radius, start, end)
    found = _find_target_goal(rng, scene, target_box, door)
    if found is None:
        return "no_goal"
    goal_box, goal_mask = found
    index = int(rng.integers(len(others_boxes) + 1))
    boxes = [*others_boxes[:index], target_box, *others_boxes[index:]]
    masks = (robot, goal, others | target, static, target, goal_mask)
    arrays = {k: v.astype(np.uint8) * np.uint8(255) for k, v in zip(SCENE_KEYS, masks, strict=True)}
    return arrays | {
        "world_bounds": np.array(WORLD_BOUNDS, dtype=np.float64),
        "robot_pose": robot_xy,
        "goal_pose": goal_xy,
        "robot_radius": np.array(radius),
        "movable_boxes": np.array(boxes, dtype=np.float64),
        "target_index": np.array(index, dtype=np.int64),
        "target_goal_box": goal_box,
        "static_walls": np.array(layout.walls, dtype=np.float64),
    }


def generate_with_stats(
    seed: int | np.random.SeedSequence, size: int = 224
) -> tuple[dict[str, np.ndarray], Counter]:
    """One scene as ``{key: array}`` (keys and shapes in the module docstring) and the rejected
    layouts by reason.

    ``seed`` is an int or a ``SeedSequence`` with int entropy in [0, 2**63); the same seed and
    ``size`` give the same arrays. Raises ``RuntimeError`` naming the check most layouts failed
    if no valid layout is found.
    """
    seq = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
    if not isinstance(seq.entropy, int) or not 0 <= seq.entropy < 2**63:
        raise ValueError(f"seed entropy must be an int in [0, 2**63), got {seq.entropy!r}")
    if size < MIN_SIZE:
        raise ValueError(f"size must be >= {MIN_SIZE}, got {size}")
    return rejection_sample("rooms", seq, lambda rng: _attempt(rng, size), MAX_ATTEMPTS)


def generate_scene(seed: int | np.random.SeedSequence, size: int = 224) -> dict[str, np.ndarray]:
    """One rooms scene (see :func:`generate_with_stats`)."""
    return generate_with_stats(seed, size)[0]
