"""``goalgen-episodes --slurm`` on the real local cluster: the parts run as one array job, an
element Slurm requeues goes on from its part file, and the table equals a run in one process."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

from goalgen.run_episodes import main as episodes_main
from slurm_cluster import wait_until
from test_episodes import door_world
from test_sweep_slurm import sacct_states

BIN = Path(sys.executable).parent


def write_doors(folder: Path) -> Path:
    folder.mkdir()
    for k, door in enumerate((0.0, 0.6, -0.6, 0.3)):
        world = door_world([(0.0, door, 0.4, 0.4, 0.0), (-1.0, 1.5, 0.3, 0.3, 0.0)], door_at=door)
        np.savez(folder / f"door_{k}.npz", **world.arrays())
    return folder


def without_times(report: dict) -> list[dict]:
    out = []
    for e in report["episodes"]:
        e = {k: v for k, v in e.items() if k not in ("wall_seconds", "model_seconds")}
        e["pushes"] = [
            {k: v for k, v in p.items() if k not in ("wall_seconds", "model_seconds")}
            for p in e["pushes"]
        ]
        e["openings"] = [{k: v for k, v in o.items() if k != "wall_seconds"} for o in e["openings"]]
        out.append(e)
    return out


def test_an_array_of_parts_with_a_requeued_element_gives_the_one_process_table(
    slurm_cluster, tmp_path
):
    scenes = write_doors(tmp_path / "doors")
    common = [scenes, "--strategy", "random,random_local", "--budget", "3", "--seed", "5"]
    local = tmp_path / "local.json"
    assert episodes_main(["planner", *map(str, common), "--json", str(local)]) == 0

    out = tmp_path / "slurm.json"
    env = {**slurm_cluster.env, "PATH": f"{BIN}{os.pathsep}{slurm_cluster.env.get('PATH', '')}"}
    command = [str(BIN / "goalgen-episodes"), "planner", *map(str, common), "--json", str(out)]
    submit = subprocess.run(
        [*command, "--slurm", "--parts", "2", "--partition", "debug", "--cpus-per-task", "1",
         "--time", "5", "--no-wait"],
        env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert submit.returncode == 0, submit.stderr[-3000:]
    jobs = re.search(r"submitted 2 parts: (\S+), (\S+)", submit.stdout).groups()
    slurm_cluster.submitted.extend(jobs)
    array = jobs[0].split("_")[0]
    part0 = tmp_path / "slurm.parts" / "part_0000.jsonl"
    try:
        # element 0 once it has written an episode (running or already done): requeued
        wait_until(
            lambda: part0.exists() and len(part0.read_text().splitlines()) >= 2, 180, what="part 0"
        )
        slurm_cluster.run("scontrol", "requeue", jobs[0])
        wait_until(
            lambda: "REQUEUED" in sacct_states(slurm_cluster, array).get(jobs[0], []),
            60,
            what="the requeue",
        )
        for job in jobs:
            assert slurm_cluster.wait_job(job, timeout=240) == "COMPLETED"
    except BaseException:
        slurm_cluster.cancel(array)
        raise
    merge = subprocess.run(
        [*command, "--merge"], env=env, capture_output=True, text=True, timeout=120
    )
    assert merge.returncode == 0, merge.stderr[-3000:]
    slurm_report, local_report = json.loads(out.read_text()), json.loads(local.read_text())
    # every episode once, with the numbers of the one-process run (same seeds)
    assert without_times(slurm_report) == without_times(local_report)
    lines = part0.read_text().splitlines()[1:]
    assert len(lines) == len({(json.loads(x)["scene"], json.loads(x)["strategy"]) for x in lines})
    assert len(lines) == 2 * 2  # scenes 0 and 2, two strategies
    assert "random_local" in merge.stdout and "doors" in merge.stdout
