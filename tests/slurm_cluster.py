"""pytest plugin: the project's real local Slurm cluster (``slurm/dev``) for integration tests.

Load it with ``pytest_plugins = ["slurm_cluster"]`` (or ``-p slurm_cluster`` with ``tests`` on
``sys.path``) and request the session-scoped ``slurm_cluster`` fixture. The fixture runs
``slurm/dev/start.sh`` (which installs the Debian packages when missing); a cluster that was
already up is left up afterwards, one this session started is stopped at the end. Tests are
skipped only when this machine cannot host the cluster (start.sh exit status 3: not root with
the packages missing, apt failing); any other start failure is an error, with the logs.

Tests that use the fixture get the ``slurm`` marker automatically (``-m "not slurm"``).
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DEV = REPO / "slurm" / "dev"
EX_UNAVAILABLE = 3  # start.sh: this machine cannot host the cluster
START_TIMEOUT_S = 900  # a cold start may install packages
STOP_TIMEOUT_S = 180

TERMINAL_STATES = frozenset(
    {
        "BOOT_FAIL",
        "CANCELLED",
        "COMPLETED",
        "DEADLINE",
        "FAILED",
        "NODE_FAIL",
        "OUT_OF_MEMORY",
        "PREEMPTED",
        "REVOKED",
        "TIMEOUT",
    }
)


def _state_dir() -> Path:
    return Path(os.environ.get("GOALGEN_SLURM_DIR", "/tmp/goalgen-slurm"))


def _client_env(conf: Path) -> dict[str, str]:
    # Drop job variables of an enclosing allocation (pytest run inside a Slurm job): sbatch and
    # srun would otherwise attach to that job or inherit its settings.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_"))}
    env["SLURM_CONF"] = str(conf)
    return env


def wait_until(predicate, timeout: float, interval: float = 0.25, what: str = "condition"):
    """Poll ``predicate()`` until it returns a truthy value (returned); TimeoutError otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


@dataclass
class SlurmCluster:
    conf: Path
    env: dict[str, str]
    workdir: Path
    submitted: list[str] = field(default_factory=list)

    def run(self, *cmd: str, timeout: float = 30, check: bool = True) -> str:
        """Run a Slurm client command against this cluster; return its stdout."""
        proc = subprocess.run(
            cmd, env=self.env, capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and proc.returncode != 0:
            raise RuntimeError(
                f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}"
            )
        return proc.stdout

    def submit(self, script_text: str, *args: str) -> str:
        """Write ``script_text`` to a file and ``sbatch --parsable`` it; return the job id."""
        script = self.workdir / f"job-{time.monotonic_ns()}.sh"
        script.write_text(script_text)
        out = self.run("sbatch", "--parsable", *args, str(script))
        job_id = out.strip().split(";")[0]
        if not job_id.isdigit():
            raise RuntimeError(f"unexpected sbatch output: {out!r}")
        self.submitted.append(job_id)
        return job_id

    def sacct(self, job_id: str, *fields: str) -> list[str]:
        """The job allocation's accounting fields (``sacct -X``); [] while not recorded yet."""
        out = self.run("sacct", "-j", job_id, "-X", "-n", "-P", "-o", ",".join(fields), check=False)
        line = out.strip().splitlines()
        return line[0].split("|") if line else []

    def state(self, job_id: str) -> str | None:
        """Current state: accounting first, the controller while sacct has nothing yet."""
        rec = self.sacct(job_id, "State")
        if rec and rec[0]:
            return rec[0].split()[0]  # "CANCELLED by 0" -> "CANCELLED"
        out = self.run("squeue", "-h", "-j", job_id, "-o", "%T", check=False).strip()
        return out or None

    def wait_job(self, job_id: str, timeout: float = 60) -> str:
        """Wait until the job is in a final state (as sacct reports it); return that state."""

        def final_state() -> str | None:
            state = self.state(job_id)
            return state if state in TERMINAL_STATES else None

        try:
            return wait_until(final_state, timeout, interval=0.5, what=f"job {job_id} to finish")
        except TimeoutError as exc:
            detail = self.run("scontrol", "show", "job", job_id, check=False)
            raise TimeoutError(f"{exc}; state={self.state(job_id)}\n{detail}") from None

    def wait_state(self, job_id: str, states: Iterable[str], timeout: float = 30) -> str:
        """Wait until the controller reports one of ``states`` (e.g. RUNNING); return it."""
        wanted = set(states)

        def current() -> str | None:
            state = self.run("squeue", "-h", "-j", job_id, "-o", "%T", check=False).strip()
            return state if state in wanted else None

        return wait_until(current, timeout, what=f"job {job_id} to reach {sorted(wanted)}")

    def cancel(self, *job_ids: str) -> None:
        if job_ids:
            self.run("scancel", *job_ids, check=False)


def kill_leftovers(pids: Iterable[int], cmdline_contains: str) -> list[int]:
    """SIGKILL the given PIDs that still run a command line containing ``cmdline_contains``.

    With ``proctrack/linuxproc`` Slurm can miss processes (a double-forked child survives
    ``scancel``), so tests record their jobs' PIDs and clean up with this; returns those killed.
    """
    killed = []
    for pid in pids:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            if cmdline_contains in cmdline:
                os.kill(pid, 9)
                killed.append(pid)
        except (OSError, ValueError):
            continue
    return killed


def _tail(text: str, lines: int = 60) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "slurm_cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slurm)


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A running local Slurm cluster (n1, n2; 8 CPUs and 2 fake GPUs each; sacct works)."""
    was_up = (
        subprocess.run(
            ["bash", str(DEV / "check.sh"), "-q"], capture_output=True, timeout=120, check=False
        ).returncode
        == 0
    )
    proc = subprocess.run(
        ["bash", str(DEV / "start.sh")],
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT_S,
        check=False,
    )
    if proc.returncode == EX_UNAVAILABLE:
        pytest.skip(f"local Slurm unavailable here: {_tail(proc.stderr, 3)}")
    if proc.returncode != 0:
        if not was_up:
            subprocess.run(["bash", str(DEV / "stop.sh")], timeout=STOP_TIMEOUT_S, check=False)
        pytest.fail(
            f"slurm/dev/start.sh failed (exit {proc.returncode}):\n{_tail(proc.stderr)}",
            pytrace=False,
        )

    conf = _state_dir() / "etc" / "slurm.conf"
    old_conf = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(conf)
    cluster = SlurmCluster(
        conf=conf, env=_client_env(conf), workdir=tmp_path_factory.mktemp("slurm-jobs")
    )
    try:
        yield cluster
    finally:
        cluster.cancel(*cluster.submitted)
        if old_conf is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old_conf
        if not was_up:
            subprocess.run(["bash", str(DEV / "stop.sh")], timeout=STOP_TIMEOUT_S, check=False)
