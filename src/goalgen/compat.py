"""Drop-in replacement for the original system's ``GoalInferenceModel`` (namo_cpp's planner
calls ``GoalInferenceModel(model_path, device, ...).infer(json_message, xml_path, robot_goal,
selected_object, samples=32)``). A planner switches by changing one import::

    from goalgen.compat import GoalInferenceModel

``model_path`` is a goalgen run directory (or a ``.ckpt``): its best checkpoint by recorded
validation loss, EMA weights. ``infer`` reads the MuJoCo XML and the planner's JSON state,
renders the masks in the planner's convention, and returns the ranked, verified proposals of
:func:`goalgen.infer.proposals.propose` as the original's goal dicts: ``index`` (the raw
sample), ``goal_center`` ``[x, y]``, ``final_quat`` ``[w, x, y, z]``, ``x``, ``y``,
``theta``, plus ``rank``, ``push_distance``, ``collision_free``, ``opens_path``,
``verified`` (collision-free and route open with the clearance, and pushable), ``pushable``,
``clearance`` (metres to spare, :meth:`goalgen.infer.propose_scene.Checker.room`),
``push_segments`` (how the robot pushes the box there: :class:`goalgen.infer.push_plan.
PushSegment` dicts), ``reason``, ``goal_sample`` (the sample's probabilities ``(S, S)``),
``footprint`` (the fitted box at the scene's 224 px) and ``input_channels`` (the model's
input ``(5, S, S)`` in [-1, 1]). The original returns every single-blob sample in sample
order; this returns verified ones only (``include_unverified=True`` appends the rest, ranked).
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from goalgen.infer.predictor import GoalPredictor
from goalgen.infer.proposals import CLEARANCE, ProposalSet, propose


def _device(device: str | torch.device | None) -> torch.device:
    wanted = torch.device(device) if device is not None else None
    if wanted is not None and wanted.type == "cuda" and not torch.cuda.is_available():
        warnings.warn("CUDA is not available: GoalInferenceModel runs on the CPU", stacklevel=3)
        return torch.device("cpu")
    return wanted or torch.device("cuda" if torch.cuda.is_available() else "cpu")


class GoalInferenceModel:
    """The original's constructor and ``infer`` signature, backed by a goalgen run.

    Args:
        model_path: run directory (best checkpoint by recorded val loss) or a ``.ckpt``.
        device: ``"cuda"`` (the original's default; the CPU if there is none), ``"cpu"``, ...
        sampler_method: ODE method (flow: ``euler``, ``midpoint``, ``rk4``, ...) or
            ``ddim``/``ddpm`` (diffusion); None: the run's.
        num_steps: sampling steps; None: the run's ``sampling_steps``.
        top: return at most this many proposals, drawing more samples while fewer verify
            (up to ``max_samples``, default 2 x samples); None: one draw, all verified ones.
        include_unverified: also return proposals that failed a check (after the verified).
        clearance: metres the robot keeps from walls and boxes on its route and the placed
            box from walls, boxes and the robot (default: half a 5 cm planner cell).
        **unused: the original's other options (``namo_config_path``, ...), ignored.
    """

    def __init__(
        self,
        model_path: str | os.PathLike,
        device: str | torch.device | None = "cuda",
        sampler_method: str | None = None,
        num_steps: int | None = None,
        *,
        top: int | None = None,
        max_samples: int | None = None,
        include_unverified: bool = False,
        clearance: float = CLEARANCE,
        **unused: Any,
    ) -> None:
        self.model_path = str(model_path)
        self.predictor = GoalPredictor.from_run(model_path, "best", _device(device), use_ema=True)
        if sampler_method is not None and sampler_method not in self.predictor.methods():
            raise ValueError(
                f"sampler_method {sampler_method!r} is not a {self.predictor.family} sampler; "
                f"choose one of {', '.join(self.predictor.methods())}"
            )
        self.sampler_method, self.num_steps = sampler_method, num_steps
        self.top, self.max_samples = top, max_samples
        self.include_unverified = include_unverified
        self.clearance = float(clearance)
        self.last_result: ProposalSet | None = None

    def infer(
        self,
        json_message: Mapping[str, Any] | str | os.PathLike,
        xml_path: str | os.PathLike | None = None,
        robot_goal: Sequence[float] | None = None,
        selected_object: str | None = None,
        samples: int = 32,
        seed: int | None = None,
        **unused: Any,
    ) -> list[dict[str, Any]]:
        """Ranked goal dicts for ``selected_object`` (see the module docstring).

        ``json_message``: the planner's state (a mapping, JSON text or a file); ``xml_path``
        and ``robot_goal`` default to its ``xml_path`` and ``robot_goal``. ``seed``: noise
        seed (None: fresh noise each call, as the original).
        """
        state = _message(json_message)
        xml = xml_path if xml_path is not None else state.get("xml_path")
        if not xml:
            raise ValueError("no xml_path: pass it or put it in the JSON message")
        if not selected_object:
            raise ValueError("no selected_object given")
        result = propose(
            self.predictor,
            Path(xml),
            samples,
            self.top,
            object_name=selected_object,
            state=state,
            robot_goal=robot_goal,
            max_samples=self.max_samples,
            steps=self.num_steps,
            method=self.sampler_method,
            seed=seed,
            clearance=self.clearance,
        )
        self.last_result = result
        channels = result.context * 2 - 1
        goals = []
        for rank, p in enumerate(result.proposals):
            if not p.verified and not self.include_unverified:
                continue
            goals.append(
                {
                    "index": p.index,
                    "goal_center": [p.x, p.y],
                    "final_quat": list(p.quaternion),
                    "x": p.x,
                    "y": p.y,
                    "theta": p.theta,
                    "rank": rank,
                    "push_distance": p.push_distance,
                    "collision_free": p.collision_free,
                    "opens_path": p.opens_path,
                    "verified": p.verified,
                    "pushable": p.pushable,
                    "clearance": p.room,
                    "push_segments": [s.to_dict() for s in p.segments],
                    "reason": p.reason,
                    "goal_sample": result.samples[p.index],
                    "footprint": p.footprint,
                    "input_channels": channels,
                }
            )
        return goals


def _message(message: Mapping[str, Any] | str | os.PathLike) -> dict[str, Any]:
    if isinstance(message, Mapping):
        return dict(message)
    text = str(message)
    if not text.lstrip().startswith("{"):
        text = Path(text).read_text()
    value = json.loads(text)
    if not isinstance(value, dict):
        raise ValueError(f"the JSON message must be an object, got {type(value).__name__}")
    return value
