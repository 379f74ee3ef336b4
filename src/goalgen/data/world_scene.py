"""World geometry of one scene (:class:`WorldScene`): boxes, robot and goal in metres, the
image frame of its masks, and the five context masks drawn from it; read from and written to
scene files (the ``maze`` family's keys).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from goalgen.data import geometry as geo
from goalgen.data.frames import Frame, frame_of
from goalgen.data.geometry import NamoFrame
from goalgen.data.planner_state import PlannerSceneError
from goalgen.data.scenes import SCENE_KEYS
from goalgen.data.synthetic.maze import GOAL_DRAWN, IMAGE_CONVENTION, ROBOT_DRAWN


@dataclass
class WorldScene:
    """World geometry of one scene (metres, radians); boxes ``(cx, cy, w, h, theta)``."""

    static: np.ndarray  # (K, 5) walls and static obstacles
    movable: np.ndarray  # (M, 5) every movable box, the selected one included
    target_index: int  # the selected box: movable[target_index]
    robot_xy: np.ndarray  # (2,)
    robot_radius: float  # the real radius (checks use it)
    goal_xy: np.ndarray  # (2,)
    frame: Frame  # the image convention and resolution of the masks
    movable_names: tuple[str, ...] = ()
    static_names: tuple[str, ...] = ()
    robot_yaw: float = 0.0
    robot_mask_radius: float = ROBOT_DRAWN
    goal_mask_radius: float = GOAL_DRAWN
    source: str = ""
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # e.g. geometry_bounds

    @property
    def target(self) -> np.ndarray:
        return self.movable[self.target_index]

    @property
    def others(self) -> np.ndarray:
        """The movable boxes but the selected one ``(M - 1, 5)``."""
        return np.delete(self.movable, self.target_index, axis=0)

    @property
    def target_name(self) -> str:
        names = self.movable_names
        return names[self.target_index] if names else f"movable[{self.target_index}]"

    def check_inside(self) -> None:
        """Raise :class:`PlannerSceneError` if the robot, goal or a box leaves the image."""
        xmin, ymin, xmax, ymax = self.frame.bounds
        where = f"the scene bounds x [{xmin:.3f}, {xmax:.3f}], y [{ymin:.3f}, {ymax:.3f}]"
        for what, (x, y) in (("robot", self.robot_xy), ("goal", self.goal_xy)):
            if not (xmin <= x <= xmax and ymin <= y <= ymax):
                raise PlannerSceneError(
                    f"{self.source}: {what} at ({x:.3f}, {y:.3f}) is outside {where}"
                )
        ext = geo.box_extents(self.movable)
        out = np.flatnonzero(
            (ext[:, 0] < xmin) | (ext[:, 1] < ymin) | (ext[:, 2] > xmax) | (ext[:, 3] > ymax)
        )
        if len(out):
            i = int(out[0])
            name = self.movable_names[i] if self.movable_names else f"movable[{i}]"
            raise PlannerSceneError(
                f"{self.source}: object {name!r} at ({self.movable[i, 0]:.3f}, "
                f"{self.movable[i, 1]:.3f}) is outside {where}"
            )

    def context_masks(self, size: int | None = None) -> np.ndarray:
        """``(5, S, S)`` bool: robot, goal, movable, static, selected (``SCENE_KEYS`` order)."""
        frame = self.frame if size is None else self.frame.resized(size)
        empty = np.zeros((frame.size, frame.size), dtype=bool)

        def union(boxes: np.ndarray) -> np.ndarray:
            out = empty.copy()
            for box in boxes:
                out |= frame.box_mask(*box)
            return out

        return np.stack(
            [
                frame.disk_mask(self.robot_xy, self.robot_mask_radius),
                frame.disk_mask(self.goal_xy, self.goal_mask_radius),
                union(self.movable),
                union(self.static),
                frame.box_mask(*self.target),
            ]
        )

    def arrays(self, goal_box: Sequence[float] | None = None) -> dict[str, np.ndarray]:
        """The scene as ``.npz`` arrays: the masks (uint8 0/255; ``target_goal`` only with a
        ``goal_box``) and the world geometry under the ``maze`` family's keys, plus names."""
        masks = self.context_masks().astype(np.uint8) * np.uint8(255)
        out: dict[str, np.ndarray] = dict(zip(SCENE_KEYS[:5], masks, strict=True))
        f = np.float64
        if goal_box is not None:
            box = np.asarray(goal_box, dtype=f)
            out[SCENE_KEYS[5]] = self.frame.box_mask(*box).astype(np.uint8) * np.uint8(255)
            out["target_goal_box"] = box
        convention = IMAGE_CONVENTION if isinstance(self.frame, NamoFrame) else 0
        return (
            out
            | {
                "image_convention": np.array(convention, dtype=np.int64),
                "world_bounds": np.array(self.frame.bounds, dtype=f),
                "robot_pose": np.asarray(self.robot_xy, dtype=f),
                "robot_yaw": np.array(self.robot_yaw, dtype=f),
                "goal_pose": np.asarray(self.goal_xy, dtype=f),
                "robot_radius": np.array(self.robot_radius, dtype=f),
                "robot_mask_radius": np.array(self.robot_mask_radius, dtype=f),
                "goal_mask_radius": np.array(self.goal_mask_radius, dtype=f),
                "movable_boxes": np.asarray(self.movable, dtype=f).reshape(-1, 5),
                "target_index": np.array(self.target_index, dtype=np.int64),
                "static_walls": np.asarray(self.static, dtype=f).reshape(-1, 5),
                "movable_names": np.array(self.movable_names, dtype=np.str_),
                "static_names": np.array(self.static_names, dtype=np.str_),
                "source": np.array(self.source, dtype=np.str_),
            }
            | dict(self.extra)
        )

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], source: str = "") -> WorldScene | None:
        """The geometry stored in a scene file (``maze``/``rooms`` families, ``goalgen-render``),
        or None when the file has no world geometry."""
        needed = ("movable_boxes", "static_walls", "target_index", "robot_pose", "goal_pose")
        if not all(k in arrays for k in (*needed, "robot_radius", "world_bounds")):
            return None
        size = int(np.asarray(arrays[SCENE_KEYS[4]]).shape[-1])
        convention = int(np.asarray(arrays.get("image_convention", 0)))
        names = arrays.get("movable_names")

        def scalar(key: str, default: float) -> float:
            return float(np.asarray(arrays[key])) if key in arrays else default

        scene = cls(
            static=np.asarray(arrays["static_walls"], dtype=np.float64).reshape(-1, 5),
            movable=np.asarray(arrays["movable_boxes"], dtype=np.float64).reshape(-1, 5),
            target_index=int(np.asarray(arrays["target_index"])),
            robot_xy=np.asarray(arrays["robot_pose"], dtype=np.float64).reshape(-1)[:2],
            robot_radius=float(np.asarray(arrays["robot_radius"])),
            goal_xy=np.asarray(arrays["goal_pose"], dtype=np.float64).reshape(-1)[:2],
            frame=frame_of(convention, np.asarray(arrays["world_bounds"]).reshape(-1), size),
            movable_names=() if names is None else tuple(str(n) for n in np.asarray(names)),
            robot_yaw=scalar("robot_yaw", 0.0),
            robot_mask_radius=scalar("robot_mask_radius", ROBOT_DRAWN),
            goal_mask_radius=scalar("goal_mask_radius", GOAL_DRAWN),
            source=source,
        )
        if not 0 <= scene.target_index < len(scene.movable):
            raise PlannerSceneError(
                f"{source}: target_index {scene.target_index} but {len(scene.movable)} boxes"
            )
        return scene
