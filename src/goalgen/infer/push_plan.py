"""Push plans: how the robot pushes the selected box to a goal pose, each step checked.

A plan follows the push field's shortest lattice path to the goal pose
(:meth:`goalgen.infer.verify.PushField.path`), shifted to start at the box's exact pose and
bent to end at the goal's, in *slides* (straight translations, each to the farthest pose of
the same yaw on the path that the robot can push the box to in one go) and *turns* in place.
Every segment is checked in world coordinates:

- **sweep**: the area the box sweeps (a slide: the convex hull of its start and end; a turn:
  the box every ``TURN_SAMPLE``, grown by the arc a corner travels between samples) is clear
  of walls and other boxes (separating axes, ``SWEEP_MARGIN`` to spare) and inside the map;
- **contact**: a slide is pushed from behind, on the line through the box's centre, the
  robot's disk ``CONTACT_GAP`` from the box; a turn by a push near one end of a side whose
  torque turns the box the right way (four candidate spots, the first that works);
- **approach**: the robot stands a grid cell behind its contact spot and must get there from
  where it stood (its start for the first segment, then where the previous push left it)
  with the box where the segment starts, on the route grid of the robot grown by the
  clearance (:meth:`goalgen.infer.verify.ReachGrid.reach_from`; it may come within its own
  radius of the box it is about to push);
- **path**: the robot's disk, moving from the approach spot through the push, keeps its
  radius plus the clearance from walls and other boxes (exact distances at points every
  ``PATH_STEP``, half a step added).

A pose reached only by pulling (no spot behind the box the robot can get to) or only through a
wall has no plan. Poses are ``(x, y, yaw)`` in metres and radians.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from goalgen.data.pushing import CONTACT_GAP, TURN_LEVER, contact_distance, turn_spots
from goalgen.infer.fit import wrap
from goalgen.infer.verify import (
    PushField,
    ReachGrid,
    box_corners,
    boxes_overlap,
    near_disk,
    point_box_distance,
)

SWEEP_MARGIN = 0.001  # m the swept box keeps from walls and other boxes
TURN_SAMPLE = np.radians(0.5)  # yaw between the boxes that stand for a turn's sweep
PATH_STEP = 0.01  # m between the points that stand for the robot's path
NO_PUSH = "no push within the search radius"


@dataclass
class PushSegment:
    """One push: the box from ``box_start`` to ``box_end`` ``(x, y, yaw)``, a ``"slide"`` or
    a ``"turn"`` in place; the robot's centre from ``robot_start`` (in contact) to
    ``robot_end``, after closing in from ``approach``."""

    kind: str
    box_start: np.ndarray
    box_end: np.ndarray
    robot_start: np.ndarray
    robot_end: np.ndarray
    approach: np.ndarray

    def to_dict(self) -> dict[str, Any]:
        def r(v: np.ndarray) -> list[float]:
            return [round(float(x), 6) for x in v]

        return {
            "kind": self.kind,
            "box_start": r(self.box_start),
            "box_end": r(self.box_end),
            "robot_start": r(self.robot_start),
            "robot_end": r(self.robot_end),
        }


def _box(pose: np.ndarray, size: tuple[float, float]) -> np.ndarray:
    return np.array([pose[0], pose[1], size[0], size[1], pose[2]], dtype=np.float64)


def hull_clear(points: np.ndarray, axes: np.ndarray, obstacles: np.ndarray, margin: float) -> bool:
    """Is the convex hull of ``points`` ``(P, 2)``, whose edge normals are among ``axes``
    ``(A, 2)``, at least ``margin`` from every box ``obstacles`` ``(B, 5)`` on some
    separating axis (the hull's and each box's edge normals)?"""
    if len(obstacles) == 0:
        return True
    c, s = np.cos(obstacles[:, 4]), np.sin(obstacles[:, 4])
    normals = np.stack([np.stack([c, s], -1), np.stack([-s, c], -1)], 1)  # (B, 2, 2)
    half = obstacles[:, 2:4] / 2
    every = np.concatenate(
        [np.broadcast_to(axes[None], (len(obstacles), *axes.shape)), normals], 1
    )  # (B, A + 2, 2)
    spans = points @ every.transpose(0, 2, 1)  # (B, P, A + 2)
    lo, hi = spans.min(1), spans.max(1)
    centre = np.einsum("bc,bac->ba", obstacles[:, :2], every)
    reach = np.abs(np.einsum("bac,bjc->baj", every, normals)) @ half[..., None]  # (B, A + 2, 1)
    gap = np.maximum(lo - (centre + reach[..., 0]), (centre - reach[..., 0]) - hi)
    return bool((gap.max(1) >= margin).all())


def _slide_clear(start: np.ndarray, end: np.ndarray, size, obstacles: np.ndarray) -> bool:
    a, b = _box(start, size), _box(end, size)
    d = b[:2] - a[:2]
    c, s = math.cos(a[4]), math.sin(a[4])
    axes = [np.array([c, s]), np.array([-s, c])]
    if np.hypot(*d) > 1e-9:
        axes.append(np.array([-d[1], d[0]]) / np.hypot(*d))
    points = box_corners(np.stack([a, b])).reshape(-1, 2)
    return hull_clear(points, np.array(axes), obstacles, SWEEP_MARGIN)


def _turn_clear(start: np.ndarray, end: np.ndarray, size, obstacles: np.ndarray) -> bool:
    n = int(np.ceil(abs(end[2] - start[2]) / TURN_SAMPLE)) + 1
    yaws = np.linspace(start[2], end[2], n)
    boxes = np.array([_box((start[0], start[1], y), size) for y in yaws])
    arc = np.hypot(*size) / 2 * abs(end[2] - start[2]) / max(n - 1, 1) / 2
    return not boxes_overlap(boxes, obstacles, SWEEP_MARGIN + arc).any()


class PushPlanner:
    """Plans and checks pushes of one scene's selected box (see the module docstring).

    ``field``: the box's push field; ``grid``: the robot's route grid (robot grown by the
    clearance); ``obstacles`` ``(B, 5)``: walls and other boxes; ``box`` ``(5,)`` where the
    selected box stands; ``robot_xy`` ``(2,)``; ``radius``: the robot's own;
    ``clearance``: what it keeps from walls and other boxes; ``to_world``: lattice
    ``(row, col)`` ``(..., 2)`` -> world ``(..., 2)``; ``period``: the box's symmetry;
    ``bounds`` ``(x0, y0, x1, y1)``: the map the box stays in."""

    def __init__(
        self,
        field: PushField,
        grid: ReachGrid,
        obstacles: np.ndarray,
        box: np.ndarray,
        robot_xy: np.ndarray,
        radius: float,
        clearance: float,
        to_world,
        period: float,
        bounds: tuple[float, float, float, float] | None = None,
    ) -> None:
        self.field, self.grid = field, grid
        self.bounds = None if bounds is None else np.asarray(bounds, dtype=np.float64)
        self.obstacles = np.asarray(obstacles, dtype=np.float64).reshape(-1, 5)
        self.box = np.asarray(box, dtype=np.float64)
        self.size = (float(self.box[2]), float(self.box[3]))
        self.robot_xy = np.asarray(robot_xy, dtype=np.float64)
        self.radius, self.clearance = float(radius), float(clearance)
        self.to_world, self.period = to_world, float(period)
        self.approach = float(grid.cell)

    # ------------------------------------------------------------------ the plan's shape
    def waypoints(self, pose: np.ndarray) -> np.ndarray | None:
        """World poses ``(n, 3)`` of the shortest lattice path to ``pose`` ``(x, y, yaw)``,
        shifted to start at the box's exact pose and bent to end at ``pose`` (the last slide
        and the turns after it end at its position; the last turn at its yaw, or a turn
        appended); consecutive poses differ in position (a slide) or yaw (a turn). None if
        the push field does not reach it."""
        nodes = self.field.path(pose)
        if nodes is None:
            return None
        pose = np.asarray(pose, dtype=np.float64)
        lattice = self.to_world(nodes[:, 1:].astype(np.float64))
        lattice += self.box[:2] - self.to_world(np.array(self.field.start, dtype=np.float64))
        out = np.column_stack([lattice, self.box[4] + nodes[:, 0] * self.field.yaw_step])
        slid = np.flatnonzero(np.abs(np.diff(out[:, :2], axis=0)).max(1) > 1e-12)
        if len(slid):
            out[slid[-1] + 1 :, :2] = pose[:2]
        elif np.hypot(*(pose[:2] - out[0, :2])) > 1e-9:
            out = np.concatenate([out[:1], out])
            out[1:, :2] = pose[:2]
        yaw = out[-1, 2] + wrap(pose[2] - out[-1, 2], self.period)
        if len(out) > 1 and abs(out[-1, 2] - out[-2, 2]) > 1e-12:
            out[-1, 2] = yaw
        elif abs(yaw - out[-1, 2]) > 1e-9:
            out = np.concatenate([out, [[pose[0], pose[1], yaw]]])
        keep = np.concatenate([[True], np.abs(np.diff(out, axis=0)).max(1) > 1e-9])
        return out[keep]

    # ------------------------------------------------------------------ the checks
    def _sweep_clear(self, kind: str, a: np.ndarray, b: np.ndarray) -> bool:
        """Is the area the box sweeps from ``a`` to ``b`` ``(x, y, yaw)`` clear, and inside the
        map (its corners at both ends; a turn's every yaw reaches at most half the diagonal
        from the centre)?"""
        if self.bounds is not None:
            if kind == "slide":
                points = box_corners(np.stack([_box(a, self.size), _box(b, self.size)]))
                lo, hi = points.reshape(-1, 2).min(0), points.reshape(-1, 2).max(0)
            else:
                lo = a[:2] - np.hypot(*self.size) / 2
                hi = a[:2] + np.hypot(*self.size) / 2
            if (lo < self.bounds[:2]).any() or (hi > self.bounds[2:]).any():
                return False
        sweep = _slide_clear if kind == "slide" else _turn_clear
        near = near_disk(self.obstacles, a[:2], np.hypot(*(b[:2] - a[:2])) + np.hypot(*self.size))
        return sweep(a, b, self.size, near)

    def path_clear(self, a: np.ndarray, b: np.ndarray) -> bool:
        """Does the robot's disk, moving from ``a`` to ``b`` ``(2,)``, keep its radius plus
        the clearance from walls and other boxes?"""
        keep = self.radius + self.clearance
        n = int(np.ceil(np.hypot(*(b - a)) / PATH_STEP)) + 1
        points = a + np.linspace(0, 1, n)[:, None] * (b - a)
        near = near_disk(self.obstacles, (a + b) / 2, np.hypot(*(b - a)) / 2 + keep + PATH_STEP)
        if not len(near):
            return True
        return bool((point_box_distance(points, near) >= keep + PATH_STEP / 2).all())

    def _contacts(self, kind: str, a: np.ndarray, b: np.ndarray):
        """Candidate ``(contact, approach, push direction)`` spots for one segment."""
        box = _box(a, self.size)
        gap = self.radius + CONTACT_GAP
        if kind == "slide":
            d = (b[:2] - a[:2]) / np.hypot(*(b[:2] - a[:2]))
            contact = box[:2] - contact_distance(box, d, gap) * d
            return [(contact, contact - self.approach * d, d)]
        spots = turn_spots(box, np.sign(b[2] - a[2]), gap, TURN_LEVER)
        return [(point, point - self.approach * push, push) for point, push in spots]

    def _segment(
        self, kind: str, a: np.ndarray, b: np.ndarray, reach
    ) -> tuple[PushSegment | None, str]:
        """The segment from ``a`` to ``b`` if the robot can push it (``reach``: which points
        it gets to with the box at ``a``), else why not."""
        if not self._sweep_clear(kind, a, b):
            return None, "sweeps the box into a wall or box"
        shift = b[:2] - a[:2]
        usable = [s for s in self._contacts(kind, a, b) if self.path_clear(s[1], s[0] + shift)]
        if not usable:
            return None, "no room for the robot behind the box"
        ok = reach(np.array([s[1] for s in usable]))
        if not ok.any():
            return None, "the robot cannot get behind the box"
        contact, approach, _ = usable[int(np.argmax(ok))]
        return PushSegment(kind, a, b, contact, contact + shift, approach), ""

    def _farthest(
        self, kind: str, a: np.ndarray, points: np.ndarray, i: int, last: int, reach
    ) -> tuple[int, PushSegment | str]:
        """The farthest of ``points[i + 1 : last + 1]`` the robot pushes the box to from ``a``
        in one go, found by bisection (a push that works usually works when shorter), and its
        segment; or why even the first one fails."""
        segment, _ = self._segment(kind, a, points[last], reach)
        if segment is not None:
            return last, segment
        if last == i + 1:
            return i + 1, self._segment(kind, a, points[i + 1], reach)[1]
        best, reason = self._segment(kind, a, points[i + 1], reach)
        if best is None:
            return i + 1, reason
        lo, hi = i + 1, last - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            segment, _ = self._segment(kind, a, points[mid], reach)
            if segment is not None:
                lo, best = mid, segment
            else:
                hi = mid - 1
        return lo, best

    def check(self, pose: np.ndarray) -> tuple[list[PushSegment], str | None]:
        """The plan to ``pose`` ``(x, y, yaw)`` and why it fails (None: the box can be pushed
        there). Along the waypoints, each segment goes as far as the robot can push the box
        in one go from where it stands: slides to the farthest waypoint of the same yaw, turns
        through every consecutive turn the same way."""
        points = self.waypoints(pose)
        if points is None:
            return [], NO_PUSH
        where, segments = self.robot_xy, []
        box_radius = self.radius + CONTACT_GAP / 2
        i, n = 0, len(points)
        while i < n - 1:
            a = points[i]
            reach = self.grid.reach_from(_box(a, self.size), box_radius, where)
            turning = abs(points[i + 1, 2] - a[2]) > 1e-12
            sense = np.sign(points[i + 1, 2] - a[2])
            last = i + 1
            while last < n - 1:
                step = points[last + 1] - points[last]
                if turning:
                    same = np.sign(step[2]) == sense and np.abs(step[:2]).max() <= 1e-12
                else:
                    same = abs(step[2]) <= 1e-12
                if not same:
                    break
                last += 1
            kind = "turn" if turning else "slide"
            j, segment = self._farthest(kind, a, points, i, last, reach)
            if isinstance(segment, str):
                return segments, f"push {len(segments) + 1}: {segment}"
            segments.append(segment)
            where = segment.approach + (segment.box_end[:2] - segment.box_start[:2])
            i = j
        return segments, None
