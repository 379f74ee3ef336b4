"""Context ablation: does a trained model read the scene it is given?

Samples each scene's goals twice with the same noise: once from its own context, once from the
context of another scene of the same family (a seeded derangement), and scores both sets
against the scene's own masks, geometry and feasible set with goalgen-eval's scorer
(:func:`goalgen.eval.scoring.score_scene`), raw samples and ranked, verified proposals. A
model that reads its input loses most of its score with a shuffled context.

    python jobs/ablate_context.py outputs/RUN --data data/heldout_maze --samples 32 \
        --out outputs/RUN/eval/ablation.json
    python jobs/ablate_context.py outputs/RUN --data DIR --channels static   # walls only

``--channels`` names the context channels taken from the other scene (default: all five).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from goalgen.data.scenes import find_scene_files
from goalgen.eval import near
from goalgen.eval.metrics import aggregate
from goalgen.eval.scoring import read_arrays, score_scene
from goalgen.infer import GoalPredictor, SceneInput, prepare_scene
from goalgen.infer.proposals import proposals_of_samples

CHANNELS = ("robot", "goal", "movable", "static", "object")
METHODS = ("model", "proposals")
TABLE_KEYS = (
    "validity",
    "best_iou",
    "success_at_1",
    "success_near_at_1",
    "success_near_at_k",
    "in_feasible_at_k",
    "within_half_width_at_k",
)


def derangement(groups: Sequence[str], rng: np.random.Generator) -> np.ndarray:
    """A permutation with ``perm[i] != i`` that maps each scene to another of its group
    (family); a group of one scene keeps its scene."""
    groups = list(groups)
    perm = np.arange(len(groups))
    for g in dict.fromkeys(groups):
        idx = np.array([i for i, x in enumerate(groups) if x == g])
        if len(idx) > 1:  # a random cyclic shift of a shuffled order: no fixed points
            order = rng.permutation(idx)
            perm[order] = np.roll(order, -int(rng.integers(1, len(idx))))
    return perm


def shuffle_context(
    scenes: Sequence[SceneInput], perm: np.ndarray, channels: Sequence[str] = CHANNELS
) -> list[SceneInput]:
    """``scenes`` with the named context channels taken from ``scenes[perm[i]]``."""
    take = [CHANNELS.index(c) for c in channels]
    out = []
    for i, scene in enumerate(scenes):
        context = scene.context.copy()
        context[take] = scenes[perm[i]].context[take]
        out.append(dataclasses.replace(scene, context=context))
    return out


def ablate(
    predictor: GoalPredictor,
    files: Sequence[Path],
    num_samples: int = 32,
    seed: int = 0,
    channels: Sequence[str] = CHANNELS,
    proposals: bool = True,
) -> dict[str, Any]:
    """Scores of ``own`` and ``shuffled`` context, over all scenes and per family."""
    arrays = [read_arrays(f) for f in files]
    families = [near.scene_family(a) for a in arrays]
    scenes = [prepare_scene(f, predictor.image_size) for f in files]
    perm = derangement(families, np.random.default_rng(seed))
    inputs = {"own": scenes, "shuffled": shuffle_context(scenes, perm, channels)}
    records: dict[str, list[dict[str, Any]]] = {}
    for variant, batch in inputs.items():
        predictions = predictor.predict_inputs(batch, num_samples, seed=seed)
        rows = []
        for i, (path, pred) in enumerate(zip(files, predictions, strict=True)):
            result = proposals_of_samples(path, pred.probs) if proposals else None
            scored, _ = score_scene(scenes[i], pred.masks, i, seed, arrays[i], result)
            rows.append({m: scored[m] for m in METHODS if m in scored})
        records[variant] = rows

    def summary(subset: list[int]) -> dict[str, Any]:
        out: dict[str, Any] = {"num_scenes": len(subset)}
        for variant, rows in records.items():
            out[variant] = {
                m: aggregate([rows[i][m] for i in subset])
                for m in METHODS
                if all(m in rows[i] for i in subset)
            }
        return out

    report = {
        "channels_shuffled": list(channels),
        "num_samples": num_samples,
        "seed": seed,
        "permutation": perm.tolist(),
        "all": summary(list(range(len(files)))),
        "families": {
            g: summary([i for i, x in enumerate(families) if x == g]) for g in sorted(set(families))
        },
    }
    return report


def format_report(report: dict[str, Any]) -> str:
    lines = [f"context channels shuffled: {', '.join(report['channels_shuffled'])}"]
    blocks = [("all", report["all"])] + list(report["families"].items())
    for name, block in blocks:
        lines.append(f"\n{name} ({block['num_scenes']} scenes)")
        lines.append(f"{'metric':<32}{'own':>9}{'shuffled':>10}{'kept':>8}")
        for method in METHODS:
            if method not in block["own"]:
                continue
            for key in TABLE_KEYS:
                a = block["own"][method].get(key)
                b = block["shuffled"][method].get(key)
                if a is None or b is None:
                    continue
                kept = f"{b / a:.0%}" if a > 0 else "-"
                lines.append(f"{method + ' ' + key:<32}{a:>9.3f}{b:>10.3f}{kept:>8}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--data", required=True, help="scene folder or .npz")
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--max-scenes", type=int)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint", default="best")
    parser.add_argument("--device")
    parser.add_argument("--channels", default=",".join(CHANNELS), help="comma-separated")
    parser.add_argument("--no-proposals", action="store_true")
    parser.add_argument("--out", help="report .json")
    args = parser.parse_args(argv)
    channels = [c.strip() for c in args.channels.split(",") if c.strip()]
    unknown = sorted(set(channels) - set(CHANNELS))
    if unknown or not channels:
        parser.error(f"--channels: unknown {unknown}; choose from {', '.join(CHANNELS)}")
    files = find_scene_files(args.data)[: args.max_scenes]
    if len(files) < 2:
        parser.error(f"--data {args.data}: needs at least 2 scenes, found {len(files)}")
    predictor = GoalPredictor.from_run(args.run_dir, args.checkpoint, args.device)
    report = ablate(
        predictor, files, args.samples, args.seed, channels, proposals=not args.no_proposals
    )
    report["run_dir"] = str(Path(args.run_dir).resolve())
    report["data"] = str(args.data)
    print(format_report(report))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
