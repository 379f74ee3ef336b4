"""NAMO episodes in MuJoCo physics: goal strategies judged at the planner's level.

**An episode** (:func:`run_episode`) starts from a scene's robot, boxes and goal and repeats,
until the robot's goal is reachable with the clearance (success) or ``budget`` pushes are
spent:

1. *choose an object* (:func:`choose_objects`): among the boxes the robot can walk up to, the
   one whose removal opens its route to the goal, shortest remaining route first; after
   those, one whose removal lets the robot walk up to a box whose removal then opens it (two
   boxes in series), whose opening's goal for the robot is the spot by the second box
   (namo_cpp's region goals). Where the strategy has no goal for the box, the next one (up
   to ``OBJECT_TRIES``), as a planner would. The *opening* succeeds when the robot can
   reach its goal (with the clearance);
2. *ask the strategy* for the box's goal pose in the scene as it is now (where every box
   really is, with the opening's goal as the robot's; the robot first steps back to
   ``STEP_BACK`` radii from the box, where it stands clear of the poses it may be asked
   about);
3. *push it there in physics* (:func:`goalgen.eval.physics.push`: the robot walks to the
   box's sides and pushes by strokes along the push plan's way points; nothing teleported),
   read where the box really ended, step back from it and check the opening; up to
   ``pushes_per_opening`` pushes per opening (a push that leaves the way closed is followed
   by another).

**Strategies** (same scenes, same seeds):

- ``proposals``: the model's ranked proposals (:func:`goalgen.infer.proposals.propose`,
  ``top``): the first verified one, along its push plan; where none verifies, the first
  collision-free one (unverified, as ``raw`` pushes its poses);
- ``raw``: the model's raw samples as the original system used them: the first single-blob
  sample, fitted (:func:`goalgen.eval.propose.baseline_boxes`), unverified; pushed along a
  push plan where one exists, else straight for the pose;
- ``random_local``: random collision-free poses within the push search radius
  (:func:`goalgen.eval.near.random_local`) through the same verification, ranking and
  choice as the proposals (no model);
- ``random``: one such random pose, unverified (no goal model: namo_cpp's random goals).

Reachability is :class:`goalgen.infer.verify.ExactReach`'s (polygons, the robot grown by the
clearance; it may start and end closer), as the proposals' route check; route lengths, which
only rank the boxes, are shortest paths on :class:`goalgen.infer.verify.ReachGrid`'s grid.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import shapely
import shapely.ops
from scipy.sparse import csgraph

from goalgen.data.world_scene import WorldScene
from goalgen.eval import physics
from goalgen.eval.near import random_local
from goalgen.eval.propose import baseline_boxes
from goalgen.infer.fit import period_of
from goalgen.infer.proposals import proposals_of_samples
from goalgen.infer.propose_scene import CLEARANCE, MAX_PUSH, Checker, as_scene
from goalgen.infer.verify import ExactReach, ReachGrid, box_corners

STRATEGIES = ("proposals", "raw", "random_local", "random")
BUDGET = 8  # pushes per episode
PUSHES_PER_OPENING = 3
OBJECT_TRIES = 3  # boxes an opening asks the strategy about before it gives up
STEP_BACK = 3.0  # robot radii from the box the robot stands when it asks for a goal
TOUCH = 0.02  # m: the robot can walk up to a box its free space comes this near
RANDOM_DRAWS = 32  # random poses a random_local call ranks (the proposals' samples)
RANDOM_SIZE = 64  # px: the masks random poses are drawn at without a model (the planner's)


# ----------------------------------------------------------------------------- reachability
def _obstacles(world: WorldScene, boxes: np.ndarray, without: Sequence[int]) -> np.ndarray:
    """The walls and the movable ``boxes`` but those ``without``, ``(K, 5)``."""
    keep = np.ones(len(boxes), dtype=bool)
    keep[list(without)] = False
    return np.concatenate([world.static.reshape(-1, 5), boxes[keep]])


def reach(
    world: WorldScene,
    boxes: np.ndarray,
    robot: np.ndarray,
    clearance: float,
    without: Sequence[int] = (),
    goal: np.ndarray | None = None,
) -> ExactReach:
    """The robot's free space (polygons, grown by ``clearance``) from ``robot`` to ``goal``
    (default: its own) with movable ``boxes`` ``(M, 5)`` where they are, those ``without``
    taken away."""
    return ExactReach(
        world.frame.bounds,
        _obstacles(world, boxes, without),
        robot,
        world.goal_xy if goal is None else goal,
        world.robot_radius + clearance,
        end_slack=clearance,
    )


def shortest_route(
    world: WorldScene, boxes: np.ndarray, robot: np.ndarray, without: Sequence[int] = ()
) -> tuple[float, np.ndarray]:
    """The robot's shortest route to its goal on a grid of ``min(pixel, radius / 3)`` with
    ``boxes``, those ``without`` taken away: its length (m) and its cells' centres ``(n, 2)``;
    ``(inf, (0, 2))`` where the grid finds none."""
    cell = min(world.frame.metres_per_pixel, world.robot_radius / 3)
    grid = ReachGrid(
        world.frame.bounds,
        cell,
        _obstacles(world, boxes, without),
        robot,
        world.goal_xy,
        world.robot_radius,
    )
    if not grid.base_connected:
        return np.inf, np.zeros((0, 2))
    graph, index = physics.grid_graph(grid.free)
    start, ends = grid.start.astype(int)[0], grid.goal.astype(int)
    lengths, pred = csgraph.dijkstra(
        graph, directed=False, indices=int(index[start[0], start[1]]), return_predecessors=True
    )
    reached = lengths[index[ends[:, 0], ends[:, 1]]]
    node, chain = int(index[ends[0, 0], ends[0, 1]]), []
    while node >= 0:
        chain.append(node)
        node = int(pred[node])
    rows, cols = np.divmod(np.array(chain[::-1]), grid.shape[1])
    return float(reached.min() * cell), grid.centres(rows, cols)


@dataclass
class Blocker:
    """The object an opening moves and where the robot must then get (see the module
    docstring)."""

    index: int  # into the world's movable boxes
    goal: np.ndarray  # (2,) the robot's goal, or a point by the next box in the way
    opens_route: bool  # its removal alone opens the robot's route to its goal


def _touches(region: Any, box: np.ndarray, grow: float) -> bool:
    """Can a robot in ``region`` (free-space polygon of its centre) walk up to ``box``?"""
    return region.distance(shapely.Polygon(box_corners(box))) <= grow + TOUCH


def choose_objects(
    world: WorldScene, boxes: np.ndarray, robot: np.ndarray, clearance: float
) -> list[Blocker]:
    """The boxes to move next, best first (see the module docstring); none where no box the
    robot can walk up to opens its route, alone or with one more."""
    now = reach(world, boxes, robot, clearance)
    if now.region is None:
        return []
    near = [i for i, box in enumerate(boxes) if _touches(now.region, box, now.grow)]
    alone, paired = [], []
    for i in near:
        space = reach(world, boxes, robot, clearance, without=[i])
        if space.base_connected:
            alone.append((shortest_route(world, boxes, robot, [i])[0], i))
            continue
        if space.region is None:
            continue
        for j, box in enumerate(boxes):
            if j in near or not _touches(space.region, box, space.grow):
                continue
            if reach(world, boxes, robot, clearance, without=[i, j]).base_connected:
                # the robot's goal for this opening: where it stands by the next box
                inside = space.region.buffer(-TOUCH / 2)
                inside = inside if not inside.is_empty else space.region
                point = shapely.ops.nearest_points(inside, shapely.Polygon(box_corners(box)))[0]
                length = shortest_route(world, boxes, robot, [i, j])[0]
                paired.append((length, i, np.array([point.x, point.y])))
    goal = np.asarray(world.goal_xy, dtype=np.float64)
    best: dict[int, tuple[float, np.ndarray]] = {}
    for length, i, point in paired:
        if i not in best or length < best[i][0]:
            best[i] = (length, point)
    return [Blocker(i, goal, True) for _, i in sorted(alone)] + [
        Blocker(i, best[i][1], False) for i in sorted(best, key=lambda i: best[i][0])
    ]


def opened(
    world: WorldScene, boxes: np.ndarray, robot: np.ndarray, blocker: Blocker, clearance: float
) -> bool:
    """Can the robot now get where ``blocker``'s opening had to let it?"""
    return reach(world, boxes, robot, clearance, goal=blocker.goal).base_connected


# ----------------------------------------------------------------------------- strategies
@dataclass
class Goal:
    """A strategy's answer: the goal pose and the way points to push it through."""

    waypoints: list[np.ndarray]  # (x, y, yaw) each, the goal pose last
    verified: bool


Strategy = Callable[[WorldScene, np.random.Generator, int], "Goal | None"]


def _plan_or_straight(world: WorldScene, box: np.ndarray, clearance: float) -> Goal:
    """An unverified pose pushed along a push plan where one exists, else straight to it."""
    segments, failure = Checker(as_scene(world), clearance).plan(box)
    if failure is None and segments:
        return Goal([np.asarray(s.box_end, dtype=np.float64) for s in segments], False)
    return Goal([np.asarray(box, dtype=np.float64)[[0, 1, 4]]], False)


def _best_goal(result: Any, world: WorldScene, clearance: float) -> Goal | None:
    """The top verified proposal of ``result`` along its push plan; where none verifies, the
    top collision-free one (a planner's best guess: its route or push did not check out)."""
    for p in result.proposals:
        if p.verified:
            ends = [np.asarray(s.box_end, dtype=np.float64) for s in p.segments]
            return Goal(ends or [np.array([p.x, p.y, p.theta])], True)
    for p in result.proposals:
        if p.collision_free:
            box = np.array([p.x, p.y, *world.target[2:4], p.theta])
            return _plan_or_straight(world, box, clearance)
    return None


def _random_masks(
    world: WorldScene, rng: np.random.Generator, k: int, size: int, radius: float
) -> np.ndarray:
    arrays = world.arrays() | {"push_search_radius": np.array(radius)}
    masks, _ = random_local(arrays, k, rng, size=size)
    return masks.astype(np.float32)


def make_strategy(
    name: str,
    predictor: Any = None,
    *,
    samples: int = 32,
    top: int = 8,
    clearance: float = CLEARANCE,
    radius: float = MAX_PUSH,
) -> Strategy:
    """The strategy ``name`` (see the module docstring); ``predictor`` (a
    :class:`goalgen.infer.GoalPredictor`) for ``proposals`` and ``raw``; ``radius``: the
    random poses' push search radius (m)."""
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; choose from {', '.join(STRATEGIES)}")
    if name in ("proposals", "raw") and predictor is None:
        raise ValueError(f"strategy {name!r} needs a model")
    size = int(predictor.image_size) if predictor is not None else RANDOM_SIZE

    def proposals(world: WorldScene, rng: np.random.Generator, seed: int) -> Goal | None:
        result = predictor.propose(world, samples, top, seed=seed, clearance=clearance)
        return _best_goal(result, world, clearance)

    def raw(world: WorldScene, rng: np.random.Generator, seed: int) -> Goal | None:
        result = predictor.propose(world, samples, None, seed=seed, clearance=clearance)
        boxes, kept = baseline_boxes(result)
        if not kept.any():
            return None
        return _plan_or_straight(world, boxes[int(np.argmax(kept))], clearance)

    def local(world: WorldScene, rng: np.random.Generator, seed: int) -> Goal | None:
        masks = _random_masks(world, rng, RANDOM_DRAWS, size, radius)
        result = proposals_of_samples(world, masks, clearance=clearance)
        return _best_goal(result, world, clearance)

    def random(world: WorldScene, rng: np.random.Generator, seed: int) -> Goal | None:
        masks = _random_masks(world, rng, 1, size, radius)
        result = proposals_of_samples(world, masks, clearance=clearance, snap=0.0)
        if not result.candidates:
            return None
        p = result.candidates[0]
        box = np.array([p.x, p.y, *world.target[2:4], p.theta])
        return _plan_or_straight(world, box, clearance)

    return {"proposals": proposals, "raw": raw, "random_local": local, "random": random}[name]


# ----------------------------------------------------------------------------- episodes
@dataclass
class Push:
    """One push of an episode: the strategy's goal and what physics made of it."""

    box: str
    index: int  # into the world's movable boxes
    verified: bool
    outcome: physics.PushOutcome
    model_seconds: float

    def to_dict(self) -> dict[str, Any]:
        return (
            {"box": self.box, "verified": self.verified}
            | self.outcome.to_dict()
            | {"model_seconds": round(self.model_seconds, 4)}
        )


@dataclass
class Opening:
    """The pushes of one chosen object (see the module docstring)."""

    box: str
    opens_route: bool
    pushes: int = 0
    success: bool = False
    failure: str | None = None
    wall_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"wall_seconds": round(self.wall_seconds, 4)}


@dataclass
class Episode:
    """One scene's episode under one strategy."""

    scene: str
    strategy: str
    seed: int
    success: bool = False
    failure: str | None = None
    openings: list[Opening] = field(default_factory=list)
    pushes: list[Push] = field(default_factory=list)
    robot_path: float = 0.0
    sim_seconds: float = 0.0
    wall_seconds: float = 0.0
    model_seconds: float = 0.0
    # the boxes (M, 5) and the robot (2,) at the start and after each push
    frames: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "scene": self.scene,
            "strategy": self.strategy,
            "seed": self.seed,
            "success": self.success,
            "failure": self.failure,
            "num_pushes": len(self.pushes),
            "robot_path": round(self.robot_path, 4),
            "sim_seconds": round(self.sim_seconds, 3),
            "wall_seconds": round(self.wall_seconds, 4),
            "model_seconds": round(self.model_seconds, 4),
            "openings": [o.to_dict() for o in self.openings],
            "pushes": [p.to_dict() for p in self.pushes],
        }


def run_episode(
    world: WorldScene,
    strategy: Strategy,
    *,
    name: str = "scene",
    strategy_name: str = "",
    seed: int = 0,
    budget: int = BUDGET,
    pushes_per_opening: int = PUSHES_PER_OPENING,
    clearance: float = CLEARANCE,
) -> Episode:
    """One episode of ``world`` under ``strategy`` (see the module docstring); the same
    arguments give the same episode."""
    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    episode = Episode(name, strategy_name, seed)
    sim = physics.Simulation(world)
    pusher = physics.Pusher(sim)
    names = world.movable_names or tuple(f"movable[{i}]" for i in range(len(world.movable)))
    episode.frames.append((sim.boxes(), sim.robot.copy()))
    while True:
        boxes, robot = sim.boxes(), sim.robot
        if reach(world, boxes, robot, clearance).base_connected:
            episode.success = True
            break
        if len(episode.pushes) >= budget:
            episode.failure = "push budget spent"
            break
        blockers = choose_objects(world, boxes, robot, clearance)[:OBJECT_TRIES]
        if not blockers:
            episode.failure = "no box the robot can reach opens the way"
            break
        opening_started = time.perf_counter()
        opening = Opening(names[blockers[0].index], blockers[0].opens_route)
        episode.openings.append(opening)
        last_failure = None  # the last push's controller failure
        while not opening.success:
            if opening.pushes >= pushes_per_opening or len(episode.pushes) >= budget:
                opening.failure = last_failure or "pushes ran out"
                break
            goal = None
            # the first push of an opening may pass to the next box where the strategy has
            # no goal for one (as a planner would); later pushes keep to the opening's box
            for blocker in blockers if opening.pushes == 0 else blockers[:1]:
                pusher.walker.step_back(sim.boxes()[blocker.index], STEP_BACK * world.robot_radius)
                now = dataclasses.replace(
                    world,
                    movable=sim.boxes(),
                    robot_xy=sim.robot,
                    target_index=blocker.index,
                    goal_xy=blocker.goal,
                )
                asked = time.perf_counter()
                goal = strategy(now, rng, seed + len(episode.pushes))
                model = time.perf_counter() - asked
                episode.model_seconds += model
                if goal is not None:
                    blockers = [blocker]
                    opening.box, opening.opens_route = names[blocker.index], blocker.opens_route
                    break
            if goal is None:
                opening.failure = "no proposal"
                break
            index = blockers[0].index
            period = period_of(*world.movable[index, 2:4])
            outcome = physics.push(pusher, index, goal.waypoints, period)
            episode.pushes.append(Push(names[index], index, goal.verified, outcome, model))
            episode.frames.append((sim.boxes(), sim.robot.copy()))
            opening.pushes += 1
            # the robot may end squeezed between the box and a wall: it steps back first
            pusher.walker.step_back(sim.boxes()[index], STEP_BACK * world.robot_radius)
            opening.success = opened(world, sim.boxes(), sim.robot, blockers[0], clearance)
            last_failure = outcome.failure
        opening.wall_seconds = time.perf_counter() - opening_started
        if not opening.success:
            episode.failure = opening.failure
            break
    episode.robot_path = sim.path
    episode.sim_seconds = float(sim.data.time)
    episode.wall_seconds = time.perf_counter() - started
    return episode


# ----------------------------------------------------------------------------- tables
def summarize(episodes: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The planner-level metrics of ``episodes`` (:meth:`Episode.to_dict` records; one
    strategy, any scenes). Pushes per opening count the openings that succeeded (``_all``:
    every opening, failed ones with the pushes they spent). A push lands when the box ends
    within 5 cm and 10 degrees of its goal (``verified_``: of the pushes to verified poses;
    the others are fallbacks no check vouched for). Seconds per opening: all the episodes'
    wall time over their openings, and the median of each episode's ratio (``_p50``)."""
    openings = [o for e in episodes for o in e["openings"]]
    pushes = [p for e in episodes for p in e["pushes"]]
    done = [o["pushes"] for o in openings if o["success"]]
    close = [p["position_error"] <= 0.05 and p["yaw_error_deg"] <= 10.0 for p in pushes]
    vouched = [c for c, p in zip(close, pushes, strict=True) if p["verified"]]
    wall = sum(e["wall_seconds"] for e in episodes)
    ratios = [e["wall_seconds"] / len(e["openings"]) for e in episodes if e["openings"]]
    failures: dict[str, int] = {}
    for why in [o["failure"] for o in openings if not o["success"]] + [
        e["failure"] for e in episodes if not e["openings"] and not e["success"]
    ]:
        failures[why or "?"] = failures.get(why or "?", 0) + 1

    def mean(values: Sequence[float]) -> float | None:
        return float(np.mean(values)) if len(values) else None

    return {
        "episodes": len(episodes),
        "success": mean([e["success"] for e in episodes]),
        "openings": len(openings),
        "opening_success": mean([o["success"] for o in openings]),
        "pushes_per_opening_median": float(np.median(done)) if done else None,
        "pushes_per_opening_mean": mean(done),
        "pushes_per_opening_all_mean": mean([o["pushes"] for o in openings]),
        "pushes": len(pushes),
        "pushes_within_5cm_10deg": mean(close),
        "verified_pushes": len(vouched),
        "verified_pushes_within_5cm_10deg": mean(vouched),
        "robot_path_mean": mean([e["robot_path"] for e in episodes]),
        "sim_seconds_mean": mean([e["sim_seconds"] for e in episodes]),
        "wall_seconds_per_opening": wall / max(len(openings), 1),
        "wall_seconds_per_opening_p50": float(np.median(ratios)) if ratios else None,
        "model_share": sum(e["model_seconds"] for e in episodes) / wall if wall else 0.0,
        "failures": failures,
    }
