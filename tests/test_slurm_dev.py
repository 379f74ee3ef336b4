"""Integration tests against the real local Slurm cluster from slurm/dev (no mocks).

Every job carries a short ``--time`` so Slurm itself reaps it if a test goes wrong, and every
wait is bounded. The whole file takes about 20 s (plus ≈ 3 s to start a stopped cluster).
"""

from __future__ import annotations

import re
from textwrap import dedent

import pytest

from slurm_cluster import kill_leftovers, wait_until

pytestmark = pytest.mark.slurm


def _lines(path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def _pids(path) -> list[int]:
    return [int(m) for m in re.findall(r"pid=(\d+)", path.read_text())] if path.exists() else []


def test_gpu_batch_job_completes_with_cuda_visible_devices(slurm_cluster, tmp_path):
    out = tmp_path / "gpu.out"
    script = dedent("""\
        #!/bin/bash
        echo "CVD=${CUDA_VISIBLE_DEVICES-unset}"
        echo "NODE=$SLURMD_NODENAME"
        """)
    job = slurm_cluster.submit(script, "--gres=gpu:1", "--time=2", f"--output={out}")

    assert slurm_cluster.wait_job(job, timeout=60) == "COMPLETED"
    text = out.read_text()
    assert re.search(r"^CVD=[01]$", text, re.M), text
    assert re.search(r"^NODE=n[12]$", text, re.M), text

    def completed_record():
        rec = slurm_cluster.sacct(job, "State", "ExitCode", "AllocTRES")
        return rec if rec and rec[0] == "COMPLETED" else None

    state, exit_code, tres = wait_until(completed_record, timeout=15, what="sacct record")
    assert (state, exit_code) == ("COMPLETED", "0:0")
    assert "gres/gpu=1" in tres


def test_two_node_job_runs_a_step_on_n1_and_n2(slurm_cluster, tmp_path):
    out = tmp_path / "nodes.out"
    # All virtual nodes share this host, so hostname prints the same name twice;
    # SLURMD_NODENAME tells the nodes apart.
    script = dedent("""\
        #!/bin/bash
        echo "NODELIST=$SLURM_JOB_NODELIST"
        srun hostname | sed 's/^/host /'
        srun bash -c 'echo "step on $SLURMD_NODENAME"'
        """)
    job = slurm_cluster.submit(
        script, "--nodes=2", "--ntasks-per-node=1", "--time=2", f"--output={out}"
    )

    assert slurm_cluster.wait_job(job, timeout=60) == "COMPLETED"
    text = out.read_text()
    assert "NODELIST=n[1-2]" in text, text
    assert len(re.findall(r"^host \S+$", text, re.M)) == 2, text
    assert sorted(re.findall(r"^step on (\S+)$", text, re.M)) == ["n1", "n2"], text


def test_requeue_restarts_job_with_restart_count(slurm_cluster, tmp_path):
    starts = tmp_path / "starts.log"
    # exec: one process per run, nothing left behind if Slurm's kill misses a child
    script = dedent(f"""\
        #!/bin/bash
        echo "start restart=${{SLURM_RESTART_COUNT:-0}} pid=$$" >> {starts}
        exec sleep 60
        """)
    job = slurm_cluster.submit(
        script,
        "--requeue",
        "--time=3",
        f"--output={tmp_path / 'requeue.out'}",
        "--open-mode=append",
    )
    try:
        wait_until(lambda: len(_lines(starts)) >= 1, timeout=20, what="first start")
        slurm_cluster.run("scontrol", "requeue", job)
        # restart comes cred_expire (10 s) + 1 s later; the rest is scheduler slack
        wait_until(lambda: len(_lines(starts)) >= 2, timeout=30, what="restart after requeue")
        runs = [line.split(" pid=")[0] for line in _lines(starts)]
        assert runs == ["start restart=0", "start restart=1"]
        assert "Restarts=1" in slurm_cluster.run("scontrol", "show", "job", job)
    finally:
        slurm_cluster.cancel(job)
        state = slurm_cluster.wait_job(job, timeout=30)
        kill_leftovers(_pids(starts), "sleep 60")
    assert state == "CANCELLED"


def test_scancel_signal_reaches_step(slurm_cluster, tmp_path):
    marks = tmp_path / "signal.log"
    # bounded loop (60 s) so that a step Slurm lost track of cannot run forever
    script = dedent(f"""\
        #!/bin/bash
        srun bash -c 'trap "echo got-USR1 >> {marks}; exit 0" USR1
                      echo "ready pid=$$" >> {marks}
                      for _ in $(seq 300); do sleep 0.2; done'
        """)
    job = slurm_cluster.submit(script, "--time=2", f"--output={tmp_path / 'signal.out'}")
    try:
        wait_until(lambda: _pids(marks), timeout=20, what="step ready")
        slurm_cluster.run("scancel", "--signal=USR1", job)
        wait_until(lambda: "got-USR1" in _lines(marks), timeout=15, what="USR1 in the step")
    except BaseException:
        slurm_cluster.cancel(job)
        raise
    finally:
        state = slurm_cluster.wait_job(job, timeout=30)
        kill_leftovers(_pids(marks), "seq 300")
    # Without --batch/--full the batch shell does not get the signal; the step's trap exits 0,
    # so the job ends normally.
    assert state == "COMPLETED"
