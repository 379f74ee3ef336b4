"""Goal proposals from a trained run: Python API (:class:`GoalPredictor`) and ``goalgen-predict``.

>>> predictor = GoalPredictor.from_run("outputs/my_run")                  # best val_loss, EMA
>>> [result] = predictor.predict(["scene.npz"], num_samples=32, seed=0)
>>> result.masks.shape, len(result.valid_poses), result.rejected          # (32, S, S), ...

Scenes are ``.npz`` files (the training guide's keys; ``target_goal`` optional) or float arrays
``(6, H, W)``/``(5, H, W)`` in [0, 1] at any resolution; they are area-resized to the model's
``image_size`` as in training. The K samples of a group of scenes are drawn in one batched call
(context rows repeated K times). Results depend on ``(seed, scenes and their order, K,
batch_size, steps, method, device)``: the same arguments give the same masks.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import sys
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import torch
from omegaconf import OmegaConf
from torch import Tensor, nn

from goalgen.data.pack import resize_masks
from goalgen.data.scenes import (
    CONTEXT_KEYS,
    LEGACY_ALIASES,
    MIN_SIZE,
    TARGET_KEY,
    SceneError,
    _to_unit,
    load_scene,
)
from goalgen.eval.poses import Pose, masks_to_poses
from goalgen.model.generative import GenerativeModel
from goalgen.model.samplers import (
    ADAPTIVE_METHODS,
    FIXED_STEP_METHODS,
    FBODESampler,
    HFDiffusionSampler,
)
from goalgen.train import checkpoint as ckpt

THRESHOLD = 0.5  # on probabilities in [0, 1] (0 on the model's [-1, 1] scale)
DEFAULT_ROWS = 512  # scenes x samples per batched sampling call, unless batch_size is given
GEOMETRY_KEYS = ("world_bounds", "robot_radius")
_BEST_NAME = re.compile(r"val_loss(-?\d+(?:\.\d+)?(?:e-?\d+)?)", re.IGNORECASE)

SceneLike = str | os.PathLike | np.ndarray | Tensor


# ----------------------------------------------------------------------------- checkpoints
def _peek(path: Path) -> dict[str, Any] | None:
    """The checkpoint's dict, memory-mapped (tensors are not read), or None if unreadable."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - any unreadable file is skipped with a warning
        return None
    return state if isinstance(state, dict) else None


def checkpoint_dir(run_dir: str | os.PathLike) -> Path:
    """``<run_dir>/checkpoints``, or ``run_dir`` itself when it holds the ``.ckpt`` files."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {run_dir} does not exist")
    folder = run_dir / "checkpoints"
    if folder.is_dir():
        return folder
    if any(run_dir.glob("*.ckpt")):
        return run_dir
    raise FileNotFoundError(f"{run_dir} has no checkpoints/ folder (is it a goalgen run dir?)")


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
        if path.name == ckpt.LAST:
            continue
        state = _peek(path)
        if state is None:
            warnings.warn(f"skipping unreadable checkpoint {path}", stacklevel=2)
            continue
        loss, source = state.get("val_loss"), "file"
        if not isinstance(loss, (int, float)) or math.isnan(loss):
            if table is None:
                last = _peek(folder / ckpt.LAST) or {}
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


def select_checkpoint(run_dir: str | os.PathLike, checkpoint: str | os.PathLike = "best") -> Path:
    """The checkpoint file to load: ``"best"`` (lowest recorded val_loss, see
    :func:`rank_checkpoints`; ``last.ckpt`` with a warning when there is none), ``"last"``, or
    a path (absolute, relative to the cwd, or a file name in the run's checkpoints/)."""
    if str(checkpoint) not in ("best", "last"):
        path = Path(checkpoint)
        if path.is_file():
            return path
        candidate = checkpoint_dir(run_dir) / path
        if candidate.is_file():
            return candidate
        raise FileNotFoundError(f"checkpoint {checkpoint} does not exist")
    run_path = Path(run_dir)
    if run_path.is_file():  # a checkpoint file given as the run
        return run_path
    folder = checkpoint_dir(run_path)
    last = folder / ckpt.LAST
    if checkpoint == "best":
        ranked = rank_checkpoints(folder)
        if ranked:
            return ranked[0][2]
        if last.is_file():
            warnings.warn(f"no best checkpoint in {folder}: using {ckpt.LAST}", stacklevel=2)
            return last
        raise FileNotFoundError(f"no checkpoint in {folder}")
    if not last.is_file():
        raise FileNotFoundError(f"{last} does not exist")
    return last


# ----------------------------------------------------------------------------- scenes
@dataclass
class SceneInput:
    """One scene at the model's resolution: soft masks in [0, 1]."""

    name: str
    context: np.ndarray  # (5, S, S) float32
    truth: np.ndarray | None  # (S, S) float32
    geometry: dict[str, Any] | None  # world_bounds (4-tuple), robot_radius (m)


def read_geometry(path: str | os.PathLike) -> dict[str, Any] | None:
    """``world_bounds`` and ``robot_radius`` from a synthetic scene file, or None."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            if not all(k in npz.files for k in GEOMETRY_KEYS):
                return None
            bounds = np.asarray(npz["world_bounds"], dtype=np.float64).reshape(-1)
            radius = float(np.asarray(npz["robot_radius"], dtype=np.float64))
    except (OSError, ValueError, TypeError):
        return None
    if bounds.shape != (4,):
        return None
    return {"world_bounds": tuple(float(v) for v in bounds), "robot_radius": radius}


def _read_context_only(path: Path) -> np.ndarray:
    """The five context masks ``(5, H, W)`` of a file without a usable ``target_goal``."""
    with np.load(path, allow_pickle=False) as npz:
        arrays = []
        for key in CONTEXT_KEYS:
            stored = key if key in npz.files else LEGACY_ALIASES.get(key)
            if stored not in npz.files:
                raise SceneError(path, f"missing key {key!r}; found keys {sorted(npz.files)}")
            arrays.append(_to_unit(path, key, npz[stored]))
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1 or arrays[0].ndim != 2:
        raise SceneError(path, f"context masks must be equal 2-D shapes, got {sorted(shapes)}")
    h, w = arrays[0].shape
    if h != w or h < MIN_SIZE:
        raise SceneError(path, f"masks have shape {(h, w)}; expected square, >= {MIN_SIZE}")
    if not arrays[4].any():
        raise SceneError(path, "'target_object' is empty (all zeros)")
    return np.stack(arrays)


def load_scene_file(path: str | os.PathLike) -> tuple[np.ndarray, dict[str, Any] | None]:
    """``(masks, geometry)``: masks ``(6, H, W)`` with a ground truth, else ``(5, H, W)``."""
    path = Path(path)
    if not path.is_file():
        raise SceneError(path, "no such file")
    try:
        masks = load_scene(path)
    except SceneError as error:
        absent = error.problem.startswith(
            f"missing key {TARGET_KEY!r}"
        ) or error.problem.startswith(f"{TARGET_KEY!r} is empty")
        if not absent:
            raise
        masks = _read_context_only(path)
    return masks, read_geometry(path)


def _array_scene(array: np.ndarray | Tensor, name: str) -> np.ndarray:
    if isinstance(array, Tensor):
        array = array.detach().cpu().numpy()
    array = np.asarray(array, dtype=np.float32)
    if array.ndim != 3 or array.shape[0] not in (5, 6) or array.shape[1] != array.shape[2]:
        raise ValueError(f"{name}: expected masks (6, H, H) or (5, H, H), got {array.shape}")
    if not np.isfinite(array).all() or array.min() < -1e-3 or array.max() > 1 + 1e-3:
        raise ValueError(f"{name}: masks must be finite floats in [0, 1] (not the model's [-1, 1])")
    return np.clip(array, 0, 1)


def prepare_scene(
    scene: SceneLike,
    image_size: int,
    name: str | None = None,
    geometry: Mapping[str, Any] | None = None,
) -> SceneInput:
    """Load (``.npz`` path) or check (array) one scene and resize it to ``image_size``."""
    if isinstance(scene, (str, os.PathLike)):
        masks, found = load_scene_file(scene)
        name = name or Path(scene).stem
        geometry = geometry if geometry is not None else found
    else:
        name = name or "scene"
        masks = _array_scene(scene, name)
    masks = resize_masks(np.ascontiguousarray(masks, dtype=np.float32), image_size)
    truth = masks[5] if masks.shape[0] == 6 else None
    return SceneInput(name, masks[:5].copy(), truth, dict(geometry) if geometry else None)


# ----------------------------------------------------------------------------- results
@dataclass
class Prediction:
    """K goal proposals for one scene at the model's resolution ``S``."""

    name: str
    probs: np.ndarray  # (K, S, S) float32 in [0, 1]
    masks: np.ndarray  # (K, S, S) bool, probs >= 0.5
    poses: list[Pose | None]  # one per sample; None where rejected
    rejected: dict[int, str]  # sample index -> reason ("empty", "fragmented: N blobs", ...)
    context: np.ndarray  # (5, S, S) float32 in [0, 1]
    truth: np.ndarray | None = None  # (S, S) float32 in [0, 1]
    geometry: dict[str, Any] | None = None

    @property
    def valid_poses(self) -> list[Pose]:
        return [p for p in self.poses if p is not None]

    def to_json(self) -> dict[str, Any]:
        samples = []
        for k, pose in enumerate(self.poses):
            entry: dict[str, Any] = {"index": k}
            if pose is None:
                entry["rejected"] = self.rejected[k]
            else:
                entry["pose"] = pose.to_dict()
            samples.append(entry)
        return {
            "scene": self.name,
            "image_size": int(self.masks.shape[-1]),
            "num_samples": len(self.poses),
            "num_valid": len(self.valid_poses),
            "object_area_px": round(float(self.context[4].sum()), 3),
            "world_bounds": None if not self.geometry else self.geometry.get("world_bounds"),
            "angle_convention": "long side, radians in [0, pi), counter-clockwise from the "
            "column axis (world x), rows growing downwards",
            "samples": samples,
        }


@dataclass
class SamplingCost:
    """What sampling cost: ``nfe`` = network evaluations per trajectory (per batched call)."""

    calls: int = 0  # batched sampling calls
    network_calls: int = 0  # network forward passes over all calls
    seconds: float = 0.0
    scenes: int = 0
    samples_per_scene: int = 0
    rows: list[int] = field(default_factory=list)  # batch rows of each call

    @property
    def nfe(self) -> float:
        return self.network_calls / self.calls if self.calls else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {
            "nfe": self.nfe,
            "calls": self.calls,
            "network_calls": self.network_calls,
            "seconds": self.seconds,
            "seconds_per_scene": self.seconds / self.scenes if self.scenes else float("nan"),
            "scenes": self.scenes,
            "samples_per_scene": self.samples_per_scene,
            "max_rows_per_call": max(self.rows, default=0),
        }


class _CountingNetwork(nn.Module):
    """Passes calls through to ``network`` and counts them."""

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network
        self.calls = 0

    def forward(self, *args: Any, **kwargs: Any) -> Tensor:
        self.calls += 1
        return self.network(*args, **kwargs)


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# ----------------------------------------------------------------------------- predictor
class GoalPredictor:
    """A trained model ready to propose goal masks and poses (eval mode, no gradients)."""

    def __init__(
        self,
        model: GenerativeModel,
        config: Mapping[str, Any],
        device: str | torch.device | None = None,
        checkpoint_path: Path | None = None,
        checkpoint_info: Mapping[str, Any] | None = None,
    ):
        self.device = torch.device(device) if device is not None else _default_device()
        self.model = model.to(self.device).eval()
        self.config = dict(config)
        self.image_size = int(config["image_size"])
        self.sampling_steps = int(config.get("sampling_steps", 20))
        self.checkpoint_path = checkpoint_path
        self.checkpoint_info = dict(checkpoint_info or {})
        self.last_cost = SamplingCost()

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike,
        device: str | torch.device | None = None,
        use_ema: bool = True,
    ) -> GoalPredictor:
        """Build the model from the checkpoint's ``config`` and load its (EMA) weights."""
        from goalgen.train.loop import build_model  # the training stack, only when loading

        path = Path(path)
        state = ckpt.load_checkpoint(path)
        config = state["config"]
        if not isinstance(config, dict) or "model" not in config or "image_size" not in config:
            raise ckpt.CheckpointError(f"checkpoint {path} has no usable config")
        model = build_model(OmegaConf.create(config))
        weights = state["ema"] if use_ema and state.get("ema") else state["model"]
        if use_ema and not state.get("ema"):
            warnings.warn(f"{path} has no EMA weights: using the raw model", stacklevel=2)
        try:
            model.load_state_dict(weights)
        except RuntimeError as error:
            raise ckpt.CheckpointError(
                f"checkpoint {path}: weights do not fit the model of its config "
                f"({str(error).splitlines()[0]})"
            ) from error
        info = {k: state.get(k) for k in ("epoch", "step", "val_loss")}
        info["weights"] = "ema" if use_ema and state.get("ema") else "model"
        return cls(model, config, device, path, info)

    @classmethod
    def from_run(
        cls,
        run_dir: str | os.PathLike,
        checkpoint: str | os.PathLike = "best",
        device: str | torch.device | None = None,
        use_ema: bool = True,
    ) -> GoalPredictor:
        """The run's ``checkpoint`` (``"best"``, ``"last"`` or a path; see
        :func:`select_checkpoint`) with EMA weights, on ``device`` (default: CUDA if any)."""
        return cls.from_checkpoint(select_checkpoint(run_dir, checkpoint), device, use_ema)

    # ---------------------------------------------------------------- sampling
    @property
    def family(self) -> str:
        return self.model.family

    @property
    def method(self) -> str:
        sampler = self.model.sampler
        return sampler.method if self.family == "flow" else sampler.sampler_type

    def methods(self) -> tuple[str, ...]:
        return FIXED_STEP_METHODS + ADAPTIVE_METHODS if self.family == "flow" else ("ddim", "ddpm")

    @contextlib.contextmanager
    def _sampler(self, method: str | None) -> Iterator[None]:
        """Temporarily swap the sampler for one with ``method`` (ODE method or DDIM/DDPM)."""
        if method is None or method == self.method:
            yield
            return
        if method not in self.methods():
            raise ValueError(
                f"method {method!r} is not a {self.family} sampler; choose one of "
                f"{', '.join(self.methods())}"
            )
        old = self.model.sampler
        if self.family == "flow":
            new = FBODESampler(method=method, atol=old.atol, rtol=old.rtol)
        else:
            new = HFDiffusionSampler(sampler_type=method, eta=old.eta if method == "ddim" else 0.0)
        new.attach(self.model.path)
        self.model.sampler = new
        try:
            yield
        finally:
            self.model.sampler = old

    @torch.no_grad()
    def sample(
        self,
        context: Tensor,
        num_samples: int,
        steps: int | None = None,
        method: str | None = None,
        generator: torch.Generator | None = None,
        cost: SamplingCost | None = None,
    ) -> Tensor:
        """``num_samples`` goal masks per context row in ONE batched call.

        ``context`` ``(N, 5, S, S)`` in [-1, 1] -> ``(N, K, 1, S, S)`` in [-1, 1].
        """
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        steps = self.sampling_steps if steps is None else int(steps)
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        n = context.shape[0]
        rows = context.to(self.device, torch.float32).repeat_interleave(num_samples, 0)
        counter = _CountingNetwork(self.model.network)
        start = time.perf_counter()
        with self._sampler(method):
            out = self.model.sample(rows, steps, generator, network=counter)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        if cost is not None:
            cost.calls += 1
            cost.network_calls += counter.calls
            cost.seconds += time.perf_counter() - start
            cost.rows.append(rows.shape[0])
        return out.float().view(n, num_samples, 1, *out.shape[-2:])

    def predict(
        self,
        scenes: SceneLike | Sequence[SceneLike],
        num_samples: int = 32,
        steps: int | None = None,
        method: str | None = None,
        seed: int = 0,
        batch_size: int | None = None,
        geometry: Mapping[str, Any] | Sequence[Mapping[str, Any] | None] | None = None,
    ) -> list[Prediction]:
        """K goal proposals for each scene.

        Args:
            scenes: ``.npz`` paths or float arrays ``(6|5, H, W)`` in [0, 1] (any H), or one.
            num_samples: K samples per scene.
            steps: sampling steps (default: the run's ``sampling_steps``; ignored by adaptive
                ODE methods).
            method: ODE method (flow: ``euler``, ``midpoint``, ``rk4``, ``dopri5``, ...) or
                sampler type (diffusion: ``ddim``, ``ddpm``) for this call.
            seed: noise seed (one generator, consumed group after group).
            batch_size: scenes per batched call (default ``max(1, 512 // K)``).
            geometry: ``world_bounds``/``robot_radius`` for array scenes (one mapping for all
                or one per scene); ``.npz`` files carry their own. With world bounds, poses
                are also given in metres.
        Returns:
            One :class:`Prediction` per scene, in order. ``self.last_cost`` holds the
            :class:`SamplingCost` of this call.
        """
        items = (
            [scenes] if isinstance(scenes, (str, os.PathLike, np.ndarray, Tensor)) else list(scenes)
        )
        if not items:
            raise ValueError("no scenes given")
        geoms = list(geometry) if isinstance(geometry, Sequence) else [geometry] * len(items)
        if len(geoms) != len(items):
            raise ValueError(f"geometry has {len(geoms)} entries for {len(items)} scenes")
        inputs = [
            prepare_scene(
                s, self.image_size, None if isinstance(s, (str, os.PathLike)) else f"scene{i}", g
            )
            for i, (s, g) in enumerate(zip(items, geoms, strict=True))
        ]
        return self.predict_inputs(inputs, num_samples, steps, method, seed, batch_size)

    def predict_inputs(
        self,
        inputs: Sequence[SceneInput],
        num_samples: int = 32,
        steps: int | None = None,
        method: str | None = None,
        seed: int = 0,
        batch_size: int | None = None,
    ) -> list[Prediction]:
        """:meth:`predict` on already prepared scenes (:func:`prepare_scene`)."""
        per_call = batch_size or max(1, DEFAULT_ROWS // max(num_samples, 1))
        if per_call < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        generator = torch.Generator(device=self.device).manual_seed(int(seed))
        cost = SamplingCost(scenes=len(inputs), samples_per_scene=num_samples)
        results: list[Prediction] = []
        for start in range(0, len(inputs), per_call):
            group = inputs[start : start + per_call]
            context = torch.from_numpy(np.stack([s.context for s in group])) * 2 - 1
            samples = self.sample(context, num_samples, steps, method, generator, cost)
            probs = ((samples[:, :, 0] + 1) / 2).clamp(0, 1).cpu().numpy()
            for scene, p in zip(group, probs, strict=True):
                masks = p >= THRESHOLD
                bounds = scene.geometry.get("world_bounds") if scene.geometry else None
                poses, rejected = masks_to_poses(masks, float(scene.context[4].sum()), bounds)
                results.append(
                    Prediction(
                        scene.name,
                        p,
                        masks,
                        poses,
                        rejected,
                        scene.context,
                        scene.truth,
                        scene.geometry,
                    )
                )
        self.last_cost = cost
        return results


# ----------------------------------------------------------------------------- outputs
def unique_stems(names: Sequence[str]) -> list[str]:
    """File stems for ``names``, with ``_2``, ``_3``... added to repeated ones."""
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}_{seen[name]}")
    return out


def write_prediction(result: Prediction, out_dir: Path, stem: str) -> list[Path]:
    """``<stem>_masks.npz``, ``<stem>_poses.json`` and ``<stem>_grid.png`` in ``out_dir``."""
    from goalgen.eval.visualize import sample_grid, save_png

    out_dir.mkdir(parents=True, exist_ok=True)
    masks_path = out_dir / f"{stem}_masks.npz"
    np.savez_compressed(
        masks_path,
        masks=result.masks,
        probs=result.probs.astype(np.float32),
        context=result.context,
    )
    poses_path = out_dir / f"{stem}_poses.json"
    poses_path.write_text(json.dumps(result.to_json(), indent=1) + "\n")
    context = torch.from_numpy(result.context)[None] * 2 - 1
    truth = None if result.truth is None else torch.from_numpy(result.truth)[None, None] * 2 - 1
    samples = torch.from_numpy(result.probs)[None, :, None] * 2 - 1
    grid_path = out_dir / f"{stem}_grid.png"
    save_png(
        sample_grid(context, truth, samples), grid_path, scale=max(1, 128 // result.masks.shape[-1])
    )
    return [masks_path, poses_path, grid_path]


class OneLineParser(argparse.ArgumentParser):
    """Bad arguments: one line on stderr, exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


USER_ERRORS = (SceneError, ckpt.CheckpointError, FileNotFoundError, ValueError, OSError)


def one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or error.__class__.__name__


@contextlib.contextmanager
def warnings_as_lines(prog: str) -> Iterator[None]:
    """Print each warning raised inside as one ``<prog>: warning: ...`` line on stderr."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        try:
            yield
        finally:
            for w in caught:
                print(f"{prog}: warning: {one_line(w.message)}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """``goalgen-predict``: goal proposals (masks, poses, PNG grid) for scene files."""
    parser = OneLineParser(
        prog="goalgen-predict",
        description="Sample goal masks for the selected object of each scene and fit poses. "
        "Writes <stem>_masks.npz, <stem>_poses.json and <stem>_grid.png per scene.",
    )
    parser.add_argument("run_dir", help="training run directory (or a .ckpt file)")
    parser.add_argument("scenes", nargs="+", help=".npz scene files")
    parser.add_argument("--samples", type=int, default=32, help="samples per scene (32)")
    parser.add_argument("--steps", type=int, help="sampling steps (default: the run's)")
    parser.add_argument("--method", help="ODE method (flow) or ddim/ddpm (diffusion)")
    parser.add_argument("--checkpoint", default="best", help="best (default), last or a path")
    parser.add_argument("--seed", type=int, default=0, help="noise seed (0)")
    parser.add_argument("--batch-size", type=int, help="scenes per sampling call")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    args = parser.parse_args(argv)
    if args.samples < 1:
        parser.error("--samples must be >= 1")
    if args.steps is not None and args.steps < 1:
        parser.error("--steps must be >= 1")
    if args.batch_size is not None and args.batch_size < 1:
        parser.error("--batch-size must be >= 1")
    try:
        with warnings_as_lines("goalgen-predict"):
            predictor = GoalPredictor.from_run(args.run_dir, args.checkpoint, args.device)
            results = predictor.predict(
                args.scenes, args.samples, args.steps, args.method, args.seed, args.batch_size
            )
        stems = unique_stems([r.name for r in results])
        for result, stem in zip(results, stems, strict=True):
            write_prediction(result, args.out, stem)
            print(
                f"{result.name}: {len(result.valid_poses)}/{args.samples} samples give a pose "
                f"-> {args.out / stem}_{{masks.npz,poses.json,grid.png}}"
            )
    except USER_ERRORS as error:
        print(f"goalgen-predict: error: {one_line(error)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    cost = predictor.last_cost
    print(
        f"checkpoint {predictor.checkpoint_path} ({predictor.family}, {predictor.method}, "
        f"{cost.nfe:.0f} network evaluations per sample, {cost.seconds:.2f} s sampling)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
