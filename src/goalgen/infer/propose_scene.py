"""Scenes as proposals take them, and the checks of one scene computed once.

A :class:`ProposalScene` holds the five context masks at their native resolution ``N`` (224
for planner scenes), the frame they are drawn in, the selected box and the robot and goal in
world units, and the exact world geometry when known. :func:`as_scene` builds one from

- a :class:`goalgen.data.planner_scene.WorldScene`, or a MuJoCo ``.xml`` path with the
  ``object_name`` (and optionally a JSON ``state``): exact geometry, masks rendered from it;
- an ``.npz`` scene file: its masks, and its world geometry when the file stores it (``maze``
  and ``rooms`` families, ``goalgen-render``);
- mask arrays ``(5|6, N, N)`` in [0, 1], optionally with ``geometry`` (``world_bounds``,
  ``robot_radius``, ``image_convention``): masks only. Without world bounds, world units are
  pixels (``units == "px"``) of :mod:`goalgen.data.geometry`'s convention on ``(0, 0, N, N)``.

:class:`Checker` runs the checks of :mod:`goalgen.infer.verify` on candidate boxes, with a
clearance: exactly in world coordinates when the geometry is known, else on the masks; and
plans the pushes (:mod:`goalgen.infer.push_plan`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from goalgen.data import geometry as geo
from goalgen.data.planner_scene import (
    GridFrame,
    WorldScene,
    frame_of,
    load_mujoco_scene,
)
from goalgen.data.scenes import load_scene_file
from goalgen.infer import verify
from goalgen.infer.fit import period_of
from goalgen.infer.poses import PIXEL_EXTENT, min_area_rect
from goalgen.infer.push_plan import (
    CONTACT_GAP,
    NO_PUSH,
    TURN_LEVER,
    PushPlanner,
    PushSegment,
)

THRESHOLD = 0.5
# Metres the robot keeps from walls and boxes on its route and the placed box keeps from walls,
# boxes and the robot: half of namo_cpp's 5 cm reachability cell, so that a route we call open
# stays open on a planner's grid (a gap a robot passes with 2.5 cm to spare each side has a free
# 5 cm cell along it however the grid falls).
CLEARANCE = 0.025
MAX_PUSH = 2.0  # m: the push search radius (maze files search feasible goals within 1.5 m)
# Room beyond the clearance the route is checked for (ranking): these metres for a robot of
# radius ROOM_RADIUS or more (mazes, rooms), in proportion to a smaller one's radius (arenas:
# 5 cm more room is a third of a 0.15 m robot and more than a 0.03 m robot's whole radius).
ROOM_LEVELS = (0.025, 0.05)
ROOM_RADIUS = 0.15


def room_levels(robot_radius: float) -> tuple[float, ...]:
    """Metres of room beyond the clearance the ranking asks of the route of a robot of
    ``robot_radius`` m: :data:`ROOM_LEVELS`, scaled by ``robot_radius / ROOM_RADIUS`` below it."""
    scale = min(1.0, robot_radius / ROOM_RADIUS)
    return tuple(level * scale for level in ROOM_LEVELS)


@dataclass
class ProposalScene:
    """One scene ready for proposals (see the module docstring)."""

    name: str
    masks: np.ndarray  # (5, N, N) float32 in [0, 1]: robot, goal, movable, static, selected
    frame: Any  # NamoFrame or GridFrame of the masks
    target: np.ndarray  # (5,) the selected box (cx, cy, w, h, yaw), world units
    robot_xy: np.ndarray  # (2,)
    robot_radius: float  # world units
    goal_xy: np.ndarray  # (2,)
    units: str = "m"  # "m", or "px" when the world is unknown
    world: WorldScene | None = None
    truth: np.ndarray | None = None  # (N, N) float32, when the file has a target_goal
    object_name: str | None = None

    @property
    def size(self) -> int:
        return int(self.masks.shape[-1])

    @property
    def period(self) -> float:
        return period_of(self.target[2], self.target[3])

    @property
    def geometry(self) -> dict[str, Any] | None:
        """``world_bounds`` / ``robot_radius`` for the evaluation's mask metrics."""
        if self.units != "m":
            return None
        return {"world_bounds": self.frame.bounds, "robot_radius": self.robot_radius}


def _world_points(frame, mask: np.ndarray) -> np.ndarray:
    return frame.pixel_to_world(np.argwhere(np.asarray(mask) >= THRESHOLD).astype(np.float64))


def _centroid(frame, mask: np.ndarray, what: str, name: str) -> np.ndarray:
    points = _world_points(frame, mask)
    if len(points) == 0:
        raise ValueError(f"{name}: the {what} mask is empty")
    return points.mean(0)


def footprint_of_mask(frame, mask: np.ndarray, name: str = "scene") -> np.ndarray:
    """The selected box ``(cx, cy, w, h, yaw)`` fitted to its mask: minimum-area rectangle of
    the pixel sample points in world units, grown by the pixels' extent; centre = centroid."""
    points = _world_points(frame, mask)
    if len(points) == 0:
        raise ValueError(f"{name}: the selected object's mask ('target_object') is empty")
    _, angle, length, width = min_area_rect(points)
    aligned = min(angle % (np.pi / 2), np.pi / 2 - angle % (np.pi / 2)) < 1e-6
    pad = (PIXEL_EXTENT[0] if aligned else PIXEL_EXTENT[1]) * frame.metres_per_pixel
    return np.array([*points.mean(0), length + pad, width + pad, angle])


def _from_world(world: WorldScene, name: str, truth=None) -> ProposalScene:
    return ProposalScene(
        name=name,
        masks=world.context_masks().astype(np.float32),
        frame=world.frame,
        target=np.asarray(world.target, dtype=np.float64),
        robot_xy=np.asarray(world.robot_xy, dtype=np.float64),
        robot_radius=float(world.robot_radius),
        goal_xy=np.asarray(world.goal_xy, dtype=np.float64),
        world=world,
        truth=truth,
        object_name=world.target_name,
    )


def _from_masks(masks: np.ndarray, geometry: Mapping[str, Any] | None, name: str) -> ProposalScene:
    masks = np.asarray(masks, dtype=np.float32)
    if masks.ndim != 3 or masks.shape[0] not in (5, 6) or masks.shape[1] != masks.shape[2]:
        raise ValueError(f"{name}: expected masks (5|6, N, N), got {masks.shape}")
    if not np.isfinite(masks).all() or masks.min() < -1e-3 or masks.max() > 1 + 1e-3:
        raise ValueError(f"{name}: masks must be finite floats in [0, 1]")
    size = masks.shape[-1]
    geometry = dict(geometry or {})
    if "world_bounds" in geometry:
        frame = frame_of(int(geometry.get("image_convention", 0)), geometry["world_bounds"], size)
        units = "m"
    else:
        frame, units = GridFrame((0.0, 0.0, float(size), float(size)), size), "px"
    robot = masks[0] >= THRESHOLD
    radius = geometry.get("robot_radius")
    if radius is None:
        radius = geo.equivalent_radius_px(robot) * frame.metres_per_pixel
    return ProposalScene(
        name=name,
        masks=np.clip(masks[:5], 0, 1),
        frame=frame,
        target=footprint_of_mask(frame, masks[4], name),
        robot_xy=_centroid(frame, masks[0], "robot", name),
        robot_radius=float(radius),
        goal_xy=_centroid(frame, masks[1], "goal", name),
        units=units,
        truth=masks[5] if masks.shape[0] == 6 else None,
    )


def _from_npz(path: Path) -> ProposalScene:
    masks, geometry = load_scene_file(path)
    with np.load(path, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files if not k.endswith("_image") and k != "push_field"}
    world = WorldScene.from_arrays(arrays, str(path))
    truth = masks[5] if masks.shape[0] == 6 else None
    if world is not None and world.frame.size == masks.shape[-1]:
        scene = _from_world(world, path.stem, truth)
        scene.masks = masks[:5].astype(np.float32)  # the file's own masks, as the model saw them
        return scene
    if geometry is not None and "image_convention" in arrays:
        geometry = dict(geometry, image_convention=int(arrays["image_convention"]))
    return _from_masks(masks, geometry, path.stem)


def as_scene(
    scene: Any,
    *,
    object_name: str | None = None,
    state: Any = None,
    robot_goal: Sequence[float] | None = None,
    geometry: Mapping[str, Any] | None = None,
    size: int = geo.NAMO_IMAGE_SIZE,
    name: str | None = None,
) -> ProposalScene:
    """A :class:`ProposalScene` from any accepted input (see the module docstring)."""
    if isinstance(scene, ProposalScene):
        return scene
    if isinstance(scene, WorldScene):
        return _from_world(scene, name or Path(scene.source).stem or "scene")
    if isinstance(scene, (str, os.PathLike)):
        path = Path(scene)
        if path.suffix.lower() == ".xml":
            if not object_name:
                raise ValueError(f"{path}: a MuJoCo scene needs the selected object's name")
            world = load_mujoco_scene(path, object_name, state, size, robot_goal)
            return _from_world(world, name or path.stem)
        if object_name is not None or state is not None:
            raise ValueError(f"{path}: object_name and state apply to MuJoCo .xml scenes only")
        return _from_npz(path)
    return _from_masks(np.asarray(scene), geometry, name or "scene")


# ----------------------------------------------------------------------------- checks
def _nearby(obstacles: np.ndarray, boxes: np.ndarray, margin: float) -> np.ndarray:
    """The obstacles ``(B, 5)`` whose bounding disk comes within ``margin`` of the disk that
    bounds every box of ``boxes`` ``(K, 5)`` (the others cannot touch any of them)."""
    obstacles = np.asarray(obstacles, dtype=np.float64).reshape(-1, 5)
    if len(obstacles) == 0 or len(boxes) == 0:
        return obstacles
    centre = (boxes[:, :2].min(0) + boxes[:, :2].max(0)) / 2
    reach = np.max(np.hypot(*(boxes[:, :2] - centre).T) + np.hypot(boxes[:, 2], boxes[:, 3]) / 2)
    return verify.near_disk(obstacles, centre, reach + margin)


class Checker:
    """The checks of one scene (see :mod:`goalgen.infer.verify`), set up once.

    ``clearance``: metres the robot keeps from walls and boxes on its route (its route grid
    and polygons are those of the robot grown by it; it may start and end closer) and a
    placed box keeps from walls, boxes and the robot (ignored for masks in pixel units).
    ``cell``: route-grid cell (default ``min(pixel, radius / 3)``). ``max_push``: the push
    search radius (world units).
    """

    def __init__(
        self,
        scene: ProposalScene,
        clearance: float = CLEARANCE,
        cell: float | None = None,
        max_push: float = MAX_PUSH,
    ):
        if not np.isfinite(clearance) or clearance < 0:
            raise ValueError(f"clearance must be a distance >= 0 in metres, got {clearance}")
        self.scene, self.clearance = scene, float(clearance)
        self._exact: verify.ExactReach | None = None
        self._planner: PushPlanner | None = None
        self._careful: PushPlanner | None = None  # along the field keeping off walls
        self._rooms: dict[float, verify.ReachGrid] = {}
        frame, world, box = scene.frame, scene.world, scene.target
        limit = float(max_push) if scene.units == "m" else np.inf
        self.room_levels = ROOM_LEVELS if world is None else room_levels(world.robot_radius)
        if world is not None:
            self.obstacles = np.concatenate([world.static, world.others]).reshape(-1, 5)
            self.cell = cell or min(frame.metres_per_pixel, world.robot_radius / 3)
            self.reach = verify.ReachGrid(
                frame.bounds,
                self.cell,
                self.obstacles,
                world.robot_xy,
                world.goal_xy,
                world.robot_radius + self.clearance,
                end_radius=world.robot_radius,
                headroom=max(self.room_levels),
            )
            grid = self.reach

            # the push field covers the cells the box (and the robot behind it) can reach
            # within the search radius
            span = limit + np.hypot(box[2], box[3]) + 2 * world.robot_radius + self.clearance
            reach = int(np.ceil(span / grid.cell)) + 2 if np.isfinite(span) else max(grid.shape)
            centre = np.floor((box[[1, 0]] - (grid.y0, grid.x0)) / grid.cell).astype(int)
            lo = np.clip(centre - reach, 0, grid.shape)
            hi = np.clip(centre + reach + 1, 0, grid.shape)
            window = (slice(lo[0], hi[0]), slice(lo[1], hi[1]))
            self._push_origin = lo

            def to_cell(xy):
                return np.stack(
                    [
                        (xy[..., 1] - grid.y0) / grid.cell - 0.5 - lo[0],
                        (xy[..., 0] - grid.x0) / grid.cell - 0.5 - lo[1],
                    ],
                    -1,
                )

            pushers = {k: v[window] for k, v in self._pushers().items()}
            self._field_args = (window, to_cell, limit, pushers)
            self.push = self._push_field(grid.cell / 2)
        else:
            masks = scene.masks >= THRESHOLD
            self.static, self.robot, self.goal = masks[3], masks[0], masks[1]
            others = np.clip(scene.masks[2] - scene.masks[4], 0, 1) >= THRESHOLD
            self.others = others & ~masks[4]
            self.reach = verify.MaskReach(
                self.static | self.others,
                masks[0],
                masks[1],
                (scene.robot_radius + (self.clearance if scene.units == "m" else 0.0))
                / frame.metres_per_pixel,
            )
            sign = 1.0 if frame.shift_to_world(1, 0)[1] > 0 else -1.0
            mpp = frame.metres_per_pixel

            origin = frame.pixel_to_world(np.zeros(2))  # pixel_to_world is linear: invert it

            def to_cell(xy):
                return np.stack(
                    [(xy[..., 1] - origin[1]) / (sign * mpp), (xy[..., 0] - origin[0]) / mpp], -1
                )

            self.push = verify.PushField(
                self.static | self.others,
                to_cell,
                lambda a, b: (b * mpp, sign * a * mpp),
                mpp,
                box,
                scene.period,
                limit=limit,
            )

    def _push_field(self, near_wall: float) -> verify.PushField:
        """The push field on the route grid, a cell taken by an obstacle when its centre lies
        within ``near_wall`` of one: half a cell (the inscribed disk touches it) lies between
        the mask pixels' centre-inside rule of the ground truth's search and the whole cell
        touching (too tight for maze corridors), and its paths may graze walls; a whole cell
        keeps them off (:meth:`plan` falls back to it)."""
        grid, world, box = self.reach, self.scene.world, self.scene.target
        window, to_cell, limit, pushers = self._field_args
        return verify.PushField(
            grid.clear[window] < near_wall,
            to_cell,
            lambda a, b: (b * grid.cell, a * grid.cell),
            grid.cell,
            box,
            self.scene.period,
            limit=limit,
            contact=world.robot_radius + CONTACT_GAP,
            lever=TURN_LEVER,
            **pushers,
        )

    def _pushers(self) -> dict[str, np.ndarray]:
        """Route-grid cells ``(H, W)`` bool where the robot's centre may stand to push (at
        least its radius plus the clearance plus half a cell from walls and other boxes), for
        :class:`goalgen.infer.verify.PushField`: ``pusher``, on its own side of the selected
        box (cells it reaches from its start, coming as close to the box as it likes) or where
        the box stands (it follows the box into them); ``pusher_after``, once the box has left
        the cells it covered (``vacated``), every cell the robot reaches with the box taken
        away. An approximation for the lattice search (a box just out of a door may still
        shut the robot in behind it): every plan is then checked step by step.
        Pulling is thus never counted: the far side of a box that closes a passage is out of
        reach until the box has been pushed out of it."""
        grid = self.reach
        xy = grid.centres(*np.indices(grid.shape))
        inside = verify.point_box_distance(xy, self.scene.target[None])[..., 0] <= 0
        room = grid.clear >= grid.radius + grid.cell / 2
        ends = grid.start[:, 0].astype(int), grid.start[:, 1].astype(int)

        def reached(cells: np.ndarray) -> np.ndarray:
            labels, _ = ndimage.label(cells)
            mine = labels[ends]
            return np.isin(labels, mine[mine > 0])

        return {
            "pusher": room & (reached(room & ~inside) | inside),
            "pusher_after": reached(room),
            "vacated": inside,
        }

    @property
    def route_exists(self) -> bool:
        """Does the robot reach its goal with the selected box taken away?"""
        if self.reach.base_connected or self.scene.world is None:
            return self.reach.base_connected
        return self.exact_reach.base_connected

    def footprints(self, boxes: np.ndarray) -> np.ndarray:
        """``(K, N, N)`` bool footprints of ``boxes`` ``(K, 5)`` at the masks' resolution."""
        frame = self.scene.frame
        out = np.zeros((len(boxes), frame.size, frame.size), dtype=bool)
        for i, box in enumerate(boxes):
            out[i] = frame.box_mask(*box)
        return out

    def _hits(
        self, boxes: np.ndarray, footprints: np.ndarray | None
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """``(outside (K,), {obstacle name: hit (K,)})`` of ``boxes`` ``(K, 5)`` (``footprints``
        are needed without world geometry only)."""
        frame = self.scene.frame
        if self.scene.world is not None:
            world, m = self.scene.world, self.clearance
            corners = verify.box_corners(boxes)
            xmin, ymin, xmax, ymax = frame.bounds
            outside = ((corners[..., 0] < xmin) | (corners[..., 0] > xmax)).any(1) | (
                (corners[..., 1] < ymin) | (corners[..., 1] > ymax)
            ).any(1)
            return outside, {
                "static": verify.boxes_overlap(boxes, _nearby(world.static, boxes, m), m).any(1),
                "movable": verify.boxes_overlap(boxes, _nearby(world.others, boxes, m), m).any(1),
                "robot": verify.point_box_distance(world.robot_xy, boxes) < world.robot_radius + m,
            }
        if footprints is None:
            footprints = self.footprints(boxes)
        edge = footprints[:, [0, -1], :].any((1, 2)) | footprints[:, :, [0, -1]].any((1, 2))
        return edge | ~footprints.any((1, 2)), {
            name: (footprints & mask[None]).any((1, 2))
            for name, mask in (
                ("static", self.static),
                ("movable", self.others),
                ("robot", self.robot),
                ("goal", self.goal),
            )
        }

    def collision_free(self, boxes: np.ndarray, footprints: np.ndarray | None = None) -> np.ndarray:
        """``(K,)`` bool: inside the map and touching nothing (see :meth:`collisions`)."""
        outside, hits = self._hits(np.asarray(boxes, dtype=np.float64).reshape(-1, 5), footprints)
        return ~outside & ~np.any(list(hits.values()), axis=0)

    def collisions(self, boxes: np.ndarray, footprints: np.ndarray) -> list[str | None]:
        """Per box: None, or ``"outside the map"`` / ``"collision with static+movable+robot"``
        (masks only: also ``goal``, the drawn goal disk, as the evaluation counts it)."""
        outside, hits = self._hits(boxes, footprints)
        out = []
        for i in range(len(boxes)):
            names = [n for n, hit in hits.items() if hit[i]]
            out.append(
                "outside the map"
                if outside[i]
                else ("collision with " + "+".join(names) if names else None)
            )
        return out

    def opens(
        self,
        boxes: np.ndarray,
        footprints: np.ndarray | None = None,
        exact: bool | np.ndarray = True,
    ) -> np.ndarray:
        """``(K,)`` bool: does the robot reach its goal with the box placed there? With world
        geometry, boxes the grid finds blocked are checked again on polygons
        (:class:`goalgen.infer.verify.ExactReach`: sound as the grid, and it finds the routes
        that squeeze through with less than half a cell to spare; ``exact=False`` skips it, a
        ``(K,)`` bool ``exact`` asks it for those boxes only).
        ``footprints`` are needed without world geometry only. The box keeps the robot's
        radius plus the clearance from its goal too (the robot may start and end closer than
        that to walls and other boxes, not to the box we place)."""
        if self.scene.world is None:
            return self.reach.opens(self.footprints(boxes) if footprints is None else footprints)
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 5)
        world = self.scene.world
        found = verify.point_box_distance(world.goal_xy, boxes) >= self.reach.radius
        found[found] = self.reach.opens(boxes[found])
        again = np.flatnonzero(~found & np.broadcast_to(exact, found.shape))
        again = again[verify.point_box_distance(world.goal_xy, boxes[again]) >= self.reach.radius]
        if len(again) and self.exact_reach.base_connected:
            found[again] = self.exact_reach.opens(boxes[again])
        return found

    @property
    def exact_reach(self) -> verify.ExactReach:
        """The polygon route check (world geometry only), built on first use."""
        if self._exact is None:
            world = self.scene.world
            self._exact = verify.ExactReach(
                self.scene.frame.bounds,
                self.obstacles,
                world.robot_xy,
                world.goal_xy,
                world.robot_radius + self.clearance,
                end_slack=self.clearance,
            )
        return self._exact

    def push_distance(self, boxes: np.ndarray) -> np.ndarray:
        """``(K,)`` push distances (world units; inf where the box cannot be pushed) to boxes
        ``(K, 5)``."""
        return self.push.distance(np.asarray(boxes)[:, [0, 1, 4]])

    def plan(self, box: np.ndarray) -> tuple[list[PushSegment], str | None]:
        """How the robot pushes the selected box to ``box`` ``(5,)``, and why it cannot
        (None: it can); see :meth:`plan_with_distance`."""
        segments, failure, _ = self.plan_with_distance(box)
        return segments, failure

    def plan_with_distance(self, box: np.ndarray) -> tuple[list[PushSegment], str | None, float]:
        """The push plan to ``box`` ``(5,)`` (:class:`goalgen.infer.push_plan.PushPlanner`),
        why it fails (None: it does not) and the push distance of the field it follows.
        A plan along the push field's path that fails (a path grazing a wall sweeps the box
        into it, or leaves the robot no way behind it) is tried again along the path of the
        field that keeps whole cells off walls and boxes; its distance is then that field's.
        Without world geometry only the push distance is known: a finite one counts, with no
        segments."""
        pose = np.asarray(box, dtype=np.float64)[[0, 1, 4]]
        distance = float(self.push.distance(pose[None])[0])
        if self.scene.world is None:
            return [], None if np.isfinite(distance) else NO_PUSH, distance
        if self._planner is None:
            self._planner = self._push_planner(self.push)
        segments, failure = self._planner.check(pose)
        if failure is None or failure == NO_PUSH:
            return segments, failure, distance
        if self._careful is None:
            self._careful = self._push_planner(self._push_field(self.reach.cell))
        again, why = self._careful.check(pose)
        if why is not None:
            return segments, failure, distance
        return again, None, float(self._careful.field.distance(pose[None])[0])

    def _push_planner(self, field: verify.PushField) -> PushPlanner:
        grid, world, lo = self.reach, self.scene.world, self._push_origin

        def to_world(rc: np.ndarray) -> np.ndarray:
            return grid.centres(rc[..., 0] + lo[0], rc[..., 1] + lo[1])

        return PushPlanner(
            field,
            grid,
            self.obstacles,
            self.scene.target,
            world.robot_xy,
            world.robot_radius,
            self.clearance,
            to_world,
            self.scene.period,
            self.scene.frame.bounds,
        )

    @property
    def room_wanted(self) -> float:
        """World units of room the ranking asks for: the clearance plus the largest level."""
        return self.clearance + max(self.room_levels)

    def room(self, boxes: np.ndarray) -> np.ndarray:
        """``(K,)`` world units to spare for boxes ``(K, 5)`` that verify: the least of the
        box's exact distance to walls, other boxes and the robot's disk, and the room the
        robot's route keeps (the clearance, or the largest of ``clearance + room_levels`` the
        route grid still finds open). NaN without world geometry."""
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 5)
        if self.scene.world is None or not len(boxes):
            return np.full(len(boxes), np.nan)
        world = self.scene.world
        near = _nearby(self.obstacles, boxes, self.room_wanted)
        gap = np.full(len(boxes), self.room_wanted)
        if len(near):
            # convex boxes apart: the closest points include a corner of one of them
            one = verify.point_box_distance(verify.box_corners(boxes), near).min((1, 2))
            two = verify.point_box_distance(verify.box_corners(near), boxes).min((0, 1))
            gap = np.minimum(gap, np.minimum(one, two))
        robot = verify.point_box_distance(world.robot_xy, boxes) - world.robot_radius
        route = np.full(len(boxes), self.clearance)
        for extra in self.room_levels:
            if extra not in self._rooms:
                self._rooms[extra] = self.reach.grown(extra)
            route[self._rooms[extra].opens(boxes)] = self.clearance + extra
        return np.minimum(np.minimum(gap, robot), route)
