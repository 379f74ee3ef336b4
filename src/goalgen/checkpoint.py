"""The checkpoint contract, in one place: run-dir layout, atomic write, verified read, best/last
selection, "is this run complete?", which file a run resumes from, and loading weights.

A checkpoint is a dict of tensors and primitives (loadable with ``weights_only=True``). Keys
tools rely on: ``model`` and ``ema`` (network weights, keys ``network.*``), ``optimizer``,
``epoch`` (completed epochs), ``step`` (optimizer steps done), ``batch_in_epoch``, ``config``
(the resolved config, plain), ``val_loss``, ``top_k``. A run keeps them in
``<run_dir>/checkpoints/``: ``last.ckpt`` (the resume point) and the best-k files
``epochXXX-val_lossX.XXXX.ckpt``.

A *weights file* (:func:`export_weights`, ``goalgen-export``) is the inference part only:
``format`` (:data:`WEIGHTS_FORMAT`), ``ema`` (the EMA network weights, else the raw model's,
cast to a smaller dtype), ``config``, ``epoch``, ``step``, ``val_loss`` and ``source`` (the
checkpoint it came from); :func:`load_inference` reads either kind.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from goalgen.io import atomic_write
from goalgen.model.samplers import sampler_methods

log = logging.getLogger("goalgen")

DIRNAME = "checkpoints"
LAST = "last.ckpt"
REQUIRED_KEYS = ("model", "ema", "optimizer", "epoch", "step", "batch_in_epoch", "config")
WEIGHTS_FORMAT = "goalgen-weights-1"
WEIGHTS_KEYS = ("format", "ema", "config", "epoch", "step")
SHIPPED = Path(__file__).parent / "weights"  # weights files installed with the package
_BEST_NAME = re.compile(r"val_loss(-?\d+(?:\.\d+)?(?:e-?\d+)?)", re.IGNORECASE)


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; the message names the file and the problem (bad
    input, like a bad scene file: console scripts report it on one line)."""


# ----------------------------------------------------------------------------- layout
def run_checkpoint_dir(run_dir: str | os.PathLike) -> Path:
    """Where a run writes its checkpoints: ``<run_dir>/checkpoints``."""
    return Path(run_dir) / DIRNAME


def find_checkpoint_dir(run_dir: str | os.PathLike) -> Path:
    """An existing run's checkpoint folder: ``<run_dir>/checkpoints``, or ``run_dir`` itself
    when it holds the ``.ckpt`` files."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {run_dir} does not exist")
    folder = run_checkpoint_dir(run_dir)
    if folder.is_dir():
        return folder
    if any(run_dir.glob("*.ckpt")):
        return run_dir
    raise FileNotFoundError(f"{run_dir} has no {DIRNAME}/ folder (is it a goalgen run dir?)")


def best_name(epoch: int, val_loss: float) -> str:
    return f"epoch{epoch:03d}-val_loss{val_loss:.4f}.ckpt"


def is_complete(epoch: int, step: int, max_epochs: int, max_steps: int) -> bool:
    """Whether a run at ``epoch`` (completed epochs) and ``step`` has nothing left to train
    (``max_steps`` <= 0: no step cap)."""
    return epoch >= max_epochs or (max_steps > 0 and step >= max_steps)


def run_is_complete(run_dir: str | os.PathLike, max_epochs: int, max_steps: int) -> bool | None:
    """:func:`is_complete` for a run dir's ``last.ckpt``; None when there is none (or it is
    unreadable)."""
    state = peek(run_checkpoint_dir(run_dir) / LAST)
    if state is None or "epoch" not in state or "step" not in state:
        return None
    return is_complete(int(state["epoch"]), int(state["step"]), max_epochs, max_steps)


# ----------------------------------------------------------------------------- read/write
def save_atomic(state: dict[str, Any], path: Path) -> None:
    """Write ``state`` to ``path`` so a kill at any moment leaves the old file or the new one."""
    atomic_write(path, lambda f: torch.save(state, f))


def _read(path: Path, map_location: str | torch.device) -> dict[str, Any]:
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
    return state


def load_checkpoint(path: Path | str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and verify a checkpoint; raise CheckpointError naming the file and the problem."""
    path = Path(path)
    return _training_state(_read(path, map_location), path)


def _training_state(state: dict[str, Any], path: Path) -> dict[str, Any]:
    """``state`` read from ``path``, verified as a training checkpoint."""
    if state.get("format") == WEIGHTS_FORMAT:
        raise CheckpointError(
            f"checkpoint {path} is a weights file (goalgen-export): it holds no training state; "
            "sample with it (goalgen-propose, goalgen-eval), resume or fine-tune from its run"
        )
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise CheckpointError(
            f"checkpoint {path} lacks keys {missing} (found {sorted(state)}); "
            "it was not written by goalgen"
        )
    return state


def load_inference(path: Path | str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A training checkpoint (:func:`load_checkpoint`) or a weights file
    (:func:`export_weights`), verified; CheckpointError names the file and the problem."""
    path = Path(path)
    state = _read(path, map_location)
    if state.get("format") != WEIGHTS_FORMAT:
        return _training_state(state, path)
    missing = [k for k in WEIGHTS_KEYS if k not in state]
    if missing:
        raise CheckpointError(f"weights file {path} lacks keys {missing} (found {sorted(state)})")
    return state


def export_weights(
    state: Mapping[str, Any],
    path: Path | str,
    dtype: torch.dtype = torch.bfloat16,
    source: str = "",
    method: str | None = None,
    steps: int | None = None,
    cpu_precision: str | None = None,
) -> Path:
    """Write the inference part of checkpoint ``state`` to ``path`` (atomically): its EMA
    weights (else the raw model's) cast to ``dtype`` when floating, and what tools read.
    ``method``/``steps``: the sampler the file's users get by default (flow: an ODE method
    or ``ancestral``; diffusion: ``ddim``/``ddpm``), instead of the training run's validation
    sampler; ``cpu_precision``: what it samples in on a CPU by default (config
    ``cpu_precision``; else fp32)."""
    config = copy.deepcopy(state["config"])
    if method is not None:
        sampler = config["model"]["sampler"]
        flow = "method" in sampler
        allowed = sampler_methods("flow" if flow else "diffusion")
        if method not in allowed:
            raise ValueError(f"sampler method {method!r}: this model takes {', '.join(allowed)}")
        sampler["method" if flow else "sampler_type"] = method
    if steps is not None:
        if steps < 1:
            raise ValueError(f"sampling steps {steps}: give at least 1")
        config["sampling_steps"] = int(steps)
    if cpu_precision is not None:
        if cpu_precision not in ("32", "bf16-mixed"):
            raise ValueError(f"cpu_precision {cpu_precision!r}: give 32 or bf16-mixed")
        config["cpu_precision"] = cpu_precision
    weights = state.get("ema") or state["model"]
    out = {
        "format": WEIGHTS_FORMAT,
        "ema": {
            k: (v.to(dtype) if v.is_floating_point() else v).clone() for k, v in weights.items()
        },
        "config": config,
        "epoch": state["epoch"],
        "step": state["step"],
        "val_loss": state.get("val_loss"),
        "source": source,
        "weights": "ema" if state.get("ema") else "model",
    }
    save_atomic(out, Path(path))
    return Path(path)


def peek(path: Path) -> dict[str, Any] | None:
    """The checkpoint's dict, memory-mapped (tensors are not read), or None if unreadable."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - any unreadable file counts as absent
        return None
    return state if isinstance(state, dict) else None


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


# ----------------------------------------------------------------------------- retention
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


# ----------------------------------------------------------------------------- selection
def rank_checkpoints(folder: Path) -> list[tuple[float, str, Path]]:
    """Best checkpoints in ``folder`` (every ``*.ckpt`` but ``last.ckpt``) as
    ``(val_loss, source, path)`` sorted best-first.

    The loss of each file is its own recorded ``val_loss``; else its entry in the ``top_k``
    table of ``last.ckpt``; else the number in its name (``...val_lossX.XXXX.ckpt``). Files that
    cannot be read are skipped with a warning; so are files without any loss.
    """
    table: dict[str, float] | None = None
    ranked = []
    for path in sorted(folder.glob("*.ckpt")):
        if path.name == LAST:
            continue
        state = peek(path)
        if state is None:
            warnings.warn(f"skipping unreadable checkpoint {path}", stacklevel=2)
            continue
        loss, source = state.get("val_loss"), "file"
        if not isinstance(loss, (int, float)) or math.isnan(loss):
            if table is None:
                last = peek(folder / LAST) or {}
                table = {str(name): float(v) for v, _, name in last.get("top_k", [])}
            loss, source = table.get(path.name), "top_k"
        if loss is None:
            match = _BEST_NAME.search(path.name)
            loss, source = (float(match.group(1)), "name") if match else (None, "")
        if loss is None:
            warnings.warn(f"skipping {path}: no val_loss recorded or in its name", stacklevel=2)
            continue
        ranked.append((float(loss), source, path))
    return sorted(ranked, key=lambda e: (e[0], e[2].name))


def shipped(name: str | os.PathLike) -> Path | None:
    """The weights file installed as ``<name>.pt`` in the package's ``weights/`` (the README's
    ``planner``: flow matching, ``experiment=planner``), or None."""
    path = SHIPPED / f"{name}.pt"
    return path if str(name).isidentifier() and path.is_file() else None


def select_checkpoint(run_dir: str | os.PathLike, checkpoint: str | os.PathLike = "best") -> Path:
    """The checkpoint file to load: ``"best"`` (lowest recorded val_loss, see
    :func:`rank_checkpoints`; ``last.ckpt`` with a warning when there is none), ``"last"``, or
    a path (absolute, relative to the cwd, or a file name in the run's checkpoints/).
    ``run_dir`` may itself be a checkpoint file, or the name of a shipped weights file
    (:func:`shipped`, e.g. ``planner``) when no such path exists."""
    if not Path(run_dir).exists() and shipped(run_dir) is not None:
        return shipped(run_dir)
    if str(checkpoint) not in ("best", "last"):
        path = Path(checkpoint)
        if path.is_file():
            return path
        candidate = find_checkpoint_dir(run_dir) / path
        if candidate.is_file():
            return candidate
        raise FileNotFoundError(f"checkpoint {checkpoint} does not exist")
    run_path = Path(run_dir)
    if run_path.is_file():  # a checkpoint file given as the run
        return run_path
    folder = find_checkpoint_dir(run_path)
    last = folder / LAST
    if checkpoint == "best":
        ranked = rank_checkpoints(folder)
        if ranked:
            return ranked[0][2]
        if last.is_file():
            warnings.warn(f"no best checkpoint in {folder}: using {LAST}", stacklevel=2)
            return last
        raise FileNotFoundError(f"no checkpoint in {folder}")
    if not last.is_file():
        raise FileNotFoundError(f"{last} does not exist")
    return last


def resume_source(
    ckpt_dir: Path, ckpt_path: str | None, resume: bool = True
) -> tuple[str, dict[str, Any]] | None:
    """Which checkpoint a run resumes from, and its loaded state (None: a fresh start).

    ``ckpt_path`` wins, unless ``ckpt_dir`` already continued from that very ``ckpt_path`` (a
    requeue or re-run of the same command: its own newer ``last.ckpt`` is further on); without
    ``ckpt_path``, the newest good checkpoint of ``ckpt_dir`` when ``resume``."""
    own = latest_good_checkpoint(ckpt_dir) if resume else None
    if ckpt_path is None:
        return (str(own[0]), own[1]) if own else None
    state, given_file = load_checkpoint(ckpt_path), Path(ckpt_path).resolve()
    if own is not None and Path(own[0]).resolve() != given_file:
        started_from = own[1]["config"].get("ckpt_path")
        if (
            started_from is not None
            and Path(started_from).resolve() == given_file
            and own[1]["step"] >= state["step"]
        ):
            log.info(
                "ckpt_path=%s was this run's starting point; continuing from its newer %s "
                "(resume=false restarts from ckpt_path)",
                ckpt_path,
                own[0],
            )
            return str(own[0]), own[1]
    return str(ckpt_path), state


def finetune_source(run_path: str | os.PathLike, ckpt_dir: Path) -> tuple[str, dict[str, Any]]:
    """The checkpoint a fine-tuning run (``run_path=``) takes its weights from: the best one
    of the run dir ``run_path`` (lowest recorded val_loss), or ``run_path`` itself when it is
    a file (a weights file too: its EMA weights). It must not be a file of the new run's own
    ``ckpt_dir``."""
    path = select_checkpoint(run_path, "best")
    if Path(path).resolve().parent == Path(ckpt_dir).resolve():
        raise CheckpointError(
            f"run_path={run_path} is this run's own folder; give the fine-tuning run its own "
            "run_name (or resume it with resume=true and no run_path)"
        )
    return str(path), load_inference(path)


# ----------------------------------------------------------------------------- weights
def _raw(network: nn.Module) -> nn.Module:
    return getattr(network, "_orig_mod", network)  # torch.compile's wrapper


def network_state(network: nn.Module) -> dict[str, torch.Tensor]:
    """The (uncompiled) network's weights under the checkpoint's ``network.*`` keys."""
    return {f"network.{k}": v for k, v in _raw(network).state_dict().items()}


def _mismatch(expected: Mapping[str, torch.Tensor], given: Mapping[str, torch.Tensor]) -> str:
    """The keys that differ between two state dicts: shapes, missing, unexpected."""
    shapes = [
        f"{k} {tuple(given[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in given and tuple(given[k].shape) != tuple(v.shape)
    ]
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    parts = [
        f"{label} {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}"
        for label, keys in (("shape", shapes), ("missing", missing), ("unexpected", unexpected))
        if keys
    ]
    return "; ".join(parts) or "no key differs"


def load_network(
    network: nn.Module, state: Mapping[str, Any], source: str, path: str | os.PathLike
) -> None:
    """Load ``state[source]`` (``"model"`` or ``"ema"``: ``network.*`` keys) into ``network``
    (compiled or not). A mismatch raises CheckpointError naming the differing keys."""
    weights = {
        k.removeprefix("network."): v for k, v in state[source].items() if k.startswith("network.")
    }
    target = _raw(network)
    try:
        target.load_state_dict(weights)
    except RuntimeError as exc:
        raise CheckpointError(
            f"checkpoint {path}: its {source} weights do not fit this network "
            f"({_mismatch(target.state_dict(), weights)})"
        ) from exc
