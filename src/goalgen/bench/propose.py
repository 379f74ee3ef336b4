"""``propose`` section: the planner's call, ``propose(weights, scene, 32, top=8)`` (draw
again while fewer than 8 distinct proposals verify, up to ``DRAWS`` draws), on ``scenes``
fresh synthetic scenes per family: ms per call (p50 / p95) and its split, means over the
calls: setup, sampling, fit, snap, check (:func:`goalgen.infer.proposals.evaluate_samples`),
rank (with the push plans) and redraws (:func:`goalgen.infer.proposals.propose`: the real
code).

Weights: ``--ckpt`` or ``--run`` (its best checkpoint), else the config's network untrained;
``--baseline`` (the previous planner weights) is timed on the same scenes, with the ratio of
the medians. An untrained network's samples are no boxes, so post-processing is also timed on
samples of a good model's kind: the scene's own feasible goal poses drawn at the model's
resolution (``post_ms_feasible_samples``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf

from goalgen import checkpoint as ckpt
from goalgen.bench.measure import load_avg
from goalgen.bench.settings import Bench
from goalgen.data.pack import resize_masks
from goalgen.data.synthetic import generate_scene, save_npz
from goalgen.infer.predictor import GoalPredictor
from goalgen.infer.proposals import DRAWS, proposals_of_samples, propose
from goalgen.infer.propose_scene import as_scene
from goalgen.model.build import build_model

TOP = 8  # proposals a planner asks for
FAMILIES = ("maze", "rooms", "arena")
PARTS = ("setup", "sampling", "fit", "snap", "check", "rank")


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


def time_calls(predictor: GoalPredictor, paths: list[Path], k: int, warmup: int) -> dict[str, Any]:
    """The planner's call on each scene of ``paths``: ms per call (p50, p95), the mean split
    (ms, :data:`PARTS`), ``post / sampling``, draws and distinct verified proposals."""
    for _ in range(warmup):
        propose(predictor, paths[0], k, TOP, max_samples=DRAWS * k, seed=0)
    calls, parts, drawn, verified = [], {p: [] for p in PARTS}, [], []
    for path in paths:
        start = time.perf_counter()
        result = propose(predictor, path, k, TOP, max_samples=DRAWS * k, seed=0)
        calls.append(time.perf_counter() - start)
        for part in PARTS:
            parts[part].append(result.seconds.get(part, 0.0))
        drawn.append(result.samples_drawn)
        verified.append(len(result.verified))
    split = {f"{part}_ms": 1e3 * float(np.mean(v)) for part, v in parts.items()}
    post = split["setup_ms"] + sum(split[f"{p}_ms"] for p in ("fit", "snap", "check", "rank"))
    return {
        "calls": len(paths),
        "call_ms_p50": 1e3 * float(np.median(calls)),
        "call_ms_p95": 1e3 * float(np.percentile(calls, 95)),
        **split,
        "post_ms": post,
        "post_over_sampling": post / split["sampling_ms"],
        "samples_drawn_for_top": float(np.mean(drawn)),
        "oversampling": float(np.mean(drawn)) / k,
        "redraws": float(np.mean(drawn)) / k - 1,
        "verified_of_top": float(np.mean(verified)),
    }


def bench_propose(b: Bench) -> dict[str, Any]:
    k = b.propose_samples
    predictor, weights = predictor_of(b)
    baseline = None
    if b.baseline is not None:
        baseline = GoalPredictor.from_checkpoint(b.baseline, b.device)
    out: dict[str, Any] = {
        "load_avg": load_avg(),
        "weights": weights,
        "baseline": None if baseline is None else str(b.baseline),
        "num_samples": k,
        "image_size": predictor.image_size,
        "method": predictor.method,
        "steps": predictor.sampling_steps,
        "precision": predictor.precision.name,
        "top": TOP,
        "max_samples": DRAWS * k,
        "scenes_per_family": b.propose_scenes,
    }
    scenes = {}
    for i, family in enumerate(FAMILIES):
        paths = []
        for j in range(b.propose_scenes):
            path = b.scratch / f"propose_{family}_{j}.npz"
            seed = np.random.SeedSequence(7, spawn_key=(i, j))
            save_npz(path, generate_scene(seed, 224, family))
            paths.append(path)
        timed = time_calls(predictor, paths, k, b.warmup)
        good = _feasible_samples(paths[0], k, predictor.image_size)
        posts = []
        for _ in range(max(b.repeats, 1)):
            seconds = proposals_of_samples(paths[0], good).seconds
            posts.append(seconds["setup"] + seconds["post"])
        post_good = 1e3 * float(np.median(posts))
        scenes[family] = timed | {
            "post_ms_feasible_samples": post_good,
            "post_over_sampling_feasible_samples": post_good / timed["sampling_ms"],
        }
        if baseline is not None:
            before = time_calls(baseline, paths, k, b.warmup)
            scenes[family]["baseline"] = before
            scenes[family]["call_p50_over_baseline"] = timed["call_ms_p50"] / before["call_ms_p50"]
    out["scenes"] = scenes
    out["post_over_sampling_max"] = max(
        max(s["post_over_sampling"], s["post_over_sampling_feasible_samples"])
        for s in scenes.values()
    )
    out["call_ms_p50_max"] = max(s["call_ms_p50"] for s in scenes.values())
    out["call_ms_p95_max"] = max(s["call_ms_p95"] for s in scenes.values())
    out["load_avg_end"] = load_avg()
    return out
