"""Synthetic NAMO scenes: families of layouts whose robot -> goal route is closed by boxes.

Families (``goalgen-synth --family``, ``data.synthetic.family``):

- ``rooms`` (:mod:`.rooms`): a 5 m room split by 1-3 walls, one box in a doorway; masks in
  :mod:`goalgen.data.geometry`'s convention.
- ``maze`` (:mod:`.maze`): an ``N x N`` grid maze with 50-90 % of its walls deleted and 3-17
  boxes, some closing the route at narrow places; masks in the planner's convention
  (:class:`goalgen.data.geometry.NamoFrame`, key ``image_convention`` = 1); every feasible goal
  pose, its push distance and mode (:mod:`.feasible`) stored with the scene.
- ``arena`` (:mod:`.arena`): a 1-3 m walled square split into a 2-5 cell maze (U, S and comb
  shapes), a 0.03-0.1 m robot drawn the planners' way (a 0.2 m disk), 2-5 boxes; the maze
  family's machinery and ground truth with its lengths scaled to the cell and the robot.
- ``mixed``: a share of each (:mod:`.build`; arenas only when ``arena_share`` > 0).

Every file holds the guide's six ``(size, size)`` uint8 0/255 masks (:data:`SCENE_KEYS`) plus
plain numeric arrays of world geometry; scene ``i`` of a data set with seed ``s`` is a function
of ``(s, i, size, family options)`` only.
"""

from goalgen.data.scenes import SCENE_KEYS
from goalgen.data.synthetic import arena, build, feasible, maze, rooms
from goalgen.data.synthetic.arena import ArenaOptions
from goalgen.data.synthetic.build import (
    FAMILIES,
    STAMP_NAME,
    benchmark,
    check_options,
    family_of,
    generate_dataset,
    generate_scene,
    main,
    save_npz,
)
from goalgen.data.synthetic.maze import MazeOptions
from goalgen.data.synthetic.rooms import (
    DELTA,
    MARGIN,
    MAX_ATTEMPTS,
    MAX_PUSH,
    MIN_SIZE,
    OUTER_WALL,
    PUSH_STEP,
    WORLD_BOUNDS,
)

GENERATOR_VERSION = rooms.VERSION  # the rooms family's; mazes record maze.VERSION

__all__ = [
    "arena",
    "DELTA",
    "FAMILIES",
    "GENERATOR_VERSION",
    "MARGIN",
    "MAX_ATTEMPTS",
    "MAX_PUSH",
    "MIN_SIZE",
    "OUTER_WALL",
    "PUSH_STEP",
    "SCENE_KEYS",
    "STAMP_NAME",
    "WORLD_BOUNDS",
    "ArenaOptions",
    "MazeOptions",
    "benchmark",
    "build",
    "check_options",
    "family_of",
    "feasible",
    "generate_dataset",
    "generate_scene",
    "main",
    "maze",
    "rooms",
    "save_npz",
]
