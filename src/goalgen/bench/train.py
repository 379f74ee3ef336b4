"""``train`` section: step time, throughput, MFU and peak memory of THE training step
(:meth:`goalgen.train.step.Learner.train_step`) per precision, eager and compiled."""

from __future__ import annotations

import copy
import math
import time
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from goalgen.bench.measure import (
    PeakMemory,
    counting_flops,
    load_avg,
    matmul_peak_gflop_per_s,
    ms,
    release,
    sync,
    time_runs,
)
from goalgen.bench.settings import PRECISION_DTYPES, Bench
from goalgen.model.build import build_model
from goalgen.train.distributed import DistContext
from goalgen.train.step import Learner, resolve_compile

# the LR schedule's length: a long run (the LR's value does not change what a step costs)
BENCH_TOTAL_STEPS = 100_000


def make_learner(
    b: Bench, precision: str, compiled: bool, total_steps: int = BENCH_TOTAL_STEPS
) -> Learner:
    """The training loop's own :class:`Learner` for ``b.cfg`` with ``trainer.precision``
    set to ``precision``, in one process on ``b.device``."""
    cfg = copy.deepcopy(b.cfg)
    cfg.trainer.precision = precision
    ctx = DistContext(0, 0, 1, 1, b.device, None)
    return Learner(cfg, ctx, total_steps, compiled, b.compile_backend)


def synthetic_batch(cfg: DictConfig, device: torch.device) -> dict[str, torch.Tensor]:
    """A collated batch as the loader yields it (CPU; pinned for CUDA like the loop's loader)."""
    g = torch.Generator().manual_seed(0)
    b, s = cfg.batch_size, cfg.image_size
    batch = {
        "context": torch.rand(b, 5, s, s, generator=g).gt(0.8).float() * 2 - 1,
        "target": torch.rand(b, 1, s, s, generator=g).gt(0.9).float() * 2 - 1,
        "index": torch.arange(b),
    }
    if device.type == "cuda":
        batch = {k: v.pin_memory() for k, v in batch.items()}
    return batch


def count_train_gflop(b: Bench, batch: dict[str, torch.Tensor]) -> tuple[float, float]:
    """(GFLOP of one training step, million parameters). FLOPs of the forward + backward of
    the loss, counted once in fp32 eager: matmuls, convolutions and attention (element-wise
    work is not counted, as usual for MFU)."""
    model = build_model(b.cfg).to(b.device)
    context, x_1 = batch["context"].to(b.device), batch["target"].to(b.device)
    noise, t = model.path.draw(x_1, torch.Generator(device=b.device).manual_seed(0))
    with counting_flops() as counter:
        model(context, x_1, noise, t)["loss"].backward()
    return counter.get_total_flops() / 1e9, sum(p.numel() for p in model.parameters()) / 1e6


def train_precisions(device: torch.device) -> list[str]:
    """fp32 and bf16 everywhere bf16 is fast; fp16 (+ GradScaler) on CUDA only (no fast fp16
    CPU kernels: the loop itself maps 16-mixed to bf16 on the CPU)."""
    if device.type != "cuda":
        return ["32", "bf16-mixed"]
    return ["32"] + (["bf16-mixed"] if torch.cuda.is_bf16_supported() else []) + ["16-mixed"]


def measure_train_run(
    b: Bench, precision: str, compiled: bool, gflop: float, batch: dict[str, torch.Tensor]
) -> dict[str, Any]:
    """Step time, throughput, MFU and peak memory of one (precision, compile) combination.

    The matmul peak in the same dtype is measured right before, so MFU compares two figures
    taken under the same machine load."""
    dtype = PRECISION_DTYPES[precision]
    peak = matmul_peak_gflop_per_s(dtype, b.device, b.repeats, b.quick)
    learner = make_learner(b, precision, compiled)
    start = time.perf_counter()
    learner.train_step(batch, 0)  # the first step compiles (when compiled)
    sync(b.device)
    first_s = time.perf_counter() - start
    with PeakMemory(b.device) as mem:
        times = time_runs(
            lambda: learner.train_step(batch, 0), b.device, b.repeats, warmup=max(0, b.warmup - 1)
        )
    step_ms = ms(times)
    achieved = gflop / (step_ms / 1e3)
    row = {
        "precision": precision,
        "compiled": compiled,
        "compile_backend": b.compile_backend if compiled else None,
        "step_ms": step_ms,
        "step_ms_runs": [1e3 * t for t in times],
        "samples_per_s": b.cfg.batch_size / (step_ms / 1e3),
        "achieved_gflop_per_s": achieved,
        "peak_gflop_per_s": peak,
        "mfu": achieved / peak,
        "peak_mem_mb": mem.peak_mb,
        "peak_mem_kind": mem.kind,
        **({"peak_rss_mb": mem.rss_mb} if mem.rss_mb is not None else {}),
        "first_step_s": first_s,
        "load_avg": load_avg(),
    }
    return row


def bench_train(b: Bench) -> dict[str, Any]:
    out: dict[str, Any] = {"load_avg": load_avg()}
    batch = synthetic_batch(b.cfg, b.device)
    gflop, params_m = count_train_gflop(b, batch)
    runs = []
    for compiled in (False, True) if b.compile else (False,):
        for precision in train_precisions(b.device):
            runs.append(measure_train_run(b, precision, compiled, gflop, batch))
            release(b.device)
        torch._dynamo.reset()
    default = b.precision
    auto = resolve_compile(b.cfg.trainer.compile, b.device)  # the guide's default: a long run
    by_key = {(r["precision"], r["compiled"]): r for r in runs}
    chosen = by_key.get((default, auto)) or by_key[(default, False)]
    out.update(
        {
            "batch_size": b.cfg.batch_size,
            "image_size": b.cfg.image_size,
            "network": OmegaConf.to_container(b.cfg.model.network, resolve=True),
            "params_m": params_m,
            "gflop_per_step": gflop,
            "default_precision": default,
            "compile_setting": str(b.cfg.trainer.compile),
            "step_ms": chosen["step_ms"],
            "samples_per_s": chosen["samples_per_s"],
            "achieved_gflop_per_s": chosen["achieved_gflop_per_s"],
            "peak_gflop_per_s": chosen["peak_gflop_per_s"],
            "mfu": chosen["mfu"],
            "peak_mem_mb": chosen["peak_mem_mb"],
            "runs": runs,
        }
    )
    fp32 = by_key[("32", False)]
    out["mixed_precision"] = {  # speedup = the default precision over fp32, both eager
        "precision": default,
        "fp32_step_ms": fp32["step_ms"],
        "mixed_step_ms": by_key[(default, False)]["step_ms"],
        "speedup": fp32["step_ms"] / by_key[(default, False)]["step_ms"],
    }
    if b.compile:
        eager_ms, compiled_ms = (
            by_key[(default, False)]["step_ms"],
            by_key[(default, True)]["step_ms"],
        )
        picked, other = (compiled_ms, eager_ms) if auto else (eager_ms, compiled_ms)
        # the first compiled step pays for compilation: steps until that is earned back
        extra_s = by_key[(default, True)]["first_step_s"] - by_key[(default, False)]["first_step_s"]
        saved_s = (eager_ms - compiled_ms) / 1e3
        out["compile"] = {  # speedup = compiled over eager, at the default precision
            "precision": default,
            "backend": b.compile_backend,
            "eager_step_ms": eager_ms,
            "compiled_step_ms": compiled_ms,
            "speedup": eager_ms / compiled_ms,
            "compile_warmup_s": extra_s,
            "break_even_steps": math.ceil(extra_s / saved_s) if saved_s > 0 else None,
            "auto_picks": "compiled" if auto else "eager",
            # the target: auto is never slower than eager (per step, compilation aside)
            "auto_over_eager_speedup": eager_ms / picked,
            "auto_is_faster": picked <= other,
        }
    b.shared["step_ms"] = chosen["step_ms"]
    out["load_avg_end"] = load_avg()
    return out


def reference_step_ms(b: Bench) -> float:
    """The default configuration's step time: from the train section, else measured here."""
    if "step_ms" not in b.shared:
        b.shared["step_ms"] = _measure_default_step_ms(b)
        release(b.device)
    return b.shared["step_ms"]


def _measure_default_step_ms(b: Bench) -> float:
    compiled = b.compile and resolve_compile(b.cfg.trainer.compile, b.device)
    learner = make_learner(b, b.precision, compiled)
    batch = synthetic_batch(b.cfg, b.device)
    return ms(
        time_runs(
            lambda: learner.train_step(batch, 0), b.device, b.repeats, warmup=max(1, b.warmup)
        )
    )
