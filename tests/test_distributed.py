"""Distributed training on CPU: launcher detection and 2-process gloo DDP."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from goalgen.train.distributed import detect_launch, pick_device, set_rendezvous
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


def _fp16_nan_on_rank_1(rank: int, cfg_dict: dict, out: str) -> None:
    """One gloo rank of the test below: 3 fp16 (grad-scaler) steps, rank 1's second loss NaN."""
    import datetime
    import gc
    import json

    import torch.distributed as dist
    from omegaconf import OmegaConf

    from goalgen.checkpoint import network_state
    from goalgen.model.generative import GenerativeModel
    from goalgen.precision import Precision
    from goalgen.train import step as step_module
    from goalgen.train.distributed import DistContext

    # a file store (no free-port race) and a short group timeout: a lost peer or a mismatched
    # collective fails this test within a minute instead of holding the suite for gloo's 30 min
    dist.init_process_group(
        "gloo",
        init_method=f"file://{out}/store",
        rank=rank,
        world_size=2,
        timeout=datetime.timedelta(seconds=60),
    )
    torch.set_num_threads(1)
    step_module.resolve_precision = lambda *_: Precision("16-mixed", "cpu", None, True)
    real_forward = GenerativeModel.forward
    poison = {"on": False}

    def forward(self, *args):
        losses = real_forward(self, *args)
        if poison["on"]:
            losses["loss"] = losses["loss"] * float("nan")
        return losses

    GenerativeModel.forward = forward
    ctx = DistContext(rank, rank, 2, 2, torch.device("cpu"), "gloo")
    learner = step_module.Learner(OmegaConf.create(cfg_dict), ctx, 10, compiled=False)
    g = torch.Generator().manual_seed(rank)
    batch = {
        "context": torch.rand(4, 5, 16, 16, generator=g).gt(0.8).float() * 2 - 1,
        "target": torch.rand(4, 1, 16, 16, generator=g).gt(0.9).float() * 2 - 1,
        "index": torch.arange(4) + 4 * rank,
    }
    outcomes = []
    for i in range(3):
        poison["on"] = rank == 1 and i == 1
        outcomes.append(learner.train_step(batch, 0).outcome)
    digest = sum(float(v.double().sum()) for v in network_state(learner.model.network).values())
    with open(f"{out}/rank{rank}.json", "w") as f:
        json.dump(
            {
                "outcomes": outcomes,
                "scale": learner.scaler.get_scale(),
                "w": digest,
                "broadcast_buffers": learner.train_model.broadcast_buffers,
            },
            f,
        )
    # tear down as entry.run does: the DDP model goes before its process group, with both ranks
    # there (freed after destroy_process_group, it hung one rank's exit in ~1 of 30 runs)
    del learner
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.slow
def test_fp16_nonfinite_loss_on_one_rank_is_skipped_by_every_rank(tiny_cfg, tmp_path):
    """A NaN loss on rank 1 only: both ranks skip that step (an all-reduced flag), the grad
    scaler backs off on both, and the next steps apply with identical weights. Before, rank 0
    took the fp16 'overflow' branch and rank 1 the NaN branch without scaler.update(), whose
    next unscale_() raised."""
    import json

    import torch.multiprocessing as mp
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_container(tiny_cfg("train_fb_flow_matching"), resolve=True)
    # daemonic ranks: if pytest-timeout ends this test, exiting does not wait on them
    mp.spawn(_fp16_nan_on_rank_1, args=(cfg, str(tmp_path)), nprocs=2, daemon=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for r in ranks:
        assert r["outcomes"] == ["applied", "nonfinite", "applied"], r
        assert r["scale"] == 2.0**16 / 2  # one back-off, no growth
        assert r["broadcast_buffers"] is False  # constant buffers: not sent every step
    assert ranks[0]["w"] == ranks[1]["w"]


def test_more_local_ranks_than_gpus_is_refused(monkeypatch):
    """Two ranks on one GPU fail in NCCL ("Duplicate GPU"): refused before, with the count
    (a simulated node of 2 GPUs; a task bound to its own GPU sees one and uses it)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda index: None)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert pick_device("gpu", 1) == torch.device("cuda", 1)
    with pytest.raises(RuntimeError, match="local rank 2 but this node has 2 GPUs"):
        pick_device("gpu", 2)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert pick_device("auto", 3) == torch.device("cuda", 0)


def test_an_srun_step_meets_on_its_own_first_node(monkeypatch, caplog):
    """The step's node list, not the job's (a step need not start on the job's first node),
    and it wins over MASTER_ADDR/PORT exported from the submitting shell."""
    import logging

    env = {
        "SLURM_STEP_ID": "0",
        "SLURM_NTASKS": "4",
        "SLURM_PROCID": "2",
        "SLURM_LOCALID": "0",
        "SLURM_JOB_ID": "1234",
        "SLURM_JOB_NODELIST": "gpu01,gpu02,gpu03",
        "SLURM_STEP_NODELIST": "gpu02,gpu03",
        "SLURM_NTASKS_PER_NODE": "2",
    }
    launch = detect_launch(env)
    assert launch.launcher == "srun" and launch.master_addr == "gpu02"
    monkeypatch.setenv("MASTER_ADDR", "login-node")
    monkeypatch.setenv("MASTER_PORT", "29500")
    with caplog.at_level(logging.WARNING):
        set_rendezvous(launch)
    assert os.environ["MASTER_ADDR"] == "gpu02" and os.environ["MASTER_PORT"] == "21234"
    assert "MASTER_ADDR=login-node from the environment ignored" in caplog.text
    # torchrun's own values are left as they are
    torchrun = detect_launch(
        {"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "a", "MASTER_PORT": "1"}
    )
    set_rendezvous(torchrun)
    assert os.environ["MASTER_ADDR"] == "gpu02"
