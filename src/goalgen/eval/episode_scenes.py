"""Multi-push scenes for episodes: a second box that blocks the robot's route behind the first.

:func:`add_second_blocker` takes a scene whose selected box closes the robot's route and puts
a box of its size (or down to ``SCALES[-1]`` of it, where it does not fit) across the route
the robot would take once the first is gone, elsewhere along it, so that the two block in
series: the route opens only when both are moved, and moving either alone opens nothing.
Kept are placements that overlap no wall or box (``MARGIN`` apart), leave the robot and its
goal ``KEEP`` robot radii of room, and block as said, judged by
:class:`goalgen.infer.verify.ExactReach`.

    python -m goalgen.eval.episode_scenes HELDOUT_DIR OUT_DIR [--seed N]

writes ``OUT_DIR/<scene>.npz`` for every scene of ``HELDOUT_DIR`` that takes a second box.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np

from goalgen.data.world_scene import WorldScene
from goalgen.eval.episode_runs import load_world
from goalgen.eval.episodes import reach, shortest_route
from goalgen.infer.verify import boxes_overlap, point_box_distance

MARGIN = 0.02  # m between the new box and walls or boxes
KEEP = 3.0  # robot radii the new box stays from the robot and its goal
TRIES = 60  # route points tried
SCALES = (1.0, 0.85, 0.7, 0.55)  # of the first box's size, largest that fits first


def _open(world: WorldScene, boxes: np.ndarray) -> bool:
    return reach(world, boxes, world.robot_xy, 0.0).base_connected


def add_second_blocker(world: WorldScene, rng: np.random.Generator) -> WorldScene | None:
    """``world`` with a second box blocking in series (see the module docstring), or None
    where no placement was found in ``TRIES`` points of the route."""
    target, others = world.target, world.others
    if _open(world, world.movable):
        return None  # nothing blocks to begin with
    _, route = shortest_route(world, others, world.robot_xy)
    if not len(route):
        return None
    keep = KEEP * world.robot_radius
    far = (np.hypot(*(route - target[:2]).T) > keep + np.hypot(*target[2:4])) & (
        np.hypot(*(route - world.goal_xy).T) > keep + np.hypot(*target[2:4])
    )
    candidates = np.flatnonzero(far[:-1])
    obstacles = np.concatenate([world.static.reshape(-1, 5), world.movable])
    for i in rng.permutation(candidates)[:TRIES]:
        ahead = route[min(i + 3, len(route) - 1)] - route[max(i - 3, 0)]
        along = np.arctan2(ahead[1], ahead[0])
        # the first box's size, or smaller where it does not fit; its long side across
        for scale in SCALES:
            size = target[2:4] * scale
            box = np.array([*route[i], *size, along + (np.pi / 2 if size[0] > size[1] else 0.0)])
            if not boxes_overlap(box[None], obstacles, MARGIN).any():
                break
        else:
            continue
        ends = np.stack([world.robot_xy, world.goal_xy])
        if (point_box_distance(ends, box[None]) < keep).any():
            continue
        both = np.concatenate([world.movable, box[None]])
        without_first = np.delete(both, world.target_index, axis=0)
        if _open(world, without_first) or _open(world, world.movable):
            continue  # the new box does not block the route the first one's removal opens
        if not _open(world, others):
            continue
        names = world.movable_names or tuple(f"movable[{k}]" for k in range(len(world.movable)))
        return dataclasses.replace(
            world,
            movable=both,
            movable_names=(*names, "second_blocker_movable"),
        )
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m goalgen.eval.episode_scenes",
        description="Scenes where two boxes block in series (for goalgen-episodes).",
    )
    parser.add_argument("scenes", type=Path, help="folder of .npz scenes with world geometry")
    parser.add_argument("out", type=Path, help="output folder")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    written = 0
    paths = sorted(args.scenes.glob("*.npz"))
    for k, path in enumerate(paths):
        world, radius = load_world(path)
        two = add_second_blocker(world, np.random.default_rng([args.seed, k]))
        if two is not None:
            arrays = two.arrays() | {"push_search_radius": np.array(radius)}
            np.savez_compressed(args.out / path.name, **arrays)
            written += 1
    print(f"{written} of {len(paths)} scenes took a second box -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
