"""The drop-in adapter goalgen.compat.GoalInferenceModel: the original's constructor, infer()
signature and goal keys, on a scene written in namo_cpp's XML format, with a planner-style
JSON state (walls listed among the objects)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from goalgen import compat
from goalgen.compat import GoalInferenceModel
from goalgen.data.planner_scene import PlannerSceneError
from test_planner_scene import (
    GOAL,
    OBJECT,
    PILLAR,
    FineWorld,
    disk_box_distance,
    sat_overlap,
    state_message,
    world_boxes,
    write_scene,
)
from test_proposals import FAR, FREE, POSES, Oracle

pytest.importorskip("mujoco")

ROBOT_AT = (-1.4, -0.2, 0.3)  # the state moves the robot here
KEYS = {"index", "goal_center", "final_quat", "x", "y", "theta", "push_distance", "verified"}


@pytest.fixture
def oracle_model(monkeypatch, tmp_path):
    """A GoalInferenceModel whose network is an oracle returning known poses."""
    from goalgen.infer.propose_scene import as_scene

    xml = write_scene(tmp_path)
    frame = as_scene(xml, object_name=OBJECT).frame
    poses = [POSES[k] for k in ("wall", "door", "free", "empty", "far", "movable")]

    def from_run(run_dir, checkpoint="best", device=None, use_ema=True):
        assert (checkpoint, use_ema) == ("best", True)  # best by val loss, EMA weights
        return Oracle(frame, poses)

    monkeypatch.setattr(compat.GoalPredictor, "from_run", staticmethod(from_run))
    return xml


def test_infer_returns_the_originals_keys_ranked_and_verified(oracle_model):
    xml = oracle_model
    model = GoalInferenceModel("some/run", device="cpu", sampler_method=None, num_steps=None)
    message = state_message(xml, robot=ROBOT_AT)
    goals = model.infer(
        json_message=message,
        xml_path=message["xml_path"],
        robot_goal=message["robot_goal"],
        selected_object=OBJECT,
        samples=6,
    )
    assert [g["index"] for g in goals] == [2, 4]  # FREE then FAR, by push distance
    for g in goals:
        assert set(g) >= KEYS and g["verified"] and g["collision_free"] and g["opens_path"]
        assert g["goal_center"] == [g["x"], g["y"]]
        w, qx, qy, qz = g["final_quat"]
        assert (qx, qy) == (0.0, 0.0) and np.isclose(2 * np.arctan2(qz, w), g["theta"])
        assert g["goal_sample"].shape == (64, 64) and g["footprint"].shape == (224, 224)
        assert g["input_channels"].shape == (5, 64, 64) and g["input_channels"].min() >= -1
    assert np.allclose([goals[0]["x"], goals[0]["y"]], FREE[:2], atol=0.03)
    assert np.allclose([goals[1]["x"], goals[1]["y"]], FAR[:2], atol=0.03)
    assert goals[0]["push_distance"] < goals[1]["push_distance"]
    # independent world checks of what it returns (robot where the state puts it)
    others = world_boxes()
    fine = FineWorld((-2.25, -2.25, 2.25, 2.25), others, [PILLAR[1]])
    for g in goals:
        box = (g["x"], g["y"], 0.3, 0.64, g["theta"])
        assert not any(sat_overlap(box, o) for o in others)
        assert disk_box_distance(*PILLAR[1][:2], box) > PILLAR[1][2]
        assert disk_box_distance(*ROBOT_AT[:2], box) > 0.15
        assert fine.route_possible(box, ROBOT_AT[:2], GOAL, 0.15)
    result = model.last_result
    assert result.samples_drawn == 6 and np.allclose(result.scene.robot_xy, ROBOT_AT[:2])


def test_infer_reads_json_text_and_can_return_the_unverified_too(oracle_model):
    import json

    xml = oracle_model
    model = GoalInferenceModel("run", "cpu", include_unverified=True)
    goals = model.infer(json.dumps(state_message(xml)), selected_object=OBJECT, samples=6)
    verdicts = [g["verified"] for g in goals]
    assert verdicts[:2] == [True, True] and not any(verdicts[2:]) and len(goals) == 5
    assert all(g["reason"] for g in goals[2:])
    # the robot_goal argument wins over the message's: a goal the box now shuts off
    goals = model.infer(
        state_message(xml), xml, robot_goal=(0.6, 0.3), selected_object=OBJECT, samples=6
    )
    assert 2 not in [g["index"] for g in goals if g["verified"]]  # FREE covers that goal


def test_bad_input_gives_one_line_errors(oracle_model):
    xml = oracle_model
    model = GoalInferenceModel("run", "cpu")
    with pytest.raises(
        PlannerSceneError, match="no object named 'box'; movable objects: obstacle_1"
    ):
        model.infer(state_message(xml), selected_object="box")
    with pytest.raises(ValueError, match="no xml_path"):
        model.infer({"robot_goal": [0, 0]}, selected_object=OBJECT)
    bad = state_message(xml)
    bad["objects"]["ghost_movable"] = {"position": [0, 0, 0]}
    with pytest.raises(PlannerSceneError, match="state names unknown objects ghost_movable"):
        model.infer(bad, selected_object=OBJECT)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, synth_dir):
    from run_helpers import train_tiny_run

    return train_tiny_run(tmp_path_factory.mktemp("compat_run"), synth_dir)


@pytest.mark.slow
def test_a_real_run_behind_the_original_interface(tiny_run, tmp_path):
    from goalgen.checkpoint import select_checkpoint

    if torch.cuda.is_available():
        model = GoalInferenceModel(tiny_run, device="cuda")
    else:
        with pytest.warns(UserWarning, match="CUDA is not available"):
            model = GoalInferenceModel(tiny_run, device="cuda")  # the original's default
    predictor = model.predictor
    assert predictor.checkpoint_path == select_checkpoint(tiny_run, "best")
    assert predictor.checkpoint_info["weights"] == "ema"
    xml = write_scene(tmp_path)
    message = state_message(xml)
    goals = model.infer(
        message, message["xml_path"], message["robot_goal"], OBJECT, samples=4, seed=0
    )
    assert all(g["verified"] for g in goals) and model.last_result.samples_drawn == 4
    with pytest.raises(ValueError, match="not a flow sampler"):
        GoalInferenceModel(tiny_run, "cpu", sampler_method="ddim")
