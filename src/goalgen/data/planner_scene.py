"""Planner scenes: a MuJoCo XML in namo_cpp's naming plus a JSON state -> world geometry -> the
five context masks, drawn in the planner's image convention (:class:`geometry.NamoFrame`).

Naming (the planner's): the geom ``robot`` is the robot (a disk of its ``geom_size[0]``);
``<site name="goal">`` is its goal; geoms whose name contains ``movable`` (one box geom per
body ``obstacle_N_movable``) are movable; walls (``wall*``) and every other collidable geom not
on the robot's body are static. Planes and height fields (the floor) and geoms that collide
with nothing are not drawn. Boxes are ``(cx, cy, w, h, theta)`` in metres and radians
(``w``, ``h`` = twice ``geom_size``); other static shapes are drawn as the box of their
``geom_aabb`` in their own frame (conservative).

Poses come from the compiled model after forward kinematics, so nested bodies, ``euler`` on
geoms and body offsets land where the simulator puts them. A JSON state (``{"robot":
{"position": [x, y, yaw]}, "objects": {name: {"position": [x, y, yaw], "quaternion": [w, x, y,
z]}}, "robot_goal": [x, y]}``) overrides them: ``position`` is the geom's world pose (its yaw
is used; the quaternion, scalar first, is not, as planners fill it in inconsistently). A body
on a free joint is moved through its ``qpos``, composed with the geom's local frame (namo_cpp
puts ``pos``/``euler`` on the geom and the body at the origin), so the whole body follows;
other geoms are placed directly.

Image (:class:`NamoFrame`): bounds = union of ``pos +- geom_size`` (not rotated) over static
and movable geoms, padded by ``min(0.1 * range, 0.2)`` m per axis; a square of side
``max(w, h)`` centred on them, ``size`` px (224). The robot is drawn as a disk of
``ROBOT_DRAWN`` m, the goal of ``GOAL_DRAWN`` m (the real radius is kept for checks).

Needs the optional ``mujoco`` package (``pip install goalgen[mujoco]``) for XML only.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from goalgen.data import geometry as geo
from goalgen.data.geometry import NamoFrame
from goalgen.data.scenes import SCENE_KEYS
from goalgen.data.synthetic.maze import GOAL_DRAWN, IMAGE_CONVENTION, ROBOT_DRAWN

MOVABLE_TAG = "movable"
ROBOT_GEOM = "robot"
GOAL_SITE = "goal"
MAX_LISTED = 12  # names listed in an error message


class PlannerSceneError(ValueError):
    """A planner scene that cannot be used; the message is one line naming the problem."""


def _listing(names: Sequence[str]) -> str:
    names = list(names)
    if not names:
        return "none"
    shown = ", ".join(names[:MAX_LISTED])
    return shown + (f", ... ({len(names)} in all)" if len(names) > MAX_LISTED else "")


# ----------------------------------------------------------------------------- frames
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


# ----------------------------------------------------------------------------- the scene
@dataclass
class WorldScene:
    """World geometry of one scene (metres, radians); boxes ``(cx, cy, w, h, theta)``."""

    static: np.ndarray  # (K, 5) walls and static obstacles
    movable: np.ndarray  # (M, 5) every movable box, the selected one included
    target_index: int  # the selected box: movable[target_index]
    robot_xy: np.ndarray  # (2,)
    robot_radius: float  # the real radius (checks use it)
    goal_xy: np.ndarray  # (2,)
    frame: Frame  # the image convention and resolution of the masks
    movable_names: tuple[str, ...] = ()
    static_names: tuple[str, ...] = ()
    robot_yaw: float = 0.0
    robot_mask_radius: float = ROBOT_DRAWN
    goal_mask_radius: float = GOAL_DRAWN
    source: str = ""
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # e.g. geometry_bounds

    @property
    def target(self) -> np.ndarray:
        return self.movable[self.target_index]

    @property
    def others(self) -> np.ndarray:
        """The movable boxes but the selected one ``(M - 1, 5)``."""
        return np.delete(self.movable, self.target_index, axis=0)

    @property
    def target_name(self) -> str:
        names = self.movable_names
        return names[self.target_index] if names else f"movable[{self.target_index}]"

    def check_inside(self) -> None:
        """Raise :class:`PlannerSceneError` if the robot, goal or a box leaves the image."""
        xmin, ymin, xmax, ymax = self.frame.bounds
        where = f"the scene bounds x [{xmin:.3f}, {xmax:.3f}], y [{ymin:.3f}, {ymax:.3f}]"
        for what, (x, y) in (("robot", self.robot_xy), ("goal", self.goal_xy)):
            if not (xmin <= x <= xmax and ymin <= y <= ymax):
                raise PlannerSceneError(
                    f"{self.source}: {what} at ({x:.3f}, {y:.3f}) is outside {where}"
                )
        ext = geo.box_extents(self.movable)
        out = np.flatnonzero(
            (ext[:, 0] < xmin) | (ext[:, 1] < ymin) | (ext[:, 2] > xmax) | (ext[:, 3] > ymax)
        )
        if len(out):
            i = int(out[0])
            name = self.movable_names[i] if self.movable_names else f"movable[{i}]"
            raise PlannerSceneError(
                f"{self.source}: object {name!r} at ({self.movable[i, 0]:.3f}, "
                f"{self.movable[i, 1]:.3f}) is outside {where}"
            )

    def context_masks(self, size: int | None = None) -> np.ndarray:
        """``(5, S, S)`` bool: robot, goal, movable, static, selected (``SCENE_KEYS`` order)."""
        frame = self.frame if size is None else self.frame.resized(size)
        empty = np.zeros((frame.size, frame.size), dtype=bool)

        def union(boxes: np.ndarray) -> np.ndarray:
            out = empty.copy()
            for box in boxes:
                out |= frame.box_mask(*box)
            return out

        return np.stack(
            [
                frame.disk_mask(self.robot_xy, self.robot_mask_radius),
                frame.disk_mask(self.goal_xy, self.goal_mask_radius),
                union(self.movable),
                union(self.static),
                frame.box_mask(*self.target),
            ]
        )

    def arrays(self, goal_box: Sequence[float] | None = None) -> dict[str, np.ndarray]:
        """The scene as ``.npz`` arrays: the masks (uint8 0/255; ``target_goal`` only with a
        ``goal_box``) and the world geometry under the ``maze`` family's keys, plus names."""
        masks = self.context_masks().astype(np.uint8) * np.uint8(255)
        out: dict[str, np.ndarray] = dict(zip(SCENE_KEYS[:5], masks, strict=True))
        f = np.float64
        if goal_box is not None:
            box = np.asarray(goal_box, dtype=f)
            out[SCENE_KEYS[5]] = self.frame.box_mask(*box).astype(np.uint8) * np.uint8(255)
            out["target_goal_box"] = box
        convention = IMAGE_CONVENTION if isinstance(self.frame, NamoFrame) else 0
        return (
            out
            | {
                "image_convention": np.array(convention, dtype=np.int64),
                "world_bounds": np.array(self.frame.bounds, dtype=f),
                "robot_pose": np.asarray(self.robot_xy, dtype=f),
                "robot_yaw": np.array(self.robot_yaw, dtype=f),
                "goal_pose": np.asarray(self.goal_xy, dtype=f),
                "robot_radius": np.array(self.robot_radius, dtype=f),
                "robot_mask_radius": np.array(self.robot_mask_radius, dtype=f),
                "goal_mask_radius": np.array(self.goal_mask_radius, dtype=f),
                "movable_boxes": np.asarray(self.movable, dtype=f).reshape(-1, 5),
                "target_index": np.array(self.target_index, dtype=np.int64),
                "static_walls": np.asarray(self.static, dtype=f).reshape(-1, 5),
                "movable_names": np.array(self.movable_names, dtype=np.str_),
                "static_names": np.array(self.static_names, dtype=np.str_),
                "source": np.array(self.source, dtype=np.str_),
            }
            | dict(self.extra)
        )

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], source: str = "") -> WorldScene | None:
        """The geometry stored in a scene file (``maze``/``rooms`` families, ``goalgen-render``),
        or None when the file has no world geometry."""
        needed = ("movable_boxes", "static_walls", "target_index", "robot_pose", "goal_pose")
        if not all(k in arrays for k in (*needed, "robot_radius", "world_bounds")):
            return None
        size = int(np.asarray(arrays[SCENE_KEYS[4]]).shape[-1])
        convention = int(np.asarray(arrays.get("image_convention", 0)))
        names = arrays.get("movable_names")

        def scalar(key: str, default: float) -> float:
            return float(np.asarray(arrays[key])) if key in arrays else default

        scene = cls(
            static=np.asarray(arrays["static_walls"], dtype=np.float64).reshape(-1, 5),
            movable=np.asarray(arrays["movable_boxes"], dtype=np.float64).reshape(-1, 5),
            target_index=int(np.asarray(arrays["target_index"])),
            robot_xy=np.asarray(arrays["robot_pose"], dtype=np.float64).reshape(-1)[:2],
            robot_radius=float(np.asarray(arrays["robot_radius"])),
            goal_xy=np.asarray(arrays["goal_pose"], dtype=np.float64).reshape(-1)[:2],
            frame=frame_of(convention, np.asarray(arrays["world_bounds"]).reshape(-1), size),
            movable_names=() if names is None else tuple(str(n) for n in np.asarray(names)),
            robot_yaw=scalar("robot_yaw", 0.0),
            robot_mask_radius=scalar("robot_mask_radius", ROBOT_DRAWN),
            goal_mask_radius=scalar("goal_mask_radius", GOAL_DRAWN),
            source=source,
        )
        if not 0 <= scene.target_index < len(scene.movable):
            raise PlannerSceneError(
                f"{source}: target_index {scene.target_index} but {len(scene.movable)} boxes"
            )
        return scene


# ----------------------------------------------------------------------------- the JSON state
def read_state(state: str | os.PathLike | Mapping[str, Any] | None) -> dict[str, Any]:
    """A planner state as a dict: a mapping, a JSON file or JSON text (None: empty)."""
    if state is None:
        return {}
    if isinstance(state, Mapping):
        return dict(state)
    text = str(state)
    if not text.lstrip().startswith("{"):
        path = Path(text)
        if not path.is_file():
            raise PlannerSceneError(f"state file {path} does not exist")
        text = path.read_text()
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise PlannerSceneError(f"state is not valid JSON: {e}") from e
    if not isinstance(value, dict):
        raise PlannerSceneError(f"state must be a JSON object, got {type(value).__name__}")
    return value


def _pose(entry: Any, what: str) -> tuple[float, float, float | None]:
    """``(x, y, yaw or None)`` of a state entry ``{"position": [x, y(, yaw)]}``."""
    position = entry.get("position") if isinstance(entry, Mapping) else None
    try:
        values = [float(v) for v in position]  # type: ignore[union-attr]
    except (TypeError, ValueError):
        values = []
    if len(values) < 2 or not np.isfinite(values).all():
        raise PlannerSceneError(
            f"state: {what} needs a finite 'position': [x, y, yaw], got {entry!r}"
        )
    return values[0], values[1], values[2] if len(values) > 2 else None


# ----------------------------------------------------------------------------- MuJoCo
def _mujoco():
    try:
        import mujoco
    except ImportError as e:
        raise PlannerSceneError(
            "reading MuJoCo scenes needs the mujoco package: pip install 'goalgen[mujoco]'"
        ) from e
    return mujoco


def _quat_yaw(theta: float) -> np.ndarray:
    return np.array([np.cos(theta / 2), 0.0, 0.0, np.sin(theta / 2)])


def _move_free_body(mujoco, m, d, geom: int, x: float, y: float, yaw: float) -> bool:
    """Put ``geom`` at world ``(x, y, yaw)`` by moving its body's free joint; False if the body
    has no free joint of its own at the top level."""
    body = int(m.geom_bodyid[geom])
    if m.body_jntnum[body] != 1 or m.body_parentid[body] != 0:
        return False
    joint = int(m.body_jntadr[body])
    if m.jnt_type[joint] != mujoco.mjtJoint.mjJNT_FREE:
        return False
    adr = int(m.jnt_qposadr[joint])
    target_q = _quat_yaw(yaw)
    local_inv = np.zeros(4)
    mujoco.mju_negQuat(local_inv, m.geom_quat[geom])
    body_q = np.zeros(4)
    mujoco.mju_mulQuat(body_q, target_q, local_inv)
    offset = np.zeros(3)
    mujoco.mju_rotVecQuat(offset, m.geom_pos[geom], body_q)
    z = float(d.geom_xpos[geom][2])
    d.qpos[adr : adr + 3] = np.array([x, y, z]) - offset
    d.qpos[adr + 3 : adr + 7] = body_q
    return True


def _geom_box(m, d, g: int, box_type: int) -> np.ndarray:
    """``(cx, cy, w, h, yaw)`` of geom ``g`` from the forward kinematics."""
    xmat = d.geom_xmat[g]
    yaw = float(np.arctan2(xmat[3], xmat[0]))
    if m.geom_type[g] == box_type:
        half = m.geom_size[g][:2]
        center = d.geom_xpos[g][:2]
    else:
        half = m.geom_aabb[g][3:5]
        center = d.geom_xpos[g][:2] + xmat.reshape(3, 3)[:2, :2] @ m.geom_aabb[g][:2]
    return np.array([center[0], center[1], 2 * half[0], 2 * half[1], yaw])


def _load(mujoco, path: Path):
    if not path.is_file():
        raise PlannerSceneError(f"scene file {path} does not exist")
    try:
        m = mujoco.MjModel.from_xml_path(str(path))
    except ValueError as e:
        problem = " ".join(str(e).split())
        raise PlannerSceneError(f"{path}: cannot load as MuJoCo XML: {problem}") from e
    d = mujoco.MjData(m)
    mujoco.mj_forward(m, d)
    return m, d


def _classify(mujoco, m, names: list[str], robot: int) -> tuple[list[int], list[int]]:
    """Geom ids of the movable and the static geoms (see the module docstring)."""
    skip = {int(mujoco.mjtGeom.mjGEOM_PLANE), int(mujoco.mjtGeom.mjGEOM_HFIELD)}
    robot_body = int(m.geom_bodyid[robot])
    movable, static = [], []
    for g, name in enumerate(names):
        if m.geom_bodyid[g] == robot_body or int(m.geom_type[g]) in skip:
            continue
        if MOVABLE_TAG in name:
            movable.append(g)
        elif (
            name.startswith("wall")
            or "static" in name
            or m.geom_contype[g]
            or m.geom_conaffinity[g]
        ):
            static.append(g)
    return movable, static


def _point(value: Any, what: str) -> np.ndarray:
    try:
        xy = np.asarray([float(v) for v in list(value)[:2]], dtype=np.float64)
    except (TypeError, ValueError):
        xy = np.zeros(0)
    if xy.shape != (2,) or not np.isfinite(xy).all():
        raise PlannerSceneError(f"{what} must be a finite [x, y], got {value!r}")
    return xy


def load_mujoco_scene(
    xml_path: str | os.PathLike,
    object_name: str,
    state: str | os.PathLike | Mapping[str, Any] | None = None,
    size: int = geo.NAMO_IMAGE_SIZE,
    robot_goal: Sequence[float] | None = None,
) -> WorldScene:
    """World geometry of a planner scene (see the module docstring).

    Args:
        xml_path: MuJoCo XML in namo_cpp's naming.
        object_name: the selected movable object (geom or body name).
        state: the planner's JSON state (mapping, file or text) overriding the XML's poses.
        size: mask side in pixels (224 in the planner's convention).
        robot_goal: ``(x, y)``; wins over the state's ``robot_goal`` and the ``goal`` site.
    Raises:
        PlannerSceneError: one line naming what is missing or wrong and what exists.
    """
    mujoco = _mujoco()
    path = Path(xml_path)
    m, d = _load(mujoco, path)
    kind, box_type = mujoco.mjtObj, mujoco.mjtGeom.mjGEOM_BOX
    geoms = [mujoco.mj_id2name(m, kind.mjOBJ_GEOM, i) or "" for i in range(m.ngeom)]
    bodies = [mujoco.mj_id2name(m, kind.mjOBJ_BODY, i) or "" for i in range(m.nbody)]
    sites = [mujoco.mj_id2name(m, kind.mjOBJ_SITE, i) or "" for i in range(m.nsite)]
    if ROBOT_GEOM not in geoms:
        named = _listing([n for n in geoms if n])
        raise PlannerSceneError(f"{path}: no geom named {ROBOT_GEOM!r}; geoms: {named}")
    robot = geoms.index(ROBOT_GEOM)
    movable, static = _classify(mujoco, m, geoms, robot)
    movable_names = _listing([geoms[g] for g in movable])

    def resolve(name: str) -> list[int]:  # a geom, or the geoms of a body
        if name in geoms:
            return [geoms.index(name)]
        if name in bodies:
            return [g for g in range(m.ngeom) if m.geom_bodyid[g] == bodies.index(name)]
        return []

    target = resolve(object_name)
    if not target:
        raise PlannerSceneError(
            f"{path}: no object named {object_name!r}; movable objects: {movable_names}"
        )
    if target[0] not in movable:
        raise PlannerSceneError(
            f"{path}: {object_name!r} is not movable (its name lacks {MOVABLE_TAG!r}); "
            f"movable objects: {movable_names}"
        )

    state = read_state(state)
    objects = state.get("objects") or {}
    if not isinstance(objects, Mapping):
        raise PlannerSceneError(f"state: 'objects' must be a mapping of names, got {objects!r}")
    unknown = sorted(n for n in objects if not resolve(n))
    if unknown:
        raise PlannerSceneError(
            f"state names unknown objects {_listing(unknown)}; the scene has movable "
            f"{movable_names} and static {_listing([geoms[g] for g in static])}"
        )
    placed: dict[int, tuple[float, float, float]] = {}
    for name, entry in objects.items():
        x, y, yaw = _pose(entry, f"object {name!r}")
        g = resolve(name)[0]
        yaw = float(_geom_box(m, d, g, box_type)[4]) if yaw is None else yaw
        if not _move_free_body(mujoco, m, d, g, x, y, yaw):
            placed[g] = (x, y, yaw)  # no free joint of its own: drawn where the state says
    mujoco.mj_forward(m, d)
    boxes = {g: _geom_box(m, d, g, box_type) for g in movable + static}
    for g, (x, y, yaw) in placed.items():
        boxes[g][[0, 1, 4]] = (x, y, yaw)

    robot_xy, robot_yaw = np.array(d.geom_xpos[robot][:2], dtype=np.float64), 0.0
    if "robot" in state:
        rx, ry, ryaw = _pose(state["robot"], "robot")
        robot_xy, robot_yaw = np.array([rx, ry]), float(ryaw or 0.0)
    goal = robot_goal if robot_goal is not None else state.get("robot_goal")
    if goal is not None:
        goal_xy = _point(goal, "robot_goal")
    elif GOAL_SITE in sites:
        goal_xy = np.array(d.site_xpos[sites.index(GOAL_SITE)][:2], dtype=np.float64)
    else:
        raise PlannerSceneError(
            f"{path}: no site named {GOAL_SITE!r} and no robot_goal given; "
            f"sites: {_listing([s for s in sites if s])}"
        )
    size_xy = m.geom_size[robot][:2]
    radius = float(np.hypot(*size_xy) if m.geom_type[robot] == box_type else size_xy[0])

    drawn = static + movable
    half = [
        m.geom_size[g][:2] if m.geom_type[g] == box_type else m.geom_aabb[g][3:5] for g in drawn
    ]
    bounds = planner_bounds(np.array([boxes[g][:2] for g in drawn]), np.array(half))
    scene = WorldScene(
        static=np.array([boxes[g] for g in static]).reshape(-1, 5),
        movable=np.array([boxes[g] for g in movable]).reshape(-1, 5),
        target_index=movable.index(target[0]),
        robot_xy=robot_xy,
        robot_radius=radius,
        goal_xy=goal_xy,
        frame=NamoFrame.from_bounds(bounds, size),
        movable_names=tuple(geoms[g] for g in movable),
        static_names=tuple(geoms[g] for g in static),
        robot_yaw=robot_yaw,
        source=str(path),
        extra={"geometry_bounds": np.array(bounds, dtype=np.float64)},
    )
    scene.check_inside()
    return scene
