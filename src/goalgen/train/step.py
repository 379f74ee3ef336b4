"""One optimizer step, and everything it needs: model, EMA, precision and grad scaler, DDP,
optimizer and LR schedule. ``Trainer.fit`` and ``goalgen-bench train`` both run
:meth:`Learner.train_step`, so the benchmark measures the loop's own step.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from omegaconf import DictConfig
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel

from goalgen.checkpoint import load_network, network_state
from goalgen.data.dataset import collate_batch
from goalgen.model.build import build_model
from goalgen.precision import resolve_precision, use_tf32
from goalgen.train.distill import Teacher, distill_times
from goalgen.train.distributed import DistContext
from goalgen.train.state import lr_factor, make_ema, per_sample_noise

# On the CPU compiling pays only for long runs: goalgen-bench (2 cores, default DiT, bf16)
# measured compiled steps 1.56x faster than eager (fp32: 1.14x) after ~50 s of compiling,
# ~31 steps of the default model; a small model (the demo) earns it back far later.
CPU_COMPILE_MIN_STEPS = 2000

Outcome = Literal["applied", "overflow", "nonfinite"]


def resolve_compile(setting: Any, device: torch.device, planned_steps: int | None = None) -> bool:
    """``trainer.compile``: true/false, or auto = on for CUDA; on a CPU only for a run of at
    least ``CPU_COMPILE_MIN_STEPS`` planned steps (None: a long run) and where inductor has a
    C++ compiler to generate code with."""
    if isinstance(setting, bool):
        return setting
    if str(setting).lower() != "auto":
        raise ValueError(f"trainer.compile={setting!r}; choose auto, true or false")
    if device.type == "cuda":
        return True
    long_run = planned_steps is None or planned_steps >= CPU_COMPILE_MIN_STEPS
    compiler = os.environ.get("CXX", "g++")
    return long_run and device.type == "cpu" and shutil.which(compiler) is not None


@dataclass
class StepResult:
    """What one :meth:`Learner.train_step` did.

    ``outcome``: ``applied`` (weights, LR schedule and EMA moved on); ``overflow`` (fp16: the
    gradients overflowed, the grad scaler skipped the step and lowered its scale);
    ``nonfinite`` (the loss on some rank, or the gradient, was NaN/inf: step skipped). Every
    rank gets the same outcome.
    """

    losses: dict[str, Tensor]
    grad_norm: Tensor
    outcome: Outcome
    flags: list[bool] = field(default_factory=list)  # the caller's flags, agreed over ranks


class NoisyBatches:
    """``collate_fn`` that draws each batch's per-sample noise and time
    (:func:`goalgen.train.state.per_sample_noise`) where the batch is made: in the loader's
    worker processes, beside the step, instead of in series with it. Needs batches from a
    ``tag_epoch`` sampler (they carry the epoch); others pass through without noise.
    ``shape``: one target's ``(1, S, S)``."""

    def __init__(self, path: torch.nn.Module, shape: tuple[int, ...], seed: int):
        self.path, self.shape, self.seed = path, tuple(shape), seed

    def __call__(self, batch: Any) -> dict[str, Tensor]:
        batch = dict(collate_batch(batch))
        if "epoch" in batch:
            epoch = int(batch.pop("epoch")[0])
            batch["noise"], batch["t"] = per_sample_noise(
                self.path, self.shape, batch["index"], self.seed, epoch
            )
        return batch


class Learner:
    """The model and its optimisation state; ``train_step(batch, epoch)`` is THE step.

    ``total_steps`` sets the LR schedule's length (cosine decay over ``total_steps -
    warmup_steps`` unless ``optim.decay_steps`` is given); ``compiled`` is the resolved
    ``trainer.compile`` (:func:`resolve_compile`).
    """

    def __init__(
        self,
        cfg: DictConfig,
        ctx: DistContext,
        total_steps: int,
        compiled: bool,
        compile_backend: str = "inductor",
    ):
        self.cfg, self.ctx, tc = cfg, ctx, cfg.trainer
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        self.model = build_model(cfg).to(ctx.device)
        self.ema = make_ema(self.model, cfg.ema.decay, cfg.ema.warmup)
        self.precision = resolve_precision(tc.precision, ctx.device)
        use_tf32(ctx.device, tc.get("tf32", True))
        self.scaler = self.precision.grad_scaler()
        self.compiled = compiled
        if compiled:
            # compile the network, then wrap in DDP. torch.compile(DDP(m)) compiles too here
            # (torch 2.13, 2 gloo ranks: one graph, 3 breaks at DDP's own wrapper, the same
            # loss), and its DDPOptimizer could split graphs at bucket boundaries to overlap
            # the all-reduce with backward on GPUs (unmeasured); this order also compiles the
            # network that validation and sampling use
            self.model.network = torch.compile(self.model.network, backend=compile_backend)
        self.train_model: torch.nn.Module = self.model
        if ctx.distributed:
            if tc.sync_batchnorm:  # a no-op for the DiT (LayerNorm only); kept for BN networks
                self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
            self.train_model = DistributedDataParallel(
                self.model,
                device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None,
                static_graph=tc.static_graph,
                find_unused_parameters=tc.find_unused_parameters,
                # the network's buffers are constants (no batch norm statistics; SyncBatchNorm
                # syncs its own): re-broadcasting them every step is wasted communication
                broadcast_buffers=False,
            )
        self.lr = cfg.base_lr * (ctx.world_size if cfg.optim.scale_lr_with_world_size else 1)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(),
            lr=self.lr,
            betas=tuple(cfg.optim.betas),
            weight_decay=cfg.optim.weight_decay,
        )
        self.teacher: Teacher | None = None
        distill = cfg.get("distill") or {}
        if distill.get("teacher") is not None:
            self.teacher = Teacher(
                str(distill.teacher),
                distill.steps,
                distill.method,
                ctx.device,
                tc.precision,
                self.model.family,
                cfg.image_size,
            )
            use_tf32(ctx.device, tc.get("tf32", True))  # the predictor turned TF32 on
        warmup, decay = cfg.optim.warmup_steps, cfg.optim.decay_steps
        decay = max(0, total_steps - warmup) if decay is None else decay  # 0: no decay
        end_ratio = cfg.optim.end_lr / self.lr if self.lr > 0 else 0.0
        self.lr_schedule = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, warmup, decay, end_ratio)
        )

    def train_step(
        self,
        batch: dict[str, Tensor],
        epoch: int,
        flags: Callable[[], Tensor] | None = None,
    ) -> StepResult:
        """One optimizer step on ``batch`` (``context`` (B, 5, S, S), ``target`` (B, 1, S, S),
        ``index`` (B,): the per-sample noise of ``epoch`` is drawn from it). ``flags()``
        ``(F,)``: the caller's per-rank flags (e.g. stop, save), read after the backward pass
        (a signal that arrived during it counts) and agreed on (max over ranks) in the same
        all-reduce as the step's own: one all-reduce and one host sync per step."""
        device, tc = self.ctx.device, self.cfg.trainer
        context = batch["context"].to(device, non_blocking=True)
        x_1 = batch["target"].to(device, non_blocking=True)
        if "noise" in batch:  # drawn by the loader (NoisyBatches)
            noise, t = batch["noise"], batch["t"]
        else:
            noise, t = per_sample_noise(
                self.model.path, x_1.shape[1:], batch["index"], self.cfg.seed, epoch
            )
        noise, t = noise.to(device, non_blocking=True), t.to(device, non_blocking=True)
        if self.teacher is not None:  # reflow: the teacher's sample from this noise
            x_1 = self.teacher.targets(context, noise)
            t = distill_times(t, self.cfg.distill.t_zero, self.model.path.t_max)
        with self.precision.autocast():
            losses = self.train_model(context, x_1, noise, t)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(losses["loss"]).backward()
        self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), tc.gradient_clip_val)
        # the loss is per rank, the gradients all-reduced: agree so every rank takes one branch
        local = torch.stack(
            [~torch.isfinite(losses["loss"].detach()), ~torch.isfinite(grad_norm)]
        ).float()
        if flags is not None:
            local = torch.cat([local, flags().to(local.device, torch.float32)])
        agreed = [v > 0 for v in self.ctx.all_reduce_max(local).tolist()]
        bad_loss, bad_grad = agreed[:2]
        if bad_loss:
            outcome: Outcome = "nonfinite"
        elif bad_grad:
            outcome = "overflow" if self.scaler.is_enabled() else "nonfinite"
        else:
            outcome = "applied"
        if outcome != "nonfinite":
            self.scaler.step(self.optimizer)  # fp16: skipped when the gradients overflowed
        # fp16: every unscale_() needs its update() (the scale backs off after inf/NaN)
        self.scaler.update()
        if outcome == "applied":
            self.lr_schedule.step()
            self.ema.update_parameters(self.model)
        return StepResult(losses, grad_norm, outcome, agreed[2:])

    def state_dict(self) -> dict[str, Any]:
        """Model, EMA, optimizer, LR schedule and grad scaler states (checkpoint keys)."""
        return {
            "model": network_state(self.model.network),
            "ema": self.ema.module.state_dict(),
            "ema_n_averaged": int(self.ema.n_averaged.item()),
            "optimizer": self.optimizer.state_dict(),
            "lr_schedule": self.lr_schedule.state_dict(),
            "scaler": self.scaler.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any], path: str, weights_only: bool = False) -> None:
        """Restore :meth:`state_dict` from checkpoint ``state`` (read from ``path``);
        ``weights_only``: model and EMA weights only (fine-tuning: fresh optimizer and LR)."""
        # a weights file (goalgen-export) holds the EMA weights only: fine-tune from those
        load_network(self.model.network, state, "model" if "model" in state else "ema", path)
        load_network(self.ema.module.network, state, "ema", path)
        self.ema.n_averaged.fill_(state.get("ema_n_averaged", 1))
        if weights_only:
            return
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_schedule.load_state_dict(state["lr_schedule"])
        if state.get("scaler"):  # a checkpoint without a grad scaler (bf16, fp32) has {}
            self.scaler.load_state_dict(state["scaler"])
