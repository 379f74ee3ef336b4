"""``checkpoint`` section: what a run writes to ``last.ckpt`` and its resume, timed."""

from __future__ import annotations

import copy
import math
from typing import Any

from goalgen import checkpoint as ckpt
from goalgen.bench.data import bench_data_dir
from goalgen.bench.measure import load_avg, ms, time_runs
from goalgen.bench.settings import Bench
from goalgen.bench.train import reference_step_ms, synthetic_batch
from goalgen.train.distributed import DistContext
from goalgen.train.loop import Trainer


def bench_checkpoint(b: Bench) -> dict[str, Any]:
    """A real :class:`Trainer` on the bench scenes: ``Trainer.save_last`` (the full state dict
    to ``last.ckpt``) and ``Trainer._maybe_resume`` (what a requeued run does: load, verify,
    restore model, EMA, optimizer, ...), against one train step, and the implied overhead at
    the default cadence (a save at every epoch end, and every ``checkpoint.every_minutes``
    within an epoch: the loop's timer restarts at each save)."""
    out: dict[str, Any] = {"load_avg": load_avg()}
    cfg = copy.deepcopy(b.cfg)
    cfg.data.data_dir, cfg.trainer.precision = str(bench_data_dir(b)), b.precision
    cfg.trainer.compile, cfg.ckpt_path, cfg.resume = False, None, True
    trainer = Trainer(cfg, b.scratch / "run", DistContext(0, 0, 1, 1, b.device, None))
    trainer.learner.train_step(synthetic_batch(cfg, b.device), 0)  # optimizer state, as in a run
    path = trainer.ckpt_dir / ckpt.LAST
    save = time_runs(trainer.save_last, b.device, b.repeats, warmup=1)
    load = time_runs(trainer._maybe_resume, b.device, b.repeats, warmup=1)
    trainer.logger.close()
    step_ms = reference_step_ms(b)
    save_ms, load_ms = ms(save), ms(load)
    scenes = b.shared.get("num_scenes", b.num_scenes)
    steps = b.epoch_steps or max(1, int(scenes * b.cfg.data.train_split) // b.cfg.batch_size)
    epoch_s = steps * step_ms / 1e3
    every_s = 60 * float(b.cfg.checkpoint.every_minutes)
    saves_per_epoch = 1 + math.floor(epoch_s / every_s)
    out.update(
        {
            "file_mb": path.stat().st_size / 2**20,
            "save_ms": save_ms,
            "load_ms": load_ms,
            "save_ms_runs": [1e3 * t for t in save],
            "load_ms_runs": [1e3 * t for t in load],
            "train_step_ms": step_ms,
            "save_in_steps": save_ms / step_ms,
            "load_in_steps": load_ms / step_ms,
            "epoch_steps": steps,
            "every_minutes": float(b.cfg.checkpoint.every_minutes),
            "saves_per_epoch": saves_per_epoch,
            "overhead_pct": 100 * saves_per_epoch * save_ms / 1e3 / epoch_s,
            # validation may also write a top-k checkpoint every epoch (when val_loss improves)
            "overhead_with_top_k_pct": 100 * (saves_per_epoch + 1) * save_ms / 1e3 / epoch_s,
            "epoch_steps_for_1pct": math.ceil(100 * save_ms / step_ms),
            "load_avg_end": load_avg(),
        }
    )
    path.unlink(missing_ok=True)
    return out
