"""``goalgen-submit``: submit the guide's training command to Slurm with submitit.

    goalgen-submit --config-name=train_fb_flow_matching --gpus-per-node 4 --time 1440 \\
        --partition gpu experiment=demo max_epochs=100

The positional arguments are the same Hydra overrides as for ``src/train_generative.py``. The
run name (hence the run directory ``output_dir/run_name``) is computed here, in the submitting
process, from the config name and the overrides (:func:`goalgen.train.run_name.run_name_for`, the
same function ``@hydra.main`` uses) and passed to the job explicitly, with an absolute
``output_dir``: every task and every requeue of the job trains in the same folder and resumes
from its ``last.ckpt``.

In the job ``@hydra.main`` cannot run (Hydra would parse submitit's arguments), so
:class:`TrainJob` composes the config with ``hydra.compose`` and calls
:func:`goalgen.train.entry.run`. One task per GPU: Slurm's step variables give each task its
rank (:func:`goalgen.train.distributed.detect_launch`).

Preemption: submitit installs its own USR2 handler before the job function runs (it calls
:meth:`TrainJob.checkpoint` on rank 0 and requeues). The training loop replaces the USR1/USR2/
SIGTERM handlers while it trains: a signal then only sets a flag, the ranks agree, save
``last.ckpt``, rank 0 runs ``scontrol requeue`` and submitit runs the same pickle again, which
resumes. A task whose run stopped for a requeue exits without writing a submitit result, so
``job.result()`` waits for the run that really finishes.

This module also holds the Hydra callback of the sweep presets
``configs/hydra/launcher/{slurm,local}.yaml`` (:class:`SweepRequeueCallback`).
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from goalgen.checkpoint import run_is_complete
from goalgen.cli import one_line, want_traceback
from goalgen.config import compose
from goalgen.train.logger import setup_process_logging

log = logging.getLogger("goalgen")

CLUSTERS = ("slurm", "local", "debug")


# --------------------------------------------------------------------------- the job
def _will_be_requeued(env: dict[str, str] | None = None) -> bool:
    """A run that stopped early under Slurm is requeued by rank 0 (unless disabled)."""
    env = os.environ if env is None else env
    return "SLURM_JOB_ID" in env and not env.get("GOALGEN_NO_REQUEUE")


class TrainJob:
    """The callable submitit pickles: compose the config, train in ``run_dir``.

    ``overrides`` already hold the explicit ``run_name`` and absolute ``output_dir``.
    """

    def __init__(self, config_name: str, overrides: list[str], run_dir: str):
        self.config_name = config_name
        self.overrides = list(overrides)
        self.run_dir = str(run_dir)

    def __call__(self) -> dict[str, Any]:
        import submitit
        from omegaconf import OmegaConf

        from goalgen.train.distributed import detect_launch
        from goalgen.train.entry import run

        env = submitit.JobEnvironment()
        if "SLURM_JOB_ID" not in os.environ and env.num_tasks > 1 and "RANK" not in os.environ:
            # submitit's local executor: no Slurm step variables; export torch's instead
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        run_dir = Path(self.run_dir)
        is_main = detect_launch().rank == 0
        setup_process_logging(run_dir, is_main)
        cfg = compose(self.config_name, self.overrides)
        if is_main:
            hydra_dir = run_dir / ".hydra"
            hydra_dir.mkdir(parents=True, exist_ok=True)
            OmegaConf.save(cfg, hydra_dir / "config.yaml")
            OmegaConf.save(OmegaConf.create(self.overrides), hydra_dir / "overrides.yaml")
        log.info(
            "%s: run dir %s (restart %s)", env, run_dir, os.environ.get("SLURM_RESTART_COUNT", "0")
        )
        result = run(cfg, run_dir)
        if result.stopped and _will_be_requeued():
            # the job is being requeued (rank 0 ran `scontrol requeue`): no submitit result
            # for this attempt; the requeued run writes the real one
            log.info("stopped at step %d for a requeue; exiting without a result", result.step)
            logging.shutdown()
            sys.exit(0)
        if result.stopped:
            raise RuntimeError(
                f"training stopped by a signal at step {result.step} and was not "
                "requeued; submit the same command again to resume"
            )
        return {
            "run_dir": str(run_dir),
            "step": result.step,
            "epoch": result.epoch,
            "val_loss": result.val_loss,
            "val_loss_best": result.val_loss_best,
            "best_checkpoint": str(result.best_checkpoint) if result.best_checkpoint else None,
        }

    def checkpoint(self, *args: Any, **kwargs: Any):
        """Called by submitit (rank 0) on its USR2 before the loop's own handlers are in place
        (start-up, data packing): requeue the same call; it resumes from ``last.ckpt``."""
        import submitit

        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)

    def __repr__(self) -> str:
        return f"TrainJob({self.config_name!r}, run_dir={self.run_dir!r})"


# --------------------------------------------------------------------------- the CLI
def add_cluster_arguments(
    p: argparse.ArgumentParser,
    *,
    parallel: bool = True,
    gpus_per_node: int = 1,
    cpus_per_task: int = 8,
    time: int = 24 * 60,
) -> None:
    """The cluster options every submitting command shares (``parallel``: ``--nodes`` and
    ``--tasks-per-node`` too; without them a job is one task on one node)."""
    p.add_argument(
        "--cluster",
        choices=CLUSTERS,
        default="slurm",
        help="slurm (sbatch), local (subprocesses here), debug (in this process)",
    )
    if parallel:
        p.add_argument("--nodes", type=int, default=1)
    p.add_argument(
        "--gpus-per-node", type=int, default=gpus_per_node, help="0 on CPU-only partitions"
    )
    if parallel:
        p.add_argument(
            "--tasks-per-node",
            type=int,
            default=None,
            help="training processes per node (default: one per GPU, at least 1)",
        )
    p.add_argument("--cpus-per-task", type=int, default=cpus_per_task)
    p.add_argument("--mem-gb", type=int, default=None, help="memory per node (default: Slurm's)")
    p.add_argument("--partition", default=None)
    p.add_argument("--account", default=None)
    p.add_argument("--qos", default=None)
    p.add_argument("--time", type=int, default=time, help="time limit in minutes")
    p.add_argument(
        "--signal-delay-s",
        type=int,
        default=120,
        help="USR2 this many seconds before the time limit (save, requeue)",
    )
    p.add_argument(
        "--max-requeues",
        type=int,
        default=20,
        help="requeues submitit itself may do on time-outs (submitit's "
        "max_num_timeout; stops inside training requeue through Slurm)",
    )
    p.add_argument(
        "--slurm-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra sbatch option, e.g. --slurm-arg constraint=a100 (repeatable)",
    )
    p.add_argument(
        "--setup",
        action="append",
        default=[],
        metavar="CMD",
        help="shell line run in the batch script before srun (repeatable)",
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="goalgen-submit",
        description="Submit goalgen training (src/train_generative.py's Hydra overrides) to "
        "Slurm with submitit: one task per GPU, requeue on preemption/time limit, auto-resume "
        "from the run directory's last.ckpt.",
        epilog="example: goalgen-submit --config-name=train_fb_flow_matching --gpus-per-node 4 "
        "--partition gpu --time 1440 experiment=demo max_epochs=100",
    )
    p.add_argument("overrides", nargs="*", help="Hydra overrides, as for src/train_generative.py")
    p.add_argument(
        "--config-name",
        default="train_fb_flow_matching",
        help="primary config (train_fb_flow_matching | train_hf_diffusion)",
    )
    add_cluster_arguments(p)
    p.add_argument(
        "--folder",
        default=None,
        help="submitit folder for pickles and logs (default: RUN_DIR/submitit)",
    )
    p.add_argument("--name", default=None, help="Slurm job name (default: the run name)")
    p.add_argument(
        "--wait",
        action="store_true",
        help="wait for the job and print its result (always on for local/debug)",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print the sbatch script and the run directory; submit nothing",
    )
    return p


def _override_value(overrides: list[str], key: str) -> str | None:
    value = None
    for o in overrides:
        k, sep, v = o.lstrip("+~").partition("=")
        if sep and k == key:
            value = v
    return value


def plan(args: argparse.Namespace) -> tuple[list[str], Path]:
    """(overrides for the job, run dir) — every task and requeue uses exactly these."""
    from goalgen.train.run_name import run_name_for

    overrides = [
        o
        for o in args.overrides
        if o.partition("=")[0].lstrip("+~") not in ("run_name", "output_dir")
    ]
    run_name = _override_value(args.overrides, "run_name") or run_name_for(
        args.config_name, args.overrides
    )
    output_dir = _override_value(args.overrides, "output_dir")
    if output_dir is None:
        output_dir = str(compose(args.config_name, overrides + [f"run_name={run_name}"]).output_dir)
    output = Path(output_dir).expanduser().absolute()
    overrides += [f"output_dir={output}", f"run_name={run_name}"]
    return overrides, output / run_name


def executor_parameters(args: argparse.Namespace, run_name: str) -> dict[str, Any]:
    """Parameters for ``AutoExecutor.update_parameters`` (generic names + ``slurm_*``)."""
    tasks = getattr(args, "tasks_per_node", 1)
    tasks = tasks if tasks is not None else max(1, args.gpus_per_node)
    params: dict[str, Any] = {
        "name": args.name or run_name,
        "timeout_min": int(args.time),
        "nodes": getattr(args, "nodes", 1),
        "tasks_per_node": tasks,
        "cpus_per_task": args.cpus_per_task,
    }
    if args.gpus_per_node > 0:
        params["gpus_per_node"] = args.gpus_per_node
    if args.mem_gb is not None:
        params["mem_gb"] = args.mem_gb
    if args.cluster == "slurm":
        params["slurm_signal_delay_s"] = args.signal_delay_s
        # a crashed rank takes the step down instead of leaving the others in a collective
        # until the process-group timeout
        params["slurm_srun_args"] = ["--kill-on-bad-exit=1"]
        for key in ("partition", "account", "qos"):
            if getattr(args, key):
                params[f"slurm_{key}"] = getattr(args, key)
        extra = {}
        for item in args.slurm_arg:
            key, sep, value = item.partition("=")
            extra[key.lstrip("-")] = value if sep else True
        if extra:
            params["slurm_additional_parameters"] = extra
        if args.setup:
            params["slurm_setup"] = list(args.setup)
    return params


def check_cluster_arguments(args: argparse.Namespace) -> None:
    """Raise ValueError naming the first cluster option out of range."""
    nodes, tasks = getattr(args, "nodes", 1), getattr(args, "tasks_per_node", None)
    positive = {"--nodes": nodes, "--cpus-per-task": args.cpus_per_task, "--time": args.time}
    for flag, value in positive.items():
        if value < 1:
            raise ValueError(f"{flag}={value}; it must be >= 1")
    if args.gpus_per_node < 0 or (tasks is not None and tasks < 1):
        raise ValueError("--gpus-per-node must be >= 0 and --tasks-per-node >= 1")
    if args.signal_delay_s < 0 or args.max_requeues < 0:
        raise ValueError("--signal-delay-s and --max-requeues must be >= 0")
    if args.cluster == "debug" and (nodes > 1 or (tasks or 1) > 1):
        raise ValueError(
            "--cluster debug runs one process here: use --cluster local for several tasks"
        )
    if args.cluster == "local" and nodes > 1:
        raise ValueError("--cluster local runs on this machine: --nodes must be 1")
    for item in args.slurm_arg:
        if not item.partition("=")[0].lstrip("-"):
            raise ValueError(f"--slurm-arg {item!r}; use KEY=VALUE")


def make_executor(args: argparse.Namespace, folder: str, run_name: str):
    import submitit

    kwargs = {"slurm_max_num_timeout": args.max_requeues} if args.cluster == "slurm" else {}
    executor = submitit.AutoExecutor(folder=folder, cluster=args.cluster, **kwargs)
    executor.update_parameters(**executor_parameters(args, run_name))
    return executor


def sbatch_script(executor) -> str:
    """The sbatch file submitit would write for ``executor`` (Slurm only)."""
    inner = executor._executor
    return inner._make_submission_file_text(inner._submitit_command_str, "dryrun")


def submit(args: argparse.Namespace):
    """Validate, then submit; returns the submitit job (None for a dry run)."""
    check_cluster_arguments(args)
    overrides, run_dir = plan(args)
    compose(args.config_name, overrides)  # fail here, not in the queue, on a bad override
    folder = args.folder or str(run_dir / "submitit")
    executor = make_executor(args, folder, run_dir.name)
    job_cmd = " ".join(shlex.quote(o) for o in overrides)
    if args.dry_run:
        print(f"run dir: {run_dir}")
        print(f"overrides: --config-name={args.config_name} {job_cmd}")
        if args.cluster == "slurm":
            print(sbatch_script(executor))
        return None
    job = executor.submit(TrainJob(args.config_name, overrides, str(run_dir)))
    print(f"submitted job {job.job_id} ({args.cluster})")
    print(f"run dir: {run_dir}")
    print(f"logs: {job.paths.stdout} {job.paths.stderr}")
    return job


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    job = None
    try:
        job = submit(args)
        if job is None:
            return
        if args.wait or args.cluster in ("local", "debug"):
            # rank 0's result; an error there is reported at once, not after the other
            # ranks' process-group timeout
            result = (job.task(0) if job.num_tasks > 1 else job).result()
            print(f"done: {result}")
    except KeyboardInterrupt:
        if job is not None and args.cluster == "local":
            job.cancel(check=False)
        raise
    except Exception as exc:  # one line, not a traceback (GOALGEN_TRACEBACK=1 for the rest)
        if job is not None and args.cluster == "local":  # local processes die with us
            job.cancel(check=False)
        if want_traceback():
            raise
        msg = one_line(exc)
        print(f"goalgen-submit: error: {msg[:500]}", file=sys.stderr)
        sys.exit(1)


# --------------------------------------------------------------------------- Hydra sweeps
def _run_incomplete(ret) -> bool:
    """Whether a finished Hydra job's run stopped early (a signal) instead of completing."""
    try:
        cfg, run_dir = ret.cfg, ret.hydra_cfg.hydra.runtime.output_dir
    except Exception:  # no config or run dir (a failed job): nothing to hold back
        return False
    return run_is_complete(run_dir, cfg.max_epochs, cfg.max_steps) is False


class SweepRequeueCallback(Callback):
    """Hydra callback of the sweep presets (``configs/hydra/launcher/{slurm,local}.yaml``).

    - Multirun start (the ``-m`` process): Hydra resolves ``hydra.sweep.dir`` (base.yaml:
      ``${output_dir}/${run_name}``) and the launcher before any HydraConfig exists, where
      ``${goalgen_run_name:}`` cannot work; initialise HydraConfig with the sweep's config
      (config name + the sweep's overrides) first. Each job then sets its own (its point's).
    - Job start, submitit's local executor with several tasks per point: export torch's rank
      variables so the tasks become DDP ranks (on Slurm the step variables do that).
    - Job end, under Slurm: a point stopped by a signal has saved ``last.ckpt`` and requeued
      itself (``scontrol requeue`` of its array element); hydra-submitit-launcher would now
      write a submitit result and the ``-m`` process would report a half-trained point. Exit
      without a result instead: the requeued element (same pickle, same ``hydra.job.num``,
      same run dir) resumes and writes the real one.
    """

    def on_multirun_start(self, config: Any = None, **kwargs: Any) -> None:
        from hydra.core.hydra_config import HydraConfig

        if config is not None and not HydraConfig.initialized():
            HydraConfig.instance().set_config(config)

    def on_job_start(self, config: Any = None, **kwargs: Any) -> None:
        if os.environ.get("SUBMITIT_EXECUTOR") == "local" and "RANK" not in os.environ:
            import submitit

            if submitit.JobEnvironment().num_tasks > 1:
                submitit.helpers.TorchDistributedEnvironment().export(
                    set_cuda_visible_devices=False
                )

    def on_job_end(self, config: Any = None, job_return: Any = None, **kwargs: Any) -> None:
        if (
            os.environ.get("SUBMITIT_EXECUTOR") == "slurm"
            and _will_be_requeued()
            and job_return is not None
            and _run_incomplete(job_return)
        ):
            log.info("sweep point stopped for a requeue: exiting without a submitit result")
            logging.shutdown()
            sys.exit(0)


if __name__ == "__main__":
    main()
