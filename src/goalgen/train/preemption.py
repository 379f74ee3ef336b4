"""Stop requests (Slurm, submitit, torchrun signals) and requeueing the job.

A signal only sets a flag; the training loop agrees on it across ranks at a step boundary,
saves ``last.ckpt``, then calls :func:`requeue_job` on rank 0 and exits with status 0.

Who sends what:
- Slurm ``--signal=USR1@T`` (our sbatch template, TorchX via ``SBATCH_SIGNAL``) before the
  time limit; preemption and ``scontrol requeue`` send SIGTERM (then SIGKILL after KillWait);
- submitit sends USR2 (``signal_delay_s`` before the limit); ``job._interrupt()`` sends SIGTERM
  then USR2;
- torchrun forwards SIGTERM (and USR1/USR2 when listed in ``TORCHELASTIC_SIGNALS_TO_HANDLE``)
  and SIGKILLs its workers 30 s later: the save must fit in that window.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from collections.abc import Mapping
from types import FrameType

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM)


class StopFlag:
    """Installs handlers that record the first stop signal; ``restore()`` puts the old back."""

    def __init__(self, signals: tuple[signal.Signals, ...] = STOP_SIGNALS):
        self.signum: int | None = None
        self._previous = {}
        for sig in signals:
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. a notebook worker): no handlers
                break

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is None:
            self.signum = signum
            # logging inside a handler can deadlock on the handler's lock: print instead
            print(
                f"goalgen: received {signal.Signals(signum).name}, will save and stop at the "
                "next step",
                flush=True,
            )

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def restore(self) -> None:
        """Put the previous handlers back; a default USR1/USR2 (which would kill the process
        if Slurm's signal arrives late, after training) becomes "ignore"."""
        for sig, handler in self._previous.items():
            if handler in (signal.SIG_DFL, None) and sig != signal.SIGTERM:
                handler = signal.SIG_IGN
            signal.signal(sig, handler)
        self._previous.clear()


def ignore_early_stop_signals() -> None:
    """Before training starts (data packing, process-group set-up) USR1/USR2 must not kill the
    process with their default action; the loop's handlers take over once it runs."""
    for sig in (signal.SIGUSR1, signal.SIGUSR2):
        try:
            if signal.getsignal(sig) in (signal.SIG_DFL, None):
                signal.signal(sig, signal.SIG_IGN)
        except ValueError:  # not the main thread
            return


def ignore_stop_signals(worker_id: int = 0) -> None:
    """DataLoader ``worker_init_fn``: Slurm signals every process of a step, and USR1/USR2
    would kill a worker; the main process handles the stop and shuts workers down."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def slurm_job_to_requeue(env: Mapping[str, str] | None = None) -> str | None:
    """The Slurm job id to requeue (array tasks as ``ARRAYJOB_TASK``), or None outside Slurm."""
    env = os.environ if env is None else env
    if "SLURM_ARRAY_JOB_ID" in env and "SLURM_ARRAY_TASK_ID" in env:
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return env.get("SLURM_JOB_ID")


def requeue_job(env: Mapping[str, str] | None = None) -> bool:
    """``scontrol requeue`` this Slurm job (it restarts and resumes from ``last.ckpt``).

    Returns False outside Slurm or when ``GOALGEN_NO_REQUEUE`` is set (a plain stop).
    """
    env = os.environ if env is None else env
    job = slurm_job_to_requeue(env)
    if job is None or env.get("GOALGEN_NO_REQUEUE"):
        return False
    out = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
    if out.returncode != 0:  # e.g. already requeued from outside ("pending execution")
        log.info("scontrol requeue %s: %s", job, out.stderr.strip())
        return False
    log.info("requeued Slurm job %s", job)
    return True
