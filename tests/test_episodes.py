"""NAMO episodes in MuJoCo physics: the stroke controller against MuJoCo itself, walking round
walls, the episode loop's object choice and openings judged on an independent raster, and
``goalgen-episodes`` end to end."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import shapely
from scipy import ndimage

from data_helpers import write_scene
from goalgen.data import geometry as geo
from goalgen.data.world_scene import WorldScene
from goalgen.eval import episodes, physics
from goalgen.run_episodes import main as episodes_main

pytest.importorskip("mujoco")

RADIUS = 0.15
DOOR = 0.5  # m: the doorway's width in the wall at x = 0


def door_world(boxes: list[tuple[float, ...]], door_at: float = 0.0) -> WorldScene:
    """A 4.4 m square split by a wall along x = 0 with a doorway at ``y = door_at``; the
    robot on the left, its goal on the right; boxes ``(x, y, w, h, yaw)``."""
    low, high = door_at - DOOR / 2, door_at + DOOR / 2
    walls = np.array(
        [
            [0.0, (low - 2.2) / 2, 0.1, low + 2.2, 0.0],
            [0.0, (high + 2.2) / 2, 0.1, 2.2 - high, 0.0],
        ]
    )
    return WorldScene(
        static=walls,
        movable=np.array(boxes, dtype=np.float64).reshape(-1, 5),
        target_index=0,
        robot_xy=np.array([-1.2, 0.0]),
        robot_radius=RADIUS,
        goal_xy=np.array([1.2, 0.0]),
        frame=geo.NamoFrame((0.0, 0.0), 4.4, 64),
        movable_names=tuple(f"box_{i}_movable" for i in range(len(boxes))),
    )


def raster_route_open(world: WorldScene, boxes: np.ndarray, robot, clearance: float) -> bool:
    """Independent judge: a 1 cm raster of the walls and boxes (the frame's own rasteriser),
    grown by the robot's radius + ``clearance`` with a Euclidean distance transform; are the
    robot and its goal in one free component?"""
    x0, y0, x1, y1 = world.frame.bounds
    size = int(np.ceil(max(x1 - x0, y1 - y0) / 0.01))
    frame = geo.NamoFrame.from_bounds(world.frame.bounds, size)
    blocked = np.zeros((size, size), dtype=bool)
    for box in np.concatenate([world.static, boxes]):
        blocked |= frame.box_mask(*box)
    free = ndimage.distance_transform_edt(~blocked) * frame.metres_per_pixel
    free = free > world.robot_radius + clearance
    labels, _ = ndimage.label(free)
    (rc, cc), (rg, cg) = (frame.world_to_pixel(np.asarray(p)) for p in (robot, world.goal_xy))
    near = lambda r, c: labels[max(r - 3, 0) : r + 4, max(c - 3, 0) : c + 4]  # noqa: E731
    ends = [set(np.unique(near(rc, cc))) - {0}, set(np.unique(near(rg, cg))) - {0}]
    return bool(ends[0] & ends[1])


def test_the_stroke_prediction_agrees_with_mujoco_in_open_space():
    """The quasi-static model against MuJoCo on the same strokes: a push through the middle
    of a side slides the box, one near a corner turns it the same way by about as much."""
    box = np.array([0.0, 0.0, 0.4, 0.25, 0.3])
    world = dataclasses.replace(
        door_world([tuple(box)]), static=np.zeros((0, 5)), robot_xy=np.array([1.5, 1.5])
    )
    c, s = np.cos(box[4]), np.sin(box[4])
    normal, along = np.array([-c, -s]), np.array([-s, c])  # the box's -x side
    starts, directions = [], []
    for offset in (0.0, 0.1):
        contact = box[:2] + normal * 0.2 + along * offset
        starts.append(contact + normal * (RADIUS + physics.APPROACH))
        directions.append(-normal)
    travel = physics.APPROACH + 0.15
    predicted = physics.predict_strokes(
        box, np.array(starts), np.array(directions), [travel], RADIUS
    )
    for k in range(2):
        sim = physics.Simulation(world)
        sim.data.qpos[sim._robot] = starts[k] - world.robot_xy
        sim.mujoco.mj_forward(sim.model, sim.data)
        for _ in range(int(round(travel / physics.PUSH_SPEED / physics.TIMESTEP))):
            sim.step(directions[k] * physics.PUSH_SPEED)
        sim.settle(0.3)
        real = sim.box_poses()[0]
        moved = np.hypot(*(real[:2] - box[:2]))
        assert moved > 0.08  # it really was pushed
        assert np.hypot(*(real[:2] - predicted[k, 0, :2])) < 0.03
        assert abs(real[2] - predicted[k, 0, 2]) < np.radians(6)
    # the off-centre stroke turns the box, and both agree on the way
    assert abs(predicted[1, 0, 2] - box[4]) > np.radians(5)
    assert np.sign(predicted[1, 0, 2] - box[4]) == np.sign(real[2] - box[4])


def test_the_walker_goes_round_a_wall_keeping_its_radius():
    world = door_world([(-1.0, 1.5, 0.3, 0.3, 0.0)])
    sim = physics.Simulation(world)
    walker = physics.Walker(sim)
    points = walker.path(np.array([1.2, -0.5]))
    assert points is not None and len(points) >= 3  # not straight through the wall
    dense = np.concatenate(
        [
            a + np.linspace(0, 1, 50)[:, None] * (b - a)
            for a, b in zip(points, points[1:], strict=False)
        ]
    )
    wall_union = shapely.union_all(
        [
            shapely.Polygon(geo.box_corners(*w))
            for w in np.concatenate([world.static, world.movable])
        ]
    )
    gaps = shapely.distance(shapely.points(dense), wall_union)
    assert gaps.min() >= RADIUS  # the walking grid keeps the radius plus its margin
    assert walker.walk(np.array([1.2, -0.5])) is None
    assert np.hypot(*(sim.robot - (1.2, -0.5))) <= physics.REACHED + 1e-6
    assert np.allclose(sim.box_poses()[0, :2], (-1.0, 1.5), atol=1e-3)  # nothing was touched


def test_a_push_lands_the_box_near_its_goal_in_physics():
    world = door_world([(-0.6, 0.6, 0.4, 0.3, 0.0)])
    sim = physics.Simulation(world)
    goal = np.array([-0.3, 1.0, 0.5])
    outcome = physics.push(physics.Pusher(sim), 0, [goal], period=np.pi)
    assert outcome.failure is None
    # no corner further off than the tolerance, give or take the settling after the last stroke
    corners = [geo.box_corners(*p[:2], 0.4, 0.3, p[2]) for p in (outcome.box, goal)]
    assert np.hypot(*(corners[0] - corners[1]).T).max() <= physics.FINAL_TOLERANCE + 0.005
    assert np.allclose(outcome.box, sim.box_poses()[0])  # what physics says, not the plan
    assert outcome.strokes >= 1 and outcome.sim_seconds > 0


def test_holding_the_boxes_at_rest_changes_nothing_physics_would_do():
    """Holding what a stroke cannot touch (the simulation's speed-up) against simulating
    every box. Box 2 rests far off. Alone, box 0 ends where it would have ended. Shoved into
    box 1, that chain is woken and moves. It ends within the spread of MuJoCo's own solver:
    a far box that is not there at all moves the chain's end by about 2 cm too."""
    far = (-1.0, 1.5, 0.3, 0.3, 0.3)
    travel, direction = 0.35, np.array([1.0, 0.0])
    for chain in (False, True):
        boxes = [(-0.8, 0.0, 0.3, 0.3, 0.0)] + [(-0.45, 0.05, 0.2, 0.2, 0.0)] * chain + [far]
        world = door_world(boxes)
        poses = []
        for hold in (True, False):
            sim = physics.Simulation(world)
            if hold:
                sim.wake(sim.robot, sim.robot + direction * travel, travel)
                assert set(sim.held) == {len(boxes) - 1}
            for _ in range(int(round(travel / physics.PUSH_SPEED / physics.TIMESTEP))):
                sim.step(direction * physics.PUSH_SPEED)
            sim.settle(0.3)
            poses.append(sim.box_poses())
        held, full = poses
        assert np.array_equal(held[-1], world.movable[-1, [0, 1, 4]])  # held where it rested
        if not chain:
            assert np.abs(held - full).max() < 1e-6
        else:
            assert np.hypot(*(full[1, :2] - world.movable[1, :2])) > 0.05  # really shoved
            assert np.hypot(*(held[:, :2] - full[:, :2]).T).max() < 0.03
            assert np.abs(held[:, 2] - full[:, 2]).max() < np.radians(3)


def test_the_object_chosen_is_the_one_on_the_shortest_route():
    """Two boxes each block a doorway: the one in the door on the straight line is chosen;
    a box that blocks nothing is not."""
    world = door_world([(0.0, 0.0, 0.4, 0.4, 0.0), (-1.0, 1.5, 0.3, 0.3, 0.0)])
    chosen = episodes.choose_objects(world, world.movable, world.robot_xy, 0.025)
    assert [b.index for b in chosen] == [0] and chosen[0].opens_route


def test_an_episode_opens_the_door_judged_on_an_independent_raster():
    world = door_world([(0.0, 0.0, 0.4, 0.4, 0.0)])
    assert not raster_route_open(world, world.movable, world.robot_xy, 0.025)
    asked = []

    def aside(now: WorldScene, rng, seed) -> episodes.Goal:
        asked.append(now.target_index)
        return episodes.Goal([np.array([0.6, 0.7, 0.0])], verified=False)

    episode = episodes.run_episode(world, aside, seed=3)
    assert episode.success and asked == [0]
    boxes, robot = episode.frames[-1]
    assert raster_route_open(world, boxes, robot, 0.025)
    assert episode.openings[0].success and episode.openings[0].pushes == len(episode.pushes)


def test_a_goal_that_leaves_the_door_blocked_fails_the_opening():
    world = door_world([(0.0, 0.0, 0.4, 0.4, 0.0)])

    def nudge(now: WorldScene, rng, seed) -> episodes.Goal:
        box = now.movable[0]
        return episodes.Goal([np.array([box[0] + 0.05, box[1], 0.0])], verified=False)

    episode = episodes.run_episode(world, nudge, pushes_per_opening=2)
    assert not episode.success and episode.failure is not None
    assert episode.openings[0].pushes == 2
    boxes, robot = episode.frames[-1]
    assert not raster_route_open(world, boxes, robot, 0.025)


def test_episodes_repeat_with_the_same_seed():
    world = door_world([(0.0, 0.0, 0.4, 0.4, 0.0), (-1.0, 1.5, 0.3, 0.3, 0.0)])
    runs = []
    for _ in range(2):
        strategy = episodes.make_strategy("random", radius=1.0)
        episode = episodes.run_episode(world, strategy, seed=7, budget=2)
        runs.append(episode.to_dict())
    for run in runs:
        run.pop("wall_seconds"), run.pop("model_seconds")
        for p in run["pushes"]:
            p.pop("wall_seconds"), p.pop("model_seconds")
        for o in run["openings"]:
            o.pop("wall_seconds")
    assert runs[0] == runs[1]


def test_goalgen_episodes_writes_a_table_of_strategies(tmp_path, capsys):
    world = door_world([(0.0, 0.0, 0.4, 0.4, 0.0)])
    folder = tmp_path / "doors"
    folder.mkdir()
    np.savez(folder / "door.npz", **world.arrays())
    out = tmp_path / "episodes.json"
    code = episodes_main(
        [
            "planner",
            str(folder),
            "--strategy",
            "proposals,random",
            "--budget",
            "3",
            "--json",
            str(out),
            "--png-dir",
            str(tmp_path / "png"),
        ]
    )
    assert code == 0, capsys.readouterr().err
    report = json.loads(out.read_text())
    assert set(report["summary"]["doors"]) == {"proposals", "random"}
    assert [e["strategy"] for e in report["episodes"]] == ["proposals", "random"]
    for e in report["episodes"]:  # each push names its box and says where it ended
        assert {p["box"] for p in e["pushes"]} <= {"box_0_movable"}
        assert all(len(p["end"]) == 3 and len(p["goal"]) == 3 for p in e["pushes"])
    assert (tmp_path / "png" / "doors_door_proposals.png").exists()
    assert "pushes/opening" in capsys.readouterr().out


def test_goalgen_episodes_names_a_scene_without_geometry(tmp_path, capsys):
    path = write_scene(tmp_path / "masks_only.npz")
    code = episodes_main(
        ["planner", str(path), "--strategy", "random", "--json", str(tmp_path / "o.json")]
    )
    err = capsys.readouterr().err
    assert code == 1 and "masks_only.npz" in err and "no world geometry" in err


def test_goalgen_episodes_runs_a_planner_xml_and_opens_its_doorway(tmp_path, capsys):
    """namo_cpp's naming (walls under ``walls``, ``*_movable`` boxes on free joints): the
    episode chooses the box in the doorway itself and pushes it out of the way."""
    from test_planner_scene import write_scene as write_xml

    xml = write_xml(tmp_path)
    out = tmp_path / "xml.json"
    code = episodes_main(
        ["planner", "--xml", str(xml), "--strategy", "random_local", "--json", str(out)]
    )
    assert code == 0, capsys.readouterr().err
    [episode] = json.loads(out.read_text())["episodes"]
    assert episode["success"], episode
    assert [o["box"] for o in episode["openings"]] == ["obstacle_1_movable"]


def two_doors_world() -> WorldScene:
    """Walls along x = -0.5 and x = +0.5, each with a doorway at y = 0 closed by a box: the
    boxes block in series."""
    world = door_world([(-0.5, 0.0, 0.4, 0.4, 0.0), (0.5, 0.0, 0.4, 0.4, 0.0)])
    walls = np.concatenate([world.static + (x, 0, 0, 0, 0) for x in (-0.5, 0.5)])
    return dataclasses.replace(world, static=walls, robot_xy=np.array([-1.5, 0.0]))


def test_boxes_in_series_are_opened_one_region_at_a_time():
    world = two_doors_world()
    [first] = episodes.choose_objects(world, world.movable, world.robot_xy, 0.025)
    assert first.index == 0 and not first.opens_route
    # the first opening's goal: by the second box, in the region between the walls
    assert -0.5 < first.goal[0] < 0.5 and abs(first.goal[1]) < 0.5
    asked = []

    def through_and_aside(now: WorldScene, rng, seed) -> episodes.Goal:
        asked.append((now.target_index, now.goal_xy.copy()))
        box = now.target
        return episodes.Goal([np.array([box[0] + 0.45, 0.75, 0.0])], verified=False)

    episode = episodes.run_episode(world, through_and_aside, budget=4)
    assert episode.success, episode.to_dict()
    assert [i for i, _ in asked] == [0, 1] and len(episode.openings) == 2
    assert np.allclose(asked[1][1], world.goal_xy)  # the second opening aims at the real goal
    boxes, robot = episode.frames[-1]
    assert raster_route_open(world, boxes, robot, 0.025)
    _, middle = episode.frames[1]
    assert not raster_route_open(world, episode.frames[1][0], middle, 0.025)


def test_a_second_blocker_closes_the_route_in_series_on_the_raster():
    from goalgen.data.synthetic import generate_scene
    from goalgen.eval.episode_scenes import add_second_blocker

    made = 0
    for seed in range(4):
        arrays = generate_scene(np.random.SeedSequence(seed, spawn_key=(7,)), 64, family="rooms")
        world = WorldScene.from_arrays(arrays, "rooms")
        two = add_second_blocker(world, np.random.default_rng(0))
        if two is None:
            continue
        made += 1
        first, second = world.target_index, len(two.movable) - 1

        def open_without(*gone: int, scene: WorldScene = two) -> bool:
            boxes = np.delete(scene.movable, list(gone), 0)
            return raster_route_open(scene, boxes, scene.robot_xy, 0.0)

        assert not open_without() and not open_without(first) and not open_without(second)
        assert open_without(first, second)
        assert np.allclose(two.movable[:-1], world.movable)  # the scene's own boxes unmoved
    assert made >= 2


def test_stepping_back_leaves_the_robot_clear_of_the_box():
    world = dataclasses.replace(
        door_world([(-0.6, 0.6, 0.6, 0.4, 0.3)]), robot_xy=np.array([-0.6, 0.23])
    )
    sim = physics.Simulation(world)
    walker = physics.Walker(sim)
    box = sim.boxes()[0]
    outline = shapely.Polygon(geo.box_corners(*box))
    assert outline.distance(shapely.Point(*sim.robot)) < RADIUS + 0.02  # it starts by the box
    assert walker.step_back(box, 3 * RADIUS) is None
    gap = outline.distance(shapely.Point(*sim.robot))
    assert 3 * RADIUS - physics.REACHED <= gap <= 3 * RADIUS + 0.1  # clear, and no further
    assert np.allclose(sim.boxes()[0], box, atol=1e-3)  # it did not drag the box along


def test_the_summary_counts_landings_of_verified_pushes_apart():
    def push(verified: bool, position: float, yaw: float) -> dict:
        return {"verified": verified, "position_error": position, "yaw_error_deg": yaw}

    def episode(pushes: list[dict], seconds: float, openings: int) -> dict:
        opened = {"success": True, "pushes": len(pushes), "failure": None}
        return {
            "success": True,
            "failure": None,
            "openings": [opened] * openings,
            "pushes": pushes,
            "wall_seconds": seconds,
            "model_seconds": 0.0,
            "robot_path": 1.0,
            "sim_seconds": 1.0,
        }

    summary = episodes.summarize(
        [
            episode([push(True, 0.01, 2.0), push(False, 0.3, 40.0)], 3.0, 1),
            episode([push(True, 0.04, 12.0)], 1.0, 2),  # off by 12 degrees: not landed
            episode([push(False, 0.02, 1.0)], 0.5, 1),
        ]
    )
    assert summary["pushes_within_5cm_10deg"] == 0.5  # 2 of 4
    assert summary["verified_pushes"] == 2 and summary["verified_pushes_within_5cm_10deg"] == 0.5
    assert summary["wall_seconds_per_opening"] == 4.5 / 4
    assert summary["wall_seconds_per_opening_p50"] == 0.5  # of 3.0, 0.5 and 0.5


def test_a_push_that_stops_getting_nearer_gives_up(monkeypatch):
    """The model promises every stroke lands the box on its goal, behind a wall: once the
    box is against the wall no stroke brings it nearer, and the push ends there instead of
    spending all its strokes."""
    world = door_world([(-0.21, 1.0, 0.3, 0.3, 0.0)])  # 1 cm off the wall
    goal = np.array([0.6, 1.0, 0.0])
    monkeypatch.setattr(
        physics,
        "predict_strokes",
        lambda box, starts, directions, marks, radius: np.tile(goal, (len(starts), len(marks), 1)),
    )
    pusher = physics.Pusher(physics.Simulation(world))
    assert pusher.push_to(0, goal, np.pi / 2, physics.FINAL_TOLERANCE) == "no progress"
    # a few strokes while it still nears the wall, then STALL + 1 that do not
    assert pusher.strokes <= physics.STALL + 8 < physics.MAX_STROKES
