"""A PNG grid of ranked, verified proposals: one row per scene file.

Each row: the scene (robot green, its goal yellow, the selected box red, other boxes blue), the
top ``--top`` proposals of ``goalgen-propose`` (green: verified, red: not), and, for maze files,
the nearest feasible pose of the stored ground truth in yellow.

    python jobs/proposal_grid.py planner data/heldout_maze --max-scenes 6 --out grid.png
    python jobs/proposal_grid.py outputs/RUN a.npz b.npz c.npz --out failed.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from goalgen.data.scenes import find_scene_files
from goalgen.eval.propose import proposal_image
from goalgen.eval.visualize import save_png
from goalgen.infer.predictor import GoalPredictor
from goalgen.infer.proposals import propose


def nearest_feasible_footprint(path: Path, result) -> np.ndarray | None:
    """``(N, N)`` footprint of the scene's nearest feasible pose, or None without a stored set."""
    with np.load(path) as scene:
        if "feasible_poses" not in scene.files or len(scene["feasible_poses"]) == 0:
            return None
        x, y, yaw = scene["feasible_poses"][0]
    w, h = result.scene.target[2:4]
    return result.scene.frame.box_mask(x, y, w, h, yaw)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="run directory, .ckpt, weights file or planner")
    parser.add_argument("scenes", nargs="+", help=".npz files or folders")
    parser.add_argument("--max-scenes", type=int, default=6, help="rows (6)")
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--top", type=int, default=4)
    parser.add_argument("--max-samples", type=int, help="sample budget (4 x samples)")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--method")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device")
    parser.add_argument("--out", type=Path, required=True, help="output .png")
    args = parser.parse_args(argv)
    files = find_scene_files(args.scenes)[: args.max_scenes]
    predictor = GoalPredictor.from_run(args.run_dir, device=args.device)
    rows = []
    for path in files:
        result = propose(
            predictor,
            path,
            args.samples,
            args.top,
            steps=args.steps,
            method=args.method,
            seed=args.seed,
            max_samples=args.max_samples,
        )
        truth = nearest_feasible_footprint(path, result)
        rows.append(proposal_image(result, panels=args.top, truth=truth))
        print(f"{path.name}: {len(result.verified)} of {len(result)} verified")
    width = max(row.shape[2] for row in rows)
    rows = [torch.nn.functional.pad(r, (0, width - r.shape[2]), value=1.0) for r in rows]
    save_png(torch.cat(rows, dim=1), args.out, scale=max(1, 224 // rows[0].shape[1]))
    print(f"{len(rows)} rows -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
