"""Distributed training on CPU: launcher detection and 2-process gloo DDP."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from goalgen.train.distributed import detect_launch
from goalgen.train.entry import launch


def test_torchrun_variables_win_over_slurm():
    env = {"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4",
           "MASTER_ADDR": "n1", "MASTER_PORT": "29500",
           "SLURM_STEP_ID": "0", "SLURM_NTASKS": "1", "SLURM_PROCID": "0"}
    e = detect_launch(env)
    assert (e.launcher, e.rank, e.world_size, e.local_rank, e.local_world_size) == (
        "torchrun", 3, 8, 1, 4)
    assert (e.master_addr, e.master_port) == ("n1", 29500)


def test_srun_tasks():
    env = {"SLURM_STEP_ID": "0", "SLURM_NTASKS": "4", "SLURM_PROCID": "2", "SLURM_LOCALID": "0",
           "SLURM_NTASKS_PER_NODE": "2", "SLURM_JOB_ID": "1234", "SLURM_JOB_NODELIST": "zz[3-4]"}
    e = detect_launch(env)
    assert (e.launcher, e.rank, e.world_size, e.local_rank, e.local_world_size) == (
        "srun", 2, 4, 0, 2)
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
    double = tiny_cfg("train_fb_flow_matching", *common, "batch_size=8", "run_name=two",
                      "trainer=multi_gpu", "trainer.devices=2", "trainer.accelerator=cpu",
                      "trainer.log_every_n_steps=1")
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
    assert curve(runs["one"], "val_loss")[4] == pytest.approx(curve(runs["two"], "val_loss")[4],
                                                              rel=1e-4)
