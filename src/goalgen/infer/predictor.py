"""Goal proposals from a trained run: :class:`GoalPredictor` (weights -> samples -> poses).

>>> predictor = GoalPredictor.from_run("outputs/my_run")                  # best val_loss, EMA
>>> [result] = predictor.predict(["scene.npz"], num_samples=32, seed=0)
>>> result.masks.shape, len(result.valid_poses), result.rejected          # (32, S, S), ...

Scenes are ``.npz`` files (the training guide's keys; ``target_goal`` optional) or float arrays
``(6, H, W)``/``(5, H, W)`` in [0, 1] at any resolution; they are area-resized to the model's
``image_size`` as in training. The K samples of a group of scenes are drawn in one batched call
(context rows repeated K times). Results depend on ``(seed, scenes and their order, K,
batch_size, steps, method, device)``: the same arguments give the same masks.

Imports nothing from ``goalgen.train``: a planner loading a model pulls in no training stack.
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from goalgen import checkpoint as ckpt
from goalgen.infer.poses import Pose, masks_to_poses, pose_frame
from goalgen.infer.scene_input import SceneInput, SceneLike, prepare_scene
from goalgen.model.build import build_model
from goalgen.model.generative import GenerativeModel
from goalgen.model.samplers import FBODESampler, HFDiffusionSampler, sampler_methods
from goalgen.precision import inference_precision, use_tf32

THRESHOLD = 0.5  # on probabilities in [0, 1] (0 on the model's [-1, 1] scale)
DEFAULT_ROWS = 512  # scenes x samples per batched sampling call, unless batch_size is given


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
    # (K, steps + 1, S, S) float32: the sampler's states from the noise (index 0) to the
    # sample, on the probability scale (x + 1) / 2, unclamped; only with return_trajectory
    trajectory: np.ndarray | None = None

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


class CountingNetwork(nn.Module):
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
        precision: str | None = None,
    ):
        self.device = torch.device(device) if device is not None else _default_device()
        if precision in (None, "auto") and self.device.type == "cpu":  # the file's default
            precision = config.get("cpu_precision", precision)
        self.precision = inference_precision(precision, self.device)
        use_tf32(self.device)  # the fp32 parts of sampling on TF32 cores (a GPU-wide setting)
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
        precision: str | None = None,
    ) -> GoalPredictor:
        """Build the model from the checkpoint's ``config`` and load its (EMA) weights; ``path``
        may also be a weights file (``goalgen-export``, loaded in the network's own dtype).
        ``precision``: what sampling runs in (:func:`goalgen.precision.inference_precision`:
        ``32``, ``bf16-mixed``, ``16-mixed``; default fp32 on a CPU unless the weights file
        says otherwise (``goalgen-export --cpu-precision``), autocast on a GPU)."""
        path = Path(path)
        state = ckpt.load_inference(path)
        config = state["config"]
        if not isinstance(config, dict) or "model" not in config or "image_size" not in config:
            raise ckpt.CheckpointError(f"checkpoint {path} has no usable config")
        model = build_model(config)
        exported = state.get("format") == ckpt.WEIGHTS_FORMAT  # holds one set: "ema"
        source = "ema" if exported or (use_ema and state.get("ema")) else "model"
        if use_ema and source == "model":
            warnings.warn(f"{path} has no EMA weights: using the raw model", stacklevel=2)
        ckpt.load_network(model.network, state, source, path)
        info = {k: state.get(k) for k in ("epoch", "step", "val_loss")}
        info["weights"] = state.get("weights", source) if exported else source
        return cls(model, config, device, path, info, precision)

    @classmethod
    def from_run(
        cls,
        run_dir: str | os.PathLike,
        checkpoint: str | os.PathLike = "best",
        device: str | torch.device | None = None,
        use_ema: bool = True,
        precision: str | None = None,
    ) -> GoalPredictor:
        """The run's ``checkpoint`` (``"best"``, ``"last"`` or a path; see
        :func:`goalgen.checkpoint.select_checkpoint`) with EMA weights, on ``device`` (default:
        CUDA if any), sampling in ``precision`` (see :meth:`from_checkpoint`)."""
        return cls.from_checkpoint(
            ckpt.select_checkpoint(run_dir, checkpoint), device, use_ema, precision
        )

    # ---------------------------------------------------------------- sampling
    @property
    def family(self) -> str:
        return self.model.family

    @property
    def method(self) -> str:
        sampler = self.model.sampler
        return sampler.method if self.family == "flow" else sampler.sampler_type

    def methods(self) -> tuple[str, ...]:
        return sampler_methods(self.family)

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
            new = FBODESampler(method=method, atol=old.atol, rtol=old.rtol, eta=old.eta)
        else:
            new = HFDiffusionSampler(sampler_type=method, eta=old.eta if method == "ddim" else 0.0)
        new.attach(self.model.path)
        self.model.sampler = new
        try:
            yield
        finally:
            self.model.sampler = old

    def propose(self, scene: Any, num_samples: int = 32, top: int | None = None, **kwargs: Any):
        """Ranked, verified goal proposals (:func:`goalgen.infer.proposals.propose`)."""
        from goalgen.infer.proposals import propose

        return propose(self, scene, num_samples, top, **kwargs)

    @torch.no_grad()
    def sample(
        self,
        context: Tensor,
        num_samples: int,
        steps: int | None = None,
        method: str | None = None,
        generator: torch.Generator | None = None,
        cost: SamplingCost | None = None,
        trajectory: list[Tensor] | None = None,
        noise: Tensor | None = None,
    ) -> Tensor:
        """``num_samples`` goal masks per context row in ONE batched call.

        ``context`` ``(N, 5, S, S)`` in [-1, 1] -> ``(N, K, 1, S, S)`` in [-1, 1]. A
        ``trajectory`` list receives the sampler's ``steps + 1`` states, each ``(N, K, 1, S,
        S)`` on the model's scale (unclamped; the first is the noise, the last the sample).
        ``noise`` ``(N * K, 1, S, S)`` (rows scene-major): the starting noise, instead of a
        draw from ``generator``.
        """
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        steps = self.sampling_steps if steps is None else int(steps)
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        n = context.shape[0]
        rows = context.to(self.device, torch.float32).repeat_interleave(num_samples, 0)
        counter = CountingNetwork(self.model.network)
        record = None
        if trajectory is not None:

            def record(x: Tensor) -> None:
                trajectory.append(x.float().view(n, num_samples, 1, *x.shape[-2:]))

        start = time.perf_counter()
        with self._sampler(method), self.precision.autocast():
            out = self.model.sample(
                rows, steps, generator, network=counter, record=record, noise=noise
            )
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
        return_trajectory: bool = False,
    ) -> list[Prediction]:
        """K goal proposals for each scene.

        Args:
            scenes: ``.npz`` paths or float arrays ``(6|5, H, W)`` in [0, 1] (any H), or one.
            num_samples: K samples per scene.
            steps: sampling steps (default: the run's ``sampling_steps``; ignored by adaptive
                ODE methods).
            method: ODE method (flow: ``euler``, ``midpoint``, ``rk4``, ``dopri5``, ...) or
                ``ancestral`` (flow, stochastic), or sampler type (diffusion: ``ddim``,
                ``ddpm``) for this call.
            seed: noise seed (one generator, consumed group after group).
            batch_size: scenes per batched call (default ``max(1, 512 // K)``).
            geometry: ``world_bounds``/``robot_radius`` for array scenes (one mapping for all
                or one per scene); ``.npz`` files carry their own. With world bounds, poses
                are also given in metres.
            return_trajectory: also keep the sampler's intermediate states in
                ``Prediction.trajectory`` (K, steps + 1, S, S) (the original's
                ``sample_with_trajectory``; memory grows with ``steps``).
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
        return self.predict_inputs(
            inputs, num_samples, steps, method, seed, batch_size, return_trajectory
        )

    def predict_inputs(
        self,
        inputs: Sequence[SceneInput],
        num_samples: int = 32,
        steps: int | None = None,
        method: str | None = None,
        seed: int = 0,
        batch_size: int | None = None,
        return_trajectory: bool = False,
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
            states: list[Tensor] | None = [] if return_trajectory else None
            samples = self.sample(context, num_samples, steps, method, generator, cost, states)
            probs = ((samples[:, :, 0] + 1) / 2).clamp(0, 1).cpu().numpy()
            paths: Sequence[np.ndarray | None] = [None] * len(group)
            if states is not None:  # (N, K, steps + 1, S, S)
                paths = ((torch.cat(states, 2) + 1) / 2).cpu().numpy()
            for scene, p, path in zip(group, probs, paths, strict=True):
                masks = p >= THRESHOLD
                frame = pose_frame(scene.geometry, masks.shape[-1])
                poses, rejected = masks_to_poses(masks, float(scene.context[4].sum()), frame=frame)
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
                        path,
                    )
                )
        self.last_cost = cost
        return results
