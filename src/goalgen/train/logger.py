"""Run logging: TensorBoard scalars/images and HParams (rank 0 only), the run's latest
metrics (``metrics.json``), and a progress display.

On a TTY a rich progress bar; otherwise (Slurm logs) a plain line every ``log_every_s``.

HParams: every run writes a TensorBoard session whose hyper-parameters are the overrides that
define it (the ones hashed into its run name, read from ``<run dir>/.hydra/overrides.yaml``),
and whose metrics are its scalars: ``val_loss_best``, the latest task metrics (``val_*``),
``epoch``, ``step`` and ``requeues`` (Slurm's restart count). ``tensorboard --logdir outputs/``
then shows a sweep as one table in the HParams tab. No experiment summary is written, so
TensorBoard builds the table from all the runs' sessions (one run's summary would hide the
hyper-parameters of the others).
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.tensorboard import SummaryWriter

from goalgen.io import atomic_write_text
from goalgen.train.run_name import defining_overrides

log = logging.getLogger("goalgen")
LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"
METRICS_FILE = "metrics.json"  # the run's latest validation metrics, rewritten each validation


def setup_process_logging(run_dir: Path, is_main: bool, others_level: int = logging.INFO) -> None:
    """What ``@hydra.main`` does, for processes it did not start (submitit jobs, spawned
    workers): INFO to stderr, and on the main rank ``train.log`` in the run dir (appended, so
    the attempts before a requeue are kept). Other ranks log at ``others_level``."""
    root = logging.getLogger()
    root.setLevel(logging.INFO if is_main else others_level)
    fmt = logging.Formatter(LOG_FORMAT)
    if not any(getattr(h, "_goalgen", False) for h in root.handlers):
        stream = logging.StreamHandler(sys.stderr)
        stream.setFormatter(fmt)
        stream._goalgen = True  # type: ignore[attr-defined]
        root.addHandler(stream)
        if is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            file = logging.FileHandler(run_dir / "train.log", mode="a")
            file.setFormatter(fmt)
            file._goalgen = True  # type: ignore[attr-defined]
            root.addHandler(file)


def requeue_count(env: dict[str, str] | None = None) -> int:
    """How often Slurm has requeued this job (``SLURM_RESTART_COUNT``; 0 outside Slurm)."""
    env = os.environ if env is None else env
    try:
        return int(env.get("SLURM_RESTART_COUNT", 0))
    except ValueError:
        return 0


def _typed(value: str) -> Any:
    """An override's value as Hydra types it (``1e-4`` -> 0.0001, ``true`` -> True)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        return OverridesParser.create().parse_override(f"k={value}").value()
    except Exception:  # not a plain value (a sweep expression): keep the text
        return value


def run_hparams(run_dir: Path) -> dict[str, bool | int | float | str]:
    """The hyper-parameters that define the run in ``run_dir``: the overrides in
    ``.hydra/overrides.yaml`` that its run name hashes (:func:`goalgen.train.run_name.defining_overrides`),
    typed; lists and other values become text. {} when the run has no such file."""
    from omegaconf import OmegaConf

    path = Path(run_dir) / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return {}
    overrides = [str(o) for o in OmegaConf.to_container(OmegaConf.load(path)) or []]
    out: dict[str, bool | int | float | str] = {}
    for key, value in defining_overrides(overrides):
        typed = _typed(value)
        out[key] = typed if isinstance(typed, bool | int | float | str) else value
    return out


def _plain(value: Any) -> Any:
    """A JSON value: ints stay ints, tensors become floats, NaN/inf become null."""
    if isinstance(value, torch.Tensor):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class RunLogger:
    """Rank-0 TensorBoard writer; a no-op on other ranks.

    ``purge_step`` (the resume step) drops events a killed run wrote after its checkpoint, so
    a resumed curve has no duplicated steps. ``hparams``: the run's HParams session (default:
    :func:`run_hparams` of the run dir, ``log_dir``'s parent). Validation scalars (those with
    ``val_loss``) also log ``step`` and ``requeues`` and rewrite ``<run dir>/metrics.json``.
    """

    def __init__(
        self,
        log_dir: Path,
        enabled: bool,
        purge_step: int | None = None,
        hparams: dict[str, Any] | None = None,
    ):
        self.enabled = enabled
        self.run_dir = Path(log_dir).parent
        self.writer = SummaryWriter(str(log_dir), purge_step=purge_step) if enabled else None
        self.latest: dict[str, Any] = {}
        if self.writer is not None:
            try:
                self.hparams = run_hparams(self.run_dir) if hparams is None else dict(hparams)
            except Exception as exc:  # an unreadable overrides file must not stop training
                log.warning("no TensorBoard HParams for this run: %s", exc)
                self.hparams = {}
            if self.hparams:
                from torch.utils.tensorboard.summary import hparams as hparams_summary

                _, session_start, _ = hparams_summary(self.hparams, {})
                self.writer.file_writer.add_summary(session_start)

    def scalars(self, values: dict[str, float], step: int) -> None:
        if self.writer is None:
            return
        if "val_loss" in values:  # a validation: the HParams metrics and metrics.json
            values = {**values, "step": step, "requeues": requeue_count()}
            self.latest.update({k: _plain(v) for k, v in values.items()})
            self.latest["time"] = time.strftime("%Y-%m-%dT%H:%M:%S")
            self.latest["hparams"] = self.hparams
            atomic_write_text(
                self.run_dir / METRICS_FILE, json.dumps(self.latest, indent=1, sort_keys=True)
            )
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)

    def image(self, tag: str, image: torch.Tensor, step: int) -> None:
        """``image``: (3, H, W) float in [0, 1]."""
        if self.writer is not None:
            self.writer.add_image(tag, image, step)

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class Progress:
    """Per-epoch progress: a rich bar on a TTY, a plain line every ``log_every_s`` otherwise."""

    def __init__(self, enabled: bool, log_every_s: float = 30.0, tty: bool | None = None):
        self.enabled = enabled
        self.tty = sys.stderr.isatty() if tty is None else tty
        self.log_every_s = log_every_s
        self._bar = None
        self._task = None
        self._last_line = 0.0

    def start_epoch(self, epoch: int, total: int, done: int = 0) -> None:
        if not self.enabled:
            return
        self._epoch, self._total = epoch, total
        self._last_line = time.monotonic()
        if self.tty:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TextColumn,
                TimeRemainingColumn,
            )
            from rich.progress import (
                Progress as RichProgress,
            )

            self._bar = RichProgress(
                TextColumn(f"epoch {epoch}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[info]}"),
                transient=True,
            )
            self._bar.start()
            self._task = self._bar.add_task("train", total=total, completed=done, info="")

    def update(self, batch: int, step: int, info: dict[str, float]) -> None:
        if not self.enabled:
            return
        text = " ".join(f"{k}={v:.4g}" for k, v in info.items())
        if self._bar is not None:
            self._bar.update(self._task, completed=batch, info=text)
        elif time.monotonic() - self._last_line >= self.log_every_s:
            self._last_line = time.monotonic()
            log.info("epoch %d batch %d/%d step %d %s", self._epoch, batch, self._total, step, text)

    def end_epoch(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
