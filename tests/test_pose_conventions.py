"""Mask -> world pose in each scene file's own image convention (issue 13/14: maze files and
planner scenes put row 0 at y_min, rooms files at y_max). The reference is the pose the
generator stored (``target_goal_box``), not the mask code."""

from __future__ import annotations

import numpy as np
import pytest

from goalgen.data import synthetic as synth
from goalgen.data.pack import resize_masks
from goalgen.data.synthetic import maze
from goalgen.infer.poses import mask_to_pose, pose_frame

SIZE = 224


def _scenes() -> list[tuple[str, dict[str, np.ndarray]]]:
    opts = maze.MazeOptions(grid_size=5)
    out = []
    for i in range(3):
        seq = np.random.SeedSequence(21, spawn_key=(i,))
        out.append(("maze", maze.generate_scene(seq, SIZE, opts)))
        out.append(("rooms", synth.generate_scene(np.random.SeedSequence(22, spawn_key=(i,)))))
    return out


SCENES = _scenes()


def _geometry(scene) -> dict:
    return {
        "world_bounds": scene["world_bounds"],
        "image_convention": int(scene.get("image_convention", 0)),
        "image_size": scene["target_goal"].shape[-1],
    }


def _long_side_angle(box: np.ndarray) -> float:
    _, _, w, h, yaw = box
    return float((yaw if w >= h else yaw + np.pi / 2) % np.pi)


def _angle_gap(a: float, b: float) -> float:
    d = (a - b) % np.pi
    return min(d, np.pi - d)


@pytest.mark.parametrize("size", [SIZE, 64])
@pytest.mark.parametrize("family,scene", SCENES, ids=[f"{f}{i}" for i, (f, _) in enumerate(SCENES)])
def test_ground_truth_mask_maps_to_the_stored_goal_pose(family, scene, size):
    truth = scene["target_goal"].astype(np.float32) / 255
    soft = resize_masks(truth[None], size)[0]
    mask = soft >= 0.5
    frame = pose_frame(_geometry(scene), size)
    pose, reason = mask_to_pose(mask, float(soft.sum()), frame=frame)
    assert reason is None, reason
    box = np.asarray(scene["target_goal_box"], dtype=np.float64)
    cell = frame.side / size
    assert np.hypot(*(np.array(pose.center_world) - box[:2])) <= 0.75 * cell, family
    short = min(box[2], box[3])
    if abs(box[2] - box[3]) > 2 * cell:  # a square-ish box has no long side to compare
        # the angle one cell subtends across the box, plus a little for the rasterisation
        tol = np.degrees(np.arctan(cell / short)) + 3.0
        assert np.degrees(_angle_gap(pose.angle_world, _long_side_angle(box))) <= tol
    assert pose.size_world[0] == pytest.approx(max(box[2], box[3]), abs=1.5 * cell)
    assert pose.size_world[1] == pytest.approx(short, abs=1.5 * cell)


def test_reading_a_maze_file_in_the_rooms_convention_would_mirror_it():
    """The bug this guards against: one pixel-to-world map for both conventions."""
    scene = next(s for f, s in SCENES if f == "maze")
    mask = scene["target_goal"] != 0
    box = np.asarray(scene["target_goal_box"], dtype=np.float64)
    wrong, _ = mask_to_pose(mask, float(mask.sum()), world_bounds=tuple(scene["world_bounds"]))
    right, _ = mask_to_pose(mask, float(mask.sum()), frame=pose_frame(_geometry(scene), SIZE))
    y0, y1 = scene["world_bounds"][1], scene["world_bounds"][3]
    assert wrong.center_world[1] == pytest.approx(y0 + y1 - box[1], abs=0.1)  # mirrored in y
    assert right.center_world[1] == pytest.approx(box[1], abs=0.05)


def test_without_bounds_there_is_no_world_pose():
    mask = np.zeros((32, 32), dtype=bool)
    mask[10:14, 8:20] = True
    pose, _ = mask_to_pose(mask, 48.0, frame=pose_frame(None, 32))
    assert pose.center_world is None and pose.angle_world is None


@pytest.mark.parametrize("family,scene", SCENES[:2], ids=["maze0", "rooms0"])
def test_a_scene_file_read_for_prediction_carries_its_own_convention(family, scene, tmp_path):
    """What GoalPredictor.predict sees of a file (prepare_scene -> geometry -> pose_frame)
    gives the stored goal pose: maze files are not mirrored into the rooms convention."""
    from goalgen.data.scenes import read_geometry
    from goalgen.infer import prepare_scene

    path = tmp_path / f"{family}.npz"
    synth.save_npz(path, scene)
    geometry = read_geometry(path)
    assert geometry["image_convention"] == int(scene.get("image_convention", 0))
    assert geometry["image_size"] == SIZE
    prepared = prepare_scene(path, 64)
    frame = pose_frame(prepared.geometry, 64)
    pose, reason = mask_to_pose(prepared.truth >= 0.5, float(prepared.truth.sum()), frame=frame)
    assert reason is None, reason
    box = np.asarray(scene["target_goal_box"], dtype=np.float64)
    assert np.hypot(*(np.array(pose.center_world) - box[:2])) <= 0.75 * frame.side / 64
