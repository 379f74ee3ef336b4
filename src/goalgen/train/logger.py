"""Run logging: TensorBoard scalars/images (rank 0 only) and a progress display.

On a TTY a rich progress bar; otherwise (Slurm logs) a plain line every ``log_every_s``.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import torch
from torch.utils.tensorboard import SummaryWriter

log = logging.getLogger("goalgen")
LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"


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


class RunLogger:
    """Rank-0 TensorBoard writer; a no-op on other ranks.

    ``purge_step`` (the resume step) drops events a killed run wrote after its checkpoint, so
    a resumed curve has no duplicated steps.
    """

    def __init__(self, log_dir: Path, enabled: bool, purge_step: int | None = None):
        self.enabled = enabled
        self.writer = SummaryWriter(str(log_dir), purge_step=purge_step) if enabled else None

    def scalars(self, values: dict[str, float], step: int) -> None:
        if self.writer is not None:
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
