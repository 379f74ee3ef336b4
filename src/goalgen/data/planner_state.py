"""The planner's JSON state (namo_cpp's message) and the one-line error of planner scenes.

``{"xml_path", "robot_goal": [x, y], "reachable_objects": [...], "robot": {"position": [x, y,
yaw]}, "objects": {name: {"position": [x, y, yaw], "quaternion": [w, x, y, z]}}}``; poses are
world poses of the geoms (the yaw is used, the quaternion is not: planners fill it in
inconsistently).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

MAX_LISTED = 12  # names listed in an error message


class PlannerSceneError(ValueError):
    """A planner scene that cannot be used; the message is one line naming the problem."""


def listing(names: Sequence[str]) -> str:
    """Names for an error message: the first ``MAX_LISTED``, then how many in all."""
    names = list(names)
    if not names:
        return "none"
    shown = ", ".join(names[:MAX_LISTED])
    return shown + (f", ... ({len(names)} in all)" if len(names) > MAX_LISTED else "")


def read_state(state: str | os.PathLike | Mapping[str, Any] | None) -> dict[str, Any]:
    """A planner state as a dict: a mapping, a JSON file or JSON text (None: empty)."""
    if state is None:
        return {}
    if isinstance(state, Mapping):
        return dict(state)
    text = str(state)
    if not text.lstrip().startswith("{"):
        path = Path(text)
        if not path.is_file():
            raise PlannerSceneError(f"state file {path} does not exist")
        text = path.read_text()
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise PlannerSceneError(f"state is not valid JSON: {e}") from e
    if not isinstance(value, dict):
        raise PlannerSceneError(f"state must be a JSON object, got {type(value).__name__}")
    return value


def state_pose(entry: Any, what: str) -> tuple[float, float, float | None]:
    """``(x, y, yaw or None)`` of a state entry ``{"position": [x, y(, yaw)]}``."""
    position = entry.get("position") if isinstance(entry, Mapping) else None
    try:
        values = [float(v) for v in position]  # type: ignore[union-attr]
    except (TypeError, ValueError):
        values = []
    if len(values) < 2 or not np.isfinite(values).all():
        raise PlannerSceneError(
            f"state: {what} needs a finite 'position': [x, y, yaw], got {entry!r}"
        )
    return values[0], values[1], values[2] if len(values) > 2 else None


def state_point(value: Any, what: str) -> np.ndarray:
    try:
        xy = np.asarray([float(v) for v in list(value)[:2]], dtype=np.float64)
    except (TypeError, ValueError):
        xy = np.zeros(0)
    if xy.shape != (2,) or not np.isfinite(xy).all():
        raise PlannerSceneError(f"{what} must be a finite [x, y], got {value!r}")
    return xy
