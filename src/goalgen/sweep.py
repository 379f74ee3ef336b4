"""``goalgen-sweep SWEEP_DIR``: a Hydra sweep as one table, one row per point.

    goalgen-sweep outputs/train_fb_flow_matching-3d05eb19            # rich table on a terminal
    goalgen-sweep outputs/SWEEP --markdown --sort val_loss_best
    goalgen-sweep outputs/SWEEP --csv > sweep.csv

``SWEEP_DIR`` is the sweep command's own run dir (``${output_dir}/${run_name}`` of the ``-m``
command, where ``.submitit/`` is, and ``multirun.yaml`` for a grid), for sweeps launched through the
presets ``hydra/launcher=slurm`` or ``hydra/launcher=local`` (grid or ``hydra/sweeper=tpe``).

Where each figure comes from:

- the points: every submission in ``.submitit/`` (submitit's pickle holds the point's
  overrides and ``hydra.job.num``; pending points are listed too). A sweep command run again
  submits every point again: the newest submission of each point counts.
- the point's run dir: its Hydra job result, else Hydra's own rule (``hydra.sweep.dir`` /
  ``subdir`` composed for the point, as the job does).
- state: the job's result (completed, or failed with the error's line), else Slurm's
  accounting (``sacct``: pending, running, failed with the last error line of the job's log),
  else the run dir. ``requeues``: the REQUEUED records of the point's job in ``sacct -D``.
- ``epoch``, ``step``, ``val_loss_best``: the run's ``last.ckpt``; task metrics: its
  ``metrics.json`` (the latest validation); ``best_checkpoint``: the lowest recorded val_loss.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import pickle
import re
import subprocess
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from goalgen.checkpoint import LAST, is_complete, peek, rank_checkpoints, run_checkpoint_dir
from goalgen.cli import OneLineParser, one_line, want_traceback

PROG = "goalgen-sweep"
# Slurm states of a job that is still on its way
WAITING = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD", "SUSPENDED"}
ACTIVE = {"RUNNING", "COMPLETING", "CONFIGURING", "RESIZING", "STAGE_OUT", "SIGNALING"}
# the task metrics shown by default (every val_* metric goes into --csv)
DEFAULT_METRICS = ("val_validity", "val_best_iou", "val_hit_at_k")
FIXED_COLUMNS = ("state", "requeues", "epoch", "step", "val_loss_best")
TAIL_COLUMNS = ("best_checkpoint", "job", "reason")


class SweepError(ValueError):
    """A sweep dir that cannot be read (named, with what to do)."""


@dataclass
class Submission:
    """One submitit job of a sweep point (its newest one counts)."""

    folder: Path  # .submitit/<job id>/
    job_id: str  # Slurm "ARRAY_INDEX" (or a plain id; a pid for the local executor)
    num: int  # hydra.job.num
    overrides: list[str]
    delayed: Any  # submitit's DelayedSubmission (the launcher, the call's arguments)
    mtime: float
    cluster: str = ""  # "slurm" (sacct knows it) or "local"


@dataclass
class Point:
    num: int
    overrides: list[str]
    job_id: str | None = None
    run_dir: Path | None = None
    state: str = "pending"
    requeues: int = 0
    epoch: int | None = None
    step: int | None = None
    val_loss_best: float | None = None
    metrics: dict[str, float | None] = field(default_factory=dict)
    best_checkpoint: Path | None = None
    reason: str = ""
    params: dict[str, str] = field(default_factory=dict)  # the defining overrides
    logged_requeues: int = 0  # metrics.json's requeues (SLURM_RESTART_COUNT at validation)


# ----------------------------------------------------------------------------- reading
def _check_sweep_dir(sweep_dir: Path) -> Path:
    if not sweep_dir.is_dir():
        raise SweepError(f"SWEEP_DIR {sweep_dir} does not exist")
    if not (sweep_dir / ".submitit").is_dir():
        hint = (
            f"{sweep_dir} is a run dir (it has .hydra/), not a sweep dir"
            if (sweep_dir / ".hydra").is_dir()
            else f"{sweep_dir} has no .submitit/ folder"
        )
        raise SweepError(
            f"{hint}: pass the sweep command's own dir (the one with .submitit/, printed by "
            "the -m command as 'sweep output dir'), launched with hydra/launcher=slurm or local"
        )
    return sweep_dir


def submissions(sweep_dir: Path) -> list[Submission]:
    """Every point submission under ``.submitit/`` (unreadable pickles are skipped)."""
    import submitit

    found = []
    for pkl in sorted((sweep_dir / ".submitit").glob("*/*_submitted.pkl")):
        try:
            delayed = submitit.helpers.DelayedSubmission.load(pkl)
            overrides, _key, num = list(delayed.args[0]), delayed.args[1], int(delayed.args[2])
        except Exception as exc:  # noqa: BLE001 - another tool's pickle, a partial write
            print(f"{PROG}: warning: skipping {pkl}: {one_line(exc)}", file=sys.stderr)
            continue
        cluster = str(getattr(delayed.function, "_EXECUTOR", ""))  # the launcher itself
        found.append(
            Submission(
                pkl.parent, pkl.parent.name, num, overrides, delayed, pkl.stat().st_mtime, cluster
            )
        )
    return found


# what a DDP rank says when another rank died first: not the reason, the echo of it
_ECHOES = ("Connection closed by peer", "remote worker crashing", "Connection reset by peer")


def _failure_reason(sub: Submission, first: str) -> str:
    """The point's failing line: the first task whose error is not another rank's echo."""
    reasons = [first]
    for path in sorted(sub.folder.glob(f"{sub.job_id}_*_result.pkl")):
        result = _result(sub, int(path.name.split("_")[-2]))
        if result is None:
            continue
        kind, value = result
        if kind == "error":
            reasons.append(_last_line(str(value)))
        elif getattr(getattr(value, "status", None), "name", None) == "FAILED":
            reasons.append(one_line(value._return_value))
    for reason in reasons:
        if reason and not any(echo in reason for echo in _ECHOES):
            return reason
    return first


def _result(sub: Submission, task: int = 0) -> tuple[str, Any] | None:
    """A task's submitit result: ("success", JobReturn) or ("error", traceback text)."""
    path = sub.folder / f"{sub.job_id}_{task}_result.pkl"
    if not path.is_file():
        return None
    try:
        with open(path, "rb") as f:
            return pickle.load(f)
    except Exception as exc:  # noqa: BLE001 - being written, or unreadable
        return "error", f"unreadable result {path}: {one_line(exc)}"


def _composed_run_dir(sub: Submission) -> Path | None:
    """The point's run dir by Hydra's own rule, as the job computes it (hydra.sweep.dir /
    hydra.sweep.subdir of the point's composed config)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.singleton import Singleton
    from omegaconf import open_dict

    try:
        launcher = sub.delayed.function  # hydra-submitit-launcher's launcher (a callable)
        Singleton.set_state(sub.delayed.args[4])
        cfg = launcher.hydra_context.config_loader.load_sweep_config(
            launcher.config, list(sub.overrides)
        )
        with open_dict(cfg.hydra.job):
            cfg.hydra.job.num = sub.num
        HydraConfig.instance().set_config(cfg)
        path = Path(str(cfg.hydra.sweep.dir)) / str(cfg.hydra.sweep.subdir)
        cwd = Path(str(launcher.config.hydra.runtime.cwd))
        return path if path.is_absolute() else cwd / path
    except Exception as exc:  # noqa: BLE001 - a config that no longer composes
        print(
            f"{PROG}: warning: point {sub.num}: cannot compose its run dir: {one_line(exc)}",
            file=sys.stderr,
        )
        return None


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def _error_line(sub: Submission, run_dir: Path | None) -> str:
    """The failing line: the last ERROR of the run's train.log, else of the job's stderr."""
    candidates = []
    if run_dir is not None:
        candidates.append(run_dir / "train.log")
    candidates.append(sub.folder / f"{sub.job_id}_0_log.err")
    for path in candidates:
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        errors = [ln for ln in text.splitlines() if "ERROR" in ln or "Error" in ln]
        if errors:
            return re.sub(r"^\[[^\]]*\]\[[^\]]*\]\[ERROR\] - ", "", errors[-1].strip())
    return ""


def sacct_records(job_ids: list[str]) -> dict[str, list[tuple[str, str]]] | None:
    """``{"ARRAY_INDEX" or id: [(state, exit code), ...] oldest first}`` from ``sacct -D -X``
    (every attempt: a requeued job has REQUEUED records before its last); None when sacct
    cannot be run here (no Slurm client, no accounting)."""
    arrays = sorted({j.split("_")[0] for j in job_ids if j.split("_")[0].isdigit()})
    if not arrays:
        return {}
    cmd = ["sacct", "-D", "-X", "-n", "-P", "-o", "JobID,State,ExitCode"]
    for a in arrays:
        cmd += ["-j", a]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", "") or exc
        print(
            f"{PROG}: warning: sacct failed ({one_line(str(detail))[:200]}); states come "
            "from the run dirs only",
            file=sys.stderr,
        )
        return None
    return parse_sacct(out)


def parse_sacct(out: str) -> dict[str, list[tuple[str, str]]]:
    """``sacct -D -X -n -P -o JobID,State,ExitCode`` lines -> ``{job: [(state, exit), ...]}``;
    a pending array's range (``12_[0-3%2]``) gives each of its elements a record."""
    records: dict[str, list[tuple[str, str]]] = {}
    for line in out.splitlines():
        parts = line.split("|")
        if len(parts) < 3 or "." in parts[0]:
            continue
        job, state, code = parts[0], parts[1].split()[0] if parts[1] else "", parts[2]
        m = re.fullmatch(r"(\d+)_\[([0-9,\-]+)(?:%\d+)?\]", job)  # a pending array range
        if m:
            for part in m.group(2).split(","):
                lo, _, hi = part.partition("-")
                for i in range(int(lo), int(hi or lo) + 1):
                    records.setdefault(f"{m.group(1)}_{i}", []).append((state, code))
        else:
            records.setdefault(job, []).append((state, code))
    return records


def _fill_from_run_dir(point: Point) -> None:
    run_dir = point.run_dir
    if run_dir is None:
        return
    last = peek(run_checkpoint_dir(run_dir) / LAST)
    if last is not None:
        point.epoch, point.step = int(last.get("epoch", 0)), int(last.get("step", 0))
        best = last.get("val_loss_best")
        point.val_loss_best = float(best) if isinstance(best, int | float) else None
    metrics_path = run_dir / "metrics.json"
    if metrics_path.is_file():
        try:
            metrics = json.loads(metrics_path.read_text())
        except ValueError:
            metrics = {}
        point.metrics = {
            k: v
            for k, v in metrics.items()
            if k.startswith("val_") and (v is None or isinstance(v, int | float))
        }
        if isinstance(metrics.get("requeues"), int):
            point.logged_requeues = metrics["requeues"]
        if point.val_loss_best is None and point.metrics.get("val_loss_best") is not None:
            point.val_loss_best = float(point.metrics["val_loss_best"])
    if point.val_loss_best is not None and not math.isfinite(point.val_loss_best):
        point.val_loss_best = None
    folder = run_checkpoint_dir(run_dir)
    if folder.is_dir():
        with warnings.catch_warnings():  # unreadable files are skipped: not this table's news
            warnings.simplefilter("ignore")
            ranked = rank_checkpoints(folder)
        point.best_checkpoint = ranked[0][2] if ranked else None


def _complete(point: Point, cfg: Any) -> bool:
    if point.epoch is None or cfg is None:
        return False
    return is_complete(point.epoch, point.step or 0, int(cfg.max_epochs), int(cfg.max_steps))


def read_sweep(sweep_dir: str | os.PathLike, use_sacct: bool = True) -> list[Point]:
    """One :class:`Point` per ``hydra.job.num`` of the sweep in ``sweep_dir``, in order."""
    from goalgen.train.run_name import defining_overrides

    sweep_dir = _check_sweep_dir(Path(sweep_dir))
    subs = submissions(sweep_dir)
    if not subs:
        raise SweepError(f"{sweep_dir}/.submitit/ holds no submitted points yet")
    newest: dict[int, Submission] = {}
    for sub in sorted(subs, key=lambda s: (s.mtime, s.job_id)):
        newest[sub.num] = sub
    on_slurm = [s.job_id for s in newest.values() if s.cluster == "slurm"]
    records = sacct_records(on_slurm) if use_sacct and on_slurm else None
    points = []
    for num in sorted(newest):
        sub = newest[num]
        point = Point(num=num, overrides=sub.overrides, job_id=sub.job_id)
        point.params = dict(defining_overrides(sub.overrides))
        result = _result(sub)
        ret = result[1] if result and result[0] == "success" else None
        cfg = getattr(ret, "cfg", None)
        try:
            point.run_dir = Path(str(ret.hydra_cfg.hydra.runtime.output_dir))
        except Exception:  # noqa: BLE001 - no result yet: Hydra's rule
            point.run_dir = _composed_run_dir(sub)
        _fill_from_run_dir(point)
        if cfg is None and point.run_dir is not None:
            cfg = _run_config(point.run_dir)
        attempts = (records or {}).get(sub.job_id, [])
        point.requeues = sum(1 for state, _ in attempts if state == "REQUEUED")
        slurm_state, exit_code = attempts[-1] if attempts else ("", "")
        status = getattr(getattr(ret, "status", None), "name", None)
        if status == "FAILED":  # even a complete run: its objective may be what failed
            point.state = "failed"
            point.reason = _failure_reason(sub, one_line(ret._return_value))
        elif result is not None and result[0] == "error":
            point.state, point.reason = "failed", _failure_reason(sub, _last_line(str(result[1])))
        elif status == "COMPLETED" or _complete(point, cfg):
            point.state = "completed"
        elif slurm_state == "COMPLETED":  # exited 0 without a result, not requeued
            point.state = "stopped"
            point.reason = "stopped before the end (not requeued); run the sweep command again"
        elif slurm_state in WAITING or (sub.cluster == "slurm" and records and not attempts):
            point.state = "pending"
        elif slurm_state in ACTIVE:
            point.state = "running"
        elif slurm_state:  # ended without a result: killed, timed out, crashed
            point.state = "failed"
            line = _error_line(sub, point.run_dir)
            point.reason = f"Slurm {slurm_state} (exit {exit_code})" + (f": {line}" if line else "")
        elif sub.cluster == "local" and not _local_alive(sub.job_id):
            line = _error_line(sub, point.run_dir)
            point.state = "failed"
            point.reason = "the process ended without a result" + (f": {line}" if line else "")
        else:  # no accounting: from the run dir
            point.state = "running" if point.run_dir and point.run_dir.is_dir() else "pending"
        if point.state in ("pending", "running") and point.requeues:
            point.state = f"{point.state} (requeued {point.requeues}x)"
        if records is None:  # no accounting: Slurm's restart count as the run last logged it
            point.requeues = point.logged_requeues
        points.append(point)
    return points


def _local_alive(job_id: str) -> bool:
    """submitit's local executor names a job by its process id."""
    if not job_id.isdigit():
        return False
    try:
        os.kill(int(job_id), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def _run_config(run_dir: Path) -> Any:
    path = run_dir / ".hydra" / "config.yaml"
    if not path.is_file():
        return None
    from omegaconf import OmegaConf

    try:
        return OmegaConf.load(path)
    except Exception:  # noqa: BLE001
        return None


# ----------------------------------------------------------------------------- the table
def varying_params(points: list[Point]) -> tuple[list[str], dict[str, str]]:
    """(keys whose value differs between points, {key: value} shared by all points)."""
    keys = list(dict.fromkeys(k for p in points for k in p.params))
    varying = [k for k in keys if len({p.params.get(k) for p in points}) > 1]
    shared = {k: points[0].params[k] for k in keys if k not in varying and k in points[0].params}
    if len(points) == 1:  # one point: its overrides are what defines it
        varying, shared = keys, {}
    return varying, shared


def _metric_names(points: list[Point], wanted: list[str] | None) -> list[str]:
    present = list(dict.fromkeys(k for p in points for k in p.metrics if k != "val_loss_best"))
    if wanted == ["all"]:
        return present
    names = list(wanted) if wanted else [m for m in DEFAULT_METRICS if m in present]
    return names


def rows(
    points: list[Point], metrics: list[str] | None = None, full_paths: bool = False
) -> tuple[list[str], list[dict[str, Any]]]:
    """(column names, one dict per point) — what every output format prints."""
    varying, _ = varying_params(points)
    names = _metric_names(points, metrics)
    columns = ["point", *varying, *FIXED_COLUMNS, *names, *TAIL_COLUMNS]
    out = []
    for p in points:
        best = p.best_checkpoint
        if best is not None and not full_paths:
            best = best.name
        row: dict[str, Any] = {
            "point": p.num,
            **{k: p.params.get(k, "") for k in varying},
            "state": p.state,
            "requeues": p.requeues,
            "epoch": p.epoch,
            "step": p.step,
            "val_loss_best": p.val_loss_best,
            **{m: p.metrics.get(m) for m in names},
            "best_checkpoint": str(best) if best is not None else None,
            "job": p.job_id,
            "reason": p.reason,
        }
        out.append(row)
    return columns, out


def _sort_key(value: Any) -> tuple:
    if value is None or value == "":
        return (2, 0, "")
    try:
        number = float(value)
        return (0, number, "") if not math.isnan(number) else (2, 0, "")
    except (TypeError, ValueError):
        return (1, 0, str(value))


def sort_rows(columns: list[str], table: list[dict], column: str, reverse: bool) -> list[dict]:
    if column not in columns:
        raise SweepError(f"--sort {column}: no such column; use one of {', '.join(columns)}")
    ordered = sorted(table, key=lambda r: _sort_key(r[column]))
    if reverse:  # empty cells stay last
        filled = [r for r in ordered if _sort_key(r[column])[0] < 2]
        ordered = filled[::-1] + [r for r in ordered if _sort_key(r[column])[0] == 2]
    return ordered


def _cell(value: Any) -> str:
    """A value as the terminal and markdown tables show it (--csv keeps every digit)."""
    if value is None:
        return ""
    if isinstance(value, str) and len(value) > 8:  # an Optuna trial's 0.002554871255496688
        try:
            value = float(value)
        except ValueError:
            return value
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def to_csv(columns: list[str], table: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in table:
        writer.writerow({k: ("" if row[k] is None else row[k]) for k in columns})
    return buf.getvalue()


def to_markdown(columns: list[str], table: list[dict]) -> str:
    from tabulate import tabulate

    body = [[_cell(r[c]).replace("|", "\\|") for c in columns] for r in table]
    return tabulate(body, headers=columns, tablefmt="github", disable_numparse=True)


def print_rich(columns: list[str], table: list[dict], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    colours = {"completed": "green", "failed": "red", "stopped": "red", "running": "yellow"}
    t = Table(title=title, title_justify="left")
    cells = [[_cell(r[c]) for c in columns] for r in table]
    for i, c in enumerate(columns):
        # cells stay whole (headers fold instead); only the failing line may wrap
        widest = max((len(row[i]) for row in cells), default=0)
        t.add_column(
            c,
            overflow="fold",
            min_width=None if c == "reason" else max(widest, 2),
            justify="right" if c in ("point", "step", "epoch", "requeues") else "left",
        )
    for r, row in zip(table, cells, strict=True):
        t.add_row(*row, style=colours.get(str(r["state"]).split()[0]))
    Console().print(t)


# ----------------------------------------------------------------------------- the CLI
def build_parser() -> OneLineParser:
    p = OneLineParser(
        prog=PROG,
        description="One row per point of a Hydra sweep (hydra/launcher=slurm|local): its "
        "overrides, state (pending / running / requeued / completed / failed with the "
        "failing line), epoch, step, best val_loss, task metrics and best checkpoint.",
        epilog="example: goalgen-sweep outputs/train_fb_flow_matching-3d05eb19 --sort "
        "val_loss_best --markdown",
    )
    p.add_argument("sweep_dir", metavar="SWEEP_DIR", help="the -m command's run dir")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--markdown", action="store_true", help="a GitHub markdown table")
    fmt.add_argument("--csv", action="store_true", help="CSV with every column, full paths")
    p.add_argument("--sort", metavar="COLUMN", default=None, help="sort by this column")
    p.add_argument("--reverse", action="store_true", help="sort descending")
    p.add_argument(
        "--metric",
        action="append",
        default=None,
        metavar="NAME",
        help=f"task metric column (repeatable; 'all' for every one; default: "
        f"{', '.join(DEFAULT_METRICS)}; --csv has all)",
    )
    p.add_argument("--no-sacct", action="store_true", help="do not ask Slurm's accounting")
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        points = read_sweep(args.sweep_dir, use_sacct=not args.no_sacct)
        metrics = ["all"] if args.csv and not args.metric else args.metric
        columns, table = rows(points, metrics, full_paths=args.csv)
        if args.sort:
            table = sort_rows(columns, table, args.sort, args.reverse)
        if not args.csv:  # a column no point has a value for (reason, when none failed)
            columns = [c for c in columns if c == "point" or any(_cell(r[c]) for r in table)]
        _, shared = varying_params(points)
        if args.csv:
            sys.stdout.write(to_csv(columns, table))
            return
        common = " ".join(f"{k}={v}" for k, v in shared.items())
        summary = _summary(Path(args.sweep_dir), points)
        if args.markdown:
            print(f"{summary}\n\nall points: `{common}`\n" if common else f"{summary}\n")
            print(to_markdown(columns, table))
        elif sys.stdout.isatty():
            print_rich(columns, table, summary)
            if common:
                print(f"all points: {common}")
        else:
            from tabulate import tabulate

            print(summary)
            if common:
                print(f"all points: {common}")
            print(tabulate([[_cell(r[c]) for c in columns] for r in table], headers=columns))
    except Exception as exc:
        if want_traceback() or not isinstance(exc, ValueError | OSError):
            raise
        print(f"{PROG}: error: {one_line(exc)[:500]}", file=sys.stderr)
        sys.exit(1)


def _summary(sweep_dir: Path, points: list[Point]) -> str:
    counts: dict[str, int] = {}
    for p in points:
        key = p.state.split()[0]
        counts[key] = counts.get(key, 0) + 1
    text = f"{sweep_dir}: {len(points)} points, " + ", ".join(
        f"{n} {s}" for s, n in sorted(counts.items())
    )
    best = sweep_dir / "optimization_results.yaml"  # the Optuna sweeper's answer
    if best.is_file():
        from omegaconf import OmegaConf

        res = OmegaConf.load(best)
        if "best_value" in res:
            params = " ".join(f"{k}={v}" for k, v in (res.get("best_params") or {}).items())
            text += f"; optuna best {res.best_value:.4g} at {params}"
    return text


if __name__ == "__main__":
    main()
