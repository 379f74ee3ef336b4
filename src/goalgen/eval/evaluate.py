"""Evaluate a trained run on scene files: are its goals valid, right, diverse, and useful?

``goalgen-eval RUN_DIR --data DIR --samples K --out report.json`` samples K goals per scene
(at the model's ``image_size``) and scores them with :mod:`goalgen.eval.metrics`, next to
reference rows scored the same way, so every number has a floor and a ceiling:

- ``proposals``: the model's own K samples turned into ranked, verified proposals
  (:func:`goalgen.infer.proposals.proposals_of_samples`: the object's footprint fitted to each
  sample, checked, ranked, near-duplicates merged; no second draw), scored as masks (their
  footprints) by the same metrics, except that in scenes with world geometry validity,
  success and the near metrics judge each proposal at its exact world pose (where a planner
  puts the box) rather than by its footprint's pixels; ``@1`` is the top-ranked proposal.
  Off with ``proposals=False`` (``--no-proposals``). The row also holds the verification shares of
  :func:`goalgen.eval.propose.score_proposals`.
- ``random_valid``: the selected object moved to a random collision-free pose (random
  translation and rotation of its mask, rejection-sampled with a seeded rng);
- ``random_local``: K random collision-free poses within the push search radius of the box
  (:func:`goalgen.eval.near.random_local`; scenes with world geometry only);
- ``random_local_proposals``: those K random poses through the same proposals pipeline as the
  model's samples (fitted, checked, ranked): what sample-and-verify achieves without a model
  (with ``proposals`` on);
- ``leave_in_place``: the object left where it is (its own mask, K times);
- ``ground_truth``: the recorded goal (one sample): what the checks make of a perfect answer
  at this resolution.

Scenes that store a feasible set (``maze`` files) also get the near metrics of
:mod:`goalgen.eval.near` in every row (``success_near@1/@K``, ``in_feasible@K``, the best
sample's distance to a feasible pose in metres and box half-widths, modes covered). Scenes
without world geometry (older files) are scored on their masks; their near, random_local
columns stay empty. The report has every metric over all scenes (``methods``) and per scene
family (``families``: ``maze``, ``rooms``, ``planner``, ``no_geometry``, read from each file,
:func:`goalgen.eval.near.scene_family`).

``goalgen-eval --compare A B ...`` prints side-by-side tables (all scenes, then one per family)
of reports (``.json``) or runs.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from goalgen.checkpoint import shipped
from goalgen.cli import METHOD_HELP, USER_ERRORS, OneLineParser, one_line, warnings_as_lines
from goalgen.data.dataset import split_indices
from goalgen.data.scenes import find_scene_files
from goalgen.eval import near
from goalgen.eval.metrics import (
    AREA_TOLERANCE,
    HIT_IOU,
    STATIC_THRESHOLD,
    THRESHOLD,
    SceneMasks,
    aggregate,
    invalid_reason,
    score_samples,
)
from goalgen.eval.propose import score_proposals
from goalgen.infer import GoalPredictor, SceneInput, prepare_scene
from goalgen.infer.proposals import proposals_of_samples
from goalgen.io import atomic_write_text
from goalgen.model.samplers import ADAPTIVE_METHODS

REPORT_VERSION = 2
METHODS = ("model", "random_valid", "leave_in_place", "ground_truth")  # always scored
OPTIONAL_METHODS = ("proposals", "random_local", "random_local_proposals")  # when available
REFERENCES = (
    "random_valid",
    "random_local",
    "random_local_proposals",
    "leave_in_place",
    "ground_truth",
)
PROPOSAL_KEYS = (  # score_proposals' shares, kept in the proposals row
    "raw_verified_share",
    "baseline_verified_share",
    "proposals_verified_share",
    "num_proposals",
)
DEFAULT_REPORT = Path("eval") / "report.json"  # inside the run dir
RANDOM_TRIES = 200  # rejection-sampling attempts per random placement
SPLITS = ("auto", "all", "val", "train")
TABLE_ROWS = (  # (report key, label)
    ("validity", "validity"),
    ("iou_mean", "IoU mean"),
    ("dice_mean", "Dice mean"),
    ("best_iou", "IoU best-of-K"),
    ("best_dice", "Dice best-of-K"),
    ("hit_at_k", f"hit@K (IoU>={HIT_IOU})"),
    ("diversity", "diversity (1-IoU)"),
    ("success_rate", "success rate"),
    ("success_at_1", "success@1"),
    ("success_at_k", "success@K"),
    ("displacement_px", "move of valid (px)"),
    ("success_near_at_1", "success_near@1"),
    ("success_near_at_k", "success_near@K"),
    ("success_near_rate", "success_near rate"),
    ("in_feasible_at_k", "in_feasible@K"),
    ("best_feasible_distance_hw", "best dist to feasible (half-widths)"),
    ("within_half_width_at_k", "best within 1 half-width"),
    ("best_feasible_distance_m", "best dist to feasible (m)"),
    ("modes_covered", "modes covered@K"),
    ("modes", "modes / scene"),
    ("raw_verified_share", "raw samples verified"),
    ("proposals_verified_share", "proposals verified"),
    ("num_proposals", "proposals / scene"),
    ("nfe", "NFE / sample"),
    ("seconds_per_scene", "s / scene (K samples)"),
    ("proposal_seconds_per_scene", "proposal post s / scene"),
)


# ----------------------------------------------------------------------------- data
def default_report_path(run: str | os.PathLike) -> Path:
    """Where a run's report goes: ``RUN_DIR/eval/report.json``; for a checkpoint or weights
    file, or a shipped weights name (``planner``), ``eval/<stem>_report.json`` in the cwd
    (never beside an installed package's weights)."""
    path = Path(run)
    return path / DEFAULT_REPORT if path.is_dir() else Path("eval") / f"{path.stem}_report.json"


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


# ----------------------------------------------------------------------------- baselines
def random_valid_placements(
    scene: SceneMasks,
    soft_object: np.ndarray,
    k: int,
    rng: np.random.Generator,
    tries: int = RANDOM_TRIES,
) -> tuple[np.ndarray, int]:
    """``k`` random valid placements ``(k, S, S)`` of the selected object and how many fell
    back to an invalid one (no valid pose found in ``tries`` attempts).

    Each attempt rotates the object's soft mask ``soft_object`` ``(S, S)`` by a uniform angle
    about its centroid, moves it to a uniform free pixel of the map (bilinear resampling,
    threshold 0.5) and keeps it if :func:`goalgen.eval.metrics.invalid_reason` finds nothing.
    """
    size = soft_object.shape[-1]
    out = np.zeros((k, size, size), dtype=bool)
    c0 = np.array(ndimage.center_of_mass(soft_object))
    free = np.argwhere(scene.interior & ~scene.static & ~scene.others)
    if len(free) == 0:
        return np.repeat(scene.target_object[None], k, 0), k
    failed = 0
    for i in range(k):
        candidate = scene.target_object
        for _ in range(tries):
            phi = rng.uniform(0, np.pi)
            c1 = free[rng.integers(len(free))] + rng.uniform(-0.5, 0.5, 2)
            rot = np.array([[np.cos(phi), -np.sin(phi)], [np.sin(phi), np.cos(phi)]])
            moved = ndimage.affine_transform(
                soft_object, rot, offset=c0 - rot @ c1, order=1, mode="constant", cval=0.0
            )
            candidate = moved >= THRESHOLD
            if invalid_reason(candidate, scene) is None:
                break
        else:
            failed += 1
        out[i] = candidate
    return out, failed


# ----------------------------------------------------------------------------- evaluation
def _clean(value: Any) -> Any:
    """NaN/inf -> None, numpy scalars -> Python, recursively (strict JSON)."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return None if not math.isfinite(float(value)) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def read_arrays(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every array of a scene file (masks, world geometry, feasible set)."""
    with np.load(path, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def _proposal_row(
    result: Any,
    masks: SceneMasks,
    world: Mapping[str, np.ndarray] | None,
    slack: float = near.NEAR_SLACK,
):
    """The proposals of one scene scored like samples (a scene without any proposal scores as
    one empty mask: it fails every check).

    With the scene's world geometry (``world``, :func:`goalgen.eval.near.has_world_geometry`)
    ``validity`` and ``success_*`` judge each proposal at its exact pose, where a planner puts
    the box (:func:`goalgen.eval.near.world_valid` and :func:`goalgen.eval.near.opens_route`,
    independent of the proposals' own checks), not its footprint's pixels: at 64 px a box
    1 cm from a wall touches the wall's pixel. ``invalid`` keeps the pixel judge's reasons.
    With a feasible set, the near metrics are judged at the same poses."""
    scored = score_proposals(result)
    size = masks.size
    row = scored.get("proposals") or score_samples(np.zeros((1, size, size), bool), masks)
    row = dict(row) | {k: scored[k] for k in PROPOSAL_KEYS}
    if world is None:
        return row
    feet, poses = np.zeros((1, size, size), bool), np.full((1, 3), np.nan)
    if result.proposals:
        from goalgen.data.pack import resize_masks

        stack = np.stack([p.footprint for p in result.proposals]).astype(np.float32)
        feet = resize_masks(stack, size) >= THRESHOLD
        poses = np.array([(p.x, p.y, p.theta) for p in result.proposals])
        valid = near.world_valid(world, poses)
        success = valid & near.opens_route(world, poses)
        row |= {
            "validity": float(valid.mean()),
            "success_rate": float(success.mean()),
            "success_at_1": float(success[0]),
            "success_at_k": float(success.any()),
        }
    if near.has_feasible_set(world):
        row |= near.score_near(world, feet, slack, masks=masks, poses=poses)
    return row


def score_scene(
    scene: SceneInput,
    model_masks: np.ndarray,
    index: int,
    seed: int,
    arrays: Mapping[str, np.ndarray] | None = None,
    proposals: Any = None,
    propose_baseline: Callable[[np.ndarray], Any] | None = None,
    slack: float = near.NEAR_SLACK,
) -> tuple[dict[str, dict[str, Any]], int]:
    """Metrics of the model's masks ``(K, S, S)`` and of the reference rows for one scene;
    returns ``({method: metrics}, random placements that found no valid pose)``.

    ``arrays``: the scene file's arrays (:func:`read_arrays`): with world geometry they add the
    ``random_local`` row, with a feasible set the near metrics of every row. ``proposals``: the
    :class:`goalgen.infer.proposals.ProposalSet` of the model's samples (adds ``proposals``);
    ``propose_baseline``: masks ``(K, S, S)`` -> their ProposalSet, applied to the
    ``random_local`` masks (adds ``random_local_proposals``). ``slack``: the near metrics'
    (:func:`goalgen.eval.near.success_near`).
    """
    masks = SceneMasks.from_soft(scene.context, scene.truth, scene.geometry)
    k = len(model_masks)
    rng = np.random.default_rng([seed, index])
    random, failed = random_valid_placements(masks, scene.context[4], k, rng)
    sets = {
        "model": model_masks,
        "random_valid": random,
        "leave_in_place": np.repeat(masks.target_object[None], k, 0),
    }
    if masks.truth is not None:
        sets["ground_truth"] = masks.truth[None]
    if arrays is not None and near.has_world_boxes(arrays):
        local_rng = np.random.default_rng([seed, index, 1])
        sets["random_local"], _ = near.random_local(arrays, k, local_rng, size=masks.size)
    feasible = arrays if arrays is not None and near.has_feasible_set(arrays) else None
    world = arrays if arrays is not None and near.has_world_geometry(arrays) else None
    rows = {}
    for name, samples in sets.items():
        rows[name] = score_samples(samples, masks)
        if feasible is not None:
            rows[name] |= near.score_near(feasible, samples, slack, masks=masks)
    if proposals is not None:
        rows["proposals"] = _proposal_row(proposals, masks, world, slack)
    if propose_baseline is not None and "random_local" in sets:
        baseline = propose_baseline(sets["random_local"].astype(np.float32))
        rows["random_local_proposals"] = _proposal_row(baseline, masks, world, slack)
    return rows, failed


def _aggregate_methods(records: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    out = {}
    for m in METHODS + OPTIONAL_METHODS:
        rows = [r[m] for r in records if m in r]
        if rows or m in METHODS:
            out[m] = aggregate(rows)
    return out


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
) -> dict[str, Any]:
    """Evaluate ``run_dir``'s checkpoint on ``data`` (default: the run's own data, val split);
    returns the report (see the module docstring; JSON-ready). ``proposals``: also score the
    ranked, verified proposals of the same samples (and of the ``random_local`` baseline's).
    ``near_slack``: how much longer than the nearest feasible one a near-optimal push may be,
    as a share of the world's width."""
    predictor = GoalPredictor.from_run(run_dir, checkpoint, device)
    config = predictor.config
    if data is None:
        data_cfg = config.get("data") or {}
        data = data_cfg.get("val_dir") or data_cfg.get("data_dir")
        if not data:
            raise ValueError(f"{run_dir}: its config names no data; pass --data DIR")
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
            result = proposals_of_samples(path, pred.probs)
            post_seconds += result.seconds["setup"] + result.seconds["post"]
            baseline = partial(proposals_of_samples, path)
        rows, failed = score_scene(scene, pred.masks, i, seed, arrays, result, baseline, near_slack)
        failed_total += failed
        records.append({"scene": scene.name, "family": near.scene_family(arrays), **rows})
        if progress and (i + 1) % max(1, len(scenes) // 10) == 0:
            print(f"scored {i + 1}/{len(scenes)} scenes", file=sys.stderr)
    methods = _aggregate_methods(records)
    methods["random_valid"]["placements_without_valid_pose"] = failed_total
    families = {}
    for family in sorted({r["family"] for r in records}):
        subset = [r for r in records if r["family"] == family]
        families[family] = {"num_scenes": len(subset), "methods": _aggregate_methods(subset)}
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
        },
        "methods": methods,
        "families": families,
        "cost": cost,
    }
    if per_scene:
        report["per_scene"] = records
    return _clean(report)


# ----------------------------------------------------------------------------- tables
def _signature(report: Mapping[str, Any]) -> tuple:
    return tuple(
        report.get(k) for k in ("data", "split", "image_size", "num_samples", "num_scenes", "seed")
    )


def _methods(report: Mapping[str, Any], family: str | None) -> Mapping[str, Any]:
    if family is None:
        return report["methods"]
    return (report.get("families") or {}).get(family, {}).get("methods", {})


def _value(report: Mapping[str, Any], method: str, key: str, family: str | None = None) -> Any:
    if key in ("nfe", "seconds_per_scene"):
        return report.get("cost", {}).get(key) if method == "model" and family is None else None
    if key == "proposal_seconds_per_scene":
        if method == "proposals" and family is None:
            return report.get("cost", {}).get(key)
        return None
    return _methods(report, family).get(method, {}).get(key)


def _fmt(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if key in ("nfe", "modes", "num_proposals"):
        return f"{value:.1f}" if key != "nfe" else f"{value:.0f}"
    return f"{value:.3f}"


def _families(reports: Sequence[Mapping[str, Any]]) -> list[str]:
    return sorted({f for r in reports for f in (r.get("families") or {})})


def _grid(
    reports: Sequence[Mapping[str, Any]],
    names: Sequence[str],
    family: str | None,
) -> tuple[list[str], list[list[str]]]:
    columns: list[tuple[str, Mapping[str, Any], str]] = []
    for name, r in zip(names, reports, strict=True):
        columns.append((name, r, "model"))
        if "proposals" in _methods(r, family):
            columns.append((f"{name} proposals", r, "proposals"))
    settings: dict[tuple, str] = {}
    for name, r in zip(names, reports, strict=True):
        settings.setdefault(_signature(r), name)
    for sig, name in settings.items():
        r = next(r for r in reports if _signature(r) == sig)
        suffix = f" [{name}]" if len(settings) > 1 else ""
        columns += [(m + suffix, r, m) for m in REFERENCES if m in _methods(r, family)]
    header = ["metric"] + [c[0] for c in columns]
    rows = []
    for key, label in TABLE_ROWS:
        values = [_value(r, m, key, family) for _, r, m in columns]
        if all(v is None for v in values):
            continue  # e.g. near metrics without a feasible set, costs in a family's table
        rows.append([label] + [_fmt(key, v) for v in values])
    return header, rows


def _render(header: list[str], body: list[list[str]], markdown: bool) -> list[str]:
    if markdown:
        return [
            "| " + " | ".join(header) + " |",
            "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|",
            *["| " + " | ".join(row) + " |" for row in body],
        ]
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    return [
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in [header, *body]
    ]


def format_table(
    reports: Sequence[Mapping[str, Any]],
    names: Sequence[str] | None = None,
    markdown: bool = False,
) -> str:
    """Metrics (rows) side by side: one column per report's model (and its proposals), then
    the reference rows once per distinct evaluation setting (data, split, resolution, K,
    scenes, seed); one table over all scenes, then one per scene family when there are
    several. Rows without any value (near metrics without a feasible set) are left out."""
    names = list(names or [r.get("run_name") or f"run{i}" for i, r in enumerate(reports)])
    lines = []
    for r, name in zip(reports, names, strict=True):
        counts = ", ".join(
            f"{f} {v.get('num_scenes')}" for f, v in (r.get("families") or {}).items()
        )
        lines.append(
            f"{name}: {r.get('family')} {r.get('method')} steps={r.get('steps')} "
            f"K={r.get('num_samples')} scenes={r.get('num_scenes')}"
            f"{f' ({counts})' if counts else ''} "
            f"({r.get('split')} of {r.get('data')}) at {r.get('image_size')}px, "
            f"checkpoint {Path(str(r.get('checkpoint'))).name}"
        )
    if markdown:
        lines = [f"- {line}" for line in lines]
    families = _families(reports)
    tables: list[tuple[str | None, str]] = [(None, "all scenes")]
    if len(families) > 1:
        tables += [(f, f"family {f}") for f in families]
    elif families:
        tables = [(None, f"family {families[0]} (all scenes)")]
    for family, title in tables:
        header, body = _grid(reports, names, family)
        lines += ["", f"**{title}**" if markdown else f"[{title}]"]
        lines += ([""] if markdown else []) + _render(header, body, markdown)
    return "\n".join(lines)


def load_report(path: str | os.PathLike) -> dict[str, Any]:
    """A report written by ``goalgen-eval`` (checked for its version marker)."""
    path = Path(path)
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: not a readable JSON report ({one_line(error)})") from error
    if not isinstance(report, dict) or "goalgen_eval" not in report or "methods" not in report:
        raise ValueError(f"{path} is not a goalgen-eval report")
    return report


def write_report(report: Mapping[str, Any], path: Path) -> None:
    atomic_write_text(path, json.dumps(report, indent=1, allow_nan=False) + "\n")


# ----------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    """``goalgen-eval``: evaluate a run (or compare runs/reports)."""
    parser = OneLineParser(
        prog="goalgen-eval",
        description="Score a run's sampled goals and their ranked, verified proposals "
        "(validity, IoU/Dice vs ground truth, diversity, path-opening success, near-optimal "
        "success on scenes with a feasible set, cost) next to random-valid, random-local, "
        "leave-in-place and ground-truth rows, per scene family; or compare runs/reports.",
    )
    parser.add_argument(
        "run_dir",
        nargs="?",
        help="training run directory, a .ckpt or weights file, or shipped weights (planner)",
    )
    parser.add_argument("--data", help="scene folder or .npz (default: the run's own data)")
    parser.add_argument("--samples", type=int, default=16, help="samples per scene K (16)")
    parser.add_argument("--max-scenes", type=int, help="evaluate the first N scenes")
    parser.add_argument("--steps", type=int, help="sampling steps (default: the run's)")
    parser.add_argument("--method", help=METHOD_HELP)
    parser.add_argument("--checkpoint", default="best", help="best (default), last or a path")
    parser.add_argument("--seed", type=int, default=0, help="noise and baseline seed (0)")
    parser.add_argument(
        "--split",
        choices=SPLITS,
        default="auto",
        help="auto (default): the run's val split when --data is its data",
    )
    parser.add_argument("--batch-size", type=int, help="scenes per sampling call")
    parser.add_argument("--device", help="cpu, cuda, ... (default: cuda if available)")
    parser.add_argument(
        "--out",
        type=Path,
        help=f"report path (default: RUN_DIR/{DEFAULT_REPORT}; for a checkpoint file or "
        "shipped weights NAME: eval/NAME_report.json here)",
    )
    parser.add_argument("--no-per-scene", action="store_true", help="omit per-scene records")
    parser.add_argument(
        "--no-proposals",
        action="store_true",
        help="do not score the ranked, verified proposals of the samples (faster)",
    )
    parser.add_argument(
        "--near-slack",
        type=float,
        default=near.NEAR_SLACK,
        help="near-optimal: a push at most this share of the world's width longer than the "
        f"nearest feasible one ({near.NEAR_SLACK}; 0.01 is 11 cm in an 11 m maze)",
    )
    parser.add_argument(
        "--compare",
        nargs="+",
        metavar="RUN_OR_REPORT",
        help="runs (their saved report, or evaluated now with --data) or "
        "report .json files to print side by side",
    )
    parser.add_argument("--markdown", action="store_true", help="print the table as markdown")
    args = parser.parse_args(argv)
    if (args.run_dir is None) == (args.compare is None):
        parser.error("give either RUN_DIR or --compare RUN_OR_REPORT ...")
    for name in ("samples", "max_scenes", "steps", "batch_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if not 0 <= args.near_slack < 1:
        parser.error(f"--near-slack must be in [0, 1), got {args.near_slack}")

    def run_eval(run_dir: str) -> dict[str, Any]:
        with warnings_as_lines("goalgen-eval"):
            report = evaluate_run(
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
            )
        return report

    try:
        if args.compare is None:
            report = run_eval(args.run_dir)
            out = args.out or default_report_path(args.run_dir)
            write_report(report, out)
            print(format_table([report], markdown=args.markdown))
            print(f"\nreport: {out}")
            return 0
        reports, names = [], []
        for entry in args.compare:
            path = Path(entry)
            if path.is_file() and path.suffix == ".json":
                report = load_report(path)
            elif not path.exists() and shipped(entry) is None:
                raise FileNotFoundError(
                    f"{entry} is neither a report, a run directory, a checkpoint nor a shipped "
                    "weights name"
                )
            elif args.data is None and (path / DEFAULT_REPORT).is_file():
                report = load_report(path / DEFAULT_REPORT)
                print(f"{entry}: using its saved report {path / DEFAULT_REPORT}", file=sys.stderr)
            else:
                report = run_eval(entry)
            reports.append(report)
            names.append(report.get("run_name") or path.stem)
        names = [n if names.count(n) == 1 else f"{n}#{i}" for i, n in enumerate(names)]
        print(format_table(reports, names, markdown=args.markdown))
        return 0
    except USER_ERRORS as error:
        print(f"goalgen-eval: error: {one_line(error)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
