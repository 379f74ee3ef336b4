"""``goalgen-episodes``: NAMO episodes in MuJoCo physics (:mod:`goalgen.eval.episodes`) for one
scene or many, strategies side by side on the same scenes and seeds; one JSON and a table.

``goalgen-episodes RUN (SCENE.npz | FOLDER ... | --xml SCENE.xml [--state STATE.json])
[--strategy proposals,raw,random_local,random] [--seed N] --json OUT.json [--png-dir DIR]``

RUN is a run dir, a checkpoint, a weights file or ``planner`` (loaded only for ``proposals``
and ``raw``). A folder stands for its ``*.npz`` scenes (sorted); scenes are grouped in the
table by the folder they came from. Episode ``i`` of the list gets seed ``seed + 1000 i``
under every strategy.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from goalgen.cli import USER_ERRORS, OneLineParser, one_line, warnings_as_lines
from goalgen.data.mujoco_scene import load_mujoco_scene
from goalgen.data.world_scene import WorldScene
from goalgen.eval.episodes import (
    BUDGET,
    STRATEGIES,
    Episode,
    make_strategy,
    run_episode,
    summarize,
)
from goalgen.eval.visualize import save_png, scene_rgb
from goalgen.infer.predictor import GoalPredictor
from goalgen.infer.propose_scene import CLEARANCE, MAX_PUSH, as_scene
from goalgen.io import atomic_write_text

SEED_STRIDE = 1000  # seeds of consecutive scenes: seed + SEED_STRIDE * i


def scene_paths(items: Sequence[str | Path]) -> list[Path]:
    """``.npz`` files, folders of them (sorted) and ``.xml`` files, in order."""
    out: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            found = sorted(path.glob("*.npz"))
            if not found:
                raise ValueError(f"{path}: no .npz scenes in this folder")
            out += found
        elif not path.exists():
            raise ValueError(f"{path}: no such scene file or folder")
        else:
            out.append(path)
    return out


def load_world(path: Path, state: Path | None = None) -> tuple[WorldScene, float]:
    """The scene's world geometry and its push search radius (m; the file's, else
    ``MAX_PUSH``)."""
    if path.suffix.lower() == ".xml":
        return load_mujoco_scene(path, None, state), MAX_PUSH
    world = as_scene(path).world
    if world is None:
        raise ValueError(
            f"{path}: no world geometry (movable_boxes, static_walls, robot_pose, goal_pose, "
            "robot_radius, world_bounds): episodes need the boxes, not only their masks"
        )
    with np.load(path, allow_pickle=False) as npz:
        radius = float(npz["push_search_radius"]) if "push_search_radius" in npz else MAX_PUSH
    return world, radius


def strip(world: WorldScene, episode: Episode) -> torch.Tensor:
    """A top view per push, from the start (``(3, H, W)`` in [0, 1]): walls grey, boxes blue,
    the box being pushed red, robot green, its goal yellow; the push's goal pose outlined in
    magenta."""
    cells = []
    for k, (boxes, robot) in enumerate(episode.frames):
        pushed = episode.pushes[k - 1] if k else None
        index = pushed.index if pushed else 0
        now = dataclasses.replace(world, movable=boxes, robot_xy=robot, target_index=index)
        masks = now.context_masks().astype(np.float32)
        if not pushed:
            masks[4] = 0.0
        image = scene_rgb(torch.from_numpy(masks) * 2 - 1)
        if pushed:
            goal = pushed.outcome.goal
            inside = world.frame.box_mask(goal[0], goal[1], *world.movable[index, 2:4], goal[2])
            edge = inside & ~ndimage.binary_erosion(inside)
            image[:, torch.from_numpy(edge)] = torch.tensor([0.9, 0.1, 0.9])[:, None]
        cells.append(torch.nn.functional.pad(image, (2, 2, 2, 2), value=1.0))
    return torch.cat(cells, dim=2)


def _table(summary: dict[str, dict[str, dict[str, Any]]]) -> str:
    lines = [
        "family     strategy      episodes success openings opened pushes/opening "
        "(median, mean)  within 5cm/10deg  s/opening  model share",
    ]
    for family, rows in summary.items():
        for strategy, s in rows.items():

            def f(v: Any, fmt: str = "{:.2f}") -> str:
                return "-" if v is None else fmt.format(v)

            lines.append(
                f"{family[:10]:10s} {strategy:13s} {s['episodes']:8d} {f(s['success']):>7s} "
                f"{s['openings']:8d} {f(s['opening_success']):>6s} "
                f"{f(s['pushes_per_opening_median'], '{:.1f}'):>8s} "
                f"{f(s['pushes_per_opening_mean']):>6s}  "
                f"{f(s['pushes_within_5cm_10deg']):>16s}  "
                f"{f(s['wall_seconds_per_opening']):>9s}  {f(s['model_share']):>11s}"
            )
    return "\n".join(lines)


def _parser() -> OneLineParser:
    parser = OneLineParser(
        prog="goalgen-episodes",
        description="NAMO episodes in MuJoCo physics: the robot pushes boxes until its goal is "
        "reachable; goal strategies side by side on the same scenes and seeds.",
    )
    parser.add_argument(
        "run_dir",
        help="training run directory, a .ckpt or weights file, or shipped weights (planner)",
    )
    parser.add_argument("scenes", nargs="*", help=".npz scene files or folders of them")
    parser.add_argument("--xml", type=Path, help="MuJoCo scene XML (namo_cpp naming)")
    parser.add_argument("--state", type=Path, help="the planner's JSON state (with --xml)")
    parser.add_argument(
        "--strategy",
        default="proposals",
        help=f"comma-separated, of {','.join(STRATEGIES)} (proposals)",
    )
    parser.add_argument("--seed", type=int, default=0, help="episode seed (0)")
    parser.add_argument("--budget", type=int, default=BUDGET, help=f"pushes per episode ({BUDGET})")
    parser.add_argument("--samples", type=int, default=32, help="samples per draw (32)")
    parser.add_argument("--top", type=int, default=8, help="proposals ranked per call (8)")
    parser.add_argument("--clearance", type=float, default=CLEARANCE, help=f"metres ({CLEARANCE})")
    parser.add_argument("--checkpoint", default="best", help="best (default), last or a path")
    parser.add_argument("--device", help="cpu, cuda, ... (default: cuda if available)")
    parser.add_argument("--json", required=True, type=Path, help="output JSON file")
    parser.add_argument("--png-dir", type=Path, help="a PNG strip per episode in this folder")
    return parser


def main(argv: list[str] | None = None) -> int:
    """``goalgen-episodes``: see the module docstring."""
    parser = _parser()
    args = parser.parse_args(argv)
    if bool(args.scenes) == (args.xml is not None):
        parser.error("give scenes: SCENE.npz files or folders, or --xml SCENE.xml")
    if args.state is not None and args.xml is None:
        parser.error("--state goes with --xml")
    strategies = [s.strip() for s in args.strategy.split(",") if s.strip()]
    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown or not strategies:
        parser.error(f"--strategy: unknown {unknown}; choose from {', '.join(STRATEGIES)}")
    for name in ("budget", "samples", "top"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    if not args.clearance >= 0:
        parser.error(f"--clearance must be a distance >= 0 in metres, got {args.clearance}")
    try:
        with warnings_as_lines("goalgen-episodes"):
            paths = [args.xml] if args.xml is not None else scene_paths(args.scenes)
            worlds = [load_world(p, args.state) for p in paths]
            predictor = None
            if {"proposals", "raw"} & set(strategies):
                predictor = GoalPredictor.from_run(args.run_dir, args.checkpoint, args.device)
            episodes: list[dict[str, Any]] = []
            summary: dict[str, dict[str, dict[str, Any]]] = {}
            by_family: dict[tuple[str, str], list[Episode]] = {}
            for strategy_name in strategies:
                for i, (path, (world, radius)) in enumerate(zip(paths, worlds, strict=True)):
                    strategy = make_strategy(
                        strategy_name,
                        predictor,
                        samples=args.samples,
                        top=args.top,
                        clearance=args.clearance,
                        radius=radius,
                    )
                    episode = run_episode(
                        world,
                        strategy,
                        name=str(path),
                        strategy_name=strategy_name,
                        seed=args.seed + SEED_STRIDE * i,
                        budget=args.budget,
                        clearance=args.clearance,
                    )
                    family = path.parent.name or "."
                    by_family.setdefault((family, strategy_name), []).append(episode)
                    by_family.setdefault(("all", strategy_name), []).append(episode)
                    episodes.append(episode.to_dict() | {"family": family})
                    if args.png_dir is not None:
                        png = args.png_dir / f"{path.stem}_{strategy_name}.png"
                        save_png(strip(world, episode), png, scale=2)
                    print(
                        f"{path.name} {strategy_name}: "
                        f"{'opened' if episode.success else episode.failure} in "
                        f"{len(episode.pushes)} pushes, {episode.wall_seconds:.2f} s",
                        flush=True,
                    )
            for (family, strategy_name), group in by_family.items():
                summary.setdefault(family, {})[strategy_name] = summarize(group)
            report = {
                "run": str(args.run_dir),
                "strategies": strategies,
                "seed": args.seed,
                "budget": args.budget,
                "clearance": args.clearance,
                "summary": summary,
                "episodes": episodes,
            }
            atomic_write_text(args.json, json.dumps(report, indent=1, allow_nan=False) + "\n")
    except USER_ERRORS as error:
        print(f"goalgen-episodes: error: {one_line(error)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    print(_table(summary))
    print(f"-> {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
