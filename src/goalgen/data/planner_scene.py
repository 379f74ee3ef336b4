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

# The pieces, each with a narrow interface: frames (pixel <-> world), the JSON state, the world
# scene (geometry <-> masks and file arrays), the MuJoCo reader. Import from here or from them.
from goalgen.data.frames import Frame, GridFrame, frame_of, planner_bounds
from goalgen.data.mujoco_scene import GOAL_SITE, MOVABLE_TAG, ROBOT_GEOM, load_mujoco_scene
from goalgen.data.planner_state import MAX_LISTED, PlannerSceneError, read_state
from goalgen.data.synthetic.maze import GOAL_DRAWN, IMAGE_CONVENTION, ROBOT_DRAWN
from goalgen.data.world_scene import WorldScene

__all__ = [
    "GOAL_DRAWN",
    "GOAL_SITE",
    "IMAGE_CONVENTION",
    "MAX_LISTED",
    "MOVABLE_TAG",
    "ROBOT_DRAWN",
    "ROBOT_GEOM",
    "Frame",
    "GridFrame",
    "PlannerSceneError",
    "WorldScene",
    "frame_of",
    "load_mujoco_scene",
    "planner_bounds",
    "read_state",
]
