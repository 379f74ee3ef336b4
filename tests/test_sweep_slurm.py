"""Sweeps on the real local Slurm (slurm/dev): DDP inside each point with a requeue in the
middle, and an Optuna (TPE) search through the same launcher preset; ``goalgen-sweep`` reads
both back (values asserted against the checkpoints and sacct).

Why a requeued 2-task point was once accounted CANCELLED: hydra-submitit-launcher's ``-m``
process returns as soon as every task has written its submitit result pickle
(``Job.done()`` looks for the file before asking sacct), while the tasks are still exiting
(gloo teardown, interpreter shutdown; the second task and the srun step end later than the
first). The array element is then still RUNNING, and a test that ``scancel``s its jobs in a
``finally`` right after the ``-m`` process returns cancels it: sacct says ``CANCELLED by 0``.
Reproduced here every time by ``scancel`` at that moment. These tests wait for a terminal
sacct state before they assert or clean up, and cancel only what is still queued when the
``-m`` process failed.
"""

from __future__ import annotations

import csv
import io
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import TINY
from goalgen.checkpoint import rank_checkpoints
from goalgen.sweep import main as sweep_main
from goalgen.sweep import read_sweep
from slurm_cluster import wait_until

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ENTRY = str(ROOT / "src" / "train_generative.py")
FM = "train_fb_flow_matching"


def job_env(cluster) -> dict[str, str]:
    return {**cluster.env, "PATH": f"{BIN}{os.pathsep}{cluster.env.get('PATH', '')}"}


def sweep_command(tmp_path: Path, synth_dir: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        ENTRY,
        f"--config-name={FM}",
        "-m",
        "hydra/launcher=slurm",
        "hydra.launcher.gpus_per_node=null",
        "hydra.launcher.cpus_per_task=1",
        "hydra.launcher.timeout_min=10",
        *TINY,
        f"data.data_dir={synth_dir}",
        f"data.cache_dir={tmp_path}/cache",
        f"output_dir={tmp_path}/out",
        "optim.decay_steps=100",
        "trainer.process_group_timeout_s=120",
        "checkpoint.every_minutes=0",
        *extra,
    ]


def first_run_dir(proc, tmp_path: Path) -> Path:
    """Point 0's run dir once it has saved a checkpoint (fails at once if the -m process died)."""

    def found():
        if proc.poll() is not None:
            raise RuntimeError(f"the sweep exited early:\n{proc.stdout.read()[-3000:]}")
        return [p.parents[1] for p in (tmp_path / "out").glob("*/0/checkpoints/last.ckpt")]

    return wait_until(found, 240, what="point 0 training")[0]


def saved_step(run_dir: Path) -> int:
    try:
        return int(torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["step"])
    except Exception:  # not written yet, or being replaced
        return -1


def arrays_of(sweep_dir: Path) -> list[str]:
    """The Slurm array ids of a sweep (its .submitit/ARRAY_INDEX folders)."""
    names = [p.name for p in (sweep_dir / ".submitit").iterdir()]
    return sorted({n.split("_")[0] for n in names if re.fullmatch(r"\d+_\d+", n)}, key=int)


def sacct_states(cluster, array: str) -> dict[str, list[str]]:
    """{"ARRAY_INDEX": [state of every attempt, oldest first]} (sacct -D -X)."""
    out = cluster.run("sacct", "-D", "-X", "-n", "-P", "-o", "JobID,State", "-j", array)
    states: dict[str, list[str]] = {}
    for line in out.splitlines():
        job, state = line.split("|")
        states.setdefault(job, []).append(state.split()[0])
    return states


def wait_all_final(cluster, jobs: list[str], timeout: float = 120) -> dict[str, str]:
    """Wait until sacct has a final state for every job (the -m process returns earlier)."""
    return {job: cluster.wait_job(job, timeout=timeout) for job in jobs}


def run_sweep(cluster, cmd: list[str], tmp_path: Path, during=None, timeout: float = 540):
    """Run the -m command; ``during(proc)`` runs while it is in flight. Returns (rc, output,
    states seen at the moment the -m process returned)."""
    proc = subprocess.Popen(
        cmd,
        cwd=tmp_path,
        env=job_env(cluster),
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    ok = False
    try:
        if during is not None:
            during(proc)
        output, _ = proc.communicate(timeout=timeout)
        at_return = cluster.run("squeue", "-h", "-o", "%i %T", check=False).split("\n")
        ok = proc.returncode == 0
        return proc.returncode, output, [s for s in at_return if s]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if not ok:  # only a failed sweep leaves jobs to clean up; never a finishing one
            for array in arrays_of_all(tmp_path):
                cluster.cancel(array)


def arrays_of_all(tmp_path: Path) -> list[str]:
    return sorted(
        {a for d in (tmp_path / "out").glob("*/.submitit") for a in arrays_of(d.parent)}, key=int
    )


def sweep_dir_of(tmp_path: Path) -> Path:
    [found] = [p.parent for p in (tmp_path / "out").glob("*/.submitit")]
    return found


def goalgen_sweep_csv(sweep_dir: Path, capsys, *args: str) -> list[dict[str, str]]:
    capsys.readouterr()
    sweep_main([str(sweep_dir), "--csv", *args])
    return list(csv.DictReader(io.StringIO(capsys.readouterr().out)))


def report(what: str, **numbers) -> None:
    print(f"\n[{what}] " + ", ".join(f"{k}={v}" for k, v in numbers.items()))


# ----------------------------------------------------------------------------- DDP + requeue
def test_two_task_points_with_a_requeue_complete_in_sacct_and_agree_across_ranks(
    slurm_cluster, tmp_path, synth_dir, capsys
):
    epochs = 60  # 2 ranks: 2 steps per epoch, ~0.2 s each here; long enough to requeue mid-run
    cmd = sweep_command(
        tmp_path,
        synth_dir,
        "hydra.launcher.tasks_per_node=2",
        f"max_epochs={epochs}",
        "base_lr=1e-4,5e-5",
    )
    seen = {}

    def requeue_point0(proc):
        point0 = first_run_dir(proc, tmp_path)
        wait_until(lambda: saved_step(point0) >= 6, 120, what="point 0 mid-run")
        array = arrays_of_all(tmp_path)[0]
        slurm_cluster.submitted.append(array)
        slurm_cluster.run("scontrol", "requeue", f"{array}_0")
        seen.update(array=array, point0=point0, requeued_at_step=saved_step(point0))
        # goalgen-sweep while the sweep runs: point 0 is back in the queue (or running again)
        wait_until(
            lambda: "REQUEUED" in sacct_states(slurm_cluster, array).get(f"{array}_0", []),
            60,
            what="the requeue in sacct",
        )
        p0 = read_sweep(sweep_dir_of(tmp_path))[0]
        assert p0.state in ("pending (requeued 1x)", "running (requeued 1x)"), p0
        assert p0.requeues == 1 and p0.run_dir == point0  # Hydra's rule, no result yet
        seen["state_while_requeued"] = p0.state

    t0 = time.monotonic()
    rc, output, at_return = run_sweep(slurm_cluster, cmd, tmp_path, during=requeue_point0)
    wall = time.monotonic() - t0
    assert rc == 0, output[-4000:]
    array, point0 = seen["array"], seen["point0"]
    # the -m process may return while the elements are still winding down: wait for sacct
    final = wait_all_final(slurm_cluster, [f"{array}_0", f"{array}_1"])
    assert final == {f"{array}_0": "COMPLETED", f"{array}_1": "COMPLETED"}
    attempts = sacct_states(slurm_cluster, array)
    assert attempts[f"{array}_0"] == ["REQUEUED", "COMPLETED"]
    assert attempts[f"{array}_1"] == ["COMPLETED"]

    sweep_dir = sweep_dir_of(tmp_path)
    runs = {p.parent.name: p.parent for p in (tmp_path / "out").glob("*/[01]/train.log")}
    assert runs["0"] == point0
    for num, run in runs.items():
        log = (run / "train.log").read_text()
        # the loop all-gathers a hash of every rank's weights at the end and fails on a mismatch
        assert "weights identical on all 2 ranks" in log.rsplit("Resuming from", 1)[-1], num
        assert "effective batch 16 (8 x 2)" in log  # two DDP ranks
        state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
        assert state["epoch"] == epochs
    assert (
        f"Resuming from {point0}/checkpoints/last.ckpt at epoch"
        in (point0 / "train.log").read_text()
    )

    # goalgen-sweep: the rows, checked against the checkpoints and sacct
    table = goalgen_sweep_csv(sweep_dir, capsys, "--sort", "point")
    assert [r["point"] for r in table] == ["0", "1"]
    assert [r["base_lr"] for r in table] == ["0.0001", "5e-05"]
    assert [r["state"] for r in table] == ["completed", "completed"]
    assert [r["requeues"] for r in table] == ["1", "0"]
    assert [r["job"] for r in table] == [f"{array}_0", f"{array}_1"]
    for row, run in zip(table, (runs["0"], runs["1"]), strict=True):
        last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
        assert int(row["epoch"]) == epochs and int(row["step"]) == last["step"]
        assert float(row["val_loss_best"]) == pytest.approx(last["val_loss_best"])
        assert Path(row["best_checkpoint"]) == rank_checkpoints(run / "checkpoints")[0][2]
        assert row["val_validity"] != ""  # the task metrics of the last validation
    # TensorBoard HParams: the point's defining override, and its requeue count as a metric
    acc = EventAccumulator(str(point0 / "tensorboard")).Reload()
    assert "_hparams_/session_start_info" in acc.PluginTagToContent("hparams")
    assert acc.Scalars("requeues")[-1].value == 1
    assert OmegaConf.load(point0 / ".hydra" / "overrides.yaml")[-1] == "base_lr=0.0001"
    report(
        "sweep 2 points x 2 tasks, point 0 requeued",
        wall_s=round(wall, 1),
        requeued_at_step=seen["requeued_at_step"],
        squeue_when_m_returned=at_return or "empty",
        goalgen_sweep_while_requeued=seen["state_while_requeued"],
        sacct=final,
    )


# ----------------------------------------------------------------------------- Optuna
def test_an_optuna_search_of_four_trials_two_at_a_time(slurm_cluster, tmp_path, synth_dir, capsys):
    cmd = sweep_command(
        tmp_path,
        synth_dir,
        "hydra/sweeper=tpe",
        "hydra.sweeper.n_trials=4",
        "hydra.sweeper.n_jobs=2",
        "hydra.sweeper.sampler.n_startup_trials=2",
        "base_lr=tag(log,interval(1e-4,3e-3))",  # replaces the preset's range
        "max_epochs=30",
        "val.metric_scenes=2",
    )
    seen = {}

    def requeue_trial0(proc):
        trial0 = first_run_dir(proc, tmp_path)
        wait_until(lambda: saved_step(trial0) >= 10, 120, what="trial 0 mid-run")
        array = arrays_of_all(tmp_path)[0]
        slurm_cluster.run("scontrol", "requeue", f"{array}_0")
        seen.update(trial0=trial0, step=saved_step(trial0))

    t0 = time.monotonic()
    rc, output, _ = run_sweep(slurm_cluster, cmd, tmp_path, during=requeue_trial0)
    wall = time.monotonic() - t0
    assert rc == 0, output[-4000:]
    sweep_dir = sweep_dir_of(tmp_path)
    arrays = arrays_of(sweep_dir)
    assert len(arrays) == 2  # two rounds of n_jobs=2 trials, one Slurm array each
    slurm_cluster.submitted.extend(arrays)
    jobs = [f"{a}_{i}" for a in arrays for i in (0, 1)]
    assert set(wait_all_final(slurm_cluster, jobs).values()) == {"COMPLETED"}

    table = goalgen_sweep_csv(sweep_dir, capsys)
    assert [r["point"] for r in table] == ["0", "1", "2", "3"]
    assert {r["state"] for r in table} == {"completed"}
    assert [r["requeues"] for r in table] == ["1", "0", "0", "0"]
    lrs = [float(r["base_lr"]) for r in table]
    weights = [float(r["model.aux_loss_weight"]) for r in table]
    assert all(1e-4 <= lr <= 3e-3 for lr in lrs) and len(set(lrs)) == 4
    assert all(0.0 <= w <= 0.5 for w in weights)
    assert {r["epoch"] for r in table} == {"30"}
    assert "Resuming from" in (seen["trial0"] / "train.log").read_text()
    # Optuna got each trial's val_loss_best and picked the lowest
    best = OmegaConf.load(sweep_dir / "optimization_results.yaml")
    losses = [float(r["val_loss_best"]) for r in table]
    assert best.best_value == pytest.approx(min(losses))
    winner = table[losses.index(min(losses))]
    assert best.best_params["base_lr"] == pytest.approx(float(winner["base_lr"]))
    capsys.readouterr()
    sweep_main([str(sweep_dir), "--markdown", "--sort", "val_loss_best"])
    markdown = capsys.readouterr().out
    assert "4 points, 4 completed; optuna best" in markdown
    report(
        "optuna 4 trials, 2 in parallel, trial 0 requeued",
        wall_s=round(wall, 1),
        requeued_at_step=seen["step"],
        best=round(best.best_value, 4),
    )
    print(markdown)
