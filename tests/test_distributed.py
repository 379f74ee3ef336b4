"""Distributed training on CPU: launcher detection and 2-process gloo DDP."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from goalgen.train.distributed import detect_launch
from goalgen.train.entry import launch


def test_torchrun_variables_win_over_slurm():
    env = {
        "RANK": "3",
        "WORLD_SIZE": "8",
        "LOCAL_RANK": "1",
        "LOCAL_WORLD_SIZE": "4",
        "MASTER_ADDR": "n1",
        "MASTER_PORT": "29500",
        "SLURM_STEP_ID": "0",
        "SLURM_NTASKS": "1",
        "SLURM_PROCID": "0",
    }
    e = detect_launch(env)
    assert (e.launcher, e.rank, e.world_size, e.local_rank, e.local_world_size) == (
        "torchrun",
        3,
        8,
        1,
        4,
    )
    assert (e.master_addr, e.master_port) == ("n1", 29500)


def test_srun_tasks():
    env = {
        "SLURM_STEP_ID": "0",
        "SLURM_NTASKS": "4",
        "SLURM_PROCID": "2",
        "SLURM_LOCALID": "0",
        "SLURM_NTASKS_PER_NODE": "2",
        "SLURM_JOB_ID": "1234",
        "SLURM_JOB_NODELIST": "zz[3-4]",
    }
    e = detect_launch(env)
    assert (e.launcher, e.rank, e.world_size, e.local_rank, e.local_world_size) == (
        "srun",
        2,
        4,
        0,
        2,
    )
    assert e.master_addr == "zz3" and e.master_port == 20000 + 1234


def test_batch_shell_without_a_step_is_single_process():
    # sbatch's shell sees SLURM_NTASKS=4 outside any step: not a rank of anything
    e = detect_launch({"SLURM_NTASKS": "4", "SLURM_PROCID": "0", "SLURM_JOB_ID": "1"})
    assert e.launcher == "single" and e.world_size == 1


def curve(run_dir: Path, tag: str) -> dict[int, float]:
    acc = EventAccumulator(str(run_dir / "tensorboard")).Reload()
    return {e.step: e.value for e in acc.Scalars(tag)}


@pytest.mark.slow
def test_two_process_ddp_matches_one_process_with_the_same_global_batch(tiny_cfg):
    common = ("trainer.precision=32", "max_epochs=2", "trainer.process_group_timeout_s=120")
    single = tiny_cfg("train_fb_flow_matching", *common, "batch_size=16", "run_name=one")
    double = tiny_cfg(
        "train_fb_flow_matching",
        *common,
        "batch_size=8",
        "run_name=two",
        "trainer=multi_gpu",
        "trainer.devices=2",
        "trainer.accelerator=cpu",
        "trainer.log_every_n_steps=1",
    )
    runs = {}
    for name, cfg in (("one", single), ("two", double)):
        runs[name] = Path(cfg.output_dir) / cfg.run_name
        launch(cfg, runs[name])
    a = torch.load(runs["one"] / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(runs["two"] / "checkpoints" / "last.ckpt", weights_only=True)
    assert a["step"] == b["step"] == 4
    assert len(a["rng"]) == 1 and len(b["rng"]) == 2  # every rank's RNG states
    for key in a["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key], atol=2e-5, rtol=1e-4)
    loss_a, loss_b = curve(runs["one"], "train_loss"), curve(runs["two"], "train_loss")
    assert loss_a.keys() == loss_b.keys()
    for step in loss_a:
        assert loss_a[step] == pytest.approx(loss_b[step], rel=1e-4)
    assert curve(runs["one"], "val_loss")[4] == pytest.approx(
        curve(runs["two"], "val_loss")[4], rel=1e-4
    )


@pytest.mark.slow
def test_spawned_workers_get_the_stop_signal_sent_to_their_parent(tmp_path, synth_dir):
    """``trainer=multi_gpu trainer.devices=2`` from a plain command: a USR1 to the parent (what
    a user's ``kill``, or a launcher that signals only its own child, delivers) reaches both
    workers, which save together and exit 0; the same command then resumes."""
    import signal
    import subprocess
    import sys
    import time

    from conftest import TINY

    root = Path(__file__).resolve().parents[1]
    cmd = [
        sys.executable,
        str(root / "src" / "train_generative.py"),
        "--config-name=train_fb_flow_matching",
        *TINY,
        f"data.data_dir={synth_dir}",
        f"data.cache_dir={tmp_path}/cache",
        f"output_dir={tmp_path}/out",
        "run_name=sig",
        "trainer=multi_gpu",
        "trainer.devices=2",
        "trainer.accelerator=cpu",
        "trainer.process_group_timeout_s=60",
        "max_epochs=200",
        "checkpoint.every_minutes=0",
    ]
    last = tmp_path / "out" / "sig" / "checkpoints" / "last.ckpt"
    proc = subprocess.Popen(
        cmd, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.monotonic() + 120
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGUSR1)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out[-3000:]
    assert "stopped by SIGUSR1" in out
    stopped = torch.load(last, weights_only=True)
    assert 0 < stopped["step"] < 200 * 2 and len(stopped["rng"]) == 2
    done = subprocess.run(
        [*cmd, f"max_steps={stopped['step'] + 2}"],
        cwd=root,
        text=True,
        capture_output=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"at epoch {stopped['epoch']} step {stopped['step']}" in done.stdout + done.stderr
    assert torch.load(last, weights_only=True)["step"] == stopped["step"] + 2


def test_diverged_ranks_are_an_error_not_a_silent_model(tiny_cfg, tmp_path):
    """The end-of-run check compares every rank's weight hash (here a fake second rank whose
    weights differ, as after a desync)."""
    from dataclasses import dataclass

    from goalgen.train.distributed import DistContext
    from goalgen.train.loop import Trainer

    @dataclass(frozen=True)
    class TwoRanks(DistContext):
        other: str = ""

        def all_gather_object(self, obj: object) -> list:
            return [obj, self.other or obj]

    cpu = torch.device("cpu")
    trainer = Trainer(
        tiny_cfg("train_fb_flow_matching"), tmp_path / "run", DistContext(0, 0, 1, 1, cpu, None)
    )
    trainer.ctx = TwoRanks(0, 0, 2, 2, cpu, "gloo")
    trainer.check_ranks_agree()  # identical hashes: fine
    trainer.ctx = TwoRanks(0, 0, 2, 2, cpu, "gloo", other="0123456789abcdef")
    with pytest.raises(RuntimeError, match="DDP ranks hold different weights"):
        trainer.check_ranks_agree()
