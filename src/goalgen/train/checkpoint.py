"""Checkpoint files: atomic writes, verified loads, best-k retention.

A checkpoint is a dict of tensors and primitives (loadable with ``weights_only=True``).
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

LAST = "last.ckpt"
REQUIRED_KEYS = ("model", "ema", "optimizer", "epoch", "step", "batch_in_epoch", "config")


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be used; the message names the file and the problem."""


def best_name(epoch: int, val_loss: float) -> str:
    return f"epoch{epoch:03d}-val_loss{val_loss:.4f}.ckpt"


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_atomic(state: dict[str, Any], path: Path) -> None:
    """Write ``state`` to ``path`` so a kill at any moment leaves the old file or the new one.

    Temp file in the same folder, fsync, ``os.replace``, fsync of the folder.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def load_checkpoint(path: Path | str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and verify a checkpoint; raise CheckpointError naming the file and the problem."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated zip, pickle of forbidden types, ...
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({exc.__class__.__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''})"
        ) from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}, not a dict")
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise CheckpointError(
            f"checkpoint {path} lacks keys {missing} (found {sorted(state)}); "
            "it was not written by goalgen"
        )
    return state


def latest_good_checkpoint(folder: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint in ``folder`` that loads: ``last.ckpt``, else (reported) the
    others by modification time. Leftover temp files of killed writes are removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    for stale in folder.glob(".*.tmp"):
        stale.unlink(missing_ok=True)
    others = sorted(
        (p for p in folder.glob("*.ckpt") if p.name != LAST),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    candidates = ([folder / LAST] if (folder / LAST).exists() else []) + others
    for path in candidates:
        try:
            return path, load_checkpoint(path)
        except CheckpointError as exc:
            log.error("%s; trying the previous checkpoint", exc)
    return None


class TopK:
    """Keeps the ``k`` best checkpoints by validation loss (lower is better) in ``folder``;
    ``k < 0`` keeps every one (Lightning's ``save_top_k=-1``), ``k = 0`` none.

    The table survives resume through ``state_dict``; files of evicted entries are removed only
    after the new file is safely on disk.
    """

    def __init__(self, folder: Path, k: int = 3):
        self.folder, self.k = Path(folder), k
        self.entries: list[tuple[float, int, str]] = []  # (val_loss, epoch, file name)

    def state_dict(self) -> list[list]:
        return [[loss, epoch, name] for loss, epoch, name in self.entries]

    def load_state_dict(self, table: list[list]) -> None:
        self.entries = [(float(loss), int(epoch), str(name)) for loss, epoch, name in table]

    @property
    def best(self) -> float:
        return self.entries[0][0] if self.entries else float("inf")

    def wants(self, val_loss: float) -> bool:
        if self.k == 0 or val_loss != val_loss:  # NaN never ranks
            return False
        return self.k < 0 or len(self.entries) < self.k or val_loss < self.entries[-1][0]

    def update(self, val_loss: float, epoch: int, state: dict[str, Any]) -> Path | None:
        """Save ``state`` as a best checkpoint if it ranks; return its path or None."""
        if not self.wants(val_loss):
            return None
        name = best_name(epoch, val_loss)
        path = self.folder / name
        self.entries = [e for e in self.entries if e[2] != name]
        self.entries.append((val_loss, epoch, name))
        self.entries.sort()
        keep = len(self.entries) if self.k < 0 else self.k
        evicted, self.entries = self.entries[keep:], self.entries[:keep]
        state = {**state, "top_k": self.state_dict()}
        save_atomic(state, path)
        for _, _, old in evicted:
            (self.folder / old).unlink(missing_ok=True)
        return path
