"""``synth`` section: the synthetic scene generator's speed per family and its reject rate
(:func:`goalgen.data.synthetic.benchmark`: the real generator, one core, no files)."""

from __future__ import annotations

from typing import Any

from goalgen.bench.measure import load_avg
from goalgen.bench.settings import Bench
from goalgen.data.synthetic import benchmark

FAMILIES = ("rooms", "maze", "arena")
TARGET_SCENES, TARGET_CORES = 10_000, 2  # issue 13: 10,000 maze scenes in <= 30 min on 2 cores


def bench_synth(b: Bench) -> dict[str, Any]:
    """Scenes/s per family on one core, the share of drawn layouts rejected (and why), the
    mazes' and arenas' feasible poses and modes per scene, and the minutes ``TARGET_SCENES``
    maze scenes take on ``TARGET_CORES`` workers (scenes are independent: the workers scale
    linearly)."""
    out: dict[str, Any] = {"load_avg": load_avg(), "scenes_per_family": b.synth_scenes}
    out["families"] = benchmark(FAMILIES, num_scenes=b.synth_scenes, seed=0, size=224)
    rate = out["families"]["maze"]["scenes_per_s"]
    out["maze_10k_minutes_on_2_cores"] = TARGET_SCENES / (rate * TARGET_CORES) / 60
    out["load_avg_end"] = load_avg()
    return out
