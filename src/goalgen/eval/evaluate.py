"""Evaluate a trained run on scene files: are its goals valid, right, diverse, and useful?

``goalgen-eval RUN_DIR --data DIR --samples K --out report.json`` samples K goals per scene
(at the model's ``image_size``) and scores them with :mod:`goalgen.eval.metrics`, next to the
reference rows of :mod:`goalgen.eval.scoring` (the model's ranked, verified proposals, random
placements, the object left in place, the ground truth), so every number has a floor and a
ceiling. Scenes that store a feasible set (``maze`` files) also get the near metrics of
:mod:`goalgen.eval.near` in every row (``success_near@1/@K``, ``in_feasible@K``, the best
sample's distance to a feasible pose in metres and box half-widths, modes covered). The report
(:mod:`goalgen.eval.report`) has every metric over all scenes (``methods``) and per scene
family (``families``: ``arena``, ``maze``, ``rooms``, ``planner``, ``no_geometry``, read from
each file, :func:`goalgen.eval.near.scene_family`).

``--clearance`` (default :data:`goalgen.infer.proposals.CLEARANCE`) is the metres a planner
needs between the robot, the placed box and the walls and other boxes: the proposals keep it
and the world judge demands it; ``--judge-clearance`` judges at another value (e.g. 0: the
same proposals judged touching-allowed). ``--no-proposals`` skips the proposals rows.

``goalgen-eval --compare A B ...`` prints side-by-side tables (all scenes, then one per family)
of reports (``.json``) or runs.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from goalgen.checkpoint import shipped
from goalgen.cli import (
    METHOD_HELP,
    RUN_HELP,
    USER_ERRORS,
    OneLineParser,
    one_line,
    warnings_as_lines,
)
from goalgen.data.dataset import split_indices
from goalgen.data.scenes import find_scene_files
from goalgen.eval import near
from goalgen.eval.metrics import AREA_TOLERANCE, HIT_IOU, STATIC_THRESHOLD, THRESHOLD
from goalgen.eval.report import (
    DEFAULT_REPORT,
    REPORT_VERSION,
    default_report_path,
    format_table,
    json_ready,
    load_report,
    write_report,
)
from goalgen.eval.scoring import aggregate_methods, read_arrays, score_scene
from goalgen.infer import GoalPredictor, prepare_scene
from goalgen.infer.proposals import CLEARANCE, proposals_of_samples
from goalgen.model.samplers import ADAPTIVE_METHODS
from goalgen.precision import PRECISIONS

SPLITS = ("auto", "all", "val", "train")


# ----------------------------------------------------------------------------- data
def _same_files(a: Any, b: Any) -> bool:
    try:
        return find_scene_files(a) == find_scene_files(b)
    except (OSError, ValueError, TypeError):
        return False


def choose_files(data: Any, split: str, config: Mapping[str, Any]) -> tuple[list[Path], str]:
    """Scene files of ``data`` for ``split`` (``all``, ``val``, ``train`` or ``auto``).

    ``val``/``train`` repeat the training split (:func:`goalgen.data.dataset.split_indices`
    with the run's ``data.train_split`` and ``seed`` over the sorted files; exact unless
    training skipped bad files). ``auto`` is ``val`` when ``data`` is the run's own
    ``data.data_dir`` (and it had no ``val_dir``), else ``all``.
    """
    if split not in SPLITS:
        raise ValueError(f"split {split!r}; choose one of {', '.join(SPLITS)}")
    files = find_scene_files(data)
    data_cfg = config.get("data") or {}
    if split == "auto":
        own = data_cfg.get("data_dir")
        split = "val" if own and not data_cfg.get("val_dir") and _same_files(own, data) else "all"
    if split != "all":
        train, val = split_indices(
            len(files), float(data_cfg.get("train_split", 0.9)), int(config.get("seed", 42))
        )
        files = [files[i] for i in (val if split == "val" else train)]
    if not files:
        raise ValueError(f"the {split} split of {data} is empty")
    return files, split


def _run_data(run_dir: str | os.PathLike, config: Mapping[str, Any]) -> Any:
    """The data a run validated on (``data.val_dir``, else ``data.data_dir``)."""
    data_cfg = config.get("data") or {}
    data = data_cfg.get("val_dir") or data_cfg.get("data_dir")
    if not data:
        raise ValueError(f"{run_dir}: its config names no data; pass --data DIR")
    return data


# ----------------------------------------------------------------------------- evaluation
def evaluate_run(
    run_dir: str | os.PathLike,
    data: Any = None,
    num_samples: int = 16,
    max_scenes: int | None = None,
    steps: int | None = None,
    method: str | None = None,
    seed: int = 0,
    checkpoint: str = "best",
    device: str | None = None,
    batch_size: int | None = None,
    split: str = "auto",
    per_scene: bool = True,
    progress: bool = False,
    proposals: bool = True,
    near_slack: float = near.NEAR_SLACK,
    clearance: float = CLEARANCE,
    judge_clearance: float | None = None,
    precision: str | None = None,
) -> dict[str, Any]:
    """Evaluate ``run_dir``'s checkpoint on ``data`` (default: the run's own data, val split);
    returns the report (see the module docstring; JSON-ready). ``proposals``: also score the
    ranked, verified proposals of the same samples (and of the ``random_local`` baseline's).
    ``near_slack``: how much longer than the nearest feasible one a near-optimal push may be,
    as a share of the world's width. ``clearance``: metres the proposals keep from walls,
    boxes and the robot; ``judge_clearance`` (None: ``clearance``): metres the world judge
    demands (:func:`goalgen.eval.scoring.score_scene`). ``precision``: what sampling runs in
    (:func:`goalgen.precision.inference_precision`; default fp32 on a CPU, autocast on a GPU)."""
    judge_clearance = clearance if judge_clearance is None else judge_clearance
    predictor = GoalPredictor.from_run(run_dir, checkpoint, device, precision=precision)
    config = predictor.config
    data = _run_data(run_dir, config) if data is None else data
    files, split_used = choose_files(data, split, config)
    if max_scenes is not None:
        files = files[:max_scenes]
    scenes = [prepare_scene(f, predictor.image_size) for f in files]
    if not all(s.truth is not None for s in scenes):
        missing = next(s.name for s in scenes if s.truth is None)
        raise ValueError(f"scene {missing} has no target_goal: evaluation needs ground truth")
    predictions = predictor.predict_inputs(scenes, num_samples, steps, method, seed, batch_size)
    cost = predictor.last_cost.to_dict()
    records, failed_total, post_seconds = [], 0, 0.0
    for i, (path, scene, pred) in enumerate(zip(files, scenes, predictions, strict=True)):
        arrays = read_arrays(path)
        result = baseline = None
        if proposals:
            result = proposals_of_samples(path, pred.probs, clearance=clearance)
            post_seconds += result.seconds["setup"] + result.seconds["post"]
            baseline = partial(proposals_of_samples, path, clearance=clearance)
        rows, failed = score_scene(
            scene, pred.masks, i, seed, arrays, result, baseline, near_slack, judge_clearance
        )
        failed_total += failed
        records.append({"scene": scene.name, "family": near.scene_family(arrays), **rows})
        if progress and (i + 1) % max(1, len(scenes) // 10) == 0:
            print(f"scored {i + 1}/{len(scenes)} scenes", file=sys.stderr)
    methods = aggregate_methods(records)
    methods["random_valid"]["placements_without_valid_pose"] = failed_total
    families = {}
    for family in sorted({r["family"] for r in records}):
        subset = [r for r in records if r["family"] == family]
        families[family] = {"num_scenes": len(subset), "methods": aggregate_methods(subset)}
    if proposals:
        cost["proposal_seconds_per_scene"] = post_seconds / max(len(scenes), 1)
    adaptive = predictor.family == "flow" and (method or predictor.method) in ADAPTIVE_METHODS
    report = {
        "goalgen_eval": REPORT_VERSION,
        "run_dir": str(Path(run_dir).resolve()),
        "run_name": config.get("run_name") or Path(run_dir).resolve().name,
        "checkpoint": str(predictor.checkpoint_path),
        "checkpoint_info": predictor.checkpoint_info,
        "family": predictor.family,
        "method": method or predictor.method,
        "steps": None if adaptive else (steps or predictor.sampling_steps),
        "image_size": predictor.image_size,
        "num_samples": num_samples,
        "seed": seed,
        "device": str(predictor.device),
        "precision": predictor.precision.name,
        "data": str(data),
        "split": split_used,
        "num_scenes": len(scenes),
        "scenes_with_world_geometry": sum(1 for s in scenes if s.geometry),
        "scenes_with_feasible_set": sum(
            1 for r in records if "success_near_at_k" in r.get("model", {})
        ),
        "settings": {
            "threshold": THRESHOLD,
            "static_threshold": STATIC_THRESHOLD,
            "area_tolerance": AREA_TOLERANCE,
            "hit_iou": HIT_IOU,
            "near_slack": near_slack,
            "proposals": bool(proposals),
            "clearance": clearance,
            "judge_clearance": judge_clearance,
        },
        "methods": methods,
        "families": families,
        "cost": cost,
    }
    if per_scene:
        report["per_scene"] = records
    return json_ready(report)


# ----------------------------------------------------------------------------- CLI
def _parser() -> OneLineParser:
    parser = OneLineParser(
        prog="goalgen-eval",
        description="Score a run's sampled goals and their ranked, verified proposals "
        "(validity, IoU/Dice vs ground truth, diversity, path-opening success, near-optimal "
        "success on scenes with a feasible set, cost) next to random-valid, random-local, "
        "leave-in-place and ground-truth rows, per scene family; or compare runs/reports.",
    )
    add = parser.add_argument
    add(
        "run_dir",
        nargs="?",
        help=RUN_HELP,
    )
    add("--data", help="scene folder or .npz (default: the run's own data)")
    add("--samples", type=int, default=16, help="samples per scene K (16)")
    add("--max-scenes", type=int, help="evaluate the first N scenes")
    add("--steps", type=int, help="sampling steps (default: the run's)")
    add("--method", help=METHOD_HELP)
    add("--checkpoint", default="best", help="best (default), last or a path")
    add("--seed", type=int, default=0, help="noise and baseline seed (0)")
    add(
        "--split",
        choices=SPLITS,
        default="auto",
        help="auto (default): the run's val split when --data is its data",
    )
    add("--batch-size", type=int, help="scenes per sampling call")
    add("--device", help="cpu, cuda, ... (default: cuda if available)")
    add(
        "--precision",
        choices=("auto", *PRECISIONS),
        default="auto",
        help="what sampling runs in (auto: on a CPU fp32 unless the weights file says "
        "otherwise; bf16 autocast on a GPU that has it, else fp16)",
    )
    add(
        "--out",
        type=Path,
        help=f"report path (default: RUN_DIR/{DEFAULT_REPORT}; for a checkpoint file or "
        "shipped weights NAME: eval/NAME_report.json here)",
    )
    add("--no-per-scene", action="store_true", help="omit per-scene records")
    add(
        "--no-proposals",
        action="store_true",
        help="do not score the ranked, verified proposals of the samples (faster)",
    )
    add(
        "--near-slack",
        type=float,
        default=near.NEAR_SLACK,
        help="near-optimal: a push at most this share of the world's width longer than the "
        f"nearest feasible one ({near.NEAR_SLACK}; 0.01 is 11 cm in an 11 m maze)",
    )
    add(
        "--clearance",
        type=float,
        default=CLEARANCE,
        metavar="METRES",
        help="metres the robot and the placed box keep from walls and other boxes: the "
        f"proposals keep it and the world judge demands it ({CLEARANCE})",
    )
    add(
        "--judge-clearance",
        type=float,
        metavar="METRES",
        help="judge the proposals and samples at this clearance instead (default: --clearance)",
    )
    add(
        "--compare",
        nargs="+",
        metavar="RUN_OR_REPORT",
        help="runs (their saved report, or evaluated now with --data) or "
        "report .json files to print side by side",
    )
    add("--markdown", action="store_true", help="print the table as markdown")
    return parser


def _check(parser: OneLineParser, args: argparse.Namespace) -> None:
    """Refuse contradictory or out-of-range arguments (exit status 2)."""
    if (args.run_dir is None) == (args.compare is None):
        parser.error("give either RUN_DIR or --compare RUN_OR_REPORT ...")
    for name in ("samples", "max_scenes", "steps", "batch_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if not 0 <= args.near_slack < 1:
        parser.error(f"--near-slack must be in [0, 1), got {args.near_slack}")
    for name in ("clearance", "judge_clearance"):
        value = getattr(args, name)
        if value is not None and not 0 <= value < 1:
            parser.error(f"--{name.replace('_', '-')} must be in [0, 1) metres, got {value}")


def _run_eval(args: argparse.Namespace, run_dir: str) -> dict[str, Any]:
    """:func:`evaluate_run` with the command line's settings."""
    with warnings_as_lines("goalgen-eval"):
        return evaluate_run(
            run_dir,
            args.data,
            args.samples,
            args.max_scenes,
            args.steps,
            args.method,
            args.seed,
            args.checkpoint,
            args.device,
            args.batch_size,
            args.split,
            per_scene=not args.no_per_scene,
            progress=sys.stderr.isatty(),
            proposals=not args.no_proposals,
            near_slack=args.near_slack,
            clearance=args.clearance,
            judge_clearance=args.judge_clearance,
            precision=args.precision,
        )


def _evaluate_one(args: argparse.Namespace) -> None:
    """Evaluate ``args.run_dir``, write its report and print its table."""
    report = _run_eval(args, args.run_dir)
    out = args.out or default_report_path(args.run_dir)
    write_report(report, out)
    print(format_table([report], markdown=args.markdown))
    print(f"\nreport: {out}")


def _compare_entry(args: argparse.Namespace, entry: str) -> dict[str, Any]:
    """The report of one ``--compare`` entry: a report file, a run's saved report (without
    ``--data``), or a run, checkpoint or shipped weights evaluated now."""
    path = Path(entry)
    if path.is_file() and path.suffix == ".json":
        return load_report(path)
    if not path.exists() and shipped(entry) is None:
        raise FileNotFoundError(
            f"{entry} is neither a report, a run directory, a checkpoint nor a shipped weights name"
        )
    if args.data is None and (path / DEFAULT_REPORT).is_file():
        report = load_report(path / DEFAULT_REPORT)
        print(f"{entry}: using its saved report {path / DEFAULT_REPORT}", file=sys.stderr)
        return report
    return _run_eval(args, entry)


def _compare(args: argparse.Namespace, entries: Sequence[str]) -> None:
    """Print the reports of ``entries`` side by side (repeated run names numbered)."""
    reports = [_compare_entry(args, entry) for entry in entries]
    names = [r.get("run_name") or Path(e).stem for r, e in zip(reports, entries, strict=True)]
    names = [n if names.count(n) == 1 else f"{n}#{i}" for i, n in enumerate(names)]
    print(format_table(reports, names, markdown=args.markdown))


def main(argv: list[str] | None = None) -> int:
    """``goalgen-eval``: evaluate a run (or compare runs/reports)."""
    parser = _parser()
    args = parser.parse_args(argv)
    _check(parser, args)
    try:
        if args.compare is None:
            _evaluate_one(args)
        else:
            _compare(args, args.compare)
        return 0
    except USER_ERRORS as error:
        print(f"goalgen-eval: error: {one_line(error)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
