"""The training loop, top to bottom: data, model, optimizer, resume, epochs, validation.

``train(cfg, run_dir, ctx)`` takes a resolved config (a DictConfig or a plain dict), the run
directory chosen once by the entry point, and this process's :class:`DistContext`.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from goalgen.data.dataset import ResumableDistributedSampler, build_datasets, collate_batch
from goalgen.eval.metrics import task_metrics
from goalgen.eval.visualize import sample_grid, save_png
from goalgen.model.generative import GenerativeModel
from goalgen.train import checkpoint as ckpt
from goalgen.train.distributed import DistContext
from goalgen.train.logger import Progress, RunLogger
from goalgen.train.precision import resolve_precision
from goalgen.train.preemption import StopFlag, ignore_stop_signals, requeue_job
from goalgen.train.state import lr_factor, make_ema, per_sample_noise, rng_state, set_rng_state

log = logging.getLogger("goalgen")


class NonFiniteLossError(RuntimeError):
    """Raised after too many consecutive NaN/inf training steps."""


@dataclass
class TrainResult:
    step: int
    epoch: int
    val_loss: float
    val_loss_best: float
    best_checkpoint: Path | None
    stopped: bool = False  # a stop signal ended the run early (last.ckpt saved)
    requeued: bool = False  # ... and the Slurm job was requeued to resume


def build_model(cfg: DictConfig) -> GenerativeModel:
    """Instantiate the model from ``cfg.model`` (``_target_`` classes), checking its shape."""
    try:
        model = hydra.utils.instantiate(cfg.model, _convert_="all")
    except InstantiationException as exc:  # surface our own message, not Hydra's wrapper
        raise ValueError(str(exc.__cause__ or exc)) from exc
    if getattr(model.network, "in_ch", 8) != 8:
        raise ValueError(
            f"model.network.in_ch={model.network.in_ch}; it must be 8 "
            "(5 context + 2 coordinate + 1 noisy channels)"
        )
    return model


# On the CPU compiling pays only for long runs: goalgen-bench (2 cores, default DiT, bf16)
# measured compiled steps 1.56x faster than eager (fp32: 1.14x) after ~50 s of compiling,
# ~31 steps of the default model; a small model (the demo) earns it back far later.
CPU_COMPILE_MIN_STEPS = 2000


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


class Trainer:
    """Holds the objects of one run; ``fit()`` runs it."""

    def __init__(self, cfg: DictConfig, run_dir: Path, ctx: DistContext):
        self.cfg, self.run_dir, self.ctx = cfg, Path(run_dir), ctx
        self.ckpt_dir = self.run_dir / "checkpoints"
        tc = cfg.trainer
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        self.train_set, self.val_set = build_datasets(
            cfg.data.data_dir,
            cfg.image_size,
            val_dir=cfg.data.val_dir,
            train_split=cfg.data.train_split,
            seed=cfg.seed,
            cache_dir=cfg.data.cache_dir,
            on_bad_file=cfg.data.on_bad_file,
            workers=cfg.data.pack_workers,
            local_rank=ctx.local_rank,
            barrier=ctx.barrier if ctx.distributed else None,
        )
        self.sampler = ResumableDistributedSampler(
            len(self.train_set),
            num_replicas=ctx.world_size,
            rank=ctx.rank,
            shuffle=True,
            seed=cfg.seed,
            drop_last=True,
        )
        self.batches_per_epoch = len(self.sampler) // cfg.batch_size
        if self.batches_per_epoch == 0:
            raise ValueError(
                f"batch_size={cfg.batch_size} x {ctx.world_size} process(es) exceeds the "
                f"{len(self.train_set)} training scenes; lower batch_size or add data"
            )
        self.model = build_model(cfg).to(ctx.device)
        self.ema = make_ema(self.model, cfg.ema.decay, cfg.ema.warmup)
        self.precision = resolve_precision(tc.precision, ctx.device)
        self.scaler = self.precision.grad_scaler()
        self.train_model: torch.nn.Module = self.model
        self.compiled = resolve_compile(tc.compile, ctx.device, self._planned_steps())
        if self.compiled:
            # compile the network, then wrap in DDP: torch.compile(DDP(m)) compiles nothing
            self.model.network = torch.compile(self.model.network)
        if ctx.distributed:
            if tc.sync_batchnorm:  # a no-op for the DiT (LayerNorm only); kept for BN networks
                self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
            self.train_model = DistributedDataParallel(
                self.model,
                device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None,
                static_graph=tc.static_graph,
                find_unused_parameters=tc.find_unused_parameters,
            )
        lr = cfg.base_lr * (ctx.world_size if cfg.optim.scale_lr_with_world_size else 1)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(),
            lr=lr,
            betas=tuple(cfg.optim.betas),
            weight_decay=cfg.optim.weight_decay,
        )
        self.total_steps = self._planned_steps()
        warmup = cfg.optim.warmup_steps
        decay = cfg.optim.decay_steps or max(0, self.total_steps - warmup)
        self.lr_schedule = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda s: lr_factor(s, warmup, decay, cfg.optim.end_lr / lr if lr > 0 else 0.0),
        )
        self.top_k = ckpt.TopK(self.ckpt_dir, cfg.checkpoint.save_top_k)
        self.epoch, self.step, self.batch_in_epoch = 0, 0, 0
        self.nonfinite_total, self.val_loss, self.val_loss_best = 0, float("nan"), math.inf
        self._last_save = time.monotonic()
        self.stopped, self.requeued = False, False
        self._maybe_resume()
        if ctx.is_main:
            log.info(
                "%s: %d train / %d val scenes, %d batches/epoch, effective batch %d "
                "(%d x %d), lr %.3g, precision %s, compile %s, device %s",
                self.model.family,
                len(self.train_set),
                len(self.val_set),
                self.batches_per_epoch,
                cfg.batch_size * ctx.world_size,
                cfg.batch_size,
                ctx.world_size,
                lr,
                self.precision.name,
                self.compiled,
                ctx.device,
            )
        self.logger = RunLogger(
            self.run_dir / "tensorboard",
            ctx.is_main,
            purge_step=self.step + 1 if self.step > 0 else None,
        )
        self.progress = Progress(ctx.is_main, tc.progress_log_every_s)

    # ---------------------------------------------------------------- bookkeeping
    def _planned_steps(self) -> int:
        by_epochs = self.cfg.max_epochs * self.batches_per_epoch
        return min(by_epochs, self.cfg.max_steps) if self.cfg.max_steps > 0 else by_epochs

    def _raw_network(self) -> torch.nn.Module:
        net = self.model.network
        return getattr(net, "_orig_mod", net)

    def state_dict(self, rng_per_rank: list[dict[str, Any]]) -> dict[str, Any]:
        """Everything a resume needs; ``rng_per_rank`` from :meth:`gather_rng` (a collective)."""
        model_state = {f"network.{k}": v for k, v in self._raw_network().state_dict().items()}
        return {
            "model": model_state,
            "ema": self.ema.module.state_dict(),
            "ema_n_averaged": int(self.ema.n_averaged.item()),
            "optimizer": self.optimizer.state_dict(),
            "lr_schedule": self.lr_schedule.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "batch_in_epoch": self.batch_in_epoch,
            "rng": rng_per_rank,
            "top_k": self.top_k.state_dict(),
            "val_loss": self.val_loss,
            "val_loss_best": self.val_loss_best,
            "nonfinite_total": self.nonfinite_total,
            "family": self.model.family,
            "config": OmegaConf.to_container(self.cfg, resolve=True),
            "versions": {"torch": str(torch.__version__), "goalgen": "0.1.0"},
        }

    def _resume_source(self) -> tuple[str, dict[str, Any]] | None:
        """Which checkpoint to resume from: ``ckpt_path`` wins, unless this run dir already
        continued from that very ``ckpt_path`` (a requeue or re-run of the same command: its own
        ``last.ckpt`` is further on); else the run dir's newest good checkpoint (``resume``)."""
        own = ckpt.latest_good_checkpoint(self.ckpt_dir) if self.cfg.resume else None
        given = self.cfg.ckpt_path
        if given is None:
            return (str(own[0]), own[1]) if own else None
        state, given_file = ckpt.load_checkpoint(given), Path(given).resolve()
        if own is not None and Path(own[0]).resolve() != given_file:
            started_from = own[1]["config"].get("ckpt_path")
            if (
                started_from is not None
                and Path(started_from).resolve() == given_file
                and own[1]["step"] >= state["step"]
            ):
                if self.ctx.is_main:
                    log.info(
                        "ckpt_path=%s was this run's starting point; continuing from its "
                        "newer %s (resume=false restarts from ckpt_path)",
                        given,
                        own[0],
                    )
                return str(own[0]), own[1]
        return str(given), state

    def _maybe_resume(self) -> None:
        # rank 0 decides and every rank loads that file: ranks whose reads of a shared
        # filesystem differ must not resume from different states
        source, error = None, None
        if self.ctx.is_main:
            try:
                source = self._resume_source()
            except ckpt.CheckpointError as exc:
                error = str(exc)
        path, error = self.ctx.broadcast_object((source[0] if source else None, error))
        if error is not None:  # every rank stops with the message, none waits on the others
            raise ckpt.CheckpointError(error)
        if path is None:
            return
        state = source[1] if source else ckpt.load_checkpoint(path)
        try:
            self._raw_network().load_state_dict(
                {k.removeprefix("network."): v for k, v in state["model"].items()}
            )
            self.ema.module.load_state_dict(state["ema"])
        except RuntimeError as exc:
            raise ValueError(
                f"checkpoint {path} was written by a model of another shape than "
                f"model.network={dict(self.cfg.model.network)} ({str(exc).splitlines()[0]}). "
                "Give this run its own run_name, set resume=false, or point ckpt_path at a "
                "matching checkpoint."
            ) from exc
        self.ema.n_averaged.fill_(state.get("ema_n_averaged", 1))
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_schedule.load_state_dict(state["lr_schedule"])
        if "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.step = state["epoch"], state["step"]
        self.batch_in_epoch = state["batch_in_epoch"]
        # entries of another run's folder (ckpt_path) are not ours to rank against or evict
        self.top_k.load_state_dict(
            [e for e in state.get("top_k", []) if (self.ckpt_dir / e[2]).is_file()]
        )
        self.val_loss_best = float(state.get("val_loss_best", math.inf))
        self.val_loss = state.get("val_loss", float("nan"))
        self.nonfinite_total = state.get("nonfinite_total", 0)
        rngs = state["rng"]
        set_rng_state(rngs[self.ctx.rank] if len(rngs) == self.ctx.world_size else rngs[0])
        if self.ctx.is_main:
            log.info("Resuming from %s at epoch %d step %d", path, self.epoch, self.step)

    def gather_rng(self) -> list[dict[str, Any]]:
        """Every rank's RNG states, in rank order (all ranks must call: it is a collective)."""
        return self.ctx.all_gather_object(rng_state())

    def save_last(self) -> None:
        """Every rank calls this; rank 0 writes; the barrier keeps ranks together."""
        rngs = self.gather_rng()
        if self.ctx.is_main:
            ckpt.save_atomic(self.state_dict(rngs), self.ckpt_dir / ckpt.LAST)
            self.logger.flush()  # events up to the saved step survive a hard kill
        self._last_save = time.monotonic()
        self.ctx.barrier()

    def _agree_on_stop_and_save(self) -> tuple[bool, bool]:
        """(stop requested, periodic save due) on any rank: one all-reduce per step, so every
        rank reaches the save barrier together (a per-rank decision would deadlock it)."""
        due = time.monotonic() - self._last_save >= self.cfg.checkpoint.every_minutes * 60
        flags = torch.tensor([float(self.stop_flag.requested), float(due)])
        stop, due = (self.ctx.all_reduce_max(flags) > 0).tolist()
        return stop, due

    # ---------------------------------------------------------------- training
    def _done(self) -> bool:
        return self.epoch >= self.cfg.max_epochs or (
            self.cfg.max_steps > 0 and self.step >= self.cfg.max_steps
        )

    def fit(self) -> TrainResult:
        cfg = self.cfg
        if self._done():
            if self.ctx.is_main:
                log.info(
                    "Run already complete (epoch %d, step %d): nothing to do", self.epoch, self.step
                )
            return self._result()
        loader = DataLoader(
            self.train_set,
            batch_size=cfg.batch_size,
            sampler=self.sampler,
            collate_fn=collate_batch,
            num_workers=cfg.num_workers,
            drop_last=True,
            worker_init_fn=ignore_stop_signals,
            pin_memory=self.ctx.device.type == "cuda",
            persistent_workers=cfg.num_workers > 0,
        )
        self.stop_flag = StopFlag()
        try:
            while not self._done():
                self.sampler.set_epoch(self.epoch)
                self.sampler.set_start_index(self.batch_in_epoch * cfg.batch_size)
                label = self.epoch
                self._train_epoch(loader)
                if self.stopped:  # last.ckpt is already saved
                    break
                finished = self.batch_in_epoch >= self.batches_per_epoch
                if finished:  # ``epoch`` counts completed epochs: a resume starts the next one
                    self.epoch, self.batch_in_epoch = self.epoch + 1, 0
                every = cfg.trainer.check_val_every_n_epoch
                if self._done() or (finished and self.epoch % every == 0):
                    self.validate(label)
                self.save_last()
        finally:
            self.stop_flag.restore()
            self.logger.close()
        self.check_ranks_agree()
        if self.stopped:
            log.info(
                "stopped by %s at epoch %d step %d; last.ckpt saved",
                signal.Signals(self.stop_flag.signum).name,
                self.epoch,
                self.step,
            )
            if self.ctx.is_main:
                self.requeued = requeue_job()
        return self._result()

    def check_ranks_agree(self) -> None:
        """DDP keeps every rank's weights identical; prove it (a hash per rank, all-gathered) so
        a silent desync (a collective skipped on one rank, a non-deterministic kernel) is an
        error, not a subtly wrong model. All ranks call."""
        if not self.ctx.distributed:
            return
        digest = hashlib.sha1()
        for tensor in self._raw_network().state_dict().values():
            digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())
        hashes = self.ctx.all_gather_object(digest.hexdigest()[:16])
        if len(set(hashes)) > 1:
            raise RuntimeError(
                f"DDP ranks hold different weights at step {self.step}: "
                f"{hashes} (one hash per rank)"
            )
        if self.ctx.is_main:
            log.info("weights identical on all %d ranks (sha1 %s)", len(hashes), hashes[0])

    def _result(self) -> TrainResult:
        best = self.top_k.folder / self.top_k.entries[0][2] if self.top_k.entries else None
        return TrainResult(
            self.step,
            self.epoch,
            self.val_loss,
            self.val_loss_best,
            best,
            self.stopped,
            self.requeued,
        )

    def _train_epoch(self, loader: DataLoader) -> None:
        cfg, tc, ctx = self.cfg, self.cfg.trainer, self.ctx
        self.train_model.train()
        self.progress.start_epoch(self.epoch, self.batches_per_epoch, self.batch_in_epoch)
        consecutive_bad, window_t0, window_samples = 0, time.perf_counter(), 0
        for batch in loader:
            if self.batch_in_epoch >= self.batches_per_epoch or (
                cfg.max_steps > 0 and self.step >= cfg.max_steps
            ):
                break
            context = batch["context"].to(ctx.device, non_blocking=True)
            x_1 = batch["target"].to(ctx.device, non_blocking=True)
            noise, t = per_sample_noise(
                self.model.path, x_1.shape[1:], batch["index"], cfg.seed, self.epoch
            )
            noise, t = noise.to(ctx.device), t.to(ctx.device)
            with self.precision.autocast():
                losses = self.train_model(context, x_1, noise, t)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(losses["loss"]).backward()
            self.scaler.unscale_(self.optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(
                self.model.parameters(), tc.gradient_clip_val
            )
            self.batch_in_epoch += 1
            window_samples += x_1.shape[0] * ctx.world_size
            # grads are all-reduced, so every rank sees the same grad_norm and skips together
            if not torch.isfinite(losses["loss"]) or not torch.isfinite(grad_norm):
                if self.precision.use_scaler and torch.isfinite(losses["loss"]):
                    self.scaler.step(self.optimizer)  # fp16 overflow: the scaler skips & backs off
                    self.scaler.update()
                    continue
                consecutive_bad += 1
                self.nonfinite_total += 1
                self.logger.scalars({"nonfinite_steps": self.nonfinite_total}, self.step)
                log.warning(
                    "non-finite loss/gradient at epoch %d batch %d (step %d): step "
                    "skipped (%d in a row)",
                    self.epoch,
                    self.batch_in_epoch,
                    self.step,
                    consecutive_bad,
                )
                if consecutive_bad >= tc.max_consecutive_nonfinite:
                    raise NonFiniteLossError(
                        f"loss was NaN/inf for {consecutive_bad} steps in a row (step "
                        f"{self.step}, lr {self.lr_schedule.get_last_lr()[0]:.3g}). Lower "
                        "base_lr (e.g. base_lr=5e-5), check the data (goalgen-pack validates "
                        "every file), or try trainer.precision=32. last.ckpt holds the last "
                        "good state."
                    )
                continue
            consecutive_bad = 0
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.lr_schedule.step()
            self.ema.update_parameters(self.model)
            self.step += 1
            if self.step % tc.log_every_n_steps == 0:
                elapsed = time.perf_counter() - window_t0
                # mean over ranks (every rank takes part in the all-reduce)
                names = sorted(losses)
                means = (
                    ctx.all_reduce_sum(
                        torch.stack([losses[k].detach().float().cpu() for k in names])
                    )
                    / ctx.world_size
                )
                mean = dict(zip(names, means.tolist(), strict=True))
                info = {
                    "train_loss": mean["loss"],
                    "lr": self.lr_schedule.get_last_lr()[0],
                    "grad_norm": grad_norm.item(),
                    "samples_per_s": window_samples / elapsed,
                }
                extra = {f"train_{k}": v for k, v in mean.items() if k != "loss"}
                self.logger.scalars({**info, **extra, "epoch": self.epoch}, self.step)
                self.progress.update(self.batch_in_epoch, self.step, info)
                window_t0, window_samples = time.perf_counter(), 0
            stop, due = self._agree_on_stop_and_save()
            if stop or due:
                self.save_last()
            if stop:
                self.stopped = True
                break
        self.progress.end_epoch()

    # ---------------------------------------------------------------- validation
    @torch.no_grad()
    def validate(self, epoch_label: int) -> float:
        """Deterministic val loss with EMA weights; top-k update; sample grid. All ranks call."""
        cfg, ctx = self.cfg, self.ctx
        ema_model = self.ema.module
        ema_model.eval()
        positions = list(range(ctx.rank, len(self.val_set), ctx.world_size))
        loader = DataLoader(
            self.val_set,
            batch_size=cfg.batch_size,
            sampler=positions,
            collate_fn=collate_batch,
            num_workers=0,
        )
        totals = torch.zeros(2, dtype=torch.float64)
        for batch in loader:
            context = batch["context"].to(ctx.device)
            x_1 = batch["target"].to(ctx.device)
            # fixed per validation sample (epoch -1 never occurs in training)
            noise, t = per_sample_noise(
                ema_model.path, x_1.shape[1:], batch["index"], cfg.val.seed, epoch=-1
            )
            noise, t = noise.to(ctx.device), t.to(ctx.device)
            with self.precision.autocast():
                losses = ema_model(context, x_1, noise, t)
            totals += torch.tensor(
                [losses["loss"].item() * x_1.shape[0], x_1.shape[0]], dtype=torch.float64
            )
        totals = ctx.all_reduce_sum(totals)
        rngs = self.gather_rng()
        self.val_loss = float(totals[0] / totals[1])
        metrics = {"val_loss": self.val_loss}
        if self.val_loss < self.val_loss_best:  # NaN never is
            self.val_loss_best = self.val_loss
        metrics.update(self._log_samples(ema_model, epoch_label) if ctx.is_main else {})
        if ctx.is_main:
            self.top_k.update(self.val_loss, epoch_label, self.state_dict(rngs))
            metrics["val_loss_best"] = self.val_loss_best
            self.logger.scalars(metrics, self.step)
            self.logger.flush()
            log.info(
                "epoch %d step %d: %s",
                self.epoch,
                self.step,
                " ".join(f"{k}={v:.4f}" for k, v in metrics.items()),
            )
        ctx.barrier()
        return self.val_loss

    def _log_samples(self, ema_model: GenerativeModel, epoch_label: int) -> dict[str, float]:
        """Sample goal masks for a fixed validation subset with fixed noise; log the image grid
        of its first ``val.num_images`` scenes and the task metrics (validity, success, IoU)."""
        cfg = self.cfg
        n = min(max(cfg.val.num_images, cfg.val.metric_scenes), len(self.val_set))
        k = cfg.val.samples_per_scene
        if n == 0 or k == 0:
            return {}
        batch = self.val_set.__getitems__(list(range(n)))
        context = batch["context"].to(self.ctx.device)
        g = torch.Generator(device=self.ctx.device).manual_seed(cfg.val.seed)
        with self.precision.autocast():
            samples = ema_model.sample(context.repeat_interleave(k, 0), cfg.sampling_steps, g)
        samples = samples.float().cpu().view(n, k, 1, *samples.shape[-2:])
        shown = min(cfg.val.num_images, n)
        if shown:
            grid = sample_grid(batch["context"][:shown], batch["target"][:shown], samples[:shown])
            tag = "Validation_Samples_" + (
                "flow_matching" if ema_model.family == "flow" else "diffusion"
            )
            self.logger.image(tag, grid, self.step)
            save_png(grid, self.run_dir / "samples" / f"epoch{epoch_label:03d}.png")
        if cfg.val.metric_scenes == 0:
            return {}
        metrics = task_metrics(batch["context"], batch["target"], samples)
        return {f"val_{name}": value for name, value in metrics.items()}


def train(cfg: DictConfig | dict, run_dir: Path, ctx: DistContext) -> TrainResult:
    """Run (or resume) one training job in ``run_dir``."""
    cfg = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(cfg)
    trainer = Trainer(cfg, run_dir, ctx)
    result = trainer.fit()
    if not math.isnan(result.val_loss) and ctx.is_main:
        log.info(
            "done: step %d, val_loss %.4f, best %.4f (%s)",
            result.step,
            result.val_loss,
            result.val_loss_best,
            result.best_checkpoint,
        )
    return result
