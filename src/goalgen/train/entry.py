"""Training entry point: Hydra config in, one run directory, one or more training processes.

``python src/train_generative.py --config-name=train_fb_flow_matching [overrides]`` calls
:func:`main`; launchers that cannot use ``@hydra.main`` (submitit, spawned workers) call
:func:`run` with an already composed config and the run directory.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import hydra
import torch
import torch.multiprocessing as mp
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from goalgen.checkpoint import CheckpointError
from goalgen.cli import want_traceback
from goalgen.config import config_dir
from goalgen.train.distributed import detect_launch, init_distributed, shutdown_distributed
from goalgen.train.logger import setup_process_logging
from goalgen.train.loop import NonFiniteLossError, TrainResult, train
from goalgen.train.preemption import ignore_early_stop_signals
from goalgen.train.run_name import run_name_for

log = logging.getLogger("goalgen")


def _run_name_resolver(*, _root_: DictConfig) -> str:
    if HydraConfig.initialized():
        hc = HydraConfig.get()
        return run_name_for(hc.job.config_name or "train", list(hc.overrides.task))
    # the -m process resolves hydra.sweep.dir before HydraConfig is set: read its own node
    node = _root_.get("hydra") if isinstance(_root_, DictConfig) else None
    if node is None:
        raise ValueError(
            "run_name is derived from the Hydra command line; outside "
            "@hydra.main set it explicitly (run_name=NAME)"
        )
    return run_name_for(node.job.config_name or "train", list(node.overrides.task))


OmegaConf.register_new_resolver("goalgen_run_name", _run_name_resolver, replace=True)


def _ensure_synthetic_data(cfg: DictConfig, is_local_main: bool, barrier) -> None:
    """``data.synthetic`` (the demo): generate the scenes into ``data.data_dir`` if missing.

    Only a missing or empty folder, or one that goalgen-synth wrote (its stamp file), is
    written to: pointing a demo at a folder of the user's own scenes trains on them instead
    of overwriting them."""
    synth = cfg.data.get("synthetic")
    if not synth or cfg.data.data_dir is None:
        return
    if not isinstance(cfg.data.data_dir, str):
        raise ValueError(
            f"data.synthetic generates one folder, but data.data_dir="
            f"{cfg.data.data_dir}; give one folder or set data.synthetic=null"
        )
    try:
        if is_local_main:
            # several processes may start on one folder at once (sweep points, nodes): one
            # generates, the others find its stamp; none sees a half-written folder as "not ours"
            with _folder_lock(Path(cfg.data.data_dir)):
                _generate_if_ours(Path(cfg.data.data_dir), synth)
    finally:
        barrier()  # also when generating failed: the other ranks must not hang here


@contextlib.contextmanager
def _folder_lock(folder: Path):
    """An exclusive ``fcntl`` lock on ``.<folder name>.lock`` beside ``folder``."""
    import fcntl

    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f".{folder.name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _generate_if_ours(out: Path, synth: DictConfig) -> None:
    from goalgen.data.synthetic import STAMP_NAME, generate_dataset

    ours = (
        not out.exists()
        or (out.is_dir() and not any(out.iterdir()))
        or (out / STAMP_NAME).is_file()
    )
    if not ours:
        log.info(
            "data.data_dir=%s holds scenes not written by goalgen-synth: training on "
            "them, generating nothing (data.synthetic ignored)",
            out,
        )
        return
    log.info(
        "synthetic scenes in %s (%d, seed %d): generating what is missing",
        out,
        int(synth.num_scenes),
        int(synth.seed),
    )
    generate_dataset(
        out,
        int(synth.num_scenes),
        seed=int(synth.seed),
        workers=max(1, min(4, os.cpu_count() or 1)),
        family=str(synth.get("family", "rooms")),
        maze_share=float(synth.get("maze_share", 0.5)),
        arena_share=float(synth.get("arena_share", 0.0)),
    )


def set_threads(local_world_size: int) -> None:
    """torchrun sets OMP_NUM_THREADS=1; our own spawn and srun paths split the cores here."""
    if "OMP_NUM_THREADS" in os.environ:
        return
    cpus = int(os.environ.get("SLURM_CPUS_PER_TASK", 0)) * local_world_size or os.cpu_count() or 1
    torch.set_num_threads(max(1, cpus // local_world_size))


def run(cfg: DictConfig, run_dir: Path) -> TrainResult:
    """Train in ``run_dir`` as the process(es) the environment describes."""
    ignore_early_stop_signals()
    ctx = init_distributed(cfg.trainer.accelerator, cfg.trainer.process_group_timeout_s)
    set_threads(ctx.local_world_size)
    completed = False
    try:
        _ensure_synthetic_data(cfg, ctx.local_rank == 0, ctx.barrier)
        result = train(cfg, run_dir, ctx)
        completed = True
        return result
    finally:
        shutdown_distributed(ctx, completed)


def requested_devices(cfg: DictConfig) -> int:
    """Processes to start on this node for ``trainer.devices`` (auto = every visible GPU)."""
    devices = cfg.trainer.devices
    if str(devices) == "auto":
        use_gpu = cfg.trainer.accelerator != "cpu" and torch.cuda.is_available()
        return torch.cuda.device_count() if use_gpu else 1
    if isinstance(devices, int) and devices >= 1:
        return devices
    raise ValueError(f"trainer.devices={devices!r}; use auto or a positive integer")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawned_worker(
    local_rank: int, world: int, port: int, config: dict[str, Any], run_dir: str
) -> None:
    os.environ.update(
        {
            "RANK": str(local_rank),
            "LOCAL_RANK": str(local_rank),
            "WORLD_SIZE": str(world),
            "LOCAL_WORLD_SIZE": str(world),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
    )
    # split this task's CPUs (its affinity: a Slurm allocation, not the whole node); the env
    # var tells run() not to recompute it from SLURM_CPUS_PER_TASK, which is per task, not
    # per worker
    threads = max(1, len(os.sched_getaffinity(0)) // world)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)
    # no Hydra here: rank 0 logs what a single process would (train.log included)
    setup_process_logging(Path(run_dir), local_rank == 0, others_level=logging.WARNING)
    run(OmegaConf.create(config), Path(run_dir))


def launch(cfg: DictConfig, run_dir: Path) -> TrainResult | None:
    """Run here, or start ``trainer.devices`` local workers when no launcher did."""
    n = requested_devices(cfg)
    if n == 1 or detect_launch().launcher != "single":
        return run(cfg, run_dir)
    # Workers get the resolved config and the run dir as plain values: HydraConfig is not
    # set in spawned processes.
    config = OmegaConf.to_container(cfg, resolve=True)
    log.info("starting %d local worker processes (effective batch %d)", n, cfg.batch_size * n)
    # The parent only waits and forwards stop signals to the workers, which save and requeue;
    # its own handlers (submitit's USR2 requeues and exits) must not act while they still save.
    workers: list[mp.ProcessContext] = []

    def forward(signum: int, frame: object) -> None:
        for process in workers[0].processes if workers else []:
            if process.is_alive():
                os.kill(process.pid, signum)

    previous = {
        sig: signal.signal(sig, forward) for sig in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM)
    }
    workers.append(
        mp.start_processes(
            _spawned_worker,
            nprocs=n,
            join=False,
            args=(n, _free_port(), config, str(run_dir)),
            start_method="spawn",
        )
    )
    try:
        while not workers[0].join():
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return None


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="train_fb_flow_matching")
def hydra_main(cfg: DictConfig) -> float | None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    if detect_launch().rank != 0:  # torchrun/srun: one train.log writer, not one per rank
        root = logging.getLogger()
        for handler in [h for h in root.handlers if isinstance(h, logging.FileHandler)]:
            root.removeHandler(handler)
            handler.close()
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        result = launch(cfg, run_dir)
        if result is not None and result.stopped:
            return None  # stopped for a requeue: the requeued run returns the objective
        if not multirun:
            return result.val_loss_best if result is not None else None
        # the returned value is what hydra sweepers (optuna) optimise
        return objective_value(cfg, run_dir, result)
    except (ValueError, FileNotFoundError, CheckpointError, NonFiniteLossError) as exc:
        log.error("%s", exc)
        if want_traceback() or multirun:
            # a sweep point: Hydra records it as failed and the other points go on
            # (goalgen-sweep shows this line); sys.exit would leave no result at all
            raise
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)


DEFAULT_OBJECTIVE = "val_loss_best"


def objective_direction(name: str) -> str:
    """``minimize`` for losses (``val_loss``, ``val_loss_best``), ``maximize`` for the task
    metrics (``val_validity``, ``val_best_iou``, ...): the Optuna preset's direction."""
    return "minimize" if "loss" in str(name) else "maximize"


OmegaConf.register_new_resolver("goalgen_direction", objective_direction, replace=True)


def objective_value(cfg: DictConfig, run_dir: Path, result: TrainResult | None) -> float:
    """The value a sweeper optimises: ``objective`` (default ``val_loss_best``) as the run last
    logged it (``<run dir>/metrics.json``); a task metric such as ``val_validity`` is its latest
    value. NaN (Optuna counts the trial as failed) when it is not finite."""
    from goalgen.train.logger import METRICS_FILE

    name = str(cfg.get("objective") or DEFAULT_OBJECTIVE)
    path = Path(run_dir) / METRICS_FILE
    metrics = json.loads(path.read_text()) if path.is_file() else {}
    if name == DEFAULT_OBJECTIVE and result is not None and not metrics:
        return float(result.val_loss_best)
    if name not in metrics:
        known = sorted(k for k, v in metrics.items() if isinstance(v, int | float))
        raise ValueError(
            f"objective={name} is not among the metrics of {path} ({', '.join(known) or 'none'})"
            "; pick one of them (task metrics need val.metric_scenes > 0)"
        )
    value = metrics[name]
    return float("nan") if value is None else float(value)


def main() -> None:
    hydra_main()
