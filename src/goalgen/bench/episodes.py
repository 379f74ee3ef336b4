"""``episodes`` section: NAMO episodes in MuJoCo physics (:func:`goalgen.eval.episodes.run_episode`,
the real code) on ``scenes`` fresh synthetic scenes per family: wall time per region opening
(p50 / p95 over the episodes) and its split (the strategy's calls, physics and the rest),
success and pushes. The strategy is ``proposals`` with trained weights (``--ckpt`` or
``--run``), else ``random_local`` (an untrained network proposes nothing).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from goalgen.bench.measure import load_avg
from goalgen.bench.propose import FAMILIES, predictor_of
from goalgen.bench.settings import Bench
from goalgen.data.synthetic import generate_scene
from goalgen.data.world_scene import WorldScene
from goalgen.eval.episodes import make_strategy, run_episode


def bench_episodes(b: Bench) -> dict[str, Any]:
    trained = b.ckpt is not None or b.run_dir is not None
    predictor, weights = predictor_of(b) if trained else (None, "none")
    strategy_name = "proposals" if trained else "random_local"
    out: dict[str, Any] = {
        "load_avg": load_avg(),
        "strategy": strategy_name,
        "weights": weights,
        "scenes_per_family": b.episode_scenes,
    }
    families = {}
    for i, family in enumerate(FAMILIES):
        per_opening, model, physics, success, pushes = [], [], [], [], []
        for j in range(b.episode_scenes):
            arrays = generate_scene(np.random.SeedSequence(11, spawn_key=(i, j)), 224, family)
            world = WorldScene.from_arrays(arrays, f"{family}_{j}")
            radius = float(arrays.get("push_search_radius", 1.5))
            strategy = make_strategy(
                strategy_name, predictor, samples=b.propose_samples, radius=radius
            )
            episode = run_episode(world, strategy, seed=j)
            openings = max(len(episode.openings), 1)
            per_opening.append(episode.wall_seconds / openings)
            model.append(episode.model_seconds / openings)
            physics.append(sum(p.outcome.wall_seconds for p in episode.pushes) / openings)
            success.append(episode.success)
            pushes.append(len(episode.pushes))
        families[family] = {
            "episodes": b.episode_scenes,
            "opening_s_p50": float(np.median(per_opening)),
            "opening_s_p95": float(np.percentile(per_opening, 95)),
            "model_s_mean": float(np.mean(model)),
            "physics_s_mean": float(np.mean(physics)),
            "other_s_mean": float(np.mean(per_opening) - np.mean(model) - np.mean(physics)),
            "success": float(np.mean(success)),
            "pushes_mean": float(np.mean(pushes)),
        }
    out["families"] = families
    out["opening_s_p50_max"] = max(f["opening_s_p50"] for f in families.values())
    out["load_avg_end"] = load_avg()
    return out
