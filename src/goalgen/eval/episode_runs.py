"""Episodes of many scenes under several strategies (:mod:`goalgen.eval.episodes`), resumable:
what ``goalgen-episodes`` runs, in one process or as the elements of a Slurm array.

Each finished episode is appended as one JSON line to a *part* file (``part_<i>.jsonl`` in
the run's parts folder; part ``i`` of ``n`` takes scenes ``i, i + n, ...``); the part's first
line records the options, so a part run again (a requeued array element, a command run again
after Ctrl-C) skips the episodes it has and goes on with the same options. :func:`report`
reads every part into one JSON: episodes, and a summary per scene family (the folder a scene
came from) and strategy. Episode ``i`` of the scene list gets seed ``seed + SEED_STRIDE * i``
under every strategy, whatever part runs it.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from goalgen.data.mujoco_scene import load_mujoco_scene
from goalgen.data.world_scene import WorldScene
from goalgen.eval.episodes import BUDGET, Episode, make_strategy, run_episode, summarize
from goalgen.eval.visualize import save_png, scene_rgb
from goalgen.infer.predictor import GoalPredictor
from goalgen.infer.propose_scene import CLEARANCE, MAX_PUSH, as_scene

SEED_STRIDE = 1000
MODEL_STRATEGIES = ("proposals", "raw")


@dataclass
class EpisodeOptions:
    """What a set of episodes runs (the part files record it)."""

    run: str
    scenes: list[str]  # .npz or .xml paths
    strategies: list[str]
    state: str | None = None  # the planner's JSON state, with one .xml scene
    seed: int = 0
    budget: int = BUDGET
    samples: int = 32
    top: int = 8
    clearance: float = CLEARANCE
    checkpoint: str = "best"
    device: str | None = None
    png_dir: str | None = None
    families: list[str] = field(default_factory=list)  # per scene; the folder it came from

    def key(self) -> dict[str, Any]:
        """What must match for a part to be resumed (not the device or pictures)."""
        out = dataclasses.asdict(self)
        for name in ("device", "png_dir"):
            out.pop(name)
        return out


def scene_paths(items: Sequence[str | os.PathLike]) -> tuple[list[str], list[str]]:
    """``.npz`` files, folders of them (sorted) and ``.xml`` files, in order, with the family
    of each (the folder it is in)."""
    paths: list[str] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            found = sorted(path.glob("*.npz"))
            if not found:
                raise ValueError(f"{path}: no .npz scenes in this folder")
            paths += [str(p) for p in found]
        elif not path.exists():
            raise ValueError(f"{path}: no such scene file or folder")
        else:
            paths.append(str(path))
    return paths, [Path(p).parent.name or "." for p in paths]


def load_world(path: str | os.PathLike, state: str | None = None) -> tuple[WorldScene, float]:
    """The scene's world geometry and its push search radius (m; the file's, else
    ``MAX_PUSH``)."""
    path = Path(path)
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
    """A top view at the start and after each push (``(3, H, W)`` in [0, 1]): walls grey,
    boxes blue, the box pushed red, robot green, its goal yellow; the push's goal pose
    outlined in magenta."""
    cells = []
    for k, (boxes, robot) in enumerate(episode.frames):
        pushed = episode.pushes[k - 1] if k else None
        index = pushed.index if pushed else 0
        now = dataclasses.replace(world, movable=boxes, robot_xy=robot, target_index=index)
        masks = now.context_masks().astype(np.float32)
        if pushed is None:
            masks[4] = 0.0
        image = scene_rgb(torch.from_numpy(masks) * 2 - 1)
        if pushed is not None:
            goal = pushed.outcome.goal
            inside = world.frame.box_mask(goal[0], goal[1], *world.movable[index, 2:4], goal[2])
            edge = torch.from_numpy(inside & ~ndimage.binary_erosion(inside))
            image[:, edge] = torch.tensor([0.9, 0.1, 0.9])[:, None]
        cells.append(torch.nn.functional.pad(image, (2, 2, 2, 2), value=1.0))
    return torch.cat(cells, dim=2)


def part_path(parts: Path, index: int) -> Path:
    return parts / f"part_{index:04d}.jsonl"


def read_part(path: Path, options: EpisodeOptions | None = None) -> list[dict[str, Any]]:
    """The episodes of a part file (none if it does not exist). With ``options``: raise if
    the part was run with other options."""
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    header = json.loads(lines[0]) if lines else {}
    if options is not None and header.get("options") != options.key():
        raise ValueError(
            f"{path} holds episodes run with other options; remove {path.parent} or write "
            "the results elsewhere (--json)"
        )
    out = []
    for line in lines[1:]:
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a line cut short by a kill: that episode runs again
    return out


def run_part(
    options: EpisodeOptions,
    parts: Path,
    index: int = 0,
    count: int = 1,
    on_episode: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Run part ``index`` of ``count`` (see the module docstring); returns its episodes."""
    path = part_path(parts, index)
    done = read_part(path, options)
    parts.mkdir(parents=True, exist_ok=True)
    # the header and the episodes read back: a line a kill cut short is dropped
    lines = [json.dumps({"options": options.key()})] + [json.dumps(e) for e in done]
    path.write_text("\n".join(lines) + "\n")
    have = {(e["scene"], e["strategy"]) for e in done}
    mine = range(index, len(options.scenes), count)
    if all((options.scenes[i], s) in have for i in mine for s in options.strategies):
        return done
    worlds = {i: load_world(options.scenes[i], options.state) for i in mine}
    predictor = None
    if set(MODEL_STRATEGIES) & set(options.strategies):
        predictor = GoalPredictor.from_run(options.run, options.checkpoint, options.device)
    for strategy_name in options.strategies:
        for i in mine:
            scene = options.scenes[i]
            if (scene, strategy_name) in have:
                continue
            world, radius = worlds[i]
            strategy = make_strategy(
                strategy_name,
                predictor,
                samples=options.samples,
                top=options.top,
                clearance=options.clearance,
                radius=radius,
            )
            episode = run_episode(
                world,
                strategy,
                name=scene,
                strategy_name=strategy_name,
                seed=options.seed + SEED_STRIDE * i,
                budget=options.budget,
                clearance=options.clearance,
            )
            record = episode.to_dict() | {"family": options.families[i], "index": i}
            with path.open("a") as f:
                f.write(json.dumps(record, allow_nan=False) + "\n")
                f.flush()
                os.fsync(f.fileno())
            done.append(record)
            if options.png_dir is not None:
                name = f"{options.families[i]}_{Path(scene).stem}_{strategy_name}.png"
                png = Path(options.png_dir) / name
                save_png(strip(world, episode), png, scale=2)
            if on_episode is not None:
                on_episode(record)
    return done


def report(options: EpisodeOptions, parts: Path) -> dict[str, Any]:
    """Every part's episodes, in scene order, with the summary per family and strategy
    (``all``: every scene); raises where episodes are missing."""
    episodes = [e for path in sorted(parts.glob("part_*.jsonl")) for e in read_part(path, options)]
    have = {(e["scene"], e["strategy"]) for e in episodes}
    missing = [
        (scene, s) for s in options.strategies for scene in options.scenes if (scene, s) not in have
    ]
    if missing:
        scene, strategy = missing[0]
        raise ValueError(
            f"{len(missing)} episodes missing in {parts} (first: {scene} under {strategy})"
        )
    episodes.sort(key=lambda e: (options.strategies.index(e["strategy"]), e["index"]))
    groups: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for e in episodes:
        for family in (e["family"], "all"):
            groups.setdefault(family, {}).setdefault(e["strategy"], []).append(e)
    summary = {
        family: {s: summarize(rows[s]) for s in options.strategies if s in rows}
        for family, rows in groups.items()
    }
    return {"options": options.key(), "summary": summary, "episodes": episodes}


def table(summary: dict[str, dict[str, dict[str, Any]]]) -> str:
    """The summary as a text table, a row per family and strategy."""

    def f(v: Any, fmt: str = "{:.2f}") -> str:
        return "-" if v is None else fmt.format(v)

    lines = [
        f"{'family':12s} {'strategy':13s} {'episodes':>8s} {'success':>7s} {'openings':>8s} "
        f"{'opened':>6s} {'pushes/opening median':>21s} {'mean':>5s} {'all':>5s} "
        f"{'within 5cm/10deg (verified)':>27s} {'s/opening':>9s} {'p50':>5s} "
        f"{'model share':>11s}"
    ]
    for family, rows in summary.items():
        for strategy, s in rows.items():
            landed = (
                f"{f(s['pushes_within_5cm_10deg'])} ({f(s['verified_pushes_within_5cm_10deg'])})"
            )
            lines.append(
                f"{family[:12]:12s} {strategy:13s} {s['episodes']:8d} {f(s['success']):>7s} "
                f"{s['openings']:8d} {f(s['opening_success']):>6s} "
                f"{f(s['pushes_per_opening_median'], '{:.1f}'):>21s} "
                f"{f(s['pushes_per_opening_mean']):>5s} {f(s['pushes_per_opening_all_mean']):>5s} "
                f"{landed:>27s} "
                f"{f(s['wall_seconds_per_opening']):>9s} "
                f"{f(s['wall_seconds_per_opening_p50']):>5s} {f(s['model_share']):>11s}"
            )
    return "\n".join(lines)
