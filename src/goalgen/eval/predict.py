"""``goalgen-predict``: goal proposals (masks, poses, PNG grid) for scene files."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from goalgen.cli import (
    METHOD_HELP,
    RUN_HELP,
    USER_ERRORS,
    OneLineParser,
    one_line,
    warnings_as_lines,
)
from goalgen.eval.visualize import sample_grid, save_png, trajectory_strip
from goalgen.infer.predictor import GoalPredictor, Prediction


def unique_stems(names: Sequence[str]) -> list[str]:
    """File stems for ``names``, with ``_2``, ``_3``... added to repeated ones."""
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}_{seen[name]}")
    return out


def write_prediction(result: Prediction, out_dir: Path, stem: str) -> list[Path]:
    """``<stem>_masks.npz``, ``<stem>_poses.json`` and ``<stem>_grid.png`` in ``out_dir``;
    with a trajectory also ``<stem>_trajectory.png`` (and ``trajectory`` in the ``.npz``)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    masks_path = out_dir / f"{stem}_masks.npz"
    arrays = {"masks": result.masks, "probs": result.probs.astype(np.float32)}
    arrays["context"] = result.context
    if result.trajectory is not None:
        arrays["trajectory"] = result.trajectory.astype(np.float32)
    np.savez_compressed(masks_path, **arrays)
    poses_path = out_dir / f"{stem}_poses.json"
    poses_path.write_text(json.dumps(result.to_json(), indent=1) + "\n")
    context = torch.from_numpy(result.context)[None] * 2 - 1
    truth = None if result.truth is None else torch.from_numpy(result.truth)[None, None] * 2 - 1
    samples = torch.from_numpy(result.probs)[None, :, None] * 2 - 1
    grid_path = out_dir / f"{stem}_grid.png"
    scale = max(1, 128 // result.masks.shape[-1])
    save_png(sample_grid(context, truth, samples), grid_path, scale=scale)
    written = [masks_path, poses_path, grid_path]
    if result.trajectory is not None:
        strip = trajectory_strip(context[0], torch.from_numpy(result.trajectory))
        written.append(out_dir / f"{stem}_trajectory.png")
        save_png(strip, written[-1], scale=scale)
    return written


def main(argv: list[str] | None = None) -> int:
    """``goalgen-predict``: goal proposals (masks, poses, PNG grid) for scene files."""
    parser = OneLineParser(
        prog="goalgen-predict",
        description="Sample goal masks for the selected object of each scene and fit poses. "
        "Writes <stem>_masks.npz, <stem>_poses.json and <stem>_grid.png per scene.",
    )
    parser.add_argument("run_dir", help=RUN_HELP)
    parser.add_argument("scenes", nargs="+", help=".npz scene files")
    parser.add_argument("--samples", type=int, default=32, help="samples per scene (32)")
    parser.add_argument("--steps", type=int, help="sampling steps (default: the run's)")
    parser.add_argument("--method", help=METHOD_HELP)
    parser.add_argument("--checkpoint", default="best", help="best (default), last or a path")
    parser.add_argument("--seed", type=int, default=0, help="noise seed (0)")
    parser.add_argument("--batch-size", type=int, help="scenes per sampling call")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument(
        "--trajectory",
        action="store_true",
        help="also write the sampler's intermediate states: <stem>_trajectory.png (a strip "
        "per sample, noise to goal) and 'trajectory' (K, steps + 1, S, S) in <stem>_masks.npz",
    )
    args = parser.parse_args(argv)
    if args.samples < 1:
        parser.error("--samples must be >= 1")
    if args.steps is not None and args.steps < 1:
        parser.error("--steps must be >= 1")
    if args.batch_size is not None and args.batch_size < 1:
        parser.error("--batch-size must be >= 1")
    try:
        with warnings_as_lines("goalgen-predict"):
            predictor = GoalPredictor.from_run(args.run_dir, args.checkpoint, args.device)
            results = predictor.predict(
                args.scenes,
                args.samples,
                args.steps,
                args.method,
                args.seed,
                args.batch_size,
                return_trajectory=args.trajectory,
            )
        stems = unique_stems([r.name for r in results])
        for result, stem in zip(results, stems, strict=True):
            written = write_prediction(result, args.out, stem)
            suffixes = ",".join(p.name[len(stem) + 1 :] for p in written)
            print(
                f"{result.name}: {len(result.valid_poses)}/{args.samples} samples give a pose "
                f"-> {args.out / stem}_{{{suffixes}}}"
            )
    except USER_ERRORS as error:
        print(f"goalgen-predict: error: {one_line(error)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    cost = predictor.last_cost
    print(
        f"checkpoint {predictor.checkpoint_path} ({predictor.family}, {predictor.method}, "
        f"{cost.nfe:.0f} network evaluations per sample, {cost.seconds:.2f} s sampling)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
