"""Metrics that credit *near-optimal* goals: is a sample as good as the nearest feasible goal?

A scene with a stored feasible set (maze files, :mod:`goalgen.data.synthetic.maze`) knows every
feasible goal pose of its selected box within the push search radius, the geodesic push
distance to each, and a push field: the push distance to any pose the box can slide to. Here:

- ``success_near``: a sample is *valid* (:func:`goalgen.eval.metrics.invalid_reason`, at the
  samples' resolution; a proposal, whose exact pose is known, when its box overlaps no wall
  or other box in the world, :func:`world_valid`), *opens the robot's route*
  (:func:`opens_route`: the box at the sample's fitted pose, judged exactly on the world
  geometry, since a maze's gaps narrower than the robot, ~0.2 m, vanish in a 64 px mask,
  where every placement "opens" it, and a file's 5 cm pixels still let gaps a pixel too
  narrow pass) with a push no longer than the nearest feasible one's plus ``NEAR_SLACK``
  (5 %; ``goalgen-eval --near-slack``) of the world's width. Its push distance
  is read from the push field at its pose (centre and yaw fitted to the mask; the least value
  within half a sample pixel of that centre, so coarse samples are not penalised for their
  pixels); a pose the box cannot slide to has none (inf). A proposal whose own push plan the
  judge accepts (:func:`push_plan_valid`) counts that plan's length where it is shorter
  (:func:`plan_length`).
- ``in_feasible``: a sample's pose lies within one sample pixel (or one feasible lattice step)
  and ``YAW_TOLERANCE`` (plus the angle one pixel subtends across the box) of a stored
  feasible pose; ``feasible_distance``: the distance from a pose to the nearest stored
  feasible one, ``|dxy| + r * |dyaw|`` (``r``: half the box's diagonal, so a yaw step costs
  the arc its corner travels, as in the push search).
- ``random_local``: a baseline of K random collision-free poses within the push search radius.
- ``push_plan_valid`` / ``push_plan_reasons``: an independent judge of a proposal's push plan
  (slides and turns of the box, the robot pushing from behind): it chains, the box's sweep
  is clear, the robot can reach each pushing spot and pushes rather than pulls.

The exact world checks take a ``clearance`` in metres (default 0: touching suffices): the
robot keeps it from walls and boxes (:func:`opens_route`, :func:`push_plan_valid`) and the
placed box from walls and other boxes (:func:`world_valid`).

Inputs: ``scene`` is a file's arrays, as ``dict(np.load(path))`` (masks uint8 0/255 at the
file's size ``F``, in the convention its ``image_convention`` names: 1 for the planner's,
:class:`goalgen.data.geometry.NamoFrame`; absent or 0 for :mod:`goalgen.data.geometry`'s);
samples are K masks ``(K, S, S)`` (non-zero = set) at any resolution ``S``, in the same
convention, e.g. a model's at its ``image_size``. Outputs are per-scene numbers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import shapely

from goalgen.data import geometry as geo
from goalgen.data.frames import Frame, frame_of
from goalgen.data.pack import resize_masks
from goalgen.data.scenes import SCENE_KEYS
from goalgen.eval.metrics import THRESHOLD, SceneMasks, invalid_reason

NEAR_SLACK = 0.05  # share of the world width a push may exceed the nearest feasible one's
YAW_TOLERANCE = np.deg2rad(7.5)  # half a yaw step of the pose search
_ANGLES = np.deg2rad(np.arange(0.0, 90.0, 0.5))  # rectangle fits repeat every quarter turn
RANDOM_TRIES = 200
_EPS = 1e-9  # metres: rounding slack of distance comparisons
SEGMENT_KINDS = ("slide", "turn")
SEGMENT_KEYS = ("kind", "box_start", "box_end", "robot_start", "robot_end")
PLAN_POSITION_PIXELS = 0.75  # push plans chain within this share of the file's pixel...
PLAN_MIN_POSITION = 0.01  # ... or these metres, whichever is larger
PLAN_YAW_TOLERANCE = np.deg2rad(3.0)
PLAN_TURN_STEP = np.deg2rad(1.0)  # yaw step of a turn's swept area
PLAN_CONTACT_SLACK = 0.002  # m the robot may stand inside its free space's border (contact)
PLAN_PUSH_REACH = 0.005  # m beyond robot_radius + clearance the robot may push from
FEASIBLE_KEYS = ("feasible_poses", "feasible_push", "push_field", "push_field_step")

Scene = Mapping[str, np.ndarray]


def _require(scene: Scene) -> None:
    missing = [k for k in FEASIBLE_KEYS if k not in scene]
    if missing:
        raise KeyError(
            f"scene has no stored feasible set (missing {', '.join(missing)}): near metrics "
            "need maze files (goalgen-synth --family maze)"
        )


def _box(scene: Scene) -> np.ndarray:
    """The selected box ``(5,)`` ``(cx, cy, w, h, theta)`` where it stands."""
    return np.asarray(scene["movable_boxes"], dtype=np.float64)[int(scene["target_index"])]


def world_side(scene: Scene) -> float:
    """Width in metres of the square world the masks cover."""
    x0, _, x1, _ = (float(v) for v in scene["world_bounds"])
    return x1 - x0


def _frame(scene: Scene) -> Frame:
    """The scene's image convention at the file's resolution
    (:func:`goalgen.data.frames.frame_of`)."""
    bounds = [float(v) for v in np.asarray(scene["world_bounds"]).reshape(-1)]
    convention = int(np.asarray(scene.get("image_convention", 0)))
    return frame_of(convention, bounds, scene["target_object"].shape[-1])


def pixels_to_world(scene: Scene, rc: np.ndarray, size: int) -> np.ndarray:
    """Continuous pixel coordinates ``(..., 2)`` ``(row, col)`` of a ``(size, size)`` mask ->
    world ``(..., 2)`` ``(x, y)``, in the scene's image convention: a pixel of an area-pooled
    mask stands for the mean of the file pixels it pools (in either convention)."""
    frame = _frame(scene)
    rc = np.asarray(rc, dtype=np.float64)
    return frame.pixel_to_world((rc + 0.5) * (frame.size / size) - 0.5)


def sample_poses(scene: Scene, samples: np.ndarray) -> np.ndarray:
    """World poses ``(K, 3)`` ``(x, y, yaw)`` of masks ``(K, S, S)``: the centroid, and the yaw
    of the minimum-area rectangle around the pixels (searched in ``_ANGLES``) with its sides
    matched to the selected box's ``w`` and ``h``, in (-pi/2, pi/2]; NaN rows for empty
    masks."""
    samples = np.asarray(samples) != 0
    w, h = _box(scene)[2:4]
    out = np.full((len(samples), 3), np.nan)
    axes = np.stack([np.cos(_ANGLES), np.sin(_ANGLES)])  # (2, A)
    for i, mask in enumerate(samples):
        rc = np.argwhere(mask)
        if len(rc) == 0:
            continue
        xy = pixels_to_world(scene, rc, mask.shape[-1])
        mean = xy.mean(0)
        u, v = (xy - mean) @ axes, (xy - mean) @ np.stack([-axes[1], axes[0]])
        a, b = np.ptp(u, axis=0), np.ptp(v, axis=0)
        j = int(np.argmin(a * b))
        swapped = abs(a[j] - h) + abs(b[j] - w) < abs(a[j] - w) + abs(b[j] - h)
        out[i] = (*mean, wrap_yaw(_ANGLES[j] + swapped * np.pi / 2))
    return out


def wrap_yaw(theta: np.ndarray | float) -> np.ndarray:
    """A box's yaw modulo a half turn, in (-pi/2, pi/2]."""
    return np.pi / 2 - np.mod(np.pi / 2 - np.asarray(theta, dtype=np.float64), np.pi)


def _yaw_gap(a: np.ndarray, b: np.ndarray, period: float) -> np.ndarray:
    d = np.mod(np.asarray(a) - np.asarray(b), period)
    return np.minimum(d, period - d)


def _pixel(scene: Scene, size: int | None) -> float:
    """Side in metres of a pixel of a ``(size, size)`` mask (None: the file's)."""
    return world_side(scene) / (size or scene["target_object"].shape[-1])


def _yaw_tolerance(scene: Scene, size: int | None) -> tuple[float, float]:
    """``(tolerance, period)`` for comparing a fitted yaw with a pose's: ``YAW_TOLERANCE`` plus
    the angle a pixel subtends across the box's short side; a quarter turn when the sides
    differ by less than a pixel (the mask cannot tell them apart), else a half turn."""
    w, h = _box(scene)[2:4]
    pixel = _pixel(scene, size)
    period = np.pi / 2 if abs(w - h) < pixel else np.pi
    return YAW_TOLERANCE + float(np.arctan(pixel / min(w, h))), period


def push_distance(scene: Scene, poses: np.ndarray, size: int | None = None) -> np.ndarray:
    """Geodesic push distance in metres ``(K,)`` to poses ``(K, 3)`` (inf where the box cannot
    slide there within the stored field, NaN poses included), from the scene's push field:
    the least value within half a pixel of a ``(size, size)`` mask (``size`` None: the
    file's) of each centre, over the yaw steps within the yaw tolerance of its yaw."""
    _require(scene)
    field = np.asarray(scene["push_field"])
    steps, n = field.shape[0], field.shape[-1]
    unit = np.where(field == np.iinfo(np.uint16).max, np.inf, field * 0.01)
    step, box = float(scene["push_field_step"]), _box(scene)
    radius = max(0, int(np.floor(0.5 * _pixel(scene, size) / step)))
    tolerance, period = _yaw_tolerance(scene, size)
    yaws = box[4] + np.arange(steps) * np.pi / steps
    out = np.full(len(poses), np.inf)
    for i, (x, y, yaw) in enumerate(np.asarray(poses, dtype=np.float64).reshape(-1, 3)):
        if not np.isfinite([x, y, yaw]).all():
            continue
        a, b = int(round((y - box[1]) / step)) + n // 2, int(round((x - box[0]) / step)) + n // 2
        rows = slice(min(max(a - radius, 0), n), min(max(a + radius + 1, 0), n))
        cols = slice(min(max(b - radius, 0), n), min(max(b + radius + 1, 0), n))
        ks = np.flatnonzero(_yaw_gap(yaws, yaw, period) <= tolerance + 1e-9)
        window = unit[ks, rows, cols]
        out[i] = window.min() if window.size else np.inf
    return out


def feasible_distance(scene: Scene, poses: np.ndarray, size: int | None = None) -> np.ndarray:
    """Distance ``(K,)`` from poses ``(K, 3)`` to the nearest stored feasible pose:
    ``|dxy| + r * |dyaw|`` in metres, ``r`` half the box's diagonal, yaws compared modulo the
    period a ``(size, size)`` mask can resolve (NaN poses: inf)."""
    _require(scene)
    feasible = np.asarray(scene["feasible_poses"], dtype=np.float64).reshape(-1, 3)
    box = _box(scene)
    _, period = _yaw_tolerance(scene, size)
    poses = np.asarray(poses, dtype=np.float64).reshape(-1, 3)
    d = np.linalg.norm(poses[:, None, :2] - feasible[None, :, :2], axis=-1)
    d = d + np.hypot(box[2], box[3]) / 2 * _yaw_gap(poses[:, None, 2], feasible[None, :, 2], period)
    best = d.min(1) if len(feasible) else np.full(len(poses), np.inf)
    return np.where(np.isfinite(poses).all(1), best, np.inf)


def _near_feasible(scene: Scene, poses: np.ndarray, size: int | None) -> np.ndarray:
    """``(K, P)`` bool: is pose k within one pixel (or one lattice step) and the yaw tolerance
    of stored feasible pose p?"""
    _require(scene)
    feasible = np.asarray(scene["feasible_poses"], dtype=np.float64).reshape(-1, 3)
    step = float(scene.get("feasible_lattice_step", 0.0))
    reach = max(_pixel(scene, size), step)
    tolerance, period = _yaw_tolerance(scene, size)
    poses = np.asarray(poses, dtype=np.float64).reshape(-1, 3)
    near = np.linalg.norm(poses[:, None, :2] - feasible[None, :, :2], axis=-1) <= reach
    near &= _yaw_gap(poses[:, None, 2], feasible[None, :, 2], period) <= tolerance
    return near & np.isfinite(poses).all(1)[:, None]


def in_feasible(scene: Scene, poses: np.ndarray, size: int | None = None) -> np.ndarray:
    """``(K,)`` bool: is each pose ``(K, 3)`` within one pixel of a ``(size, size)`` mask (or one
    feasible lattice step, whichever is larger) and the yaw tolerance of a feasible pose?"""
    return _near_feasible(scene, poses, size).any(1)


def modes_covered(scene: Scene, poses: np.ndarray, size: int | None = None) -> int:
    """How many of the scene's modes (``feasible_mode``) have a feasible pose that some pose
    ``(K, 3)`` lands on (:func:`in_feasible`)."""
    hit = _near_feasible(scene, poses, size).any(0)
    if "feasible_mode" not in scene:
        return int(hit.any())
    return int(len(np.unique(np.asarray(scene["feasible_mode"])[hit])))


def half_width(scene: Scene) -> float:
    """Half the selected box's short side, in metres: the unit of ``best_feasible_distance_hw``."""
    return float(min(_box(scene)[2:4])) / 2


def scene_family(scene: Scene) -> str:
    """The family of a scene file's arrays: ``arena`` (a small grid world, ``arena_side``),
    ``maze`` (grid maze with a feasible set), ``rooms`` (world geometry in
    :mod:`goalgen.data.geometry`'s convention), ``planner`` (geometry in the planner's
    convention, e.g. ``goalgen-render``), or ``no_geometry`` (masks only)."""
    if "arena_side" in scene:
        return "arena"
    if "grid_size" in scene or "deletion_rate" in scene:
        return "maze"
    if "movable_boxes" in scene and "world_bounds" in scene:
        return "planner" if int(np.asarray(scene.get("image_convention", 0))) == 1 else "rooms"
    return "no_geometry"


def has_feasible_set(scene: Scene) -> bool:
    """Does the scene store what the near metrics need (:data:`FEASIBLE_KEYS`)?"""
    return all(k in scene for k in FEASIBLE_KEYS) and "movable_boxes" in scene


def has_world_boxes(scene: Scene) -> bool:
    """Does the scene store the selected box and world bounds (for :func:`random_local`)?"""
    return all(k in scene for k in ("movable_boxes", "target_index", "world_bounds"))


def has_world_geometry(scene: Scene) -> bool:
    """Does the scene store what the exact world checks (:func:`world_valid`,
    :func:`opens_route`) need: the boxes, the walls, the robot, its goal and its radius?"""
    keys = ("static_walls", "robot_pose", "goal_pose", "robot_radius")
    return has_world_boxes(scene) and all(k in scene for k in keys)


def scene_masks(scene: Scene, size: int) -> SceneMasks:
    """The scene's masks area-resized to ``(size, size)`` as :mod:`goalgen.eval.metrics` checks
    them (with the ground truth and the world geometry)."""
    masks = np.stack([np.asarray(scene[k], dtype=np.float32) / 255.0 for k in SCENE_KEYS])
    masks = resize_masks(np.ascontiguousarray(masks), size)
    geometry = {"world_bounds": scene["world_bounds"], "robot_radius": scene["robot_radius"]}
    return SceneMasks.from_soft(masks[:5], masks[5], geometry)


def opens_route(scene: Scene, poses: np.ndarray, clearance: float = 0.0) -> np.ndarray:
    """``(K,)`` bool: with the selected box moved to each pose ``(K, 3)``, does the robot, of
    its true ``robot_radius`` plus ``clearance`` metres, reach its goal? NaN poses: False.

    Judged exactly on the world geometry with shapely, independently of the proposals' grid
    check (:class:`goalgen.infer.verify.ReachGrid`): the robot's free space is the world square
    less every wall (``static_walls``) and other box grown by the robot's radius plus
    ``clearance`` (the Minkowski sum with its disk, arcs as 64-gons: within 0.2 mm of the
    circle); the route is open when the robot's centre and its goal lie in one piece of it
    (within ``clearance`` of it: the robot may start and end closer than that to a wall) once
    the moved box, grown alike, is taken away too, and the box keeps that grown radius from
    both. (Drawn at the file's resolution instead, a 5 cm pixel in an 11 m maze, gaps up to a
    pixel narrower than the robot pass.)"""
    grow = float(scene["robot_radius"]) + clearance
    free = _world(scene).difference(_grown(_fixed_boxes(scene), grow))
    start, goal = (
        shapely.Point(*np.asarray(scene[k], float)[:2]) for k in ("robot_pose", "goal_pose")
    )
    w, h = _box(scene)[2:4]
    out = np.zeros(len(poses), dtype=bool)
    for i, (x, y, yaw) in enumerate(np.asarray(poses, dtype=np.float64).reshape(-1, 3)):
        if not np.isfinite([x, y, yaw]).all():
            continue
        placed = _box_polygon(np.array([x, y, w, h, yaw]))
        if min(placed.distance(start), placed.distance(goal)) < grow:
            continue
        space = free.difference(placed.buffer(grow, 16))
        out[i] = any(
            p.distance(start) <= clearance and p.distance(goal) <= clearance
            for p in _pieces(space)
            if not p.is_empty
        )
    return out


def world_valid(scene: Scene, poses: np.ndarray, clearance: float = 0.0) -> np.ndarray:
    """``(K,)`` bool: does the selected box at each pose ``(K, 3)`` lie inside the world square
    and overlap no wall and no other box, and with ``clearance`` > 0 keep at least that many
    metres from each (shapely distance)? Exact polygons (shapely; touching counts as overlap),
    independently of the proposals' separating-axis test. NaN poses: False. The route check
    (:func:`opens_route`) covers the robot and its goal."""
    fixed = shapely.union_all([_box_polygon(b) for b in _fixed_boxes(scene)])
    world = _world(scene)
    w, h = _box(scene)[2:4]
    out = np.zeros(len(poses), dtype=bool)
    for i, (x, y, yaw) in enumerate(np.asarray(poses, dtype=np.float64).reshape(-1, 3)):
        if np.isfinite([x, y, yaw]).all():
            placed = _box_polygon(np.array([x, y, w, h, yaw]))
            out[i] = world.contains(placed) and not placed.intersects(fixed)
            if out[i] and clearance > 0 and not fixed.is_empty:
                out[i] = placed.distance(fixed) >= clearance - _EPS
    return out


def _fixed_boxes(scene: Scene) -> np.ndarray:
    """``(B, 5)``: the walls (``static_walls``) and every movable box but the selected one."""
    if "static_walls" not in scene:
        raise KeyError("scene has no static_walls: exact checks need maze files' geometry")
    boxes = np.asarray(scene["movable_boxes"], dtype=np.float64).reshape(-1, 5)
    others = np.delete(boxes, int(scene["target_index"]), axis=0)
    walls = np.asarray(scene["static_walls"], dtype=np.float64).reshape(-1, 5)
    return np.concatenate([walls, others])


def _box_polygon(box: np.ndarray) -> shapely.Polygon:
    """The rotated box ``(cx, cy, w, h, yaw)`` as a shapely polygon."""
    return shapely.Polygon(geo.box_corners(*(float(v) for v in box)))


def _grown(boxes: np.ndarray, grow: float) -> shapely.Geometry:
    """The union of boxes ``(B, 5)`` each grown by ``grow`` metres (arcs as 64-gons)."""
    return shapely.union_all([_box_polygon(b).buffer(grow, 16) for b in boxes])


def _world(scene: Scene) -> shapely.Polygon:
    """The world square ``world_bounds`` as a polygon."""
    return shapely.box(*(float(v) for v in np.asarray(scene["world_bounds"]).reshape(-1)))


def _pieces(geometry: shapely.Geometry) -> list[shapely.Geometry]:
    """The parts of a (multi-)polygon."""
    return list(getattr(geometry, "geoms", [geometry]))


# ----------------------------------------------------------------------------- push plans
@dataclass(frozen=True)
class _Segment:
    """One parsed push-plan segment (see :func:`push_plan_reasons`)."""

    kind: str
    box_start: np.ndarray  # (3,) x, y, yaw
    box_end: np.ndarray  # (3,)
    robot_start: np.ndarray  # (2,) x, y
    robot_end: np.ndarray  # (2,)


@dataclass(frozen=True)
class _PlanWorld:
    """What judging one scene's push plans needs, built once per scene."""

    box: np.ndarray  # (5,) the selected box where it stands
    radius: float  # robot_radius
    clearance: float
    world: shapely.Polygon
    fixed: shapely.Geometry  # walls and other boxes
    free: shapely.Geometry  # world less ``fixed`` grown by radius + clearance
    robot: np.ndarray  # (2,) robot_pose's position
    position_tolerance: float
    period: float  # the box's symmetry: pi/2 for a square, else pi

    def polygon(self, pose: np.ndarray) -> shapely.Polygon:
        """The selected box at ``pose`` ``(x, y, yaw)``."""
        return _box_polygon(np.array([pose[0], pose[1], *self.box[2:4], pose[2]]))

    def same_pose(self, a: np.ndarray, b: np.ndarray) -> bool:
        """Are poses ``(3,)`` ``a`` and ``b`` equal within the plan tolerances?"""
        close = np.hypot(*(a[:2] - b[:2])) <= self.position_tolerance
        return bool(close and _yaw_gap(a[2], b[2], self.period) <= PLAN_YAW_TOLERANCE + _EPS)


def _plan_world(scene: Scene, clearance: float) -> _PlanWorld:
    box = _box(scene)
    radius = float(scene["robot_radius"])
    fixed_boxes = _fixed_boxes(scene)
    world = _world(scene)
    pixel = _pixel(scene, None) if "target_object" in scene else 0.0
    return _PlanWorld(
        box=box,
        radius=radius,
        clearance=float(clearance),
        world=world,
        fixed=shapely.union_all([_box_polygon(b) for b in fixed_boxes]),
        free=world.difference(_grown(fixed_boxes, radius + clearance)),
        robot=np.asarray(scene["robot_pose"], dtype=np.float64)[:2],
        position_tolerance=max(PLAN_POSITION_PIXELS * pixel, PLAN_MIN_POSITION),
        period=np.pi / 2 if abs(box[2] - box[3]) <= _EPS else np.pi,
    )


def _parse_segment(segment: Mapping[str, Any]) -> _Segment:
    """A segment dict as :class:`_Segment`; ValueError when malformed."""
    if not isinstance(segment, Mapping):
        raise ValueError(f"not a mapping: {type(segment).__name__}")
    missing = [k for k in SEGMENT_KEYS if k not in segment]
    if missing:
        raise ValueError(f"missing {', '.join(missing)}")
    if segment["kind"] not in SEGMENT_KINDS:
        raise ValueError(f"kind {segment['kind']!r} is neither slide nor turn")
    parts = {}
    for key, n in (("box_start", 3), ("box_end", 3), ("robot_start", 2), ("robot_end", 2)):
        value = np.asarray(segment[key], dtype=np.float64).reshape(-1)
        if value.shape != (n,) or not np.isfinite(value).all():
            raise ValueError(f"{key} is not {n} finite numbers")
        parts[key] = value
    return _Segment(kind=str(segment["kind"]), **parts)


def _swept_box(pw: _PlanWorld, seg: _Segment) -> shapely.Geometry:
    """The area the box covers during the segment: the convex hull of its start and end for
    a slide; for a turn, the union of the box at its start's centre at yaws every
    ``PLAN_TURN_STEP`` from box_start's yaw to box_end's (unwrapped: the sign and size of
    ``end - start`` is the turn)."""
    if seg.kind == "slide":
        return shapely.union(pw.polygon(seg.box_start), pw.polygon(seg.box_end)).convex_hull
    turn = seg.box_end[2] - seg.box_start[2]
    yaws = seg.box_start[2] + np.linspace(0.0, turn, int(np.ceil(abs(turn) / PLAN_TURN_STEP)) + 1)
    x, y = seg.box_start[:2]
    return shapely.union_all([pw.polygon(np.array([x, y, yaw])) for yaw in yaws])


def _reachable(
    pw: _PlanWorld, box_pose: np.ndarray, before: np.ndarray, at: np.ndarray, slack: float = 0.0
) -> bool:
    """Can the robot go from ``before`` ``(2,)`` to ``at`` ``(2,)`` with the selected box at
    ``box_pose``? One free piece must lie within ``PLAN_CONTACT_SLACK`` of ``at`` (the robot
    stands in contact, a hair inside the grown box) and of ``before``, plus as deep as
    ``before`` lies inside the box grown by the robot's radius (after a turn the robot stands
    where it pushed from while the box turned into that spot), plus ``slack`` (the robot's
    start may lie within the clearance of a wall)."""
    box = pw.polygon(box_pose)
    space = pw.free.difference(box.buffer(pw.radius, 16))
    start, end = shapely.Point(*before), shapely.Point(*at)
    slack += PLAN_CONTACT_SLACK + max(0.0, pw.radius - box.distance(start))
    return any(
        piece.distance(start) <= slack and piece.distance(end) <= PLAN_CONTACT_SLACK
        for piece in _pieces(space)
        if not piece.is_empty
    )


def _turns_that_way(pw: _PlanWorld, seg: _Segment) -> bool:
    """Does a push from ``robot_start`` on the box side nearest to it (inwards, along that
    side's normal) turn the box the way the segment turns it (the sign of its torque about
    the box's centre)?"""
    c, s = np.cos(seg.box_start[2]), np.sin(seg.box_start[2])
    u, v = np.array([c, s]), np.array([-s, c])
    arm = seg.robot_start - seg.box_start[:2]
    half_w, half_h = pw.box[2] / 2, pw.box[3] / 2
    beyond_u, beyond_v = abs(arm @ u) - half_w, abs(arm @ v) - half_h
    normal = np.sign(arm @ u) * u if beyond_u >= beyond_v else np.sign(arm @ v) * v
    push = -normal
    torque = arm[0] * push[1] - arm[1] * push[0]
    return bool(torque * (seg.box_end[2] - seg.box_start[2]) > 0)


def _segment_reason(
    pw: _PlanWorld, seg: _Segment, robot_before: np.ndarray, slack: float = 0.0
) -> str | None:
    """Why one chained segment is no valid push (checks b to d of :func:`push_plan_reasons`),
    or None. ``slack``: how far outside the free space ``robot_before`` may lie."""
    tol = pw.position_tolerance
    if seg.kind == "slide":
        if _yaw_gap(seg.box_start[2], seg.box_end[2], pw.period) > PLAN_YAW_TOLERANCE + _EPS:
            return "a slide turns the box"
        shift = seg.box_end[:2] - seg.box_start[:2]
        if np.hypot(*(seg.robot_end - seg.robot_start - shift)) > tol:
            return "robot_end is not robot_start plus the box's displacement"
    else:
        if np.hypot(*(seg.box_end[:2] - seg.box_start[:2])) > tol:
            return "a turn moves the box's centre"
        if np.hypot(*(seg.robot_end - seg.robot_start)) > tol:
            return "the robot moves during a turn"
    swept = _swept_box(pw, seg)
    if not pw.world.contains(swept):
        return "the box leaves the world"
    if swept.intersects(pw.fixed):
        return "the box's sweep hits a wall or another box"
    if not _reachable(pw, seg.box_start, robot_before, seg.robot_start, slack):
        return "the robot cannot reach robot_start"
    box = pw.polygon(seg.box_start)
    robot = shapely.Point(*seg.robot_start)
    if box.distance(robot) > pw.radius + pw.clearance + PLAN_PUSH_REACH:
        return "robot_start is not at the box"
    if seg.kind == "turn":
        if box.contains(robot):
            return "robot_start is inside the box"
        return None if _turns_that_way(pw, seg) else "the push turns the box the other way"
    shift = seg.box_end[:2] - seg.box_start[:2]
    length = float(np.hypot(*shift))
    if length > _EPS:
        far = box.distance(robot) + float(np.hypot(*pw.box[2:4])) + 1.0
        ray = shapely.LineString([seg.robot_start, seg.robot_start + shift / length * far])
        if not ray.intersects(box):
            return "the robot pulls: robot_start is not behind the box"
    path = shapely.LineString([seg.robot_start, seg.robot_end]) if length > _EPS else robot
    if path.buffer(pw.radius, 16).intersects(pw.fixed):
        return "the robot's path hits a wall or another box"
    return None


def _plan_reason(pw: _PlanWorld, pose: np.ndarray, plan: Sequence[Mapping[str, Any]]) -> str | None:
    current = pw.box[[0, 1, 4]]
    if not np.isfinite(pose).all():
        return "pose not finite"
    if len(plan) == 0:
        return None if pw.same_pose(current, pose) else "empty plan for a pose that moves the box"
    box_at, robot_at = current, pw.robot
    for i, raw in enumerate(plan):
        try:
            seg = _parse_segment(raw)
        except (TypeError, ValueError) as error:
            return f"segment {i}: malformed ({error})"
        if not pw.same_pose(seg.box_start, box_at):
            where = "the box's current pose" if i == 0 else f"segment {i - 1}'s box_end"
            return f"segment {i} ({seg.kind}): box_start is not {where}"
        reason = _segment_reason(pw, seg, robot_at, pw.clearance if i == 0 else 0.0)
        if reason is not None:
            return f"segment {i} ({seg.kind}): {reason}"
        box_at, robot_at = seg.box_end, seg.robot_end
    if not pw.same_pose(box_at, pose):
        return "the last segment does not end at the pose"
    return None


def push_plan_reasons(
    scene: Scene,
    poses: np.ndarray,
    plans: Sequence[Sequence[Mapping[str, Any]]],
    clearance: float = 0.0,
) -> list[str | None]:
    """Why each push plan fails to bring the selected box to its pose, or None where it does.

    Judged on the world geometry with shapely, independently of the planner that made the
    plans (:mod:`goalgen.infer`). ``poses`` ``(K, 3)`` ``(x, y, yaw)``; ``plans``: K plans,
    each a list of segment dicts ``{"kind": "slide" | "turn", "box_start": [x, y, yaw],
    "box_end": [x, y, yaw], "robot_start": [x, y], "robot_end": [x, y]}`` (metres, radians;
    yaws unwrapped: a turn sweeps from box_start's yaw to box_end's). A slide translates the
    box at constant yaw while the robot (a disk of ``robot_radius``) pushes from robot_start
    and ends at robot_start plus the box's displacement; a turn turns it in place about its
    centre, the robot pushing from robot_start and staying there. An empty plan leaves the
    box in place: valid only for its current pose. A plan is valid when

    a. it chains: segment 0 starts at the box's current pose, each segment where the last
       ended, and the last ends at the pose (positions within ``PLAN_POSITION_PIXELS`` of the
       file's pixel or ``PLAN_MIN_POSITION`` metres, whichever is larger; yaws within
       ``PLAN_YAW_TOLERANCE`` modulo the box's symmetry, a quarter turn for a square, else
       a half turn);
    b. the box's sweep (a slide: the convex hull of its start and end; a turn: its union at
       yaws every ``PLAN_TURN_STEP``) stays inside the world square and touches no wall and
       no other box;
    c. the robot can get from where it stood (``robot_pose`` for segment 0, the previous
       robot_end after) to robot_start: one piece of the world less the walls and other boxes
       grown by ``robot_radius + clearance`` and less the box at box_start grown by
       ``robot_radius`` holds both, each within ``PLAN_CONTACT_SLACK`` (it stands in contact;
       where it stood may also lie as deep inside the grown box as it overlaps the box: after
       a turn it stands where it pushed from while the box turned into that spot; and
       ``robot_pose`` within the clearance: the robot may start closer than that to a wall);
    d. it pushes: robot_start is within ``robot_radius + clearance + PLAN_PUSH_REACH`` of the
       box at box_start; for a slide the ray from robot_start along the box's motion hits the
       box (the robot is behind it) and the robot's sweep (robot_start to robot_end grown by
       ``robot_radius``) touches no wall or other box; for a turn robot_start is outside the
       box, and a push from it on the nearest side, inwards, turns the box the segment's way
       (the sign of its torque about the centre).

    Returns K reasons, e.g. ``"segment 1 (slide): the robot pulls: ..."``.
    """
    poses = np.asarray(poses, dtype=np.float64).reshape(-1, 3)
    if len(plans) != len(poses):
        raise ValueError(f"{len(plans)} plans for {len(poses)} poses")
    pw = _plan_world(scene, clearance)
    return [_plan_reason(pw, pose, plan) for pose, plan in zip(poses, plans, strict=True)]


def push_plan_valid(
    scene: Scene,
    poses: np.ndarray,
    plans: Sequence[Sequence[Mapping[str, Any]]],
    clearance: float = 0.0,
) -> np.ndarray:
    """``(K,)`` bool: does each plan push the selected box to its pose ``(K, 3)``
    (:func:`push_plan_reasons` finds nothing)?"""
    return np.array([r is None for r in push_plan_reasons(scene, poses, plans, clearance)], bool)


def plan_length(scene: Scene, plan: Sequence[Mapping[str, Any]]) -> float:
    """The push distance of a plan (segments as :func:`push_plan_reasons` reads them), in the
    push field's units: metres the box's centre slides, plus, per turn, the arc a corner
    travels (half the box's diagonal times the angle)."""
    half_diagonal = float(np.hypot(*_box(scene)[2:4])) / 2
    total = 0.0
    for segment in plan:
        a, b = np.asarray(segment["box_start"], float), np.asarray(segment["box_end"], float)
        if segment["kind"] == "turn":
            total += half_diagonal * abs(float(b[2] - a[2]))
        else:
            total += float(np.hypot(*(b[:2] - a[:2])))
    return total


def _poses_and_size(
    scene: Scene, samples: np.ndarray, poses: np.ndarray | None
) -> tuple[np.ndarray, int | None]:
    """The samples' poses ``(K, 3)`` and the mask size their pose tolerances use: fitted to
    the masks at their size, or ``poses`` as given (exact: the file's resolution)."""
    if poses is None:
        return sample_poses(scene, samples), samples.shape[-1]
    poses = np.asarray(poses, dtype=np.float64).reshape(-1, 3)
    if len(poses) != len(samples):
        raise ValueError(f"{len(poses)} poses for {len(samples)} samples")
    return poses, None


def success_near(
    scene: Scene,
    samples: np.ndarray,
    slack: float = NEAR_SLACK,
    masks: SceneMasks | None = None,
    poses: np.ndarray | None = None,
    clearance: float = 0.0,
    planned: np.ndarray | None = None,
) -> np.ndarray:
    """``(K,)`` bool: is each sample ``(K, S, S)`` valid at its resolution
    (:func:`goalgen.eval.metrics.invalid_reason`), does its pose open the route
    (:func:`opens_route`) and is its push at most ``feasible_push[0] + slack * world width``?
    ``masks``: the scene at ``S`` (:func:`scene_masks`), if already built. ``poses``: the
    samples' exact world poses ``(K, 3)`` where known (proposals: judged where the planner
    would put the box, not where a pose fitted to their ``S``-px footprint lands): valid
    when the box there is clear of the world's walls and boxes (:func:`world_valid`; its
    ``S``-px footprint may gain a pixel of area or touch a wall's pixel 1 cm away), with the
    push read within half a pixel of the file rather than of the samples. ``clearance``:
    metres the robot keeps from walls and boxes on its route (:func:`opens_route`) and, with
    ``poses``, the placed box from walls and other boxes (:func:`world_valid`); 0 (default):
    touching suffices. ``planned`` ``(K,)``: the length (:func:`plan_length`) of each
    sample's own push plan that :func:`push_plan_valid` accepts (inf: none); the push is the
    shorter of that and the file's field, whose robot keeps the generator's margin (5 cm in
    mazes) from walls: a plan the judge accepts at a smaller clearance proves a push the
    field cannot see."""
    _require(scene)
    samples = np.asarray(samples) != 0
    size = samples.shape[-1]
    limit = float(np.asarray(scene["feasible_push"])[0]) + slack * world_side(scene)
    exact = poses is not None
    poses, tolerance_size = _poses_and_size(scene, samples, poses)
    push = push_distance(scene, poses, tolerance_size)
    if planned is not None:
        push = np.minimum(push, np.asarray(planned, dtype=np.float64))
    near = push <= limit + 1e-9
    if exact:
        valid = world_valid(scene, poses, clearance)
    else:
        masks = masks or scene_masks(scene, size)
        valid = np.array([invalid_reason(s, masks) is None for s in samples], dtype=bool)
    out = valid & near
    out[out] = opens_route(scene, poses[out], clearance)
    return out


def score_near(
    scene: Scene,
    samples: np.ndarray,
    slack: float = NEAR_SLACK,
    masks: SceneMasks | None = None,
    poses: np.ndarray | None = None,
    clearance: float = 0.0,
    near_success: np.ndarray | None = None,
) -> dict[str, float]:
    """Per-scene near metrics of samples ``(K, S, S)``: ``success_near_at_1``,
    ``success_near_at_k``, ``success_near_rate`` (share of samples), ``in_feasible_at_k``,
    ``in_feasible_rate``, ``best_feasible_distance_m`` (the sample nearest to a stored
    feasible pose; NaN if every mask is empty, so :func:`goalgen.eval.metrics.aggregate`
    skips the scene), the same in box half-widths (``best_feasible_distance_hw``,
    :func:`half_width`; an all-empty set counts as infinitely far) and
    ``within_half_width_at_k`` (best distance <= 1 half-width), ``modes_covered``
    (:func:`modes_covered`) and ``modes_covered_share`` (of the scene's modes),
    ``nearest_push_m`` (the ground truth's push) and ``feasible_poses`` / ``modes`` (the
    scene's counts). ``masks``: the scene at ``S`` (:func:`scene_masks`); ``poses``: exact
    world poses of the samples and ``clearance`` the judge's (:func:`success_near`);
    ``near_success``: the samples' :func:`success_near` verdicts ``(K,)``, if already judged."""
    _require(scene)
    samples = np.asarray(samples) != 0
    near = near_success
    if near is None:
        near = success_near(scene, samples, slack, masks, poses, clearance)
    poses, size = _poses_and_size(scene, samples, poses)
    inside = in_feasible(scene, poses, size)
    best = feasible_distance(scene, poses, size).min()
    covered = modes_covered(scene, poses, size)
    modes = float(scene["num_modes"]) if "num_modes" in scene else float("nan")
    return {
        "success_near_at_1": float(near[0]),
        "success_near_at_k": float(near.any()),
        "success_near_rate": float(near.mean()),
        "in_feasible_at_k": float(inside.any()),
        "in_feasible_rate": float(inside.mean()),
        "best_feasible_distance_m": float(best) if np.isfinite(best) else float("nan"),
        "best_feasible_distance_hw": float(best) / half_width(scene)
        if np.isfinite(best)
        else float("nan"),
        "within_half_width_at_k": float(best <= half_width(scene)),
        "modes_covered": float(covered),
        "modes_covered_share": covered / modes if modes > 0 else float("nan"),
        "nearest_push_m": float(np.asarray(scene["feasible_push"])[0]),
        "feasible_poses": float(len(scene["feasible_push"])),
        "modes": modes,
    }


def random_local(
    scene: Scene, k: int, rng: np.random.Generator, size: int | None = None
) -> tuple[np.ndarray, int]:
    """Baseline: ``k`` random poses of the selected box, centre uniform in the disk of the push
    search radius around it and yaw uniform, each the first of ``RANDOM_TRIES`` draws that
    overlaps no wall, other box, robot or goal at the file's resolution; returns masks
    ``(k, S, S)`` bool (area-resized to ``size``, thresholded at 0.5) and how many found no
    collision-free pose (left in place)."""
    box = _box(scene)
    radius = float(scene.get("push_search_radius", 1.5))
    draw = _frame(scene).box_mask
    target = np.asarray(scene["target_object"]) != 0
    blocked = np.asarray(scene["static_objects_image"]) != 0
    blocked |= (np.asarray(scene["movable_objects_image"]) != 0) & ~target
    blocked |= (np.asarray(scene["robot_image"]) != 0) | (np.asarray(scene["goal_image"]) != 0)
    out, failed = [], 0
    for _ in range(k):
        for _ in range(RANDOM_TRIES):
            r, phi = radius * np.sqrt(rng.random()), rng.uniform(0, 2 * np.pi)
            pose = (box[0] + r * np.cos(phi), box[1] + r * np.sin(phi), *box[2:4])
            mask = draw(*pose, rng.uniform(-np.pi / 2, np.pi / 2))
            edge = mask[0].any() | mask[-1].any() | mask[:, 0].any() | mask[:, -1].any()
            if mask.any() and not edge and not (mask & blocked).any():
                break
        else:
            mask, failed = target, failed + 1
        out.append(mask)
    masks = np.array(out)
    if size is not None and size != masks.shape[-1]:
        masks = resize_masks(masks.astype(np.float32), size) >= THRESHOLD
    return masks, failed


def mode_counts(scene: Scene) -> dict[str, Any]:
    """``{"feasible_poses": P, "modes": M}`` of a scene with a stored feasible set."""
    _require(scene)
    return {"feasible_poses": int(len(scene["feasible_push"])), "modes": int(scene["num_modes"])}
