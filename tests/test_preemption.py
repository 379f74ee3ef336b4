"""Stop signals, requeue decisions, and exact resume after kills (CPU, 1 and 2 processes)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import TINY
from goalgen.model.generative import GenerativeModel
from goalgen.train.loop import train
from goalgen.train.preemption import requeue_job, slurm_job_to_requeue
from run_helpers import CPU, assert_same_weights, run_dir_of, steps_logged

ROOT = Path(__file__).resolve().parents[1]


def test_requeue_target_and_no_slurm():
    assert slurm_job_to_requeue({}) is None
    assert slurm_job_to_requeue({"SLURM_JOB_ID": "7"}) == "7"
    assert (
        slurm_job_to_requeue(
            {"SLURM_JOB_ID": "9", "SLURM_ARRAY_JOB_ID": "7", "SLURM_ARRAY_TASK_ID": "1"}
        )
        == "7_1"
    )
    assert requeue_job({}) is False
    assert requeue_job({"SLURM_JOB_ID": "7", "GOALGEN_NO_REQUEUE": "1"}) is False


@pytest.mark.parametrize("sig", [signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM])
def test_signal_saves_and_stops_then_resume_is_exact(tiny_cfg, monkeypatch, sig):
    common = ("optim.decay_steps=100", "max_epochs=2")
    full = tiny_cfg("train_fb_flow_matching", *common, "run_name=full")
    train(full, run_dir_of(full), CPU)

    real_forward = GenerativeModel.forward
    calls = {"n": 0}

    def signalling(self, *args):
        if self.training:
            calls["n"] += 1
            if calls["n"] == 4:
                os.kill(os.getpid(), sig)  # arrives mid-step, like Slurm's
        return real_forward(self, *args)

    monkeypatch.setattr(GenerativeModel, "forward", signalling)
    cfg = tiny_cfg("train_fb_flow_matching", *common, "run_name=stopped")
    result = train(cfg, run_dir_of(cfg), CPU)
    assert result.stopped and not result.requeued  # not under Slurm here
    assert result.step == 4
    last = run_dir_of(cfg) / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["step"] == 4
    assert signal.getsignal(sig) is not None  # handlers restored
    monkeypatch.undo()

    resumed = train(cfg, run_dir_of(cfg), CPU)  # auto-resume: same command, same run dir
    assert not resumed.stopped and resumed.step == 10
    assert_same_weights(run_dir_of(full) / "checkpoints" / "last.ckpt", last)
    assert steps_logged(run_dir_of(cfg)) == steps_logged(run_dir_of(full))


def cli(tmp_path: Path, synth_dir: Path, run_name: str, *extra: str) -> list[str]:
    return [
        sys.executable,
        str(ROOT / "src" / "train_generative.py"),
        "--config-name=train_fb_flow_matching",
        *TINY,
        f"data.data_dir={synth_dir}",
        f"data.cache_dir={tmp_path}/cache",
        f"output_dir={tmp_path}/out",
        f"run_name={run_name}",
        "optim.decay_steps=100",
        "max_epochs=4",
        "checkpoint.every_minutes=0",
        *extra,
    ]


def kill_repeatedly(cmd: list[str], last: Path, kills: int, seed: int) -> int:
    """SIGKILL the run (its whole process group) at random moments after it has saved at least
    once, ``kills`` times, then let it finish. Returns how many kills landed."""
    rng = random.Random(seed)
    landed = 0
    for _ in range(kills):
        proc = subprocess.Popen(
            cmd, cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        before = last.stat().st_mtime_ns if last.exists() else 0
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            if last.exists() and last.stat().st_mtime_ns != before:
                break
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.4))
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            landed += 1
        proc.wait()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return landed


@pytest.mark.slow
def test_sigkill_at_random_points_resumes_bitwise(tmp_path, synth_dir):
    ref = subprocess.run(
        cli(tmp_path, synth_dir, "ref"), cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert ref.returncode == 0, ref.stderr[-3000:]
    last = tmp_path / "out" / "killed" / "checkpoints" / "last.ckpt"
    landed = kill_repeatedly(cli(tmp_path, synth_dir, "killed"), last, kills=3, seed=0)
    assert landed >= 1
    assert_same_weights(tmp_path / "out" / "ref" / "checkpoints" / "last.ckpt", last)
    assert not list(last.parent.glob(".*.tmp"))
    # one continuous curve: every step once, in order, as in the uninterrupted run
    assert steps_logged(last.parent.parent) == steps_logged(tmp_path / "out" / "ref")


@pytest.mark.slow
def test_sigkill_two_process_ddp_resumes_bitwise(tmp_path, synth_dir):
    ddp = (
        "trainer=multi_gpu",
        "trainer.devices=2",
        "trainer.accelerator=cpu",
        "trainer.process_group_timeout_s=60",
        "trainer.precision=32",
    )
    ref = subprocess.run(
        cli(tmp_path, synth_dir, "ref2", *ddp),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ref.returncode == 0, ref.stderr[-3000:]
    last = tmp_path / "out" / "killed2" / "checkpoints" / "last.ckpt"
    landed = kill_repeatedly(cli(tmp_path, synth_dir, "killed2", *ddp), last, kills=2, seed=1)
    assert landed >= 1
    assert_same_weights(tmp_path / "out" / "ref2" / "checkpoints" / "last.ckpt", last)
