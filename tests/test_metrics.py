"""Metrics on hand-made masks with known answers: overlap, diversity, validity, task success."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from goalgen.eval.metrics import (
    SceneMasks,
    aggregate,
    agreement,
    dice,
    diversity,
    invalid_reason,
    iou,
    map_interior,
    opens_path,
    score_samples,
)
from goalgen.eval.validation import task_metrics

S = 32
GEOMETRY = {"world_bounds": (0.0, 0.0, 3.2, 3.2), "robot_radius": 0.15}  # 0.1 m/px -> 1.5 px


def box(r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
    m = np.zeros((S, S), dtype=bool)
    m[r0:r1, c0:c1] = True
    return m


def corridor_scene() -> dict[str, np.ndarray]:
    """A corridor (rows 12-19) from the robot (left) to its goal (right), blocked by the
    selected box (cols 14-17); an alcove above it (rows 3-11, cols 12-19) takes the box aside.
    Another small box stands against the corridor's upper wall on the right."""
    free = box(12, 20, 1, 31) | box(3, 12, 12, 20)
    target = box(12, 20, 14, 18)  # 8 x 4 = 32 px
    other = box(12, 14, 22, 25)
    return {
        "robot": box(14, 17, 3, 6),
        "goal": box(14, 17, 26, 29),
        "movable": target | other,
        "static": ~free,
        "target_object": target,
        "aside": box(4, 12, 14, 18),
        "other": other,
    }


def scene_masks(truth: np.ndarray | None = None, geometry=GEOMETRY) -> SceneMasks:
    sc = corridor_scene()
    context = np.stack([sc[k] for k in ("robot", "goal", "movable", "static", "target_object")])
    return SceneMasks.from_soft(context.astype(np.float32), truth, geometry)


def test_iou_dice_and_best_of_k_exact_values():
    truth = box(4, 12, 14, 18)  # 32 px
    shifted = box(4, 12, 16, 20)  # overlaps 16 px: IoU 16/48, Dice 32/64
    empty = np.zeros((S, S), dtype=bool)
    assert iou(truth, shifted) == pytest.approx(1 / 3)
    assert dice(truth, shifted) == pytest.approx(0.5)
    assert iou(empty, empty) == 1.0 and dice(empty, empty) == 1.0
    assert iou(truth, empty) == 0.0
    got = agreement(np.stack([truth, shifted, empty]), truth)
    assert got == pytest.approx(
        {"iou_mean": 4 / 9, "dice_mean": 0.5, "best_iou": 1.0, "best_dice": 1.0, "hit": 1.0}
    )
    miss = agreement(np.stack([shifted, empty]), truth)
    assert miss["best_iou"] == pytest.approx(1 / 3) and miss["hit"] == 0.0


def test_diversity_exact_values():
    a, b, empty = box(4, 12, 14, 18), box(4, 12, 16, 20), np.zeros((S, S), dtype=bool)
    # pairs: (a, b) 1 - 1/3, (a, empty) 1, (b, empty) 1
    assert diversity(np.stack([a, b, empty])) == pytest.approx((2 / 3 + 1 + 1) / 3)
    assert diversity(np.stack([a, a, a])) == 0.0
    assert np.isnan(diversity(a[None]))


def test_validity_cases():
    scene = scene_masks()
    aside = corridor_scene()["aside"]
    assert invalid_reason(aside, scene) is None
    speck = aside.copy()
    speck[25, 5] = True
    assert invalid_reason(speck, scene) == "fragmented: 2 blobs"
    assert invalid_reason(box(1, 9, 14, 18), scene) == "collision with static"  # into the wall
    assert invalid_reason(box(12, 20, 20, 24), scene) == "collision with movable"
    assert invalid_reason(box(13, 17, 2, 10), scene) == "collision with robot"
    assert invalid_reason(box(4, 6, 14, 18), scene).startswith("area 8 px outside [20.8, 43.2]")
    assert invalid_reason(box(0, 8, 0, 4), scene) == "outside map"  # touches the image border
    assert invalid_reason(np.zeros((S, S)), scene) == "empty"


def test_a_robot_drawn_larger_than_it_is_collides_at_its_real_size():
    """The planners draw a 0.2 m robot and a 0.25 m goal whatever the robot's size: with the
    world known, a box beside the drawn disk but clear of the real robot is valid."""
    sc = corridor_scene()
    rows, cols = np.mgrid[:S, :S]
    drawn_robot = (rows - 15) ** 2 + (cols - 6) ** 2 <= 3.5**2  # the real robot: 1 px
    drawn_goal = (rows - 15) ** 2 + (cols - 26) ** 2 <= 3.5**2
    context = np.stack([drawn_robot, drawn_goal, sc["movable"], sc["static"], sc["target_object"]])
    small = {"world_bounds": (0.0, 0.0, 3.2, 3.2), "robot_radius": 0.1, "goal_radius": 0.1}
    real = SceneMasks.from_soft(context.astype(np.float32), None, small)
    drawn = SceneMasks.from_soft(context.astype(np.float32), None, None)
    beside_robot, beside_goal, on_robot = box(12, 20, 8, 12), box(14, 20, 20, 25), box(12, 20, 5, 9)
    assert invalid_reason(beside_robot, real) is None
    assert invalid_reason(beside_goal, real) is None
    assert invalid_reason(beside_robot, drawn) == "collision with robot"
    assert invalid_reason(beside_goal, drawn) == "collision with goal"
    assert invalid_reason(on_robot, real) == "collision with robot"
    assert real.robot.sum() == 5 and real.robot[15, 6]  # the 1 px disk around the centre
    without_goal = SceneMasks.from_soft(
        context.astype(np.float32), None, {k: small[k] for k in ("world_bounds", "robot_radius")}
    )
    assert invalid_reason(beside_goal, without_goal) == "collision with goal"


def test_outside_map_when_walls_are_inset():
    static = box(4, 28, 4, 28) & ~box(5, 27, 5, 27)  # a 1-px ring: the map is inside it
    assert map_interior(static)[10, 10] and not map_interior(static)[2, 2]
    context = np.zeros((5, S, S), dtype=np.float32)
    context[3] = static
    context[2] = context[4] = box(10, 12, 10, 14)
    context[0], context[1] = box(20, 22, 8, 10), box(20, 22, 20, 22)
    scene = SceneMasks.from_soft(context)
    assert invalid_reason(box(15, 17, 10, 14), scene) is None
    assert invalid_reason(box(1, 3, 10, 14), scene) == "outside map"  # beyond the walls
    open_static = box(4, 5, 0, S)  # a wall that encloses nothing: everything is the map
    assert map_interior(open_static).all()
    hollow = box(10, 16, 10, 16) & ~box(11, 15, 11, 15)  # a hollow obstacle in an open map
    assert map_interior(hollow).all()


def test_task_success_in_the_blocked_corridor():
    scene = scene_masks()
    sc = corridor_scene()
    assert scene.robot_radius_px == pytest.approx(1.5) and scene.radius_from == "world"
    assert opens_path(sc["aside"], scene)
    assert not opens_path(sc["target_object"], scene)  # left where it is
    assert opens_path(np.zeros((S, S)), scene)  # deleting the object "opens" it ...
    scores = score_samples(np.stack([np.zeros((S, S), bool), sc["aside"]]), scene)
    assert scores["success_rate"] == 0.5  # ... but an empty mask is no valid placement
    assert scores["success_at_1"] == 0.0 and scores["success_at_k"] == 1.0
    # radius from the robot mask's area when the world geometry is unknown
    no_geo = scene_masks(geometry=None)
    assert no_geo.radius_from == "mask" and no_geo.robot_radius_px == pytest.approx(
        np.sqrt(9 / np.pi)
    )


def test_score_samples_and_aggregate():
    sc = corridor_scene()
    scene = scene_masks(truth=sc["aside"].astype(np.float32))
    samples = np.stack([sc["aside"], sc["target_object"], box(1, 9, 14, 18)])
    scores = score_samples(samples, scene)
    assert scores["validity"] == pytest.approx(2 / 3)
    assert scores["success_rate"] == pytest.approx(1 / 3)
    assert scores["success_at_1"] == 1.0 and scores["success_at_k"] == 1.0
    assert scores["invalid"]["collision"] == 1 and scores["hit"] == 1.0
    assert scores["displacement_px"] == pytest.approx(4.0)  # mean of 8 (aside) and 0 (left)
    assert scores["displacement_m"] == pytest.approx(0.4)
    left_first = score_samples(samples[[1, 0]], scene)
    assert left_first["success_at_1"] == 0.0 and left_first["success_at_k"] == 1.0
    agg = aggregate([scores, left_first])
    assert agg["success_at_1"] == 0.5 and agg["hit_at_k"] == 1.0 and agg["scenes"] == 2
    assert agg["invalid"]["collision"] == 1


def test_grey_walls_still_block():
    """Area-downsampled thin walls are grey (< 0.5): they must not vanish."""
    sc = corridor_scene()
    context = np.stack(
        [sc[k] for k in ("robot", "goal", "movable", "static", "target_object")]
    ).astype(np.float32)
    context[3] *= 0.4
    scene = SceneMasks.from_soft(context, None, GEOMETRY)
    assert not opens_path(sc["target_object"], scene) and opens_path(sc["aside"], scene)


def test_task_metrics_on_model_tensors_matches_numpy():
    sc = corridor_scene()
    context = np.stack([sc[k] for k in ("robot", "goal", "movable", "static", "target_object")])
    samples = np.stack([sc["aside"], sc["target_object"]])
    to_model = lambda a: torch.from_numpy(a.astype(np.float32)) * 2 - 1  # noqa: E731
    out = task_metrics(
        to_model(context)[None],
        to_model(sc["aside"])[None, None],
        to_model(samples)[None, :, None],
        GEOMETRY,
    )
    expected = score_samples(samples, scene_masks(sc["aside"].astype(np.float32)))
    assert out["success_rate"] == expected["success_rate"] == 0.5
    assert out["iou_mean"] == pytest.approx(expected["iou_mean"])
    assert out["hit_at_k"] == 1.0 and out["validity"] == 1.0
    assert all(isinstance(v, float) for v in out.values())
    single = task_metrics(to_model(context)[None], None, to_model(sc["aside"])[None, None])
    assert single["success_rate"] == 1.0 and np.isnan(single["diversity"])
    assert "iou_mean" not in single
