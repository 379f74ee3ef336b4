"""Proposals a planner can trust (goalgen.infer.proposals with .push_plan): the clearance, the
pushability of a pose, the ranking by room, each confirmed by an independent implementation:
the shapely judge of goalgen.eval.near (robot grown by radius + clearance, push plans checked
segment by segment) or the fine raster of test_planner_scene."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import shapely

from goalgen.data.mujoco_scene import load_mujoco_scene
from goalgen.eval import near
from goalgen.infer.proposals import propose
from goalgen.infer.propose_scene import CLEARANCE, Checker, as_scene
from test_planner_scene import GOAL, OBJECT, PILLAR, ROBOT, WALLS, FineWorld, write_scene
from test_proposals import FREE, PULLED, Oracle

pytest.importorskip("mujoco")

OUTER = {k: WALLS[k] for k in ("wall_0", "wall_1", "wall_2", "wall_3")}


def _judge(scene, proposals, clearance: float) -> np.ndarray:
    """``(K,)`` bool: the independent judge's verdict on proposals (placement, route, plan)."""
    arrays = scene.world.arrays()
    poses = np.array([[p.x, p.y, p.theta] for p in proposals]).reshape(-1, 3)
    plans = [[s.to_dict() for s in p.segments] for p in proposals]
    return (
        near.world_valid(arrays, poses, clearance)
        & near.opens_route(arrays, poses, clearance)
        & near.push_plan_valid(arrays, poses, plans, clearance)
    )


def test_a_route_with_a_centimetre_to_spare_is_refused_at_the_default_clearance(tmp_path):
    """A wall at x = 0 leaves one gap of 0.32 m (y 0 .. 0.32): the robot (0.15 m) passes it
    with 1 cm each side; the box stands out of the way in the left room."""
    walls = OUTER | {
        "wall_4": (0.0, -0.75, 0.05, 0.75, 0.0),  # y -1.5 .. 0
        "wall_5": (0.0, 0.91, 0.05, 0.59, 0.0),  # y 0.32 .. 1.5
    }
    xml = write_scene(tmp_path, walls=walls, movable={OBJECT: (-1.2, 0.9, 0.15, 0.3, 0.0)})
    scene = as_scene(xml, object_name=OBJECT)
    arrays = scene.world.arrays()
    box = scene.target
    fine = FineWorld(scene.frame.bounds, np.concatenate([scene.world.static]), [PILLAR[1]])
    for clearance, expected in ((0.0, True), (CLEARANCE, False)):
        checker = Checker(scene, clearance)
        assert checker.route_exists == expected
        assert checker.opens(box[None])[0] == expected
        assert fine.route_possible(box, ROBOT[:2], GOAL, 0.15 + clearance) == expected
        assert near.opens_route(arrays, box[None, [0, 1, 4]], clearance)[0] == expected
    assert CLEARANCE >= 0.025  # at least half a 5 cm grid cell


def test_a_pose_the_box_reaches_only_through_a_wall_is_never_verified(tmp_path):
    """A walled enclosure in the right room: a pose inside it is clear of everything and
    leaves the route open, but no push gets the box there."""
    pen = {  # x 0.3 .. 1.1, y -1.3 .. -0.5
        "pen_0": (0.7, -0.5, 0.43, 0.03, 0.0),
        "pen_1": (0.7, -1.3, 0.43, 0.03, 0.0),
        "pen_2": (0.3, -0.9, 0.03, 0.43, 0.0),
        "pen_3": (1.1, -0.9, 0.03, 0.43, 0.0),
    }
    xml = write_scene(tmp_path, walls=WALLS | pen)
    scene = as_scene(xml, object_name=OBJECT)
    inside = (0.7, -0.9, 0.0)
    result = propose(Oracle(scene.frame, [inside, FREE]), scene, num_samples=2)
    penned, free = result.candidates
    assert penned.collision_free and penned.opens_path
    assert not penned.verified and not penned.reachable and not penned.segments
    assert free.verified and _judge(scene, [free], CLEARANCE)[0]
    # independently: the box's centre would have to cross a wall (shapely pieces)
    walls = shapely.union_all([shapely.Polygon(_corners(b)) for b in scene.world.static])
    pieces = list(shapely.box(*scene.frame.bounds).difference(walls).geoms)
    start = shapely.Point(*scene.target[:2])
    goal = shapely.Point(*inside[:2])
    assert not any(p.contains(start) and p.contains(goal) for p in pieces)


def test_a_pose_reached_only_by_pulling_is_never_verified(tmp_path):
    """The box closes the door; from the left room the robot can only push it right. Moving it
    left is a pull (never verified); with the robot and its goal swapped it is a push."""
    xml = write_scene(tmp_path)
    scene = as_scene(xml, object_name=OBJECT)
    left = (-0.6, 0.55, 0.0)  # through the door to the left, as FREE goes to the right
    result = propose(Oracle(scene.frame, [PULLED, left]), scene, num_samples=2)
    for pulled in result.candidates:
        assert pulled.collision_free and pulled.opens_path and not pulled.verified
        assert pulled.reason == "no push within the search radius"
    # independently: with the box in the door the robot (grown by the clearance) never gets
    # right of the wall, where it would have to stand to push the box left
    world = scene.world
    grown = [
        shapely.Polygon(_corners(b)).buffer(world.robot_radius + CLEARANCE)
        for b in np.concatenate([world.static, world.movable])
    ]
    free = shapely.box(*scene.frame.bounds).difference(shapely.union_all(grown))
    mine = next(p for p in free.geoms if p.contains(shapely.Point(*world.robot_xy)))
    assert mine.bounds[2] < 0.0
    # the robot on the other side, its goal in the left room: the same pose is a push
    xml = write_scene(tmp_path, robot=(1.5, 0.3, 0.15), goal=(-1.2, -0.8))
    swapped = as_scene(xml, object_name=OBJECT)
    pushed = propose(Oracle(swapped.frame, [left]), swapped, num_samples=1).candidates[0]
    assert pushed.verified and pushed.segments[0].robot_start[0] > 0.15
    assert _judge(swapped, [pushed], CLEARANCE)[0]


def test_ranking_prefers_a_roomy_pose_to_a_slightly_shorter_tight_one(tmp_path):
    """Pushed 0.6 m through the door the box leaves the robot a 0.4 m gap past it (5 cm each
    side), pushed 0.68 m a 0.48 m one (9 cm): 8 cm more push for 4 cm more room."""
    scene = as_scene(write_scene(tmp_path), object_name=OBJECT)
    tight, roomy = (0.6, 0.55, 0.0), (0.68, 0.55, 0.0)
    result = propose(Oracle(scene.frame, [tight, roomy]), scene, 2, merge_distance=0.05)
    by = {p.index: p for p in result.candidates}
    assert by[0].verified and by[1].verified and by[0].push_distance < by[1].push_distance
    assert [p.index for p in result] == [1, 0]
    assert by[0].room < by[1].room
    # independently: only the roomy pose leaves a route for the robot grown by 7 cm
    poses = np.array([tight, roomy])
    assert near.opens_route(scene.world.arrays(), poses, 0.07).tolist() == [False, True]
    assert near.opens_route(scene.world.arrays(), poses, CLEARANCE).tolist() == [True, True]
    # by push distance alone (no weight on room) the tight one would come first
    assert by[0].push_distance + 0.05 < by[1].push_distance


def _generated_and_verified(tmp_path, family: str, seed: tuple, spread: float, rng, clearance):
    """A generated scene of ``family`` (``seed``: entropy, spawn key), its arrays, and its
    verified proposals among its first 40 feasible poses and 60 random poses within ``spread``
    m of the box."""
    from goalgen.data.synthetic import generate_scene, save_npz

    arrays = generate_scene(np.random.SeedSequence(seed[0], spawn_key=seed[1:]), 224, family=family)
    save_npz(tmp_path / f"{family}.npz", arrays)
    scene = as_scene(tmp_path / f"{family}.npz")
    w, h = scene.target[2:4]
    lo, hi = np.array(scene.target[:2]) - spread, np.array(scene.target[:2]) + spread
    randoms = np.column_stack([rng.uniform(lo, hi, (60, 2)), rng.uniform(0, np.pi, 60)])
    poses = np.concatenate([arrays["feasible_poses"][:40], randoms])
    oracle = Oracle(scene.frame, [tuple(p) for p in poses], (w, h))
    result = propose(oracle, scene, len(poses), clearance=clearance)
    return scene, arrays, [c for c in result.candidates if c.verified]


@pytest.mark.parametrize("clearance", [0.0, CLEARANCE])
def test_every_verified_proposal_passes_the_independent_judge(tmp_path, clearance):
    """Random poses in the room, and a generated maze's feasible poses with random ones: what
    verifies is collision-free, opens the route and has a push plan the judge accepts."""
    rng = np.random.default_rng(4)
    room = as_scene(write_scene(tmp_path), object_name=OBJECT)
    poses = np.column_stack(
        [rng.uniform(-1.9, 1.9, (120, 2)), rng.uniform(-np.pi, np.pi, 120)]
    ).tolist()
    result = propose(Oracle(room.frame, poses + [FREE]), room, 121, clearance=clearance)
    verified = [c for c in result.candidates if c.verified]
    assert len(verified) >= 5
    assert _judge(room, verified, clearance).all()

    maze, _, verified = _generated_and_verified(tmp_path, "maze", (11, 2), 1.5, rng, clearance)
    assert all(np.isfinite(c.push_distance) and c.segments for c in verified)
    assert _judge(maze, verified, clearance).all()

    # a small arena: a robot of a few centimetres, drawn as the planners' 0.2 m disk
    arena, arrays, verified = _generated_and_verified(
        tmp_path, "arena", (12, 1), 0.6, rng, clearance
    )
    radius = float(arrays["robot_radius"])
    assert radius < 0.1 and arena.robot_radius == radius
    assert len(verified) >= 3 and all(np.isfinite(c.push_distance) for c in verified)
    assert _judge(arena, verified, clearance).all()
    # the ranking asks a small robot for room in proportion to it (mazes: 5 cm beyond)
    assert Checker(arena, clearance).room_wanted == pytest.approx(clearance + radius / 3)
    assert Checker(maze, clearance).room_wanted == pytest.approx(clearance + 0.05)


def test_a_scene_without_a_walls_body_warns_once_naming_its_bodies(tmp_path):
    xml = write_scene(tmp_path)
    text = xml.read_text().replace('<body name="walls">', '<body name="boundary">')
    xml.write_text(text)
    with pytest.warns(UserWarning, match=r"no body named 'walls'.*boundary"):
        load_mujoco_scene(xml, OBJECT)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_mujoco_scene(xml, OBJECT)  # once per file
        (tmp_path / "ok").mkdir()
        load_mujoco_scene(write_scene(tmp_path / "ok"), OBJECT)  # a walls body: no warning


def _corners(box) -> np.ndarray:
    from goalgen.data.geometry import box_corners

    return box_corners(*(float(v) for v in box))


@pytest.mark.parametrize("where", ["robot", "goal"])
def test_a_robot_or_goal_a_centimetre_from_a_wall_still_gets_verified_proposals(tmp_path, where):
    """The robot may start and end closer than the clearance to a wall (1 cm here, at y = -1.45
    and 1.45): the route grid joins such points through a wider neighbourhood, and the judge
    lets them join the free space within the clearance."""
    kw = {"robot": (-1.2, -1.29, 0.15)} if where == "robot" else {"goal": (1.3, 1.29)}
    scene = as_scene(write_scene(tmp_path, **kw), object_name=OBJECT)
    result = propose(Oracle(scene.frame, [FREE]), scene, num_samples=1)
    assert result.checker.route_exists
    assert result.candidates[0].verified, result.candidates[0].reason
    assert _judge(scene, result.candidates, CLEARANCE).all()


def test_pushes_keep_the_box_inside_the_map(tmp_path):
    """Without outer walls the map is the geometry's padded extent: verified proposals near
    its edge have plans whose every push keeps the box inside it (the judge checks it)."""
    walls = {
        "wall_4": WALLS["wall_4"],
        "wall_5": WALLS["wall_5"],
        "corner_0": (-2.0, -1.5, 0.02, 0.02, 0.0),
        "corner_1": (2.0, 1.5, 0.02, 0.02, 0.0),
    }
    scene = as_scene(write_scene(tmp_path, walls=walls, pillar=None), object_name=OBJECT)
    x0, y0, x1, y1 = scene.frame.bounds
    rng = np.random.default_rng(0)
    margin = rng.uniform(0.16, 0.4, 150)
    poses = np.column_stack(
        [rng.uniform(x0 + 0.2, x1 - 0.2, 150), y1 - margin, rng.uniform(0, 3, 150)]
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no walls body
        result = propose(Oracle(scene.frame, poses.tolist()), scene, len(poses))
    verified = [c for c in result.candidates if c.verified]
    assert len(verified) >= 3
    assert _judge(scene, verified, CLEARANCE).all()


def test_a_field_path_grazing_a_wall_is_planned_again_keeping_off_walls():
    """A cell of the push field is an obstacle's only when its centre lies within half a cell
    of one, so the field's shortest path may graze a wall and its plan sweep the box into it.
    Such poses (ground-truth poses of a generated arena) are planned again along the field
    that keeps whole cells off walls and boxes: the judge accepts those plans, and their push
    distance is that field's, never shorter than the first field's."""
    from goalgen.data.synthetic import generate_scene
    from goalgen.data.world_scene import WorldScene

    arrays = generate_scene(np.random.SeedSequence(20, spawn_key=(1,)), 224, family="arena")
    scene = as_scene(WorldScene.from_arrays(arrays, "arena"))
    checker = Checker(scene)
    w, h = scene.target[2:4]
    poses = arrays["feasible_poses"][:20]
    first = checker._push_planner(checker.push)  # the first field's plans alone
    grazing = [p for p in poses if "sweeps the box" in (first.check(p)[1] or "")]
    assert len(grazing) >= 3
    plans, distances = [], []
    for x, y, yaw in grazing:
        segments, failure, distance = checker.plan_with_distance(np.array([x, y, w, h, yaw]))
        assert failure is None
        plans.append([s.to_dict() for s in segments])
        distances.append(distance)
    grazing = np.array(grazing)
    boxes = np.column_stack([grazing[:, :2], np.tile([w, h], (len(grazing), 1)), grazing[:, 2]])
    assert (np.array(distances) >= checker.push_distance(boxes) - 1e-9).all()
    assert near.push_plan_valid(scene.world.arrays(), grazing, plans, CLEARANCE).all()
