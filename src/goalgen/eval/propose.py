"""``goalgen-propose``: ranked, verified goal proposals for one scene (JSON, optional PNG), and
the scores of proposals beside raw samples (:func:`score_proposals`, for ``goalgen-eval``).

``goalgen-propose RUN_DIR (SCENE.npz | --xml SCENE.xml [--state STATE.json] --object NAME)
--samples 32 [--top K] --json OUT.json [--png OUT.png]``
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from goalgen.cli import (
    METHOD_HELP,
    RUN_HELP,
    USER_ERRORS,
    OneLineParser,
    one_line,
    warnings_as_lines,
)
from goalgen.data.pack import resize_masks
from goalgen.eval import metrics
from goalgen.eval.visualize import save_png, scene_rgb
from goalgen.infer.fit import cell_centres
from goalgen.infer.poses import min_area_rect
from goalgen.infer.predictor import GoalPredictor
from goalgen.infer.proposals import CLEARANCE, ProposalSet, propose
from goalgen.io import atomic_write_text

_EIGHT = np.ones((3, 3), dtype=bool)


# ----------------------------------------------------------------------------- scoring
def baseline_boxes(result: ProposalSet) -> tuple[np.ndarray, np.ndarray]:
    """The original pipeline's poses of the raw samples: empty and multi-blob masks dropped;
    centre of the mask's minimum-area rectangle, yaw = the object's yaw + (fitted goal angle
    - fitted object angle), both rectangles fitted in world coordinates at the model's
    resolution; the object's own size. Returns boxes ``(K, 5)`` and ``(K,)`` bool kept."""
    scene, probs = result.scene, result.samples
    xs, ys, _ = cell_centres(scene.frame, probs.shape[-1])

    def rect(mask: np.ndarray) -> tuple[np.ndarray, float]:
        r, c = np.nonzero(mask)
        center, angle, _, _ = min_area_rect(np.stack([xs[c], ys[r]], 1))
        return center, angle

    target = result.context[4] >= 0.5
    object_angle = rect(target)[1] if target.any() else float(scene.target[4])
    boxes = np.full((len(probs), 5), np.nan)
    kept = np.zeros(len(probs), dtype=bool)
    _, _, w, h, yaw = scene.target
    for i, p in enumerate(probs >= 0.5):
        if not p.any() or ndimage.label(p, structure=_EIGHT)[1] != 1:
            continue
        center, angle = rect(p)
        boxes[i] = (center[0], center[1], w, h, yaw + angle - object_angle)
        kept[i] = True
    return boxes, kept


def score_proposals(result: ProposalSet) -> dict[str, Any]:
    """One scene's raw samples and proposals side by side.

    ``raw`` and ``proposals``: :func:`goalgen.eval.metrics.score_samples` of the raw sample
    masks and of the proposals' footprints (area-resized to the model's resolution), on the
    same scene masks. Verification shares (the proposals' own checks): ``raw_verified_share``
    (each raw sample's rigid fit), ``baseline_verified_share`` (the original pipeline's pose
    of each raw sample, :func:`baseline_boxes`), ``proposals_verified_share`` (the returned,
    ranked ones); ``samples_drawn`` and ``oversampling`` (drawn / samples per draw).
    """
    scene, size = result.scene, result.context.shape[-1]
    truth = None
    if scene.truth is not None:
        truth = resize_masks(scene.truth[None].astype(np.float32), size)[0]
    masks = metrics.SceneMasks.from_soft(result.context, truth, scene.geometry)
    out: dict[str, Any] = {"raw": metrics.score_samples(result.samples >= 0.5, masks)}
    if result.proposals:
        feet = np.stack([p.footprint for p in result.proposals]).astype(np.float32)
        out["proposals"] = metrics.score_samples(resize_masks(feet, size) >= 0.5, masks)
    boxes, kept = baseline_boxes(result)
    verified = np.zeros(len(boxes), dtype=bool)
    if kept.any() and result.checker is not None:
        live = boxes[kept]
        feet = result.checker.footprints(live)
        ok = np.array([c is None for c in result.checker.collisions(live, feet)])
        verified[kept] = ok & result.checker.opens(live, feet)
    out.update(
        raw_verified_share=result.raw_verified_share,
        baseline_verified_share=float(verified.mean()) if len(verified) else float("nan"),
        proposals_verified_share=result.verified_share,
        num_proposals=len(result.proposals),
        samples_drawn=result.samples_drawn,
        oversampling=result.samples_drawn / max(result.num_samples, 1),
    )
    return out


# ----------------------------------------------------------------------------- picture
def proposal_image(
    result: ProposalSet, panels: int = 8, pad: int = 2, truth: np.ndarray | None = None
) -> torch.Tensor:
    """``(3, H, W)`` in [0, 1]: the scene, then one panel per ranked proposal (up to
    ``panels``): its footprint green if verified, red if not, over the scene; then, if given,
    a ``truth`` footprint ``(N, N)`` (e.g. the nearest feasible pose) in yellow."""
    context = torch.from_numpy(result.scene.masks) * 2 - 1
    base = scene_rgb(context)
    cells = [base]
    overlays = [
        ((0.1, 0.75, 0.2) if p.verified else (0.9, 0.1, 0.1), p.footprint)
        for p in result.proposals[:panels]
    ]
    if truth is not None:
        overlays.append(((0.95, 0.8, 0.0), truth))
    for color, footprint in overlays:
        alpha = torch.from_numpy(footprint.astype(np.float32))[None] * 0.85
        cells.append((0.55 + 0.45 * base) * (1 - alpha) + torch.tensor(color).view(3, 1, 1) * alpha)
    flipped = [c.flip(1) if _rows_up(result) else c for c in cells]  # y up in the picture
    return torch.cat([torch.nn.functional.pad(c, (pad,) * 4, value=1.0) for c in flipped], dim=2)


def _rows_up(result: ProposalSet) -> bool:
    return result.scene.frame.shift_to_world(1, 0)[1] > 0


# ----------------------------------------------------------------------------- CLI
def _parser() -> OneLineParser:
    parser = OneLineParser(
        prog="goalgen-propose",
        description="Ranked, verified goal proposals for the selected object of one scene: an "
        ".npz scene file, or a MuJoCo XML with --object (and --state).",
    )
    parser.add_argument("run_dir", help=RUN_HELP)
    parser.add_argument("scene", nargs="?", help=".npz scene file")
    parser.add_argument("--xml", type=Path, help="MuJoCo scene XML (namo_cpp naming)")
    parser.add_argument("--state", type=Path, help="the planner's JSON state (with --xml)")
    parser.add_argument("--object", help="selected movable object's name (with --xml)")
    parser.add_argument("--samples", type=int, default=32, help="samples per draw (32)")
    parser.add_argument("--top", type=int, help="return at most K; draw more while fewer verify")
    parser.add_argument("--max-samples", type=int, help="sample budget with --top (2 x samples)")
    parser.add_argument("--steps", type=int, help="sampling steps (default: the run's)")
    parser.add_argument("--method", help=METHOD_HELP)
    parser.add_argument("--checkpoint", default="best", help="best (default), last or a path")
    parser.add_argument("--seed", type=int, default=0, help="noise seed (0)")
    parser.add_argument(
        "--clearance",
        type=float,
        default=CLEARANCE,
        help=f"metres the robot keeps from walls and boxes on its route and the placed box "
        f"from walls, boxes and the robot ({CLEARANCE})",
    )
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    parser.add_argument("--json", required=True, type=Path, help="output JSON file")
    parser.add_argument("--png", type=Path, help="output PNG: the scene and the proposals")
    return parser


def main(argv: list[str] | None = None) -> int:
    """``goalgen-propose``: see the module docstring."""
    parser = _parser()
    args = parser.parse_args(argv)
    if (args.scene is None) == (args.xml is None):
        parser.error("give one scene: SCENE.npz or --xml SCENE.xml")
    if args.xml is not None and not args.object:
        parser.error("--xml needs --object NAME (the selected movable object)")
    if args.xml is None and (args.object or args.state):
        parser.error("--object and --state go with --xml")
    for name in ("samples", "top", "max_samples", "steps"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if not args.clearance >= 0:
        parser.error(f"--clearance must be a distance >= 0 in metres, got {args.clearance}")
    try:
        with warnings_as_lines("goalgen-propose"):
            predictor = GoalPredictor.from_run(args.run_dir, args.checkpoint, args.device)
            result = propose(
                predictor,
                args.xml if args.xml is not None else Path(args.scene),
                args.samples,
                args.top,
                object_name=args.object,
                state=args.state,
                max_samples=args.max_samples,
                steps=args.steps,
                method=args.method,
                seed=args.seed,
                clearance=args.clearance,
            )
        report = result.to_json() | {"checkpoint": str(predictor.checkpoint_path)}
        atomic_write_text(args.json, json.dumps(report, indent=1, allow_nan=False) + "\n")
        if args.png is not None:
            image = proposal_image(result)
            save_png(image, args.png, scale=max(1, 448 // result.scene.size))
    except USER_ERRORS as error:
        print(f"goalgen-propose: error: {one_line(error)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    print(
        f"{result.scene.name}: {len(result.verified)} of {len(result)} proposals verified from "
        f"{result.samples_drawn} samples ({result.raw_verified_share:.0%} of raw samples "
        f"verify) -> {args.json}" + (f", {args.png}" if args.png else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
