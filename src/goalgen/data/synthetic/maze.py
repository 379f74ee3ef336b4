"""The ``maze`` family: a grid maze whose robot -> goal routes are all closed by boxes.

Layout. ``N x N`` cells of ``CELL`` = 1 m (``grid_size``, default 11); the walls lie on cell
edges, ``t`` thick (drawn from ``WALL``) and run ``t / 2`` past their ends so that walls meet
solidly. The *deletion rate*, drawn from ``deletion`` (default 50-90 %), is the share of the
``2 N (N - 1)`` interior cell edges that have no wall. A perfect maze (randomised depth-first
spanning tree) is carved first, so every cell stays reachable, then more walls are removed at
random until the rate is met (below the perfect maze's own share, about 55 % for N = 11, the
maze stays perfect); the outer walls stay. The robot (a disk of ``ROBOT_RADIUS`` 0.15 m) and
its goal (``GOAL_RADIUS`` 0.3 m) stand in cells far apart: the goal's cell is drawn among the
cells at least ``grid.FAR`` (60 %) of the way to the cell farthest from the robot's in the maze.

Boxes. A minimum edge cut of the cell graph separates a ball of cells around the robot from
one around the goal (balls of drawn radii keep cuts away from the ends; edge capacities carry
random jitter so that cuts vary). Every cut passage gets a *passage box* across it, long side
along the edge, its ends ``grid.END_GAP`` from the wall (or corner) that anchors them, so the gaps
it leaves are narrower than the robot: the route is closed at narrow places, by 1-``grid.MAX_CUT``
boxes. One of them, drawn at random, is the selected box. The other boxes (up to ``boxes``,
default 3-17, in all) are decoys: passage boxes across other passages or boxes of random size
(extents 0.5-0.94 m, as ``BOX_EXTENT``) and yaw, kept off the *route*: the cells of a shortest
route through the selected box's passage, so that moving that box opens it. All boxes keep
``MARGIN`` from walls (passage boxes: from other boxes), each other, the robot and the goal.

Checks, on the masks. A layout is kept if the robot, ``DELTA`` thinner than it is, cannot reach
its goal; ``DELTA`` fatter, reaches it once the selected box is removed; reaches the selected
box; and the box has a feasible goal pose (:mod:`.feasible`, the robot ``DELTA`` fatter, push
distance up to ``MAX_PUSH``, only moves the robot can push, the goal's push checked step by
step). Version 1 let the box slide either way: its goals were mostly pulls back towards the
robot, which a pushing robot cannot make. Otherwise the layout is counted under ``REASONS``
and another is drawn, up to ``MAX_ATTEMPTS``.

Files use the planner's image convention (:class:`goalgen.data.geometry.NamoFrame`,
``image_convention`` = 1; rooms files, without the key, are 0), so that masks rendered from a
planner's scene and these agree: robot drawn with radius ``ROBOT_DRAWN`` 0.2 m, goal
``GOAL_DRAWN`` 0.25 m. Keys besides the six masks (float64 unless noted; boxes
``(cx, cy, w, h, theta)``, poses ``(x, y, theta)``): ``image_convention`` int64 (),
``world_bounds`` (4,) the square the image covers, ``geometry_bounds`` (4,) the padded bounds
it is centred on, ``robot_pose`` / ``goal_pose`` (2,), ``robot_radius`` / ``goal_radius`` /
``robot_mask_radius`` / ``goal_mask_radius`` (), ``movable_boxes`` (M, 5), ``target_index``
int64 (), ``target_goal_box`` (5,), ``static_walls`` (K, 5), ``grid_size`` int64 (),
``cell_size`` (), ``wall_thickness`` (), ``deletion_rate`` (), ``feasible_poses`` (P, 3) every
feasible pose, nearest first (row 0 is ``target_goal``), ``feasible_push`` (P,) their push
distances in m (the robot pushing), ``feasible_mode`` int64 (P,), ``num_modes`` int64 (),
``push_field`` uint16 (12, F, F) push distance in cm to every pose the robot can push the box
to (65535: none; entry ``[k, a, b]`` is the selected box moved by ``((b - F // 2) * s, (a - F
// 2) * s)`` m along world x, y and turned by ``k * 15`` degrees, ``s`` =
``push_field_step`` ()), ``push_search_radius`` () = ``MAX_PUSH``,
``feasible_lattice_step`` () the spacing of candidate centres, ``generator_version`` int64 (),
``seed`` int64 (), ``spawn_key`` int64 (k,). Scene ``i`` of a data set with seed ``s`` is
``generate_scene(np.random.SeedSequence(s, spawn_key=(i,)), size, options)``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from goalgen.data import geometry as geo
from goalgen.data.scenes import SCENE_KEYS
from goalgen.data.synthetic import feasible, grid
from goalgen.data.synthetic.grid import CELL, WALL

VERSION = 2  # 2: goals pushed, not pulled
IMAGE_CONVENTION = 1  # goalgen.data.geometry.NamoFrame; 0 = goalgen.data.geometry's own
ROBOT_RADIUS, GOAL_RADIUS = 0.15, 0.3
ROBOT_DRAWN, GOAL_DRAWN = 0.2, 0.25
DELTA = 0.05  # reachability margin on the robot radius, m
MARGIN = 0.05  # clearance between placed objects, m (at least 1.5 px)
DECOY_PASSAGE = 0.5  # share of decoys placed across passages
MAX_PUSH = 1.5  # m, push search radius
NEAR_SLACK = 0.05  # share of the world side added to the push field's reach
CANDIDATE_STEP = 0.1  # m
PUSH_CHECKS = 40  # nearest feasible poses whose push is checked step by step for the goal
MAX_ATTEMPTS = 300
REASONS = ("cut", "placement", "not_blocked", "not_opened", "unreachable", "no_goal")
LIMITS = {"grid_size": (3, 30), "boxes": (1, 40)}


@dataclass(frozen=True)
class Sizes:
    """A grid family's lengths in metres: the grid's, the robot's and the pose search's.

    ``thin`` and ``fat`` are what the blocked and opened checks take off and add to the robot
    radius; ``robot_keep`` is the radius around the robot that boxes keep ``margin`` from (the
    drawn disk in mazes, so that no box hides under it; the real one in arenas, where the drawn
    disk covers walls and boxes as it does in the planners' small scenes)."""

    lengths: grid.Lengths = field(default_factory=grid.Lengths)
    robot_radius: float = ROBOT_RADIUS
    goal_radius: float = GOAL_RADIUS
    robot_keep: float = ROBOT_DRAWN
    thin: float = DELTA
    fat: float = DELTA
    margin: float = MARGIN
    max_push: float = MAX_PUSH
    candidate_step: float = CANDIDATE_STEP


@dataclass(frozen=True)
class MazeOptions:
    """Generator options (validated by :meth:`problem`)."""

    grid_size: int = 11
    deletion: tuple[float, float] = (0.5, 0.9)
    boxes: tuple[int, int] = (3, 17)

    def problem(self, size: int | None = None) -> str | None:
        """A one-line reason why these options (and mask ``size``) cannot work, or None."""
        lo, hi = LIMITS["grid_size"]
        if not lo <= self.grid_size <= hi:
            return f"grid size must be in [{lo}, {hi}], got {self.grid_size}"
        d0, d1 = self.deletion
        if not 0.0 <= d0 <= d1 <= 1.0:
            return f"deletion rates must satisfy 0 <= min <= max <= 1, got {d0}, {d1}"
        b0, b1 = self.boxes
        lo, hi = LIMITS["boxes"]
        if not lo <= b0 <= b1 <= hi:
            return f"box counts must satisfy {lo} <= min <= max <= {hi}, got {b0}, {b1}"
        if size is not None and size < min_size(self.grid_size):
            return (
                f"size {size} is too small for a {self.grid_size}x{self.grid_size} maze "
                f"(walls would rasterise with holes): need >= {min_size(self.grid_size)}"
            )
        return None


def min_size(grid_size: int) -> int:
    """Smallest mask side whose pixels are no wider than the thinnest wall."""
    side = grid_size * CELL + WALL[1] + 2 * geo.NAMO_PAD[1]
    return int(np.ceil(side / WALL[0]))


def _grown(box: np.ndarray, by: float) -> np.ndarray:
    return box + np.array([0, 0, 2 * by, 2 * by, 0])


def _cell_center(cell: int, n: int, side: float = CELL) -> np.ndarray:
    return (np.array(divmod(cell, n), dtype=np.float64) + 0.5) * side


def _place_boxes(
    rng: np.random.Generator,
    plan: grid.Plan,
    frame: geo.NamoFrame,
    walls: np.ndarray,
    near: np.ndarray,
    options: MazeOptions,
    sizes: Sizes,
) -> list[np.ndarray] | None:
    """Boxes ``(5,)``, the selected one first: one across every cut passage, then decoys off
    the route (None: a passage box does not fit, or too few boxes fit)."""
    n, passages, lengths = plan.maze.n, plan.passages, sizes.lengths
    cell, margin = lengths.cell, sizes.margin
    wall_near = geo.inflate(walls, max(margin / frame.metres_per_pixel, 1.5))
    boxes: list[np.ndarray] = []
    taken = near.copy()  # where a passage box may not be
    for index in plan.cut:
        box = grid.passage_box(rng, plan.maze, passages[index], lengths)
        if (frame.box_mask(*box) & (taken | walls)).any():
            return None
        boxes.append(box)
        taken |= frame.box_mask(*_grown(box, margin))
    cells = [frame.box_mask(*_cell_center(c, n, cell), cell, cell, 0.0) for c in plan.route]
    zone = np.any(cells, axis=0)
    total = int(rng.integers(max(options.boxes[0], len(boxes)), options.boxes[1] + 1))
    on_route = np.zeros(n * n, dtype=bool)
    on_route[plan.route] = True
    off = ~on_route[passages[:, 0]] & ~on_route[passages[:, 1]]
    off[plan.cut] = False
    decoy_passages, free_cells = np.flatnonzero(off), np.flatnonzero(~on_route)
    for _ in range(25 * (total - len(boxes))):
        if len(boxes) == total or len(free_cells) == 0:
            break
        if rng.random() < DECOY_PASSAGE and len(decoy_passages):
            which = decoy_passages[rng.integers(len(decoy_passages))]
            box = grid.passage_box(rng, plan.maze, passages[which], lengths)
            blocked = taken | walls | zone
        else:
            corner = np.array(divmod(int(free_cells[rng.integers(len(free_cells))]), n)) * cell
            centre = corner + rng.uniform(0, cell, 2)
            box = np.array([*centre, *rng.uniform(*lengths.box_extent, 2), 0])
            box[4], blocked = rng.uniform(-np.pi / 2, np.pi / 2), taken | wall_near | zone
        if not (frame.box_mask(*box) & blocked).any():
            boxes.append(box)
            taken |= frame.box_mask(*_grown(box, margin))
    return boxes if len(boxes) >= options.boxes[0] else None


def attempt(
    rng: np.random.Generator, size: int, options: MazeOptions, sizes: Sizes | None = None
) -> dict | str:
    """One layout: the scene's arrays, or the name of the check it failed (``REASONS``)."""
    sizes = sizes or Sizes()
    lengths, margin, radius = sizes.lengths, sizes.margin, sizes.robot_radius
    plan = grid.plan(rng, options.grid_size, options.deletion, options.boxes[1], lengths)
    if plan is None:
        return "cut"
    n, walls, cell = plan.maze.n, plan.maze.walls(), lengths.cell
    frame = geo.NamoFrame.from_geometry(walls, size)
    mpp = frame.metres_per_pixel
    wall_mask = np.any([frame.box_mask(*w) for w in walls], axis=0)
    slack = cell / 2 - plan.maze.t / 2 - margin
    robot_xy = _cell_center(plan.robot_cell, n, cell)
    robot_xy += rng.uniform(-1, 1, 2) * (slack - sizes.robot_keep)
    goal_xy = _cell_center(plan.goal_cell, n, cell)
    goal_xy += rng.uniform(-1, 1, 2) * (slack - sizes.goal_radius)
    near = frame.disk_mask(robot_xy, sizes.robot_keep + margin)
    near |= frame.disk_mask(goal_xy, sizes.goal_radius + margin)
    boxes = _place_boxes(rng, plan, frame, wall_mask, near, options, sizes)
    if boxes is None:
        return "placement"

    masks = [frame.box_mask(*box) for box in boxes]
    target = masks[0]
    others = np.any(masks[1:], axis=0) if len(masks) > 1 else np.zeros_like(target)
    obstacles = wall_mask | others
    clearance = geo.distance_to(obstacles)
    start = tuple(int(v) for v in frame.world_to_pixel(robot_xy))
    end = tuple(int(v) for v in frame.world_to_pixel(goal_xy))
    thin, fat = (radius - sizes.thin) / mpp, (radius + sizes.fat) / mpp
    if geo.cspace_connected((clearance <= thin) | geo.inflate(target, thin), start, end):
        return "not_blocked"
    fat_obstacles = clearance <= fat
    if not geo.cspace_connected(fat_obstacles, start, end):
        return "not_opened"
    swollen = geo.inflate(target, fat)
    ring = geo.inflate(target, fat + 1.5) & ~swollen
    labels, _ = ndimage.label(~(fat_obstacles | swollen), structure=np.ones((3, 3), bool))
    if labels[start] == 0 or not (ring & (labels == labels[start])).any():
        return "unreachable"
    keep_out = (clearance <= max(margin / mpp, 1.5)) | near
    reach = sizes.max_push + NEAR_SLACK * frame.side
    search = feasible.Search(sizes.max_push, reach, sizes.candidate_step)
    problem = feasible.Problem(
        frame, boxes[0], obstacles, keep_out, ~fat_obstacles, fat, start, end, radius
    )
    result = feasible.solve(problem, search)
    goal_box = None if result is None else _verified_goal(result, problem, boxes[0])
    if goal_box is None:
        return "no_goal"

    order = rng.permutation(len(boxes))
    drawn = (frame.disk_mask(robot_xy, ROBOT_DRAWN), frame.disk_mask(goal_xy, GOAL_DRAWN))
    channels = (*drawn, target | others, wall_mask, target, frame.box_mask(*goal_box))
    arrays = {
        k: v.astype(np.uint8) * np.uint8(255) for k, v in zip(SCENE_KEYS, channels, strict=True)
    }
    f = np.float64
    return arrays | {
        "image_convention": np.array(IMAGE_CONVENTION, dtype=np.int64),
        "world_bounds": np.array(frame.bounds, dtype=f),
        "geometry_bounds": np.array(geo.padded_bounds(walls), dtype=f),
        "robot_pose": robot_xy.astype(f),
        "goal_pose": goal_xy.astype(f),
        "robot_radius": np.array(radius, dtype=f),
        "goal_radius": np.array(sizes.goal_radius, dtype=f),
        "robot_mask_radius": np.array(ROBOT_DRAWN, dtype=f),
        "goal_mask_radius": np.array(GOAL_DRAWN, dtype=f),
        "movable_boxes": np.array([boxes[i] for i in order], dtype=f),
        "target_index": np.array(int(np.flatnonzero(order == 0)[0]), dtype=np.int64),
        "target_goal_box": goal_box.astype(f),
        "static_walls": walls,
        "grid_size": np.array(n, dtype=np.int64),
        "cell_size": np.array(cell, dtype=f),
        "wall_thickness": np.array(plan.maze.t, dtype=f),
        "deletion_rate": np.array(plan.deletion, dtype=f),
        "feasible_poses": result.poses.astype(f),
        "feasible_push": result.push.astype(f),
        "feasible_mode": result.modes.astype(np.int64),
        "num_modes": np.array(int(result.modes.max()) + 1, dtype=np.int64),
        "push_field": feasible.field_to_file(result.field),
        "push_field_step": np.array(result.field_step, dtype=f),
        "push_search_radius": np.array(sizes.max_push, dtype=f),
        "feasible_lattice_step": np.array(result.lattice_step, dtype=f),
        "generator_version": np.array(VERSION, dtype=np.int64),
    }


def _verified_goal(
    result: feasible.Result, problem: feasible.Problem, box: np.ndarray, tries: int = PUSH_CHECKS
) -> np.ndarray | None:
    """The nearest feasible pose as a box ``(5,)`` whose push holds step by step
    (:meth:`.feasible.Result.pushed`) and that holds on its own rasterisation (shifted masks
    equal it up to round-off); nearer poses that fail are dropped from ``result``."""
    frame = problem.frame
    for i in range(min(tries, len(result.push))):
        goal = np.array([*result.poses[i, :2], box[2], box[3], result.poses[i, 2]])
        mask = frame.box_mask(*goal)
        blocked = ~problem.robot_free | geo.inflate(mask, problem.robot_px)
        if (
            not (mask & problem.keep_out).any()
            and result.pushed(i)
            and geo.cspace_connected(blocked, problem.start, problem.goal)
        ):
            if i:
                for name in ("poses", "push", "modes", "shifts"):
                    setattr(result, name, getattr(result, name)[i:])
                _, first, inverse = np.unique(result.modes, return_index=True, return_inverse=True)
                result.modes = np.argsort(np.argsort(first))[inverse].astype(np.int64)
            return goal
    return None


def seed_sequence(seed: int | np.random.SeedSequence) -> np.random.SeedSequence:
    """``seed`` as a ``SeedSequence`` with int entropy in [0, 2**63) (else ``ValueError``)."""
    seq = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
    if not isinstance(seq.entropy, int) or not 0 <= seq.entropy < 2**63:
        raise ValueError(f"seed entropy must be an int in [0, 2**63), got {seq.entropy!r}")
    return seq


def generate_with_stats(
    seed: int | np.random.SeedSequence, size: int = 224, options: MazeOptions | None = None
) -> tuple[dict[str, np.ndarray], Counter]:
    """One maze scene (keys in the module docstring) and the rejected layouts by reason.

    The same seed, ``size`` and options give the same arrays. Raises ``ValueError`` for bad
    options and ``RuntimeError`` naming the check most layouts failed if ``MAX_ATTEMPTS``
    layouts give no scene.
    """
    seq, options = seed_sequence(seed), options or MazeOptions()
    problem = options.problem(size)
    if problem is not None:
        raise ValueError(problem)
    return feasible.rejection_sample(
        "maze", seq, lambda rng: attempt(rng, size, options), MAX_ATTEMPTS
    )


def generate_scene(
    seed: int | np.random.SeedSequence, size: int = 224, options: MazeOptions | None = None
) -> dict[str, np.ndarray]:
    """One maze scene as ``{key: array}`` (see :func:`generate_with_stats`)."""
    return generate_with_stats(seed, size, options)[0]
