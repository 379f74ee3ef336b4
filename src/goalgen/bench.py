"""``goalgen-bench``: training throughput and MFU, data loader, sampler and checkpoint costs.

    goalgen-bench [train|data|sample|checkpoint|all ...] [hydra overrides ...]
                  [--config-name NAME] [--json OUT] [--quick] [--repeats N] [...]

Runs on CUDA when present, else on the CPU, with the real Hydra config (``--config-name``,
default ``train_fb_flow_matching``, plus overrides). Every figure is the median of ``--repeats``
timed runs after ``--warmup`` untimed ones; CUDA is synchronised before every clock read. The
load average is recorded next to each section (timings on a shared machine need it).

``--json OUT`` writes one object per section (``train``, ``data``, ``sample``, ``checkpoint``)
with raw figures (``*_per_s``, ``*_ms``, ``mfu``, ``peak_*``) and, wherever two ways are
compared, a ``speedup`` = throughput of the named way / throughput of the baseline (equal to
baseline_ms / other_ms), plus ``device`` and ``versions``. ``--quick`` (CI) runs a tiny model,
few repeats, a small data set and ``torch.compile(backend="aot_eager")`` (Dynamo and
AOTAutograd, no C++ code generation) so the benchmark cannot rot; its figures mean nothing.
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import datetime
import gc
import json
import math
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, NoReturn

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

SECTIONS = ("train", "data", "sample", "checkpoint")
QUICK_OVERRIDES = [
    "image_size=16",
    "batch_size=8",
    "sampling_steps=2",
    "model.network.dim=32",
    "model.network.depth=1",
    "model.network.heads=2",
    "model.network.patch_size=4",
]
# (method, steps); steps None = adaptive. Flow methods use an ODE sampler, ddim/ddpm diffusers.
# Kept small: on a CPU every network evaluation of the default model costs ~1.5 s here
# (32 samples batched + 32 sequential), so this grid alone takes ~3 min per repeat.
SAMPLE_GRID = [
    ("euler", 5),
    ("euler", 10),
    ("midpoint", 5),
    ("rk4", 5),
    ("dopri5", None),
    ("ddim", 10),
    ("ddim", 20),
    ("ddpm", 10),
]
QUICK_SAMPLE_GRID = [
    ("euler", 2),
    ("midpoint", 2),
    ("rk4", 2),
    ("dopri5", None),
    ("ddim", 2),
    ("ddpm", 2),
]
DIFFUSION_METHODS = ("ddim", "ddpm")
# --run: sampler settings scored by goalgen-eval, per family; steps None = adaptive
QUALITY_GRID = {
    "flow": [
        ("euler", 5),
        ("euler", 10),
        ("euler", 20),
        ("midpoint", 5),
        ("midpoint", 10),
        ("midpoint", 20),
        ("rk4", 5),
        ("rk4", 10),
        ("dopri5", None),
    ],
    "diffusion": [("ddim", 10), ("ddim", 20), ("ddim", 50), ("ddpm", 50), ("ddpm", 100)],
}
QUICK_QUALITY_GRID = {
    "flow": [("euler", 2), ("midpoint", 2)],
    "diffusion": [("ddim", 2), ("ddpm", 2)],
}
QUALITY_POINTS = 2.0  # "as good as the best": success rate within this many points
PRECISION_DTYPES = {"32": torch.float32, "bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


# ------------------------------------------------------------------------------ settings
@dataclass
class Bench:
    """What every section needs: the composed config, the device and the run settings."""

    cfg: DictConfig
    config_name: str
    overrides: list[str]
    device: torch.device
    quick: bool
    repeats: int
    warmup: int
    work_dir: Path  # kept between runs: synthetic scenes
    scratch: Path  # removed at exit: checkpoints
    data_dir: Path | None
    num_scenes: int
    epoch_steps: int | None
    compile: bool
    compile_backend: str
    samples_per_scene: int
    sample_grid: list[tuple[str, int | None]]
    ckpt: Path | None
    run_dir: Path | None  # --run: score sampler settings on this run's validation scenes
    quality_scenes: int
    precision: str  # trainer.precision as the loop resolves it here (16-mixed -> bf16 on CPU)
    shared: dict[str, Any] = field(default_factory=dict)  # figures one section hands another


# ------------------------------------------------------------------------------ measuring
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_runs(
    fn: Callable[[], object], device: torch.device, repeats: int, warmup: int
) -> list[float]:
    """Seconds of each of ``repeats`` calls of ``fn`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return times


def ms(seconds: list[float]) -> float:
    return 1e3 * statistics.median(seconds)


def load_avg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # not available on this platform
        return []


def matmul_peak_gflop_per_s(
    dtype: torch.dtype, device: torch.device, repeats: int, quick: bool = False
) -> float:
    """Median FLOP rate of a large square matmul in ``dtype`` (the MFU denominator).

    2048² on the CPU (one product ~ 20-100 ms); 8192² on CUDA, where one product is long
    enough (~1-10 ms) for launch overhead not to matter; 512² with ``quick``.
    """
    n = 512 if quick else 8192 if device.type == "cuda" else 2048
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    times = time_runs(lambda: torch.mm(a, b), device, max(5, repeats), warmup=2)
    return 2 * n**3 / statistics.median(times) / 1e9


class PeakMemory:
    """Peak memory while the ``with`` block runs, in MiB (``.peak_mb``, ``.kind``).

    CUDA: ``torch.cuda.max_memory_allocated`` after a reset (all tensors: weights, optimizer
    state, activations). CPU on Linux: the peak resident set above the resident set at entry
    (free heap first returned to the OS with ``malloc_trim``, the high-water mark reset through
    /proc/self/clear_refs), i.e. what the block allocates on top of what is live (activations,
    gradients, temporaries); ``.rss_mb`` is the absolute peak. Elsewhere: the growth of
    ``ru_maxrss``, a lower bound (0 unless the block sets a new lifetime peak).
    """

    def __init__(self, device: torch.device):
        self.device, self.peak_mb, self.rss_mb, self.kind = device, float("nan"), None, ""

    def __enter__(self) -> PeakMemory:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.kind = "cuda_max_allocated"
        elif self._reset_hwm():
            _malloc_trim()
            self.base_kb, self.kind = self._status_kb("VmRSS"), "rss_peak_above_entry"
        else:
            self.base_kb, self.kind = self._maxrss_kb(), "ru_maxrss_growth"
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            sync(self.device)
            self.peak_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        elif self.kind == "rss_peak_above_entry":
            peak_kb = self._status_kb("VmHWM")
            self.peak_mb, self.rss_mb = (peak_kb - self.base_kb) / 1024, peak_kb / 1024
        else:
            self.peak_mb = (self._maxrss_kb() - self.base_kb) / 1024

    @staticmethod
    def _reset_hwm() -> bool:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            return True
        except OSError:
            return False

    @staticmethod
    def _status_kb(key: str) -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
        raise KeyError(key)

    @staticmethod
    def _maxrss_kb() -> int:
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return rss // 1024 if sys.platform == "darwin" else rss


def _malloc_trim() -> None:
    """Return glibc's free heap pages to the OS (no-op elsewhere), so the resident set is what
    is live and the next block's peak above it is not hidden by memory freed earlier."""
    with suppress(OSError, AttributeError):
        ctypes.CDLL(None).malloc_trim(0)


def _flop_formulas() -> dict:
    """FLOP formulas for the CPU flash-attention kernels, which FlopCounterMode lacks (it
    counts the CUDA ones): without them attention would count as zero FLOPs on the CPU."""
    from torch.utils import flop_counter as fc

    def forward(q, k, v, *args, out_shape=None, **kwargs) -> int:
        return fc.sdpa_flop_count(q, k, v)

    def backward(grad_out, q, k, v, *args, out_shape=None, **kwargs) -> int:
        return fc.sdpa_backward_flop_count(grad_out, q, k, v)

    ops = {
        "_scaled_dot_product_flash_attention_for_cpu": forward,
        "_scaled_dot_product_flash_attention_for_cpu_backward": backward,
    }
    return {
        getattr(torch.ops.aten, name): formula
        for name, formula in ops.items()
        if hasattr(torch.ops.aten, name)
    }


@contextmanager
def counting_flops() -> Iterator[Any]:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False, custom_mapping=_flop_formulas()) as counter:
        yield counter


def _release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ------------------------------------------------------------------------------ training step
def _make_trainer_class():
    from goalgen.train.loop import Trainer

    class BenchTrainer(Trainer):
        """The loop's Trainer without data, logger or progress: model, EMA, precision, grad
        scaler, optimizer, LR schedule and top-k table built as ``Trainer.__init__`` builds
        them; ``state_dict``/``_maybe_resume`` are the Trainer's own (the checkpoint section
        saves and loads exactly what a run does)."""

        def __init__(self, b: Bench, precision: str, compiled: bool):
            from goalgen.train import checkpoint as ckpt
            from goalgen.train.distributed import DistContext
            from goalgen.train.loop import build_model
            from goalgen.train.precision import resolve_precision
            from goalgen.train.state import lr_factor, make_ema

            cfg = self.cfg = copy.deepcopy(b.cfg)
            self.ctx = DistContext(0, 0, 1, 1, b.device, None)
            self.run_dir = b.scratch / "run"
            self.ckpt_dir = self.run_dir / "checkpoints"
            torch.manual_seed(cfg.seed)
            self.model = build_model(cfg).to(b.device)
            self.ema = make_ema(self.model, cfg.ema.decay, cfg.ema.warmup)
            self.precision = resolve_precision(precision, b.device)
            self.scaler = self.precision.grad_scaler()
            self.train_model = self.model
            self.compiled = compiled
            if compiled:
                self.model.network = torch.compile(self.model.network, backend=b.compile_backend)
            lr = cfg.base_lr
            self.optimizer = torch.optim.AdamW(
                self.model.parameters(),
                lr=lr,
                betas=tuple(cfg.optim.betas),
                weight_decay=cfg.optim.weight_decay,
            )
            warmup, decay = cfg.optim.warmup_steps, cfg.optim.decay_steps or 100_000
            self.lr_schedule = torch.optim.lr_scheduler.LambdaLR(
                self.optimizer,
                lambda s: lr_factor(s, warmup, decay, cfg.optim.end_lr / lr if lr > 0 else 0.0),
            )
            self.top_k = ckpt.TopK(self.ckpt_dir, cfg.checkpoint.save_top_k)
            self.epoch, self.step, self.batch_in_epoch = 0, 0, 0
            self.nonfinite_total, self.val_loss, self.val_loss_best = 0, float("nan"), math.inf

    return BenchTrainer


def make_trainer(b: Bench, precision: str, compiled: bool):
    return _make_trainer_class()(b, precision, compiled)


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


def train_step(tr, batch: dict[str, torch.Tensor]) -> None:
    """One optimizer step exactly as ``Trainer._train_epoch`` does it: per-sample noise, the
    autocast forward (loss dict), scaled backward, unscale + clip, the finiteness check (a host
    sync on CUDA), scaler step/update, LR schedule, EMA update."""
    from goalgen.train.state import per_sample_noise

    cfg, device = tr.cfg, tr.ctx.device
    context = batch["context"].to(device, non_blocking=True)
    x_1 = batch["target"].to(device, non_blocking=True)
    noise, t = per_sample_noise(tr.model.path, x_1.shape[1:], batch["index"], cfg.seed, tr.epoch)
    noise, t = noise.to(device), t.to(device)
    with tr.precision.autocast():
        losses = tr.train_model(context, x_1, noise, t)
    tr.optimizer.zero_grad(set_to_none=True)
    tr.scaler.scale(losses["loss"]).backward()
    tr.scaler.unscale_(tr.optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(tr.model.parameters(), cfg.trainer.gradient_clip_val)
    tr.batch_in_epoch += 1
    if not torch.isfinite(losses["loss"]) or not torch.isfinite(grad_norm):
        if tr.precision.use_scaler and torch.isfinite(losses["loss"]):
            tr.scaler.step(tr.optimizer)
            tr.scaler.update()
        return
    tr.scaler.step(tr.optimizer)
    tr.scaler.update()
    tr.lr_schedule.step()
    tr.ema.update_parameters(tr.model)
    tr.step += 1


def count_train_gflop(b: Bench, batch: dict[str, torch.Tensor]) -> tuple[float, float]:
    """(GFLOP of one training step, million parameters). FLOPs of the forward + backward of
    the loss, counted once in fp32 eager: matmuls, convolutions and attention (element-wise
    work is not counted, as usual for MFU)."""
    from goalgen.train.loop import build_model

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
    tr = make_trainer(b, precision, compiled)
    start = time.perf_counter()
    train_step(tr, batch)  # the first step compiles (when compiled)
    sync(b.device)
    first_s = time.perf_counter() - start
    with PeakMemory(b.device) as mem:
        times = time_runs(
            lambda: train_step(tr, batch), b.device, b.repeats, warmup=max(0, b.warmup - 1)
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
    from goalgen.train.loop import resolve_compile

    out: dict[str, Any] = {"load_avg": load_avg()}
    batch = synthetic_batch(b.cfg, b.device)
    gflop, params_m = count_train_gflop(b, batch)
    runs = []
    for compiled in (False, True) if b.compile else (False,):
        for precision in train_precisions(b.device):
            runs.append(measure_train_run(b, precision, compiled, gflop, batch))
            _release(b.device)
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
        _release(b.device)
    return b.shared["step_ms"]


def _measure_default_step_ms(b: Bench) -> float:
    from goalgen.train.loop import resolve_compile

    compiled = b.compile and resolve_compile(b.cfg.trainer.compile, b.device)
    tr = make_trainer(b, b.precision, compiled)
    batch = synthetic_batch(b.cfg, b.device)
    return ms(
        time_runs(lambda: train_step(tr, batch), b.device, b.repeats, warmup=max(1, b.warmup))
    )


# ------------------------------------------------------------------------------ data
def bench_data_dir(b: Bench) -> Path:
    """``--data-dir``, else ``num_scenes`` synthetic scenes (224², the guide's format) generated
    once into the work dir."""
    if b.data_dir is not None:
        return b.data_dir
    from goalgen.data.synthetic import generate_dataset

    out = b.work_dir / f"scenes-{b.num_scenes}-seed0"
    generate_dataset(out, b.num_scenes, seed=0, workers=max(1, os.cpu_count() or 1))
    return out


def bench_data(b: Bench) -> dict[str, Any]:
    """Packed-cache loader vs per-file ``np.load`` + resize (``benchmark_loader``, both with
    num_workers=0), and the packed loader's time per batch as a share of the train step."""
    from goalgen.data.dataset import benchmark_loader

    out: dict[str, Any] = {"load_avg": load_avg()}
    data_dir = bench_data_dir(b)
    batch = b.cfg.batch_size
    runs = [
        benchmark_loader(
            data_dir,
            b.cfg.image_size,
            batch,
            5 if b.quick else 40,
            per_file_samples=2 * batch if b.quick else 256,
            cache_dir=b.cfg.data.cache_dir,
            workers=b.cfg.data.pack_workers,
            seed=i,
        )
        for i in range(b.repeats)
    ]
    packed = statistics.median(r["packed_samples_per_s"] for r in runs)
    per_file = statistics.median(r["per_file_samples_per_s"] for r in runs)
    step_ms = reference_step_ms(b)
    loader_ms = 1e3 * batch / packed
    b.shared["num_scenes"] = runs[0]["num_scenes"]
    out.update(
        {
            "data_dir": str(data_dir),
            "num_scenes": runs[0]["num_scenes"],
            "image_size": b.cfg.image_size,
            "batch_size": batch,
            "packed_samples_per_s": packed,
            "per_file_samples_per_s": per_file,
            "speedup": packed / per_file,  # packed cache over per-file load + resize
            "packed_ms_per_batch": loader_ms,
            "per_file_ms_per_batch": 1e3 * batch / per_file,
            "train_step_ms": step_ms,
            "loader_share": loader_ms / step_ms,
            "per_file_loader_share": 1e3 * batch / per_file / step_ms,
            "runs": [
                {k: r[k] for k in ("packed_samples_per_s", "per_file_samples_per_s")} for r in runs
            ],
            "load_avg_end": load_avg(),
        }
    )
    if runs[0]["num_scenes"] < 500:
        out["note"] = (
            f"{runs[0]['num_scenes']} scenes: fewer than the 500 the contract asks "
            "for" + (" (--quick)" if b.quick else "")
        )
    return out


# ------------------------------------------------------------------------------ sampling
class CountingNetwork(nn.Module):
    """Wraps the network and counts its calls (function evaluations)."""

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network, self.calls = network, 0

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.network(x, t)


def sampling_model(b: Bench, network: nn.Module, method: str) -> nn.Module:
    """A GenerativeModel around ``network`` whose sampler runs ``method``: the config's own
    path (and tolerances) when its family matches, the library defaults otherwise."""
    from goalgen.model.generative import GenerativeModel
    from goalgen.model.paths import FBFlowMatchingPath, HFDiffusionPath
    from goalgen.model.samplers import FBODESampler, HFDiffusionSampler

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
    from goalgen.train.loop import build_model

    torch.manual_seed(b.cfg.seed)
    network = build_model(b.cfg).network
    weights = "untrained (adaLN-Zero: output 0, so adaptive solvers take few steps)"
    if b.ckpt is not None:
        from goalgen.train.checkpoint import load_checkpoint

        ema = load_checkpoint(b.ckpt)["ema"]  # GenerativeModel keys: network.*, path.*, ...
        network.load_state_dict(
            {k.removeprefix("network."): v for k, v in ema.items() if k.startswith("network.")}
        )
        weights = f"EMA of {b.ckpt}"
    return network.to(b.device).eval(), weights


def measure_sampling(
    b: Bench, network: nn.Module, method: str, steps: int | None
) -> dict[str, Any]:
    """``samples_per_scene`` samples of one scene: one batched call (context repeated) vs
    one call per sample; ms per scene, scenes/s, network evaluations (NFE) per sample."""
    from goalgen.train.precision import resolve_precision

    k, s = b.samples_per_scene, b.cfg.image_size
    counter = CountingNetwork(network)
    model = sampling_model(b, counter, method)
    autocast = resolve_precision(b.precision, b.device).autocast
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
        "precision": b.precision,
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
    from goalgen.eval.evaluate import evaluate_run
    from goalgen.eval.predict import GoalPredictor

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


# ------------------------------------------------------------------------------ checkpoint
def save_last(tr, path: Path) -> None:
    """What ``Trainer.save_last`` writes (single process: no barrier, no logger flush)."""
    from goalgen.train import checkpoint as ckpt

    ckpt.save_atomic(tr.state_dict(tr.gather_rng()), path)


def bench_checkpoint(b: Bench) -> dict[str, Any]:
    """``save_atomic`` of the Trainer's full state dict to ``last.ckpt`` and the resume path
    (``load_checkpoint`` + restoring model, EMA, optimizer, ...), against one train step, and
    the implied overhead at the default cadence (a save at every epoch end, and every
    ``checkpoint.every_minutes`` within an epoch: the loop's timer restarts at each save)."""
    from goalgen.train import checkpoint as ckpt

    out: dict[str, Any] = {"load_avg": load_avg()}
    tr = make_trainer(b, b.precision, compiled=False)
    batch = synthetic_batch(b.cfg, b.device)
    train_step(tr, batch)  # the optimizer now holds its state, as in a real run
    path = tr.ckpt_dir / ckpt.LAST
    tr.cfg.ckpt_path = str(path)
    save = time_runs(lambda: save_last(tr, path), b.device, b.repeats, warmup=1)
    load = time_runs(tr._maybe_resume, b.device, b.repeats, warmup=1)
    step_ms = reference_step_ms(b)
    save_ms, load_ms = ms(save), ms(load)
    scenes = b.shared.get("num_scenes", b.num_scenes)
    steps = b.epoch_steps or max(1, int(scenes * b.cfg.data.train_split) // b.cfg.batch_size)
    epoch_s = steps * step_ms / 1e3
    every_s = 60 * float(b.cfg.checkpoint.every_minutes)
    saves_per_epoch = 1 + math.floor(epoch_s / every_s)
    out.update(
        {
            "file_mb": path.stat().st_size / 2**20,
            "save_ms": save_ms,
            "load_ms": load_ms,
            "save_ms_runs": [1e3 * t for t in save],
            "load_ms_runs": [1e3 * t for t in load],
            "train_step_ms": step_ms,
            "save_in_steps": save_ms / step_ms,
            "load_in_steps": load_ms / step_ms,
            "epoch_steps": steps,
            "every_minutes": float(b.cfg.checkpoint.every_minutes),
            "saves_per_epoch": saves_per_epoch,
            "overhead_pct": 100 * saves_per_epoch * save_ms / 1e3 / epoch_s,
            # validation may also write a top-k checkpoint every epoch (when val_loss improves)
            "overhead_with_top_k_pct": 100 * (saves_per_epoch + 1) * save_ms / 1e3 / epoch_s,
            "epoch_steps_for_1pct": math.ceil(100 * save_ms / step_ms),
            "load_avg_end": load_avg(),
        }
    )
    path.unlink(missing_ok=True)
    return out


# ------------------------------------------------------------------------------ report
def device_info(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "type": device.type,
        "threads": torch.get_num_threads(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
    }
    if device.type == "cuda":
        info.update(
            name=torch.cuda.get_device_name(device),
            cuda=torch.version.cuda,
            memory_gb=torch.cuda.get_device_properties(device).total_memory / 2**30,
        )
    else:
        info["name"] = info["cpu"]
    return info


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "torch": torch.__version__}
    for dist in ("goalgen", "numpy", "flow-matching", "diffusers", "hydra-core"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def summary_lines(results: dict[str, Any]) -> list[str]:
    """A few human-readable lines per section (the JSON has everything)."""
    lines = [
        f"device: {results['device']['name']} ({results['device']['type']}, "
        f"{results['device']['threads']} threads){'  [--quick]' if results['quick'] else ''}"
    ]
    if "train" in results:
        t = results["train"]
        lines.append(
            f"train: {t['gflop_per_step']:.1f} GFLOP/step, batch {t['batch_size']}, "
            f"load {t['load_avg']}"
        )
        for r in t["runs"]:
            mode = "compiled" if r["compiled"] else "eager"
            lines.append(
                f"  {r['precision']:>10} {mode:<8} {r['step_ms']:9.1f} ms/step "
                f"{r['samples_per_s']:8.1f} samples/s  MFU {100 * r['mfu']:5.1f}% of "
                f"{r['peak_gflop_per_s']:.0f} GFLOP/s  peak mem {r['peak_mem_mb']:.0f}"
                " MiB"
            )
        if "compile" in t:
            c = t["compile"]
            even = c["break_even_steps"]
            lines.append(
                f"  compile=auto picks {c['auto_picks']}: compiled/eager speedup "
                f"{c['speedup']:.2f} after {c['compile_warmup_s']:.0f} s of compiling"
                f"{f' (earned back after {even} steps)' if even else ''}; auto/eager "
                f"{c['auto_over_eager_speedup']:.2f}"
            )
    if "data" in results:
        d = results["data"]
        lines.append(
            f"data: packed {d['packed_samples_per_s']:.0f} vs per-file "
            f"{d['per_file_samples_per_s']:.0f} samples/s = {d['speedup']:.0f}x; "
            f"loader {100 * d['loader_share']:.2f}% of a {d['train_step_ms']:.0f} ms "
            f"step ({d['num_scenes']} scenes)"
        )
    if "sample" in results:
        s = results["sample"]
        lines.append(f"sample: {s['samples_per_scene']} samples/scene, {s['precision']}")
        for r in s["runs"]:
            lines.append(
                f"  {r['method']:>8} {r['steps'] or 'adaptive':>8} NFE "
                f"{r['nfe_per_sample_batched']:5.1f}  batched "
                f"{r['batched_ms_per_scene']:9.1f} ms/scene  sequential "
                f"{r['sequential_ms_per_scene']:9.1f} ms  speedup {r['speedup']:.1f}x"
            )
        if "compile" in s:
            lines.append(
                f"  compiled {s['compile']['method']}: batched speedup over eager "
                f"{s['compile']['speedup']:.2f}"
            )
        if "quality" in s:
            q = s["quality"]
            lines.append(
                f"  quality on {q['scenes']} scenes x {q['samples_per_scene']} samples "
                f"({q['run_dir']}):"
            )
            for r in q["runs"]:
                lines.append(
                    f"  {r['method']:>8} {r['steps'] or 'adaptive':>8} NFE "
                    f"{r['nfe']:5.1f}  {r['ms_per_scene']:9.1f} ms/scene  success "
                    f"{100 * r['success_rate']:5.1f}%  hit@K {100 * r['hit_at_k']:5.1f}%"
                )
            rec = q["recommended"]
            lines.append(
                f"  recommended: {rec['method']} {rec['steps'] or 'adaptive'} "
                f"(within {q['within_points']:g} points of the best, "
                f"{rec['speedup']:.1f}x faster than the best-scoring setting)"
            )
    if "checkpoint" in results:
        c = results["checkpoint"]
        lines.append(
            f"checkpoint: {c['file_mb']:.1f} MiB, save {c['save_ms']:.0f} ms "
            f"({c['save_in_steps']:.2f} steps), load {c['load_ms']:.0f} ms; overhead "
            f"{c['overhead_pct']:.2f}% at {c['epoch_steps']} steps/epoch"
        )
    for row in results.get("targets", []):
        lines.append(
            f"target {'met' if row['met'] else 'MISSED'}: {row['target']} = "
            f"{row['value']:.3g} ({row['op']} {row['threshold']:g})"
        )
    return lines


# ------------------------------------------------------------------------------ command line
class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def _parser() -> _Parser:
    p = _Parser(
        prog="goalgen-bench",
        description=(
            "Benchmark training (eager/compiled, fp32/mixed precision, MFU, peak memory), the data "
            "loader, sampling and checkpointing on this machine's device (CUDA if present)."
        ),
    )
    p.add_argument(
        "items",
        nargs="*",
        metavar="SECTION|OVERRIDE",
        help="sections (train, data, sample, checkpoint, all; default all), then "
        "Hydra overrides of the training config (key=value)",
    )
    p.add_argument("--config-name", default="train_fb_flow_matching")
    p.add_argument("--json", type=Path, metavar="OUT", help="write the results as JSON here")
    p.add_argument(
        "--quick", action="store_true", help="seconds-long smoke run (tiny model, few repeats; CI)"
    )
    p.add_argument("--repeats", type=int, help="timed runs per figure (default 3; quick 1)")
    p.add_argument("--warmup", type=int, help="untimed runs first (default 2; quick 1)")
    p.add_argument(
        "--data-dir",
        type=Path,
        help="scenes for the data section (default: synthetic scenes generated into the work dir)",
    )
    p.add_argument("--num-scenes", type=int, help="synthetic scenes (default 512; quick 24)")
    p.add_argument(
        "--work-dir",
        type=Path,
        default=Path.home() / ".cache" / "goalgen-bench",
        help="synthetic scenes, checkpoints (default ~/.cache/goalgen-bench)",
    )
    p.add_argument(
        "--epoch-steps",
        type=int,
        help="steps per epoch for the checkpoint overhead "
        "(default: the data set's scenes x train_split / batch_size)",
    )
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile runs")
    p.add_argument(
        "--compile-backend", help="torch.compile backend (default inductor; quick aot_eager)"
    )
    p.add_argument("--samples-per-scene", type=int, help="default 32; quick 4")
    p.add_argument("--ckpt", type=Path, help="sample with this checkpoint's EMA weights")
    p.add_argument(
        "--run",
        type=Path,
        metavar="RUN_DIR",
        help="sample section: also score "
        "each sampler setting of this run (goalgen-eval) and recommend the fastest "
        "within 2 points of the best",
    )
    p.add_argument(
        "--quality-scenes",
        type=int,
        help="validation scenes scored per setting with --run (default 64; quick 4)",
    )
    return p


def _split_items(parser: _Parser, items: list[str]) -> tuple[list[str], list[str]]:
    sections: list[str] = []
    rest = list(items)
    while rest and "=" not in rest[0]:
        name = rest.pop(0)
        if name not in (*SECTIONS, "all"):
            parser.error(
                f"unknown section {name!r}; choose from {', '.join(SECTIONS)}, all "
                "(Hydra overrides look like key=value)"
            )
        sections.extend(SECTIONS if name == "all" else [name])
    if bad := [x for x in rest if "=" not in x]:
        parser.error(f"{bad[0]!r} is neither a section nor a key=value override")
    return [s for s in SECTIONS if s in sections] or list(SECTIONS), rest


def compose(config_name: str, overrides: list[str]) -> DictConfig:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from goalgen.paths import config_dir

    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=overrides)


def build_bench(args: argparse.Namespace, overrides: list[str]) -> Bench:
    full = (QUICK_OVERRIDES if args.quick else []) + overrides
    if not any(o.split("=", 1)[0].lstrip("+") == "run_name" for o in full):
        full.append("run_name=bench")  # no Hydra run: the run-name resolver cannot work
    cfg = compose(args.config_name, full)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    from goalgen.train.precision import resolve_precision

    precision = resolve_precision(cfg.trainer.precision, device).name
    num_scenes = args.num_scenes or (24 if args.quick else 512)
    return Bench(
        cfg=cfg,
        config_name=args.config_name,
        overrides=full,
        device=device,
        quick=args.quick,
        repeats=args.repeats or (1 if args.quick else 3),
        warmup=args.warmup if args.warmup is not None else (1 if args.quick else 2),
        work_dir=args.work_dir.expanduser(),
        scratch=args.work_dir,
        data_dir=args.data_dir,
        num_scenes=num_scenes,
        epoch_steps=args.epoch_steps,
        compile=not args.no_compile,
        compile_backend=args.compile_backend or ("aot_eager" if args.quick else "inductor"),
        samples_per_scene=args.samples_per_scene or (4 if args.quick else 32),
        sample_grid=QUICK_SAMPLE_GRID if args.quick else SAMPLE_GRID,
        ckpt=args.ckpt,
        run_dir=args.run,
        quality_scenes=args.quality_scenes or (4 if args.quick else 64),
        precision=precision,
    )


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The performance targets (issue "Fast"), each with its figure, threshold and whether this
    run meets it; only for the sections that ran. On a --quick run they mean nothing."""
    rows: list[dict[str, Any]] = []

    def add(name: str, value: float, op: str, threshold: float) -> None:
        met = value >= threshold if op == ">=" else value < threshold
        rows.append(
            {"target": name, "value": value, "op": op, "threshold": threshold, "met": bool(met)}
        )

    if "data" in results:
        d = results["data"]
        add("data: packed cache / per-file load+resize", d["speedup"], ">=", 50)
        add("data: loader share of a step", d["loader_share"], "<", 0.05)
    if "train" in results:
        t = results["train"]
        mode = t.get("compile", {}).get("auto_picks", "eager")
        add(f"train: MFU ({t['default_precision']}, {mode} = compile=auto)", t["mfu"], ">=", 0.5)
        if "compile" in t:
            add("train: compile=auto / eager", t["compile"]["auto_over_eager_speedup"], ">=", 1.0)
    if "sample" in results:
        add(
            "sample: batched / sequential (min over settings)",
            results["sample"]["speedup_min"],
            ">=",
            10,
        )
    if "checkpoint" in results:
        add(
            "checkpoint: share of training time (with top-k saves)",
            results["checkpoint"]["overhead_with_top_k_pct"] / 100,
            "<",
            0.01,
        )
    return rows


def run(b: Bench, sections: list[str]) -> dict[str, Any]:
    results: dict[str, Any] = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "quick": b.quick,
        "config_name": b.config_name,
        "overrides": b.overrides,
        "repeats": b.repeats,
        "warmup": b.warmup,
        "device": device_info(b.device),
        "versions": versions(),
    }
    bench_fns = {
        "train": bench_train,
        "data": bench_data,
        "sample": bench_sample,
        "checkpoint": bench_checkpoint,
    }
    for name in sections:
        start = time.perf_counter()
        results[name] = bench_fns[name](b)
        _release(b.device)
        results[name]["section_s"] = time.perf_counter() - start
    results["targets"] = targets(results)
    return results


def main(argv: list[str] | None = None) -> int:
    """``goalgen-bench`` (see ``--help``)."""
    parser = _parser()
    args = parser.parse_intermixed_args(argv)
    sections, overrides = _split_items(parser, args.items)
    for name in ("repeats", "num_scenes", "epoch_steps", "samples_per_scene", "quality_scenes"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.warmup is not None and args.warmup < 0:
        parser.error("--warmup must be >= 0")
    if args.data_dir is not None and not args.data_dir.exists():
        parser.error(f"--data-dir {args.data_dir} does not exist")
    if args.run is not None and not (args.run / "checkpoints").is_dir():
        parser.error(f"--run {args.run} has no checkpoints/ folder (a training run directory)")
    try:
        b = build_bench(args, overrides)
    except Exception as exc:  # Hydra/OmegaConf: unknown key, bad value, missing config
        parser.exit(2, f"goalgen-bench: error: {str(exc).splitlines()[0]}\n")
    b.work_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=b.work_dir, prefix="run-") as tmp:
        b.scratch = Path(tmp)
        results = run(b, sections)
    for line in summary_lines(results):
        print(line)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2, default=float) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
