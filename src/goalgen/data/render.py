"""``goalgen-render``: a planner's MuJoCo scene (+ JSON state) -> a scene file in the training
format with its world geometry (:mod:`goalgen.data.planner_scene`).

``goalgen-render SCENE.xml [--state STATE.json] --object NAME --out scene.npz
[--goal-pose X Y YAW] [--size 224]``

The file holds the five context masks (uint8 0/255, the planner's convention) and the world
geometry under the ``maze`` family's keys, so proposals can check placements exactly. With
``--goal-pose`` (the selected object's goal, world x, y in m and yaw in rad) it also holds
``target_goal``: a training example. Without it the file is an inference input (the loaders
accept a missing ``target_goal``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from goalgen.cli import USER_ERRORS, OneLineParser, one_line
from goalgen.data.planner_scene import load_mujoco_scene
from goalgen.io import atomic_write


def main(argv: list[str] | None = None) -> int:
    """``goalgen-render``: see the module docstring."""
    parser = OneLineParser(
        prog="goalgen-render",
        description="Render a MuJoCo planner scene (namo_cpp naming) into a goalgen scene file.",
    )
    parser.add_argument("xml", type=Path, help="MuJoCo scene XML")
    parser.add_argument("--state", type=Path, help="the planner's JSON state (overrides poses)")
    parser.add_argument("--object", required=True, help="the selected movable object's name")
    parser.add_argument("--out", required=True, type=Path, help="output .npz")
    parser.add_argument(
        "--goal-pose", type=float, nargs=3, metavar=("X", "Y", "YAW"), help="object goal (m, rad)"
    )
    parser.add_argument("--size", type=int, default=224, help="mask side in pixels (224)")
    args = parser.parse_args(argv)
    if args.size < 16:
        parser.error("--size must be >= 16")
    try:
        scene = load_mujoco_scene(args.xml, args.object, args.state, args.size)
        goal = None
        if args.goal_pose is not None:
            x, y, yaw = args.goal_pose
            goal = (x, y, scene.target[2], scene.target[3], yaw)
        arrays = scene.arrays(goal)
        atomic_write(args.out, lambda f: np.savez_compressed(f, **arrays))
    except USER_ERRORS as error:
        print(f"goalgen-render: error: {one_line(error)}", file=sys.stderr)
        return 1
    kind = "training example" if goal is not None else "inference input (no target_goal)"
    print(
        f"{args.xml} -> {args.out}: {args.size}x{args.size} {kind}; object {scene.target_name!r}, "
        f"{len(scene.movable)} movable, {len(scene.static)} static"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
