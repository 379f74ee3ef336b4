"""The independent judge of push plans (goalgen.eval.near.push_plan_valid) on hand-built scenes
whose answers follow from their geometry: a 4 m world, a 0.6 x 0.3 m box at (2, 2) lying
along x, a robot of radius 0.2 m."""

from __future__ import annotations

import numpy as np

from goalgen.eval import near
from test_near import RADIUS, wall, world_scene

BOX = [2.0, 2.0, 0.6, 0.3, 0.0]  # x in [1.7, 2.3], y in [1.85, 2.15]
LEFT_CONTACT = (1.7 - RADIUS, 2.0)  # the robot touching the box's left face


def slide(box_start, box_end, robot_start) -> dict:
    shift = np.subtract(box_end[:2], box_start[:2])
    return {
        "kind": "slide",
        "box_start": list(box_start),
        "box_end": list(box_end),
        "robot_start": list(robot_start),
        "robot_end": list(np.add(robot_start, shift)),
    }


def turn(box_start, yaw, robot_start) -> dict:
    return {
        "kind": "turn",
        "box_start": list(box_start),
        "box_end": [box_start[0], box_start[1], yaw],
        "robot_start": list(robot_start),
        "robot_end": list(robot_start),
    }


def judge(scene, pose, plan, clearance=0.0) -> tuple[bool, str | None]:
    poses = np.array([pose], dtype=np.float64)
    valid = near.push_plan_valid(scene, poses, [plan], clearance)[0]
    reason = near.push_plan_reasons(scene, poses, [plan], clearance)[0]
    assert valid == (reason is None)
    return bool(valid), reason


def test_a_one_segment_push_from_behind_is_valid():
    scene = world_scene([], [BOX], robot=(0.5, 0.5))
    plan = [slide((2.0, 2.0, 0.0), (3.0, 2.0, 0.0), LEFT_CONTACT)]
    assert judge(scene, (3.0, 2.0, 0.0), plan) == (True, None)
    assert judge(scene, (3.0, 2.0, np.pi), plan)[0]  # the same box pose (a half-turn symmetry)
    assert judge(scene, (2.0, 2.0, 0.0), []) == (True, None)  # not moved
    assert not judge(scene, (3.0, 2.0, 0.0), [])[0]


def test_a_turn_then_a_slide_is_valid():
    """Turn a quarter turn counter-clockwise, pushing up on the bottom face near its right end,
    then push the box (now along y) up from below. After the turn the robot stands where it
    pushed, 7 cm from the box's corner, inside its grown shape: it backs off."""
    scene = world_scene([], [BOX], robot=(0.5, 0.5))
    plan = [
        turn((2.0, 2.0, 0.0), np.pi / 2, (2.2, 1.85 - RADIUS)),
        slide((2.0, 2.0, np.pi / 2), (2.0, 3.0, np.pi / 2), (2.0, 1.7 - RADIUS)),
    ]
    assert judge(scene, (2.0, 3.0, -np.pi / 2), plan) == (True, None)
    assert not judge(scene, (2.0, 2.0, np.pi / 2), [turn((2.0, 2.0, 0.0), np.pi / 2, (2.2, 2.0))])[
        0
    ]


def test_a_slide_through_a_wall_is_invalid():
    """A wall piece at x in [2.45, 2.55] across the box's path; the goal pose (x in [2.7, 3.3])
    and the start are clear of it."""
    scene = world_scene([wall(2.45, 1.8, 2.55, 2.2)], [BOX], robot=(0.5, 0.5))
    assert near.world_valid(scene, np.array([[3.0, 2.0, 0.0]]))[0]
    plan = [slide((2.0, 2.0, 0.0), (3.0, 2.0, 0.0), LEFT_CONTACT)]
    valid, reason = judge(scene, (3.0, 2.0, 0.0), plan)
    assert not valid and "sweep hits" in reason


def test_pushing_from_a_pocket_the_robot_cannot_reach_is_invalid():
    """A pocket right of the box (walls at y 2.4-2.5 and 1.5-1.6 from x = 2.35, closed at
    x = 3.2-3.3): its mouth, between the box's corners and the walls' ends, is 0.25 m wide,
    narrower than the robot. Pushing the box left from inside it is impossible; pushing it
    right into the pocket from outside is fine."""
    walls = [wall(2.35, 2.4, 3.3, 2.5), wall(2.35, 1.5, 3.3, 1.6), wall(3.2, 1.5, 3.3, 2.5)]
    scene = world_scene(walls, [BOX], robot=(0.5, 0.5))
    from_pocket = [slide((2.0, 2.0, 0.0), (1.0, 2.0, 0.0), (2.3 + RADIUS, 2.0))]
    valid, reason = judge(scene, (1.0, 2.0, 0.0), from_pocket)
    assert not valid and "cannot reach" in reason
    into_pocket = [slide((2.0, 2.0, 0.0), (2.7, 2.0, 0.0), LEFT_CONTACT)]
    assert judge(scene, (2.7, 2.0, 0.0), into_pocket) == (True, None)


def test_a_pull_is_invalid():
    scene = world_scene([], [BOX], robot=(0.5, 0.5))
    pull = [slide((2.0, 2.0, 0.0), (3.0, 2.0, 0.0), (2.3 + RADIUS, 2.0))]  # in front of it
    valid, reason = judge(scene, (3.0, 2.0, 0.0), pull)
    assert not valid and "pulls" in reason
    apart = [slide((2.0, 2.0, 0.0), (3.0, 2.0, 0.0), (1.7 - RADIUS - 0.05, 2.0))]
    assert "not at the box" in judge(scene, (3.0, 2.0, 0.0), apart)[1]


def test_a_broken_chain_is_invalid():
    scene = world_scene([], [BOX], robot=(0.5, 0.5))
    first = slide((2.0, 2.0, 0.0), (2.5, 2.0, 0.0), LEFT_CONTACT)
    gap = slide((2.55, 2.0, 0.0), (3.05, 2.0, 0.0), (2.25 - RADIUS, 2.0))  # starts 5 cm on
    valid, reason = judge(scene, (3.05, 2.0, 0.0), [first, gap])
    assert not valid and reason.startswith("segment 1") and "box_start" in reason
    second = slide((2.5, 2.0, 0.0), (3.0, 2.0, 0.0), (2.2 - RADIUS, 2.0))
    assert judge(scene, (3.0, 2.0, 0.0), [first, second]) == (True, None)
    assert "does not end at the pose" in judge(scene, (3.1, 2.0, 0.0), [first, second])[1]
    assert not judge(scene, (3.0, 2.0, np.deg2rad(5)), [first, second])[0]  # > 3 degrees off
    assert judge(scene, (3.0, 2.0, np.deg2rad(2)), [first, second])[0]
    elsewhere = slide((2.0, 2.2, 0.0), (3.0, 2.2, 0.0), (1.7 - RADIUS, 2.2))
    assert "current pose" in judge(scene, (3.0, 2.2, 0.0), [elsewhere])[1]


def test_clearance_closes_the_approach_corridor():
    """A wall at x in [1.0, 1.2] across the world with a 0.42 m gap (y in [1.79, 2.21]): the
    robot, left of it, passes with 1 cm to spare on either side to push the box right."""
    box = [2.5, 2.0, 0.6, 0.3, 0.0]
    walls = [wall(1.0, 0.0, 1.2, 1.79), wall(1.0, 2.21, 1.2, 4.0)]
    scene = world_scene(walls, [box], robot=(0.5, 2.0))
    plan = [slide((2.5, 2.0, 0.0), (3.5, 2.0, 0.0), (2.2 - RADIUS, 2.0))]
    assert judge(scene, (3.5, 2.0, 0.0), plan) == (True, None)
    assert judge(scene, (3.5, 2.0, 0.0), plan, clearance=0.009)[0]
    valid, reason = judge(scene, (3.5, 2.0, 0.0), plan, clearance=0.025)
    assert not valid and "cannot reach" in reason


def test_a_turn_pushed_the_other_way_is_refused():
    """Pushing up on the bottom face near its right end turns the box counter-clockwise; the
    same push near its left end turns it clockwise."""
    scene = world_scene([], [BOX], robot=(0.5, 0.5))
    below = 1.85 - RADIUS
    for x, yaw, valid in ((2.2, np.pi / 6, True), (1.8, np.pi / 6, False), (1.8, -np.pi / 6, True)):
        plan = [turn((2.0, 2.0, 0.0), yaw, (x, below))]
        ok, reason = judge(scene, (2.0, 2.0, yaw), plan)
        assert ok == valid, reason
        assert valid or "other way" in reason
