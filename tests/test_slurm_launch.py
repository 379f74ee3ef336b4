"""The four launch doors on the real local Slurm (slurm/dev), and preemption through them.

Doors: the sbatch template (slurm/train.sbatch), ``torchx run -s slurm`` (jobs/components.py
via jobs/torchx_slurm.sh), ``goalgen-submit`` (submitit), and a Hydra sweep through
``hydra/launcher=slurm``. Preemption: ``scontrol requeue`` of a running job (exact resume,
bitwise), a time limit with an early ``--signal``, submitit's ``job._interrupt()``, and a
requeued sweep point. Tiny CPU configs (conftest's TINY); every job has a ``--time`` and every
wait a bound; each test cancels its jobs. Durations and resume latencies are printed (``-s``).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import TINY
from run_helpers import assert_same_weights, steps_logged
from slurm_cluster import wait_until

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ENTRY = str(ROOT / "src" / "train_generative.py")
FM = "train_fb_flow_matching"
STAMP = re.compile(r"\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+)\]")


# ----------------------------------------------------------------------------- helpers
def job_env(cluster) -> dict[str, str]:
    """The cluster's client env, with this venv first on PATH and as the template's $PYTHON."""
    return {
        **cluster.env,
        "PATH": f"{BIN}{os.pathsep}{cluster.env.get('PATH', '')}",
        "PYTHON": sys.executable,
    }


def overrides(tmp_path: Path, synth_dir: Path, run_name: str, *extra: str) -> list[str]:
    return [
        *TINY,
        f"data.data_dir={synth_dir}",
        f"data.cache_dir={tmp_path}/cache",
        f"output_dir={tmp_path}/out",
        f"run_name={run_name}",
        "optim.decay_steps=100",
        "trainer.process_group_timeout_s=120",
        *extra,
    ]


def sbatch(cluster, tmp_path: Path, options: list[str], args: list[str]) -> str:
    out = subprocess.run(
        [
            "sbatch",
            "--parsable",
            f"--chdir={ROOT}",
            *options,
            str(ROOT / "slurm" / "train.sbatch"),
            f"--config-name={FM}",
            *args,
        ],
        env=job_env(cluster),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    job = out.stdout.strip().split(";")[0]
    cluster.submitted.append(job)
    return job


def last_state(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)


def saved_step(run_dir: Path) -> int:
    try:
        return int(last_state(run_dir)["step"])
    except Exception:  # not written yet, or being replaced
        return -1


def assert_trained(run_dir: Path, step: int) -> None:
    assert last_state(run_dir)["step"] == step
    assert list((run_dir / "checkpoints").glob("epoch*-val_loss*.ckpt"))
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))


def step_wall_time(run_dir: Path, step: int) -> float:
    """When ``step`` was logged (TensorBoard wall time of its train_loss)."""
    acc = EventAccumulator(str(run_dir / "tensorboard")).Reload()
    return next(e.wall_time for e in acc.Scalars("train_loss") if e.step == step)


def stamp(line: str) -> float:
    return datetime.strptime(STAMP.search(line).group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()


def first_line(text: str, needle: str) -> str:
    return next(line for line in text.splitlines() if needle in line)


def restarts(cluster, job: str) -> int:
    m = re.search(r"Restarts=(\d+)", cluster.run("scontrol", "show", "job", job, check=False))
    return int(m.group(1)) if m else -1


def elapsed(cluster, job: str) -> str:
    rec = cluster.sacct(job, "Elapsed", "NodeList")
    return " on ".join(rec) if rec else "?"


def report(what: str, **numbers) -> None:
    print(f"\n[{what}] " + ", ".join(f"{k}={v}" for k, v in numbers.items()))


# ----------------------------------------------------------------------------- the doors
def test_sbatch_template_two_tasks_on_two_nodes(slurm_cluster, tmp_path, synth_dir):
    log = tmp_path / "sb.out"
    t0 = time.monotonic()
    job = sbatch(
        slurm_cluster,
        tmp_path,
        [
            "--nodes=2",
            "--ntasks-per-node=1",
            "--gpus-per-node=1",
            "--cpus-per-task=1",
            "--time=5",
            f"--output={log}",
        ],
        overrides(tmp_path, synth_dir, "sb", "max_epochs=2"),
    )
    try:
        assert slurm_cluster.wait_job(job, timeout=240) == "COMPLETED", log.read_text()[-3000:]
    finally:
        slurm_cluster.cancel(job)
    text = log.read_text()
    assert "rank 0/2 (local 0) on cpu via srun" in text and "rank 1/2 (local 0)" in text
    assert "weights identical on all 2 ranks" in text
    assert "effective batch 16 (8 x 2)" in text  # both ranks in one process group
    assert_trained(tmp_path / "out" / "sb", step=4)  # 43 scenes // 2 ranks // 8 = 2 per epoch
    assert slurm_cluster.sacct(job, "NodeList") == ["n[1-2]"]
    report(
        "sbatch 2 tasks", wall_s=round(time.monotonic() - t0, 1), job=elapsed(slurm_cluster, job)
    )


def test_torchx_slurm_two_nodes(slurm_cluster, tmp_path, synth_dir):
    env = job_env(slurm_cluster)
    t0 = time.monotonic()
    out = subprocess.run(
        [
            str(ROOT / "jobs" / "torchx_slurm.sh"),
            "-cfg",
            "time=5",
            f"{ROOT / 'jobs' / 'components.py'}:train",
            "--nnodes",
            "2",
            "--nproc_per_node",
            "1",
            "--cpu",
            "1",
            "--memMB",
            "1000",
            "--rdzv_port",
            "29631",
            "--script",
            ENTRY,
            "--",
            f"--config-name={FM}",
            *overrides(tmp_path, synth_dir, "tx", "max_epochs=2"),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    handle = re.search(r"slurm://torchx/(\d+)", out.stdout + out.stderr)
    assert handle, out.stdout + out.stderr
    job = handle.group(1)
    slurm_cluster.submitted.append(job)
    try:
        assert slurm_cluster.wait_job(job, timeout=240) == "COMPLETED"
    finally:
        slurm_cluster.cancel(job)
    status = subprocess.run(
        [str(BIN / "torchx"), "status", handle.group(0)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "SUCCEEDED" in status.stdout + status.stderr
    # one heterogeneous group (one torchrun) per node, workers ranked by torchrun
    groups = slurm_cluster.run("sacct", "-j", job, "-n", "-P", "-o", "JobID,NodeList")
    assert f"{job}+0|n1" in groups and f"{job}+1|n2" in groups
    logs = "".join(p.read_text() for p in tmp_path.glob(f"slurm-{job}-train_generative-*.out"))
    assert "rank 0/2" in logs and "rank 1/2" in logs and "via torchrun" in logs
    assert "weights identical on all 2 ranks" in logs
    assert_trained(tmp_path / "out" / "tx", step=4)
    report(
        "torchx slurm 2x1", wall_s=round(time.monotonic() - t0, 1), job=elapsed(slurm_cluster, job)
    )


def test_goalgen_submit_two_tasks(slurm_cluster, tmp_path, synth_dir):
    t0 = time.monotonic()
    out = subprocess.run(
        [
            str(BIN / "goalgen-submit"),
            "--partition",
            "debug",
            "--tasks-per-node",
            "2",
            "--gpus-per-node",
            "2",
            "--cpus-per-task",
            "1",
            "--time",
            "5",
            "--wait",
            *overrides(tmp_path, synth_dir, "sub", "max_epochs=2"),
        ],
        cwd=tmp_path,
        env=job_env(slurm_cluster),
        capture_output=True,
        text=True,
        timeout=300,
    )
    job = re.search(r"submitted job (\d+)", out.stdout)
    if job:
        slurm_cluster.submitted.append(job.group(1))
        slurm_cluster.cancel(job.group(1))
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    run_dir = tmp_path / "out" / "sub"
    assert f"run dir: {run_dir}" in out.stdout and "done: {" in out.stdout
    assert "'step': 4" in out.stdout
    assert_trained(run_dir, step=4)
    rank1 = next((run_dir / "submitit").glob("*_1_log.err")).read_text()
    assert "rank 1/2 (local 1) on cpu via srun" in rank1
    assert "weights identical on all 2 ranks" in (run_dir / "train.log").read_text()
    assert (run_dir / ".hydra" / "config.yaml").exists() and (run_dir / "train.log").exists()
    report(
        "goalgen-submit 2 tasks",
        wall_s=round(time.monotonic() - t0, 1),
        job=elapsed(slurm_cluster, job.group(1)),
    )


def test_hydra_sweep_on_slurm_and_a_requeued_point_resumes_in_its_folder(
    slurm_cluster, tmp_path, synth_dir
):
    epochs = 50  # long enough to requeue mid-run on an idle machine (~0.1 s/epoch)
    cmd = [
        sys.executable,
        ENTRY,
        f"--config-name={FM}",
        "-m",
        "hydra/launcher=slurm",
        "hydra.launcher.gpus_per_node=null",
        "hydra.launcher.cpus_per_task=1",
        "hydra.launcher.timeout_min=10",
        *overrides(
            tmp_path,
            synth_dir,
            "x",
            f"max_epochs={epochs}",
            "checkpoint.every_minutes=0",
            "base_lr=1e-4,5e-5",
        ),
    ]
    cmd.remove("run_name=x")  # each point names itself (a pure function of its overrides)
    t0 = time.monotonic()
    proc = subprocess.Popen(
        cmd,
        cwd=tmp_path,
        env=job_env(slurm_cluster),
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    array, ok = None, False
    try:
        sub = wait_until(
            lambda: sorted((tmp_path / "out").glob("*/.submitit/*_0")),
            120,
            what="the sweep's array job",
        )
        array = sub[0].name.split("_")[0]
        slurm_cluster.submitted.append(array)
        point0 = wait_until(
            lambda: [p.parents[1] for p in (tmp_path / "out").glob("*/0/checkpoints/last.ckpt")],
            180,
            what="point 0 training",
        )[0]
        wait_until(lambda: saved_step(point0) >= 5, 120, what="point 0 mid-run")
        requeued_at = time.time()
        slurm_cluster.run("scontrol", "requeue", f"{array}_0")
        output, _ = proc.communicate(timeout=420)
        ok = proc.returncode == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        # only after a failure: -m returns once every task wrote its submitit result, while
        # Slurm may still hold the element RUNNING; a scancel then is accounted CANCELLED
        if array and not ok:
            slurm_cluster.cancel(array)
    assert proc.returncode == 0, output[-4000:]
    for k in (0, 1):
        slurm_cluster.wait_job(f"{array}_{k}", timeout=120)
    points = sorted(
        (tmp_path / "out").glob("*/[01]/checkpoints/last.ckpt"), key=lambda p: p.parents[1].name
    )
    assert [p.parents[1].name for p in points] == ["0", "1"]
    assert point0 == points[0].parents[1]  # the requeued point came back to the same folder
    # the -m process returned only after the requeued point had really finished
    for p in points:
        assert_trained(p.parents[1], step=5 * epochs)
    log0 = (point0 / "train.log").read_text()
    resumed = first_line(log0, "Resuming from")
    assert f"Resuming from {point0}/checkpoints/last.ckpt at epoch" in resumed
    assert "Resuming" not in (points[1].parents[1] / "train.log").read_text()
    assert restarts(slurm_cluster, f"{array}_0") == 1
    assert slurm_cluster.state(f"{array}_0") == "COMPLETED"
    # the stopped attempt held its result back (goalgen.launch.SweepRequeueCallback)
    sub_log = "".join(
        p.read_text() for p in (tmp_path / "out").glob(f"*/.submitit/{array}_0/{array}_0_0_log.*")
    )
    assert "stopped for a requeue: exiting without a submitit result" in sub_log
    report(
        "hydra sweep 2 points, point 0 requeued",
        wall_s=round(time.monotonic() - t0, 1),
        requeue_to_resume_line_s=round(stamp(resumed) - requeued_at, 1),
    )


# ----------------------------------------------------------------------------- preemption
def test_scontrol_requeue_resumes_and_matches_an_uninterrupted_run_bitwise(
    slurm_cluster, tmp_path, synth_dir
):
    opts = [
        "--nodes=1",
        "--ntasks-per-node=1",
        "--gpus-per-node=0",
        "--cpus-per-task=2",
        "--time=10",
    ]
    common = ("max_epochs=40", "checkpoint.every_minutes=0")
    ref_log, log = tmp_path / "ref.out", tmp_path / "rq.out"
    t0 = time.monotonic()
    ref = sbatch(
        slurm_cluster,
        tmp_path,
        [*opts, f"--output={ref_log}"],
        overrides(tmp_path, synth_dir, "ref", *common),
    )
    job = sbatch(
        slurm_cluster,
        tmp_path,
        [*opts, f"--output={log}", "--open-mode=append"],
        overrides(tmp_path, synth_dir, "rq", *common),
    )
    run_dir = tmp_path / "out" / "rq"
    try:
        wait_until(lambda: saved_step(run_dir) >= 8, 240, what="the job mid-run")
        requeued_at = time.time()
        slurm_cluster.run("scontrol", "requeue", job)
        assert slurm_cluster.wait_job(job, timeout=300) == "COMPLETED", log.read_text()[-3000:]
        assert slurm_cluster.wait_job(ref, timeout=300) == "COMPLETED"
    finally:
        slurm_cluster.cancel(job, ref)
    text = log.read_text()
    assert "restart 0 on" in text and "restart 1 on" in text  # SLURM_RESTART_COUNT=1
    assert "received SIGTERM" in text and "last.ckpt saved" in text
    resumed = first_line(text, "Resuming from")
    m = re.search(r"Resuming from (\S+) at epoch (\d+) step (\d+)", resumed)
    assert m and m.group(1) == str(run_dir / "checkpoints" / "last.ckpt")
    assert 0 < int(m.group(3)) < 200
    assert restarts(slurm_cluster, job) == 1
    assert_same_weights(
        tmp_path / "out" / "ref" / "checkpoints" / "last.ckpt",
        run_dir / "checkpoints" / "last.ckpt",
    )
    assert steps_logged(run_dir) == steps_logged(tmp_path / "out" / "ref")
    back = first_line(text, "restart 1 on")
    back_at = datetime.fromisoformat(back.rsplit(" ", 1)[1]).timestamp()
    report(
        "sbatch scontrol requeue",
        wall_s=round(time.monotonic() - t0, 1),
        resumed_at_step=m.group(3),
        requeue_to_running_s=round(back_at - requeued_at, 1),
        requeue_to_resume_line_s=round(stamp(resumed) - requeued_at, 1),
        requeue_to_first_step_s=round(
            step_wall_time(run_dir, int(m.group(3)) + 1) - requeued_at, 1
        ),
        job=elapsed(slurm_cluster, job),
    )


def test_time_limit_signal_requeues_and_the_job_finishes(slurm_cluster, tmp_path, synth_dir):
    """--time=2 with USR1 60 s before the limit. slurmctld checks every 30 s and sends the
    signal up to one period early (at the first check past limit - 60 s - 30 s), so it comes
    30-60 s after the start. The loop saves and requeues; the job comes back with a fresh limit,
    resumes and finishes.

    Steps here take 0.01-0.4 s depending on the machine's load, so no fixed run length is
    sure to outlast the signal and still end soon. The run length comes from an experiment
    file (``--config-dir``): "endless" for the first attempt, set to a few more epochs while
    the requeued job is pending. The command, hence the run dir, never changes."""
    exp = tmp_path / "cfg" / "experiment" / "tl.yaml"
    exp.parent.mkdir(parents=True)
    exp.write_text("# @package _global_\nmax_epochs: 100000\n")
    log = tmp_path / "tl.out"
    run_dir = tmp_path / "out" / "tl"
    t0 = time.monotonic()
    job = sbatch(
        slurm_cluster,
        tmp_path,
        [
            "--time=2",
            "--signal=USR1@60",
            "--ntasks-per-node=1",
            "--gpus-per-node=0",
            "--cpus-per-task=2",
            f"--output={log}",
        ],
        [f"--config-dir={exp.parents[1]}", "experiment=tl", *overrides(tmp_path, synth_dir, "tl")],
    )
    try:
        wait_until(
            lambda: "requeued Slurm job" in (log.read_text() if log.exists() else ""),
            240,
            what="the time-limit signal and the requeue",
        )
        stopped = last_state(run_dir)["epoch"]
        epochs = stopped + 10
        exp.write_text(f"# @package _global_\nmax_epochs: {epochs}\n")
        state = slurm_cluster.wait_job(job, timeout=600)
    finally:
        slurm_cluster.cancel(job)
    text = log.read_text()
    assert state == "COMPLETED", text[-3000:]
    first = text.split("restart 1 on")[0]
    assert "received SIGUSR1" in first and f"stopped by SIGUSR1 at epoch {stopped}" in first
    m = re.search(r"Resuming from (\S+) at epoch (\d+) step (\d+)", text)
    assert m and m.group(1) == str(run_dir / "checkpoints" / "last.ckpt")
    assert int(m.group(2)) == stopped
    assert "TIMEOUT" not in slurm_cluster.run("sacct", "-j", job, "-n", "-o", "State")
    assert_trained(run_dir, step=5 * epochs)
    starts = [
        datetime.fromisoformat(line.rsplit(" ", 1)[1]).timestamp()
        for line in text.splitlines()
        if line.startswith("[train.sbatch]")
    ]
    signalled = stamp(first_line(text, "stopped by SIGUSR1"))
    report(
        "time limit 2 min + USR1@60",
        wall_s=round(time.monotonic() - t0, 1),
        attempts=len(starts),
        requeues=restarts(slurm_cluster, job),
        start_to_signal_s=round(signalled - starts[0], 1),
        signal_to_running_s=round(starts[1] - signalled, 1),
        signal_to_resume_line_s=round(stamp(first_line(text, "Resuming from")) - signalled, 1),
    )


def test_submitit_interrupt_requeues_and_finishes(slurm_cluster, tmp_path, synth_dir):
    from goalgen import launch

    epochs = 80
    args = launch.build_parser().parse_args(
        [
            "--partition",
            "debug",
            "--nodes",
            "2",
            "--tasks-per-node",
            "1",
            "--gpus-per-node",
            "1",
            "--cpus-per-task",
            "1",
            "--time",
            "10",
            *overrides(
                tmp_path, synth_dir, "intr", f"max_epochs={epochs}", "checkpoint.every_minutes=0"
            ),
        ]
    )
    t0 = time.monotonic()
    job = launch.submit(args)
    slurm_cluster.submitted.append(job.job_id)
    run_dir = tmp_path / "out" / "intr"
    try:
        wait_until(lambda: saved_step(run_dir) >= 6, 240, what="the job mid-run")
        interrupted_at = time.time()
        job._interrupt()  # SIGTERM, then USR2 (submitit's preemption test hook)
        wait_until(lambda: restarts(slurm_cluster, job.job_id) >= 1, 60, what="the requeue")
        assert slurm_cluster.wait_job(job.job_id, timeout=300) == "COMPLETED"
        results = job.results()
    except BaseException:
        slurm_cluster.cancel(job.job_id)
        raise
    assert [r["step"] for r in results] == [2 * epochs] * 2
    assert results[0]["run_dir"] == str(run_dir)
    assert_trained(run_dir, step=2 * epochs)
    assert restarts(slurm_cluster, job.job_id) == 1
    logs = run_dir / "submitit"
    # the ranks agree on a stop at the next step: the rank whose slurmd delivers first is
    # enough, and the two scancel signals (TERM, then USR2) may arrive in either order
    outs = [(logs / f"{job.job_id}_{rank}_log.out").read_text() for rank in (0, 1)]
    assert any(re.search(r"received SIG(TERM|USR2)", out) for out in outs), outs
    for rank in (0, 1):  # the stopped attempt reported nothing; the requeued one did
        text = (logs / f"{job.job_id}_{rank}_log.err").read_text()
        assert "for a requeue; exiting without a result" in text
        assert "(restart 1)" in text and "Job completed successfully" in text
    resumed = first_line((run_dir / "train.log").read_text(), "Resuming from")
    report(
        "submitit _interrupt 2 tasks",
        wall_s=round(time.monotonic() - t0, 1),
        interrupt_to_resume_line_s=round(stamp(resumed) - interrupted_at, 1),
        job=elapsed(slurm_cluster, job.job_id),
    )
