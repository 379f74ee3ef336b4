"""One command for a fresh GPU node (``make gpu-check``): the GPU paths no CPU test can run,
then the README's GPU rows.

Checks, each timed, its verdict and figures in the JSON (``--out``, default gpu_check.json):

- ``fp16``: ``16-mixed`` training with the grad scaler, one step's loss forced non-finite: the
  step is skipped, the scale backs off, training goes on with finite weights;
- ``resume``: a ``bf16-mixed`` run (``32`` where the GPU has no native bf16) resumed under
  ``16-mixed``: its checkpoint holds no scaler state, the resumed run starts a fresh scaler;
- ``bf16``: ``bf16-mixed`` training where the GPU has native bf16 (compute capability 8.0 on),
  else the clear refusal;
- ``compile``: a compiled run (inductor) trains;
- ``nccl``: a process group of world size 1 (NCCL on a GPU) and an all-reduce;
- ``bench``: ``goalgen-bench train sample propose`` at the shipped planner settings
  (``experiment=planner``, the shipped weights), whose rows are printed for the README.

Runs from a checkout with ``PYTHONPATH=src`` where no package registry is at hand (see
``make gpu-check``). On a CPU it runs what a CPU can (fp16's scaler on fp32 arithmetic, gloo for
the process group, ``--quick`` for the bench) so that it cannot rot: ``tests/test_gpu_check.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from goalgen import checkpoint as ckpt
from goalgen.config import compose
from goalgen.data.synthetic import generate_dataset
from goalgen.model.generative import GenerativeModel
from goalgen.precision import Precision
from goalgen.train import step as step_module
from goalgen.train.distributed import DistContext
from goalgen.train.loop import train

SMALL = [  # a small model: the checks are about code paths, the bench about speed
    "image_size=32",
    "batch_size=16",
    "num_workers=0",
    "sampling_steps=2",
    "model.network.dim=64",
    "model.network.depth=2",
    "model.network.heads=2",
    "model.network.patch_size=4",
    "trainer.log_every_n_steps=1",
    "val.num_images=0",
    "val.metric_scenes=0",
    "optim.warmup_steps=2",
    "data.pack_workers=1",
]


def _config(work: Path, name: str, *overrides: str):
    """The flow config with :data:`SMALL`, training on ``work/../data`` into ``work``."""
    return compose(
        "train_fb_flow_matching",
        [
            *SMALL,
            f"data.data_dir={work.parent}/data",
            f"data.cache_dir={work.parent}/cache",
            f"output_dir={work}/outputs",
            f"run_name={name}",
            *overrides,
        ],
    )


def _last(cfg) -> dict[str, Any]:
    return torch.load(
        Path(cfg.output_dir) / cfg.run_name / "checkpoints" / ckpt.LAST, weights_only=True
    )


@contextlib.contextmanager
def _fp16_on(device: torch.device) -> Iterator[None]:
    """``16-mixed`` as a GPU runs it; on a CPU (no fp16 kernels) the scaler on fp32 math."""
    if device.type == "cuda":
        yield
        return
    real = step_module.resolve_precision
    step_module.resolve_precision = lambda *_: Precision("16-mixed", "cpu", None, True)
    try:
        yield
    finally:
        step_module.resolve_precision = real


@contextlib.contextmanager
def _nonfinite_at(call: int) -> Iterator[None]:
    """The ``call``-th training forward's loss becomes NaN."""
    real, calls = GenerativeModel.forward, {"n": 0}

    def forward(self, *args):
        losses = real(self, *args)
        if self.training:
            calls["n"] += 1
            if calls["n"] == call:
                losses["loss"] = losses["loss"] * float("nan")
        return losses

    GenerativeModel.forward = forward
    try:
        yield
    finally:
        GenerativeModel.forward = real


def native_bf16(device: torch.device) -> bool:
    return device.type != "cuda" or torch.cuda.get_device_capability(device)[0] >= 8


def check_fp16(work: Path, ctx: DistContext) -> dict[str, Any]:
    cfg = _config(work, "fp16", "max_steps=6", "trainer.precision=16-mixed")
    with _fp16_on(ctx.device), _nonfinite_at(3):
        result = train(cfg, Path(cfg.output_dir) / cfg.run_name, ctx)
    state = _last(cfg)
    finite = all(bool(torch.isfinite(v).all()) for v in state["model"].values())
    scale = state["scaler"].get("scale")
    ok = result.step == 6 and state["nonfinite_total"] == 1 and finite and scale < 2.0**16
    return {"ok": ok, "steps": result.step, "skipped": state["nonfinite_total"], "scale": scale}


def check_resume(work: Path, ctx: DistContext) -> dict[str, Any]:
    first = "bf16-mixed" if native_bf16(ctx.device) else "32"
    cfg = _config(work, "resume", "max_steps=2", f"trainer.precision={first}")
    train(cfg, Path(cfg.output_dir) / cfg.run_name, ctx)
    written = _last(cfg)["scaler"]
    again = _config(work, "resume", "max_steps=4", f"trainer.precision={first}")
    with _fp16_on(ctx.device):
        result = train(again, Path(again.output_dir) / again.run_name, ctx)
    scaler = _last(again)["scaler"]
    ok = written == {} and result.step == 4 and bool(scaler)
    return {"ok": ok, "written_with": first, "steps": result.step, "scale": scaler.get("scale")}


def check_bf16(work: Path, ctx: DistContext) -> dict[str, Any]:
    cfg = _config(work, "bf16", "max_steps=4", "trainer.precision=bf16-mixed")
    if not native_bf16(ctx.device):
        try:
            train(cfg, Path(cfg.output_dir) / cfg.run_name, ctx)
        except ValueError as e:  # the clear refusal
            return {"ok": "16-mixed" in str(e), "refused": str(e)}
        return {"ok": False, "refused": None}
    result = train(cfg, Path(cfg.output_dir) / cfg.run_name, ctx)
    return {"ok": result.step == 4, "steps": result.step}


def check_compile(work: Path, ctx: DistContext) -> dict[str, Any]:
    precision = "bf16-mixed" if native_bf16(ctx.device) else "32"
    cfg = _config(
        work, "compile", "max_steps=4", "trainer.compile=true", f"trainer.precision={precision}"
    )
    result = train(cfg, Path(cfg.output_dir) / cfg.run_name, ctx)
    return {"ok": result.step == 4, "steps": result.step, "precision": precision}


def check_nccl(work: Path, ctx: DistContext) -> dict[str, Any]:
    import torch.distributed as dist

    backend = "nccl" if ctx.device.type == "cuda" else "gloo"
    dist.init_process_group(
        backend,
        init_method=f"file://{work.parent}/nccl_store",
        rank=0,
        world_size=1,
        timeout=datetime.timedelta(seconds=60),
        device_id=ctx.device if ctx.device.type == "cuda" else None,
    )
    try:
        x = torch.arange(4.0, device=ctx.device)
        dist.all_reduce(x)
        ok = x.tolist() == [0.0, 1.0, 2.0, 3.0]
    finally:
        dist.destroy_process_group()
    return {"ok": ok, "backend": backend}


def run_bench(work: Path, quick: bool) -> dict[str, Any]:
    from goalgen.bench.cli import main as bench_main

    out = work / "bench.json"
    args = ["train", "sample", "propose", "--json", str(out), "--work-dir", str(work / "bench")]
    if quick:
        args.append("--quick")
    else:
        args += ["experiment=planner", "--ckpt", str(ckpt.shipped("planner"))]
    bench_main(args)
    return json.loads(out.read_text())


def readme_rows(bench: dict[str, Any]) -> list[str]:
    """The GPU column's figures, one markdown row each."""
    rows = []
    train_runs = bench.get("train", {}).get("runs", [])
    for r in train_runs:
        mode = "compiled" if r["compiled"] else "eager"
        rows.append(
            f"| train step, {r['precision']} {mode} | {r['step_ms']:.1f} ms "
            f"({r['samples_per_s']:.0f} samples/s), MFU {100 * r['mfu']:.0f} % of "
            f"{r['peak_gflop_per_s'] / 1e3:.0f} TFLOP/s, {r['peak_mem_mb'] / 1024:.1f} GiB |"
        )
    sample = bench.get("sample", {})
    for r in sample.get("runs", []):
        rows.append(
            f"| sample {sample['samples_per_scene']} goals/scene ({sample['precision']}), "
            f"{r['method']} {r['steps']} | batched {r['batched_ms_per_scene']:.1f} ms vs "
            f"{r['sequential_ms_per_scene']:.1f} ms one by one ({r['speedup']:.1f}x) |"
        )
    propose = bench.get("propose", {})
    for family, s in propose.get("scenes", {}).items():
        rows.append(
            f"| propose ({family}, top {propose['top']}) | sampling {s['sampling_ms']:.1f} ms "
            f"+ post-processing {s['post_ms']:.1f} ms ({s['samples_drawn_for_top']} samples) |"
        )
    return rows


def _timed(name: str, fn: Callable[[], dict[str, Any]], results: dict[str, Any]) -> None:
    start = time.perf_counter()
    try:
        out = fn()
    except Exception as e:  # a check that crashes is a failed check, the others still run
        out = {"ok": False, "error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()}
    out["seconds"] = round(time.perf_counter() - start, 2)
    results["checks"][name] = out
    verdict = "ok" if out.get("ok") else "FAILED"
    print(f"gpu-check: {name:<8} {verdict:<6} {out['seconds']:7.1f} s", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("gpu_check.json"))
    parser.add_argument("--quick", action="store_true", help="the bench in --quick mode")
    parser.add_argument("--no-bench", action="store_true", help="the checks only")
    parser.add_argument("--work-dir", type=Path, help="default: a temporary folder")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    ctx = DistContext(0, 0, 1, 1, device, None)
    results: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "capability": list(torch.cuda.get_device_capability(device))
        if device.type == "cuda"
        else None,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "date": datetime.date.today().isoformat(),
        "checks": {},
    }
    with contextlib.ExitStack() as stack:
        work = args.work_dir or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        generate_dataset(work / "data", 64, seed=0, family="rooms")
        for name, check in (
            ("fp16", check_fp16),
            ("resume", check_resume),
            ("bf16", check_bf16),
            ("compile", check_compile),
            ("nccl", check_nccl),
        ):
            _timed(name, lambda check=check, name=name: check(work / name, ctx), results)
        if not args.no_bench:
            bench: dict[str, Any] = {}

            def bench_check() -> dict[str, Any]:
                bench.update(run_bench(work, args.quick))
                return {"ok": True}

            _timed("bench", bench_check, results)
            results["bench"] = bench
            results["readme_rows"] = readme_rows(bench)
    args.out.write_text(json.dumps(results, indent=1, default=str))
    ok = all(c.get("ok") for c in results["checks"].values())
    for row in results.get("readme_rows", []):
        print(row)
    print(f"gpu-check: {'all checks passed' if ok else 'some checks FAILED'}; {args.out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
