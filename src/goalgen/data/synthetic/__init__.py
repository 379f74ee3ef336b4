"""Synthetic NAMO scenes: families of layouts whose robot -> goal route is closed by boxes.

Families (``goalgen-synth --family``, ``data.synthetic.family``):

- ``rooms`` (:mod:`.rooms`): a 5 m room split by 1-3 walls, one box in a doorway; masks in
  :mod:`goalgen.data.geometry`'s convention.
- ``maze`` (:mod:`.maze`): an ``N x N`` grid maze with 50-90 % of its walls deleted and 3-17
  boxes, some closing the route at narrow places; masks in the planner's convention
  (:class:`goalgen.data.geometry.NamoFrame`, key ``image_convention`` = 1); every feasible goal
  pose, its push distance and mode (:mod:`.feasible`) stored with the scene.
- ``mixed``: a share of each (:mod:`.build`).

Every file holds the guide's six ``(size, size)`` uint8 0/255 masks (:data:`SCENE_KEYS`) plus
plain numeric arrays of world geometry; scene ``i`` of a data set with seed ``s`` is a function
of ``(s, i, size, family options)`` only.
"""

from goalgen.data.scenes import SCENE_KEYS
from goalgen.data.synthetic import build, feasible, maze, rooms
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
