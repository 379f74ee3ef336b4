"""A MuJoCo XML in namo_cpp's naming (plus an optional JSON state) -> :class:`WorldScene`.

See :mod:`goalgen.data.planner_scene` for the naming and conventions. Needs the optional
``mujoco`` package (``pip install goalgen[mujoco]``).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from goalgen.data import geometry as geo
from goalgen.data.frames import planner_bounds
from goalgen.data.geometry import NamoFrame
from goalgen.data.planner_state import (
    PlannerSceneError,
    listing,
    read_state,
    state_point,
    state_pose,
)
from goalgen.data.world_scene import WorldScene

MOVABLE_TAG = "movable"
ROBOT_GEOM = "robot"
GOAL_SITE = "goal"
WALLS_BODY = "walls"  # namo_cpp's scenes put every wall under this body
_WARNED: set[str] = set()  # scenes warned about once per process


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


def _warn_no_walls(path: Path, m, bodies: list[str], geoms: list[str], static: list[int]) -> None:
    """Warn once per scene file that it has no ``walls`` body, naming what was taken as static
    and the bodies found (a scene laid out otherwise may have lost its walls)."""
    key = str(path.resolve())
    if key in _WARNED:
        return
    _WARNED.add(key)
    named = [b or f"body {i}" for i, b in enumerate(bodies) if i > 0]
    if static:
        owners = sorted({bodies[int(m.geom_bodyid[g])] or "worldbody" for g in static})
        names = listing([geoms[g] for g in static])
        taken = f"static geometry taken from {len(static)} geoms ({names}) of {listing(owners)}"
    else:
        taken = "no static geometry found: nothing walls the robot or the box in"
    warnings.warn(
        f"{path}: no body named {WALLS_BODY!r} (namo_cpp puts the walls under one); {taken}; "
        f"bodies: {listing(named)}",
        stacklevel=3,
    )


def load_mujoco_scene(
    xml_path: str | os.PathLike,
    object_name: str | None,
    state: str | os.PathLike | Mapping[str, Any] | None = None,
    size: int = geo.NAMO_IMAGE_SIZE,
    robot_goal: Sequence[float] | None = None,
) -> WorldScene:
    """World geometry of a planner scene (see the module docstring).

    Args:
        xml_path: MuJoCo XML in namo_cpp's naming.
        object_name: the selected movable object (geom or body name); None: the first
            movable one (for callers that choose the object themselves).
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
        named = listing([n for n in geoms if n])
        raise PlannerSceneError(f"{path}: no geom named {ROBOT_GEOM!r}; geoms: {named}")
    robot = geoms.index(ROBOT_GEOM)
    movable, static = _classify(mujoco, m, geoms, robot)
    movable_names = listing([geoms[g] for g in movable])
    if WALLS_BODY not in bodies:
        _warn_no_walls(path, m, bodies, geoms, static)

    def resolve(name: str) -> list[int]:  # a geom, or the geoms of a body
        if name in geoms:
            return [geoms.index(name)]
        if name in bodies:
            return [g for g in range(m.ngeom) if m.geom_bodyid[g] == bodies.index(name)]
        return []

    if object_name is None and not movable:
        raise PlannerSceneError(f"{path}: no movable object (names with {MOVABLE_TAG!r})")
    target = resolve(object_name) if object_name is not None else movable[:1]
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
            f"state names unknown objects {listing(unknown)}; the scene has movable "
            f"{movable_names} and static {listing([geoms[g] for g in static])}"
        )
    placed: dict[int, tuple[float, float, float]] = {}
    for name, entry in objects.items():
        x, y, yaw = state_pose(entry, f"object {name!r}")
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
        rx, ry, ryaw = state_pose(state["robot"], "robot")
        robot_xy, robot_yaw = np.array([rx, ry]), float(ryaw or 0.0)
    goal = robot_goal if robot_goal is not None else state.get("robot_goal")
    if goal is not None:
        goal_xy = state_point(goal, "robot_goal")
    elif GOAL_SITE in sites:
        goal_xy = np.array(d.site_xpos[sites.index(GOAL_SITE)][:2], dtype=np.float64)
    else:
        raise PlannerSceneError(
            f"{path}: no site named {GOAL_SITE!r} and no robot_goal given; "
            f"sites: {listing([s for s in sites if s])}"
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
