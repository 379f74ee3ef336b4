"""``goalgen-bench`` command line: sections and overrides in, the report out."""

from __future__ import annotations

import argparse
import datetime
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from goalgen.bench.checkpoint import bench_checkpoint
from goalgen.bench.data import bench_data
from goalgen.bench.episodes import bench_episodes
from goalgen.bench.measure import release
from goalgen.bench.propose import bench_propose
from goalgen.bench.report import device_info, summary_lines, targets, versions
from goalgen.bench.sample import bench_sample
from goalgen.bench.settings import QUICK_OVERRIDES, QUICK_SAMPLE_GRID, SAMPLE_GRID, SECTIONS, Bench
from goalgen.bench.synth import bench_synth
from goalgen.bench.train import bench_train
from goalgen.checkpoint import run_checkpoint_dir
from goalgen.cli import OneLineParser
from goalgen.config import compose
from goalgen.precision import resolve_precision


def _parser() -> OneLineParser:
    p = OneLineParser(
        prog="goalgen-bench",
        description=(
            "Benchmark training (eager/compiled, fp32/mixed precision, MFU, peak memory), the data "
            "loader, sampling, checkpointing, the synthetic scene generator and goal proposals "
            "on this machine's device (CUDA if present)."
        ),
    )
    p.add_argument(
        "items",
        nargs="*",
        metavar="SECTION|OVERRIDE",
        help="sections (train, data, sample, checkpoint, synth, propose, episodes, all; default "
        "all), then "
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
    p.add_argument(
        "--synth-scenes", type=int, help="synth: scenes per family (default 20; quick 2)"
    )
    p.add_argument(
        "--propose-samples",
        type=int,
        help="propose: samples (proposals) per scene (default 32; quick 4); weights from --ckpt "
        "or --run, else untrained",
    )
    p.add_argument(
        "--propose-scenes",
        type=int,
        help="propose: scenes per family, one call each (default 10; quick 1)",
    )
    p.add_argument(
        "--episode-scenes",
        type=int,
        help="episodes: scenes per family, one episode each (default 10; quick 1); the "
        "proposals of --ckpt or --run, else random_local",
    )
    p.add_argument(
        "--baseline",
        type=Path,
        help="propose: also time these weights (e.g. the previous planner.pt) on the same scenes",
    )
    return p


def _split_items(parser: OneLineParser, items: list[str]) -> tuple[list[str], list[str]]:
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


def build_bench(args: argparse.Namespace, overrides: list[str]) -> Bench:
    full = (QUICK_OVERRIDES if args.quick else []) + overrides
    if not any(o.split("=", 1)[0].lstrip("+") == "run_name" for o in full):
        full.append("run_name=bench")  # no Hydra run: the run-name resolver cannot work
    cfg = compose(args.config_name, full)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
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
        synth_scenes=args.synth_scenes or (2 if args.quick else 20),
        propose_samples=args.propose_samples or (4 if args.quick else 32),
        propose_scenes=args.propose_scenes or (1 if args.quick else 10),
        baseline=args.baseline,
        episode_scenes=args.episode_scenes or (1 if args.quick else 10),
    )


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
        "synth": bench_synth,
        "propose": bench_propose,
        "episodes": bench_episodes,
    }
    for name in sections:
        start = time.perf_counter()
        results[name] = bench_fns[name](b)
        release(b.device)
        results[name]["section_s"] = time.perf_counter() - start
    results["targets"] = targets(results)
    return results


def main(argv: list[str] | None = None) -> int:
    """``goalgen-bench`` (see ``--help``)."""
    parser = _parser()
    args = parser.parse_intermixed_args(argv)
    sections, overrides = _split_items(parser, args.items)
    for name in (
        "repeats",
        "num_scenes",
        "epoch_steps",
        "samples_per_scene",
        "quality_scenes",
        "synth_scenes",
        "propose_samples",
        "propose_scenes",
        "episode_scenes",
    ):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.warmup is not None and args.warmup < 0:
        parser.error("--warmup must be >= 0")
    if args.data_dir is not None and not args.data_dir.exists():
        parser.error(f"--data-dir {args.data_dir} does not exist")
    if args.run is not None and not run_checkpoint_dir(args.run).is_dir():
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
