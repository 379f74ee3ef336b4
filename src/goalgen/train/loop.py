"""The training loop, top to bottom: data, model, optimizer, resume, epochs, validation.

``train(cfg, run_dir, ctx)`` takes a resolved config (a DictConfig or a plain dict), the run
directory chosen once by the entry point, and this process's :class:`DistContext`. The step
itself (forward, backward, the non-finite policy, optimizer, EMA) is
:meth:`goalgen.train.step.Learner.train_step`.
"""

from __future__ import annotations

import hashlib
import logging
import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from goalgen import __version__
from goalgen import checkpoint as ckpt
from goalgen.data.dataset import ResumableDistributedSampler, build_datasets, collate_batch
from goalgen.eval.validation import task_metrics
from goalgen.eval.visualize import sample_grid, save_png
from goalgen.infer.proposals import CLEARANCE
from goalgen.model.generative import GenerativeModel
from goalgen.train.distributed import DistContext
from goalgen.train.logger import Progress, RunLogger
from goalgen.train.preemption import StopFlag, ignore_stop_signals, requeue_job
from goalgen.train.state import per_sample_noise, rng_state, set_rng_state
from goalgen.train.step import Learner, NoisyBatches, StepResult, resolve_compile

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


class Trainer:
    """Holds the objects of one run; ``fit()`` runs it."""

    def __init__(self, cfg: DictConfig, run_dir: Path, ctx: DistContext):
        self.cfg, self.run_dir, self.ctx = cfg, Path(run_dir), ctx
        self.ckpt_dir = ckpt.run_checkpoint_dir(self.run_dir)
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
            tag_epoch=True,
        )
        self.batches_per_epoch = len(self.sampler) // cfg.batch_size
        if self.batches_per_epoch == 0:
            raise ValueError(
                f"batch_size={cfg.batch_size} x {ctx.world_size} process(es) exceeds the "
                f"{len(self.train_set)} training scenes; lower batch_size or add data"
            )
        self.total_steps = self._planned_steps()
        compiled = resolve_compile(cfg.trainer.compile, ctx.device, self.total_steps)
        self.learner = Learner(cfg, ctx, self.total_steps, compiled)
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
                self.learner.lr,
                self.learner.precision.name,
                compiled,
                ctx.device,
            )
        self.logger = RunLogger(
            self.run_dir / "tensorboard",
            ctx.is_main,
            purge_step=self.step + 1 if self.step > 0 else None,
        )
        self.progress = Progress(ctx.is_main, cfg.trainer.progress_log_every_s)

    # ---------------------------------------------------------------- bookkeeping
    def _planned_steps(self) -> int:
        by_epochs = self.cfg.max_epochs * self.batches_per_epoch
        return min(by_epochs, self.cfg.max_steps) if self.cfg.max_steps > 0 else by_epochs

    def state_dict(self, rng_per_rank: list[dict[str, Any]]) -> dict[str, Any]:
        """Everything a resume needs; ``rng_per_rank`` from :meth:`gather_rng` (a collective)."""
        return {
            **self.learner.state_dict(),
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
            "versions": {"torch": str(torch.__version__), "goalgen": __version__},
        }

    def _start_source(self) -> tuple[str, dict[str, Any], bool] | None:
        """``(path, state, weights_only)`` to start from, or None (fresh weights). A run with
        a checkpoint of its own resumes it (a requeue of a fine-tuning run too); otherwise
        ``run_path`` gives the weights (model and EMA) of another run's best checkpoint (or a
        weights file's EMA weights)."""
        cfg = self.cfg
        if cfg.ckpt_path is not None and cfg.run_path is not None:
            raise ValueError(
                f"ckpt_path={cfg.ckpt_path} and run_path={cfg.run_path}: give one (ckpt_path "
                "continues a run's training state, run_path fine-tunes its weights)"
            )
        source = ckpt.resume_source(self.ckpt_dir, cfg.ckpt_path, cfg.resume)
        if source is not None:
            return source[0], source[1], False
        if cfg.run_path is not None:
            return (*ckpt.finetune_source(cfg.run_path, self.ckpt_dir), True)
        return None

    def _maybe_resume(self) -> None:
        # rank 0 decides and every rank loads that file: ranks whose reads of a shared
        # filesystem differ must not resume from different states
        source, error = None, None
        if self.ctx.is_main:
            try:
                source = self._start_source()
            except (ckpt.CheckpointError, FileNotFoundError, ValueError) as exc:
                error = str(exc)
        decision = (source[0], source[2]) if source else None
        decision, error = self.ctx.broadcast_object((decision, error))
        if error is not None:  # every rank stops with the message, none waits on the others
            raise ckpt.CheckpointError(error)
        if decision is None:
            return
        path, weights_only = decision
        load = ckpt.load_inference if weights_only else ckpt.load_checkpoint
        state = source[1] if source else load(path)
        try:
            self.learner.load_state_dict(state, path, weights_only)
        except ckpt.CheckpointError as exc:
            what = "run_path" if weights_only else "ckpt_path"
            raise ValueError(
                f"{exc}: it was written by a model of another shape than "
                f"model.network={dict(self.cfg.model.network)}. Give this run its own "
                f"run_name, set resume=false, or point {what} at a matching checkpoint."
            ) from exc
        if weights_only:
            if self.ctx.is_main:
                log.info(
                    "Fine-tuning from %s (weights of step %d): new optimizer and LR schedule, "
                    "step 0",
                    path,
                    state["step"],
                )
            return
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

    def _stop_and_save_flags(self) -> torch.Tensor:
        """``(2,)``: stop requested, periodic save due, on this rank. The step agrees on them
        over ranks in its one all-reduce, so every rank reaches the save barrier together (a
        per-rank decision would deadlock it)."""
        due = time.monotonic() - self._last_save >= self.cfg.checkpoint.every_minutes * 60
        return torch.tensor([float(self.stop_flag.requested), float(due)])

    # ---------------------------------------------------------------- training
    @property
    def model(self) -> GenerativeModel:
        return self.learner.model

    def _done(self) -> bool:
        return ckpt.is_complete(self.epoch, self.step, self.cfg.max_epochs, self.cfg.max_steps)

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
            collate_fn=NoisyBatches(self.model.path, (1, cfg.image_size, cfg.image_size), cfg.seed),
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
        for tensor in ckpt.network_state(self.model.network).values():
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
        self.learner.train_model.train()
        self.progress.start_epoch(self.epoch, self.batches_per_epoch, self.batch_in_epoch)
        consecutive_bad, window_t0, window_samples = 0, time.perf_counter(), 0
        for batch in loader:
            if self.batch_in_epoch >= self.batches_per_epoch or (
                cfg.max_steps > 0 and self.step >= cfg.max_steps
            ):
                break
            result = self.learner.train_step(batch, self.epoch, self._stop_and_save_flags)
            stop, due = result.flags
            self.batch_in_epoch += 1
            window_samples += len(batch["index"]) * ctx.world_size
            if result.outcome == "nonfinite":
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
                        f"{self.step}, lr {self.learner.lr_schedule.get_last_lr()[0]:.3g}). "
                        "Lower base_lr (e.g. base_lr=5e-5), check the data (goalgen-pack "
                        "validates every file), or try trainer.precision=32. last.ckpt holds "
                        "the last good state."
                    )
            elif result.outcome == "applied":  # overflow: fp16's scaler skipped it, backed off
                consecutive_bad = 0
                self.step += 1
                if self.step % tc.log_every_n_steps == 0:
                    window_t0, window_samples = self._log_window(result, window_t0, window_samples)
            if stop or due:
                self.save_last()
            if stop:
                self.stopped = True
                break
        self.progress.end_epoch()

    def _log_window(
        self, result: StepResult, window_t0: float, window_samples: int
    ) -> tuple[float, int]:
        """Log the step's losses (mean over ranks) and the window's throughput; a new window."""
        ctx = self.ctx
        elapsed = time.perf_counter() - window_t0
        losses, names = result.losses, sorted(result.losses)
        means = (
            ctx.all_reduce_sum(torch.stack([losses[k].detach().float().cpu() for k in names]))
            / ctx.world_size
        )
        mean = dict(zip(names, means.tolist(), strict=True))
        info = {
            "train_loss": mean["loss"],
            "lr": self.learner.lr_schedule.get_last_lr()[0],
            "grad_norm": result.grad_norm.item(),
            "samples_per_s": window_samples / elapsed,
        }
        extra = {f"train_{k}": v for k, v in mean.items() if k != "loss"}
        self.logger.scalars({**info, **extra, "epoch": self.epoch}, self.step)
        self.progress.update(self.batch_in_epoch, self.step, info)
        return time.perf_counter(), 0

    # ---------------------------------------------------------------- validation
    @torch.no_grad()
    def validate(self, epoch_label: int) -> float:
        """Deterministic val loss with EMA weights; top-k update; sample grid. All ranks call."""
        cfg, ctx = self.cfg, self.ctx
        ema_model = self.learner.ema.module
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
            with self.learner.precision.autocast():
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
        with self.learner.precision.autocast():
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
        files = [self.val_set.packed.files[int(j)] for j in batch["index"]]  # geometry, near
        clearance = cfg.val.get("clearance")
        metrics = task_metrics(
            batch["context"],
            batch["target"],
            samples,
            scenes=files,
            clearance=CLEARANCE if clearance is None else float(clearance),
        )
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
