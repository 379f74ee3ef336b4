"""``goalgen-eval``'s report: where it goes, its JSON I/O, and its side-by-side tables.

A report is a JSON object (:func:`goalgen.eval.evaluate.evaluate_run`) with the version marker
``goalgen_eval``, the evaluation's setting (data, split, resolution, K, scenes, seed, the
checks' ``settings``), ``methods`` (metrics per row over all scenes), ``families`` (the same
per scene family) and ``cost``. :func:`format_table` prints reports side by side.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from goalgen.cli import one_line
from goalgen.eval.metrics import HIT_IOU
from goalgen.io import atomic_write_text

# 3: world judge with a clearance (default 2.5 cm), pushed rows; 4: success_near counts a
# proposal's judged push plan (near.plan_length)
REPORT_VERSION = 4
DEFAULT_REPORT = Path("eval") / "report.json"  # inside the run dir
REFERENCES = (  # reference rows, shown once per distinct evaluation setting
    "random_valid",
    "random_local",
    "random_local_proposals",
    "leave_in_place",
    "ground_truth",
)
SIGNATURE_KEYS = ("data", "split", "image_size", "num_samples", "num_scenes", "seed")
SIGNATURE_SETTINGS = ("clearance", "judge_clearance")  # from the report's ``settings``
COST_KEYS = ("nfe", "seconds_per_scene")  # the model's, over all scenes
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
    ("pushed_success_at_1", "success@1, pushed"),
    ("pushed_success_at_k", "success@K, pushed"),
    ("success_near_at_1", "success_near@1"),
    ("success_near_at_k", "success_near@K"),
    ("pushed_near_at_1", "success_near@1, pushed"),
    ("pushed_near_at_k", "success_near@K, pushed"),
    ("success_near_rate", "success_near rate"),
    ("in_feasible_at_k", "in_feasible@K"),
    ("best_feasible_distance_hw", "best dist to feasible (half-widths)"),
    ("within_half_width_at_k", "best within 1 half-width"),
    ("best_feasible_distance_m", "best dist to feasible (m)"),
    ("modes_covered", "modes covered@K"),
    ("modes", "modes / scene"),
    ("raw_verified_share", "raw samples verified"),
    ("proposals_verified_share", "proposals verified"),
    ("proposals_judged_share", "verified passing the judge"),
    ("proposals_unreachable_verified", "verified unreachable / scene"),
    ("num_proposals", "proposals / scene"),
    ("nfe", "NFE / sample"),
    ("seconds_per_scene", "s / scene (K samples)"),
    ("proposal_seconds_per_scene", "proposal post s / scene"),
)


# ----------------------------------------------------------------------------- files
def default_report_path(run: str | os.PathLike) -> Path:
    """Where a run's report goes: ``RUN_DIR/eval/report.json``; for a checkpoint or weights
    file, or a shipped weights name (``planner``), ``eval/<stem>_report.json`` in the cwd
    (never beside an installed package's weights)."""
    path = Path(run)
    return path / DEFAULT_REPORT if path.is_dir() else Path("eval") / f"{path.stem}_report.json"


def json_ready(value: Any) -> Any:
    """NaN/inf -> None, numpy scalars -> Python, recursively (strict JSON)."""
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return None if not math.isfinite(float(value)) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


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
    """Write ``report`` (JSON-ready, :func:`json_ready`) atomically to ``path``."""
    atomic_write_text(path, json.dumps(report, indent=1, allow_nan=False) + "\n")


# ----------------------------------------------------------------------------- tables
def _signature(report: Mapping[str, Any]) -> tuple:
    """What the reference rows depend on: reports that share it share those rows."""
    settings = report.get("settings") or {}
    return tuple(report.get(k) for k in SIGNATURE_KEYS) + tuple(
        settings.get(k) for k in SIGNATURE_SETTINGS
    )


def _methods(report: Mapping[str, Any], family: str | None) -> Mapping[str, Any]:
    if family is None:
        return report["methods"]
    return (report.get("families") or {}).get(family, {}).get("methods", {})


def _value(report: Mapping[str, Any], method: str, key: str, family: str | None = None) -> Any:
    if key in COST_KEYS:
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
    """The header and rows of one table: each report's model (and proposals) column, then the
    reference columns once per distinct :func:`_signature`."""
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


def _describe(name: str, r: Mapping[str, Any]) -> str:
    """One line naming a report's run and its evaluation setting."""
    counts = ", ".join(f"{f} {v.get('num_scenes')}" for f, v in (r.get("families") or {}).items())
    settings = r.get("settings") or {}
    clearance = ""
    if settings.get("clearance") is not None:
        clearance = f", clearance {settings['clearance']} m"
        if settings.get("judge_clearance") != settings["clearance"]:
            clearance += f" (judged at {settings.get('judge_clearance')} m)"
    return (
        f"{name}: {r.get('family')} {r.get('method')} steps={r.get('steps')} "
        f"K={r.get('num_samples')} scenes={r.get('num_scenes')}"
        f"{f' ({counts})' if counts else ''} "
        f"({r.get('split')} of {r.get('data')}) at {r.get('image_size')}px, "
        f"checkpoint {Path(str(r.get('checkpoint'))).name}{clearance}"
    )


def format_table(
    reports: Sequence[Mapping[str, Any]],
    names: Sequence[str] | None = None,
    markdown: bool = False,
) -> str:
    """Metrics (rows) side by side: one column per report's model (and its proposals), then
    the reference rows once per distinct evaluation setting (data, split, resolution, K,
    scenes, seed, clearances); one table over all scenes, then one per scene family when
    there are several. Rows without any value (near metrics without a feasible set) are left
    out."""
    names = list(names or [r.get("run_name") or f"run{i}" for i, r in enumerate(reports)])
    lines = [_describe(name, r) for r, name in zip(reports, names, strict=True)]
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
