"""Inference: a trained run's weights -> goal samples -> poses. Imports nothing from train/."""

from goalgen.infer.poses import Pose
from goalgen.infer.predictor import GoalPredictor, Prediction, SamplingCost
from goalgen.infer.scene_input import SceneInput, prepare_scene

__all__ = ["GoalPredictor", "Pose", "Prediction", "SamplingCost", "SceneInput", "prepare_scene"]
