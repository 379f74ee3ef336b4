"""``sample`` section: batched vs sequential sampling per sampler setting, compiled
sampling, and (``--run``) each setting's quality scored by goalgen-eval."""

from __future__ import annotations

import statistics
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from goalgen import checkpoint as ckpt
from goalgen.bench.measure import counting_flops, load_avg, ms, time_runs
from goalgen.bench.settings import (
    DIFFUSION_METHODS,
    QUALITY_GRID,
    QUALITY_POINTS,
    QUICK_QUALITY_GRID,
    Bench,
)
from goalgen.eval.evaluate import evaluate_run
from goalgen.infer.predictor import CountingNetwork, GoalPredictor
from goalgen.model.build import build_model
from goalgen.model.generative import GenerativeModel
from goalgen.model.paths import FBFlowMatchingPath, HFDiffusionPath
from goalgen.model.samplers import FBODESampler, HFDiffusionSampler
from goalgen.precision import inference_precision


def sampling_model(b: Bench, network: nn.Module, method: str) -> nn.Module:
    """A GenerativeModel around ``network`` whose sampler runs ``method``: the config's own
    path (and tolerances) when its family matches, the library defaults otherwise."""
    m = b.cfg.model
    if method in DIFFUSION_METHODS:
        diffusion = "HFDiffusionPath" in m.path._target_
        path = hydra_instantiate(m.path) if diffusion else HFDiffusionPath()
        return GenerativeModel(network, path, HFDiffusionSampler(sampler_type=method))
    flow = "FBFlowMatchingPath" in m.path._target_
    path = hydra_instantiate(m.path) if flow else FBFlowMatchingPath()
    tol = {"atol": m.sampler.atol, "rtol": m.sampler.rtol} if flow else {}
    return GenerativeModel(network, path, FBODESampler(method=method, **tol))


def hydra_instantiate(node: DictConfig) -> Any:
    import hydra

    return hydra.utils.instantiate(node, _convert_="all")


def sample_network(b: Bench) -> tuple[nn.Module, str]:
    """The config's network (``--ckpt``: its EMA weights, else freshly initialised)."""
    torch.manual_seed(b.cfg.seed)
    network = build_model(b.cfg).network
    weights = "untrained (adaLN-Zero: output 0, so adaptive solvers take few steps)"
    if b.ckpt is not None:
        ckpt.load_network(network, ckpt.load_checkpoint(b.ckpt), "ema", b.ckpt)
        weights = f"EMA of {b.ckpt}"
    return network.to(b.device).eval(), weights


def measure_sampling(
    b: Bench, network: nn.Module, method: str, steps: int | None
) -> dict[str, Any]:
    """``samples_per_scene`` samples of one scene: one batched call (context repeated) vs
    one call per sample; ms per scene, scenes/s, network evaluations (NFE) per sample."""
    k, s = b.samples_per_scene, b.cfg.image_size
    counter = CountingNetwork(network)
    model = sampling_model(b, counter, method)
    autocast = inference_precision(None, b.device).autocast  # what GoalPredictor runs
    context = torch.rand(1, 5, s, s, generator=torch.Generator().manual_seed(1)).gt(0.8)
    context = (context.float() * 2 - 1).to(b.device)
    gen = torch.Generator(device=b.device)
    n_steps = steps or 1  # ignored by adaptive solvers

    def batched() -> None:
        with autocast():
            model.sample(context.repeat_interleave(k, 0), n_steps, gen.manual_seed(0))

    def sequential() -> None:
        for i in range(k):
            with autocast():
                model.sample(context, n_steps, gen.manual_seed(i))

    batched()  # warm-up (and the compile of this shape)
    with autocast():
        model.sample(context, n_steps, gen.manual_seed(0))
    counter.calls = 0
    batched_times = time_runs(batched, b.device, b.repeats, warmup=0)
    nfe_batched = counter.calls / b.repeats
    counter.calls = 0
    sequential_times = time_runs(sequential, b.device, b.repeats, warmup=0)
    nfe_sequential = counter.calls / (b.repeats * k)
    batched_ms, sequential_ms = ms(batched_times), ms(sequential_times)
    return {
        "method": method,
        "steps": steps,
        "nfe_per_sample_batched": nfe_batched,
        "nfe_per_sample_sequential": nfe_sequential,
        "batched_ms_per_scene": batched_ms,
        "sequential_ms_per_scene": sequential_ms,
        "batched_scenes_per_s": 1e3 / batched_ms,
        "sequential_scenes_per_s": 1e3 / sequential_ms,
        "speedup": sequential_ms / batched_ms,  # batched over sequential
        "load_avg": load_avg(),
    }


def count_forward_gflop(b: Bench, network: nn.Module) -> float:
    """FLOPs of one network evaluation for one sample (the sampler's unit of work)."""
    s = b.cfg.image_size
    with torch.no_grad(), counting_flops() as counter:
        network(torch.zeros(1, 8, s, s, device=b.device), torch.zeros(1, device=b.device))
    return counter.get_total_flops() / 1e9


def bench_sample(b: Bench) -> dict[str, Any]:
    out: dict[str, Any] = {
        "load_avg": load_avg(),
        "samples_per_scene": b.samples_per_scene,
        "precision": inference_precision(None, b.device).name,  # GoalPredictor's default
    }
    network, out["weights"] = sample_network(b)
    gflop = count_forward_gflop(b, network)
    rows = [measure_sampling(b, network, method, steps) for method, steps in b.sample_grid]
    for row in rows:
        nfe = row["nfe_per_sample_batched"] * b.samples_per_scene
        row["batched_achieved_gflop_per_s"] = nfe * gflop / (row["batched_ms_per_scene"] / 1e3)
    out.update({"gflop_per_nfe_per_sample": gflop, "compiled": False, "runs": rows})
    speedups = [r["speedup"] for r in rows]
    out["speedup_min"], out["speedup_median"] = min(speedups), statistics.median(speedups)
    if b.compile:
        out["compile"] = bench_sample_compiled(b, network, rows)
    if b.run_dir is not None:
        out["quality"] = bench_sample_quality(b)
    out["load_avg_end"] = load_avg()
    return out


def bench_sample_quality(b: Bench) -> dict[str, Any]:
    """Score each sampler setting of the run's family with ``goalgen-eval`` (same scenes, same
    seed) and recommend the fastest whose success rate is within ``QUALITY_POINTS`` points of
    the best setting's; ``speedup`` compares it with the fastest best-scoring setting."""
    family = GoalPredictor.from_run(b.run_dir, "best", str(b.device)).family
    grid = (QUICK_QUALITY_GRID if b.quick else QUALITY_GRID)[family]
    rows = []
    for method, steps in grid:
        report = evaluate_run(
            b.run_dir,
            num_samples=b.samples_per_scene,
            steps=steps,
            method=method,
            max_scenes=b.quality_scenes,
            seed=0,
            device=str(b.device),
            per_scene=False,
            proposals=False,
        )
        model, cost = report["methods"]["model"], report["cost"]
        rows.append(
            {
                "method": method,
                "steps": steps,
                "nfe": cost["nfe"],
                "ms_per_scene": 1e3 * cost["seconds_per_scene"],
                "success_rate": model["success_rate"],
                "success_at_k": model["success_at_k"],
                "validity": model["validity"],
                "best_iou": model["best_iou"],
                "hit_at_k": model["hit_at_k"],
                "diversity": model["diversity"],
            }
        )
    points = [100 * r["success_rate"] for r in rows]
    best = max(points)
    good = [r for r, p in zip(rows, points, strict=True) if p >= best - QUALITY_POINTS]
    fastest = min(good, key=lambda r: r["ms_per_scene"])
    best_row = min(
        (r for r, p in zip(rows, points, strict=True) if p == best), key=lambda r: r["ms_per_scene"]
    )
    return {
        "run_dir": str(b.run_dir),
        "family": family,
        "scenes": report["num_scenes"],
        "samples_per_scene": b.samples_per_scene,
        "within_points": QUALITY_POINTS,
        "best_success_rate": best / 100,
        "runs": rows,
        "recommended": {
            "method": fastest["method"],
            "steps": fastest["steps"],
            "success_rate": fastest["success_rate"],
            "ms_per_scene": fastest["ms_per_scene"],
            # the recommendation over the best-scoring setting
            "speedup": best_row["ms_per_scene"] / fastest["ms_per_scene"],
        },
    }


def bench_sample_compiled(b: Bench, network: nn.Module, eager_rows: list[dict]) -> dict:
    """The config's sampler method, eager vs ``torch.compile``d network (first grid entry of
    that method, to bound the compile and run time)."""
    method = b.cfg.model.sampler.get("method") or b.cfg.model.sampler.get("sampler_type")
    eager = next((r for r in eager_rows if r["method"] == method), eager_rows[0])
    compiled_net = torch.compile(network, backend=b.compile_backend)
    row = measure_sampling(b, compiled_net, eager["method"], eager["steps"])
    torch._dynamo.reset()
    return {
        "method": eager["method"],
        "steps": eager["steps"],
        "backend": b.compile_backend,
        "eager": {k: eager[k] for k in ("batched_ms_per_scene", "sequential_ms_per_scene")},
        "compiled": row,
        # compiled over eager, batched
        "speedup": eager["batched_ms_per_scene"] / row["batched_ms_per_scene"],
    }
