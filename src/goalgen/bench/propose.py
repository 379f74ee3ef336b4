"""``propose`` section: ms per planner call (32 samples per draw, the top ``TOP`` verified
proposals, drawing again while fewer verify), split into sampling and post-processing (fits,
checks, push plans, ranking), and the oversampling ``top`` needs
(:func:`goalgen.infer.proposals.time_propose` / :func:`~goalgen.infer.proposals.propose`: the
real code).

Weights: ``--ckpt`` or ``--run`` (its best checkpoint), else the config's network untrained.
An untrained network's samples are no boxes, so post-processing is also timed on samples of a
good model's kind: the scene's own feasible goal poses drawn at the model's resolution
(``post_ms_feasible_samples``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from omegaconf import OmegaConf

from goalgen import checkpoint as ckpt
from goalgen.bench.measure import load_avg
from goalgen.bench.settings import Bench
from goalgen.data.pack import resize_masks
from goalgen.data.synthetic import generate_scene, save_npz
from goalgen.infer.predictor import GoalPredictor
from goalgen.infer.proposals import proposals_of_samples, propose, time_propose
from goalgen.infer.propose_scene import as_scene
from goalgen.model.build import build_model

TOP = 8  # proposals a planner asks for
BUDGET = 4  # max_samples = BUDGET x samples
FAMILIES = ("maze", "rooms")


def predictor_of(b: Bench) -> tuple[GoalPredictor, str]:
    """The predictor the section times and a word on its weights."""
    if b.ckpt is not None:
        return GoalPredictor.from_checkpoint(b.ckpt, b.device), f"EMA of {b.ckpt}"
    if b.run_dir is not None:
        path = ckpt.select_checkpoint(b.run_dir, "best")
        return GoalPredictor.from_checkpoint(path, b.device), f"EMA of {path}"
    config = OmegaConf.to_container(b.cfg, resolve=True)
    return GoalPredictor(build_model(b.cfg), config, b.device), "untrained"


def _feasible_samples(path, k: int, size: int) -> np.ndarray:
    """``(k, size, size)`` probabilities: the scene's stored feasible poses (else its goal),
    drawn in its frame and area-resized like training data."""
    scene, arrays = as_scene(path), dict(np.load(path))
    w, h = scene.target[2:4]
    poses = arrays.get("feasible_poses")
    if poses is None:
        box = arrays["target_goal_box"]
        poses = np.array([[box[0], box[1], box[4]]])
    drawn = [scene.frame.box_mask(x, y, w, h, t) for x, y, t in poses[np.arange(k) % len(poses)]]
    return resize_masks(np.stack(drawn).astype(np.float32), size)


def bench_propose(b: Bench) -> dict[str, Any]:
    k = b.propose_samples
    predictor, weights = predictor_of(b)
    out: dict[str, Any] = {
        "load_avg": load_avg(),
        "weights": weights,
        "num_samples": k,
        "image_size": predictor.image_size,
        "method": predictor.method,
        "steps": predictor.sampling_steps,
        "top": TOP,
        "max_samples": BUDGET * k,
    }
    scenes = {}
    for i, family in enumerate(FAMILIES):
        path = b.scratch / f"propose_{family}.npz"
        save_npz(path, generate_scene(np.random.SeedSequence(7, spawn_key=(i,)), 224, family))
        for _ in range(b.warmup):
            propose(predictor, path, k, TOP, max_samples=BUDGET * k, seed=0)
        timed = time_propose(
            predictor, path, k, max(b.repeats, 1), TOP, max_samples=BUDGET * k, seed=0
        )
        good = _feasible_samples(path, k, predictor.image_size)
        posts = []
        for _ in range(max(b.repeats, 1)):
            seconds = proposals_of_samples(path, good).seconds
            posts.append(seconds["setup"] + seconds["post"])
        ranked = propose(predictor, path, k, TOP, max_samples=BUDGET * k, seed=0)
        scenes[family] = timed | {
            "post_ms_feasible_samples": 1e3 * float(np.median(posts)),
            "post_over_sampling_feasible_samples": 1e3
            * float(np.median(posts))
            / timed["sampling_ms"],
            "samples_drawn_for_top": ranked.samples_drawn,
            "oversampling": ranked.samples_drawn / k,
            "raw_verified_share": ranked.raw_verified_share,
            "verified_of_top": len(ranked.verified),
        }
    out["scenes"] = scenes
    out["post_over_sampling_max"] = max(
        max(s["post_over_sampling"], s["post_over_sampling_feasible_samples"])
        for s in scenes.values()
    )
    out["load_avg_end"] = load_avg()
    return out
