"""TorchX components for goalgen: the guide's entry under torchrun, locally or on Slurm.

Run from the repository root (TorchX reads ``.torchxconfig`` from the current directory and
the job runs there too)::

    # 2 gloo processes on this machine
    torchx run -s local_cwd jobs/components.py:train --nproc_per_node 2 -- \\
        --config-name=train_fb_flow_matching experiment=demo trainer.accelerator=cpu

    # Slurm: 2 nodes x 4 GPUs (one torchrun per node, one worker per GPU); the wrapper adds
    # SBATCH_SIGNAL (a stop signal before the time limit) and SBATCH_OPEN_MODE=append
    jobs/torchx_slurm.sh -cfg partition=gpu,time=24:00:00 jobs/components.py:train \\
        --nnodes 2 --gpus_per_node 4 -- --config-name=train_fb_flow_matching max_epochs=500

Everything after ``--`` goes to ``src/train_generative.py`` unchanged (Hydra overrides). The
run directory is derived from those overrides (``run_name``), so every rank and every requeue
of the job finds the same folder and resumes from its ``last.ckpt``.

Preemption: Slurm's signals (``--signal=USR1@T`` via ``SBATCH_SIGNAL``, SIGTERM on preemption
or ``scontrol requeue``) reach torchrun and the workers; torchrun forwards the signals listed in
``PET_SIGNALS_TO_HANDLE`` (set here to include USR1/USR2) and kills the workers
``TORCH_ELASTIC_SHUTDOWN_TIMEOUT`` seconds later. The workers save ``last.ckpt`` at the next
step, rank 0 runs ``scontrol requeue``, and the requeued job resumes.

This file is loaded by TorchX with ``exec`` (no ``__file__``); keep it self-contained.
"""

import shlex
import sys
from typing import Dict, Optional  # noqa: UP035 (TorchX parses typing names)

import torchx.specs as specs
from torchx.components.dist import ddp

# torchrun (torch >= 2.8) forwards only the signals in --signals-to-handle, whose default
# (SIGTERM,SIGINT,SIGHUP,SIGQUIT) it also writes into TORCHELASTIC_SIGNALS_TO_HANDLE, so only
# its env form PET_SIGNALS_TO_HANDLE changes it. Older torchrun read
# TORCHELASTIC_SIGNALS_TO_HANDLE directly: set both.
STOP_SIGNALS = "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1,SIGUSR2"
ENTRY = "src/train_generative.py"


def train(
    *script_args: str,
    nnodes: int = 1,
    nproc_per_node: int = 0,
    gpus_per_node: int = 0,
    cpu: int = 8,
    memMB: int = 16384,
    max_retries: int = 0,
    rdzv_port: int = 29500,
    name: str = "goalgen",
    env: Optional[Dict[str, str]] = None,  # noqa: UP006, UP045
    script: str = ENTRY,
    shutdown_timeout_s: int = 60,
) -> specs.AppDef:
    """Train a goalgen model (``src/train_generative.py``) under torchrun, one torchrun per node.

    Args:
        script_args: Hydra arguments for the entry, after ``--``
            (e.g. ``-- --config-name=train_fb_flow_matching experiment=demo max_epochs=5``)
        nnodes: number of nodes (one torchrun agent each)
        nproc_per_node: worker processes per node; 0 = one per GPU (1 without GPUs)
        gpus_per_node: GPUs per node (Slurm: ``--gpus-per-task`` of the node's single task)
        cpu: CPUs per node (Slurm ``--cpus-per-task``); each worker gets
            ``cpu // nproc_per_node`` threads (``OMP_NUM_THREADS``)
        memMB: memory per node in MB (Slurm ``--mem``)
        max_retries: TorchX requeues after a non-zero exit this many times (stops inside
            training are requeued by the loop itself; this covers crashes and a stop signal
            that kills a worker outside the loop; the project's .torchxconfig sets 2)
        rdzv_port: c10d rendezvous port on the first node (multi-node only); give concurrent
            multi-node jobs sharing hosts different ports
        name: job name (``{experiment}/{run}`` or ``{run}``)
        env: extra environment variables for the workers (``K1=V1,K2=V2``)
        script: the training entry, relative to the directory torchx runs in (the repo root)
        shutdown_timeout_s: after a stop signal, torchrun kills workers that have not exited
            after this many seconds (the save of ``last.ckpt`` must fit in it)
    """
    if nnodes < 1:
        raise ValueError(f"nnodes={nnodes}; it must be >= 1")
    if nproc_per_node < 0 or gpus_per_node < 0:
        raise ValueError("nproc_per_node and gpus_per_node must be >= 0")
    nproc = nproc_per_node or max(1, gpus_per_node)
    if gpus_per_node and nproc > gpus_per_node:
        raise ValueError(f"nproc_per_node={nproc} exceeds gpus_per_node={gpus_per_node}")

    worker_env = {
        "OMP_NUM_THREADS": str(max(1, cpu // nproc)),
        "TORCH_ELASTIC_SHUTDOWN_TIMEOUT": str(shutdown_timeout_s),
        "PYTHONUNBUFFERED": "1",
    }
    worker_env.update(env or {})

    app = ddp(
        *script_args,
        script=script,
        name=name,
        cpu=cpu,
        gpu=gpus_per_node,
        memMB=memMB,
        j=f"{nnodes}x{nproc}",
        env=worker_env,
        max_retries=max_retries,
        rdzv_port=rdzv_port,
    )
    # dist.ddp starts "torchrun" from PATH; use the interpreter that runs torchx instead, so
    # `.venv/bin/torchx run ...` works without activating the venv (Slurm jobs see the
    # submitting host's filesystem, as TorchX's Slurm scheduler assumes). The signal list goes
    # on the command line, not in ``env``: the Slurm scheduler passes ``env`` through
    # ``srun --export=ALL,K=V,...``, which splits values at commas.
    role = app.roles[0]
    torchrun = (
        f"PET_SIGNALS_TO_HANDLE={STOP_SIGNALS} TORCHELASTIC_SIGNALS_TO_HANDLE={STOP_SIGNALS} "
        f"{shlex.quote(sys.executable)} -m torch.distributed.run"
    )
    if role.entrypoint == "bash" and role.args[1].startswith("torchrun "):
        role.args[1] = torchrun + role.args[1][len("torchrun") :]
    return app
