"""Where this process sits in the job: rank, world, device and backend, decided once.

Launchers, in order of precedence:
1. torchrun / TorchX (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``PORT``);
2. ``srun`` tasks (``SLURM_PROCID`` trusted only inside a step, i.e. with ``SLURM_STEP_ID``;
   the rendezvous on the step's first node, :func:`set_rendezvous`);
3. a single process.
The loop only sees the resulting :class:`DistContext`; nothing else reads these variables.
"""

from __future__ import annotations

import datetime
import gc
import logging
import os
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LaunchEnv:
    """Rank layout read from the environment (no side effects)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    local_world_size: int = 1
    master_addr: str | None = None
    master_port: int | None = None
    launcher: str = "single"


def _first_host(nodelist: str) -> str:
    try:
        out = subprocess.run(
            ["scontrol", "show", "hostnames", nodelist],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        )
        return out.stdout.split()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        # "n[1-2],m3" -> "n1" without scontrol
        head = nodelist.split(",")[0]
        if "[" in head:
            prefix, rest = head.split("[", 1)
            head = prefix + rest.split("-")[0].split(",")[0].rstrip("]")
        return head


def detect_launch(env: Mapping[str, str] | None = None) -> LaunchEnv:
    """Read the rank layout of whichever launcher started this process."""
    env = os.environ if env is None else env
    if "RANK" in env and "WORLD_SIZE" in env:
        world = int(env["WORLD_SIZE"])
        return LaunchEnv(
            rank=int(env["RANK"]),
            local_rank=int(env.get("LOCAL_RANK", 0)),
            world_size=world,
            local_world_size=int(env.get("LOCAL_WORLD_SIZE", world)),
            master_addr=env.get("MASTER_ADDR"),
            master_port=int(env["MASTER_PORT"]) if "MASTER_PORT" in env else None,
            launcher="torchrun",
        )
    if "SLURM_STEP_ID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        job_id = int(env.get("SLURM_JOB_ID", "0"))
        tasks_per_node = env.get("SLURM_NTASKS_PER_NODE", env.get("SLURM_TASKS_PER_NODE", "1"))
        return LaunchEnv(
            rank=int(env["SLURM_PROCID"]),
            local_rank=int(env.get("SLURM_LOCALID", 0)),
            world_size=int(env["SLURM_NTASKS"]),
            local_world_size=int(tasks_per_node.split("(")[0].split(",")[0]),
            master_addr=_first_host(
                env.get("SLURM_STEP_NODELIST", env.get("SLURM_JOB_NODELIST", "localhost"))
            ),
            master_port=20000 + job_id % 20000,
            launcher="srun",
        )
    return LaunchEnv()


@dataclass(frozen=True)
class DistContext:
    """This process's place in the job and the device it owns."""

    rank: int
    local_rank: int
    world_size: int
    local_world_size: int
    device: torch.device
    backend: str | None  # None: not distributed

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.backend is not None

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def all_reduce_max(self, values: torch.Tensor) -> torch.Tensor:
        """Element-wise max over ranks (how ranks agree on a flag)."""
        if self.distributed:
            values = values.to(self.device)
            dist.all_reduce(values, op=dist.ReduceOp.MAX)
        return values.cpu()

    def all_gather_object(self, obj: object) -> list:
        """``obj`` from every rank, in rank order."""
        if not self.distributed:
            return [obj]
        gathered: list = [None] * self.world_size
        dist.all_gather_object(gathered, obj)
        return gathered

    def broadcast_object(self, obj: object) -> object:
        """Rank 0's ``obj`` on every rank (all ranks must call)."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def all_reduce_sum(self, values: torch.Tensor) -> torch.Tensor:
        if self.distributed:
            values = values.to(self.device)
            dist.all_reduce(values, op=dist.ReduceOp.SUM)
        return values.cpu()


def pick_device(accelerator: str, local_rank: int) -> torch.device:
    """``cuda:<local_rank>`` when a GPU is wanted and present, else CPU.

    A task that sees a single GPU (Slurm binding each task to its own device through
    ``CUDA_VISIBLE_DEVICES``) uses index 0 whatever its local rank; with several GPUs, more
    local ranks than GPUs is an error (two ranks on one GPU fail in NCCL).
    """
    if accelerator not in ("auto", "cpu", "gpu", "cuda"):
        raise ValueError(f"trainer.accelerator={accelerator!r}; choose auto, cpu or gpu")
    if accelerator == "cpu" or not torch.cuda.is_available():
        if accelerator in ("gpu", "cuda"):
            raise RuntimeError("trainer.accelerator=gpu but no CUDA device is visible")
        return torch.device("cpu")
    count = torch.cuda.device_count()
    if count > 1 and local_rank >= count:  # a second rank on one GPU: NCCL "Duplicate GPU"
        raise RuntimeError(
            f"local rank {local_rank} but this node has {count} GPUs: start at most {count} "
            "processes per node (torchrun --nproc-per-node, Slurm --ntasks-per-node)"
        )
    index = 0 if count == 1 else local_rank
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def set_rendezvous(env: LaunchEnv) -> None:
    """Export ``MASTER_ADDR``/``MASTER_PORT`` for ``init_process_group``. Under srun they are
    the step's: its first node (``SLURM_STEP_NODELIST``, where rank 0 runs) and a port from
    the job id, overwriting values exported from the submitting shell (with a warning: a
    stale address makes every rank wait out the rendezvous timeout). torchrun sets its own."""
    for key, value in (("MASTER_ADDR", env.master_addr), ("MASTER_PORT", env.master_port)):
        if not value:
            continue
        value, old = str(value), os.environ.get(key)
        if env.launcher != "srun":
            os.environ.setdefault(key, value)
            continue
        if old is not None and old != value:
            log.warning(
                "%s=%s from the environment ignored: this srun step uses %s", key, old, value
            )
        os.environ[key] = value


def init_distributed(
    accelerator: str = "auto", timeout_s: float = 1800.0, env: LaunchEnv | None = None
) -> DistContext:
    """Create the process group if the launcher started several processes."""
    env = env or detect_launch()
    device = pick_device(accelerator, env.local_rank)
    if env.world_size == 1:
        return DistContext(0, 0, 1, 1, device, None)
    backend = "nccl" if device.type == "cuda" else "gloo"
    set_rendezvous(env)
    if not dist.is_initialized():
        dist.init_process_group(
            backend=backend,
            rank=env.rank,
            world_size=env.world_size,
            timeout=datetime.timedelta(seconds=timeout_s),
            device_id=device if device.type == "cuda" else None,
        )
    log.info(
        "rank %d/%d (local %d) on %s via %s, backend %s",
        env.rank,
        env.world_size,
        env.local_rank,
        device,
        env.launcher,
        backend,
    )
    return DistContext(
        env.rank, env.local_rank, env.world_size, env.local_world_size, device, backend
    )


def shutdown_distributed(ctx: DistContext, completed: bool = True) -> None:
    """Destroy the process group once nothing holds it (a DDP model left in a reference cycle
    is collected first) and, after a completed run, once every rank is here: torn down in
    another order, gloo hung one rank's exit in about 1 of 30 two-rank runs on this machine."""
    if ctx.distributed and dist.is_initialized():
        gc.collect()
        if completed:
            dist.barrier()
        dist.destroy_process_group()
