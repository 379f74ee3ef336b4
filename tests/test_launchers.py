"""The launch doors without a cluster: TorchX dry runs and local runs, goalgen-submit's
arguments and sbatch script, the Hydra launcher presets, and the requeue-aware pieces.

The same doors on the real local Slurm are in tests/test_slurm_launch.py.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

from conftest import TINY
from goalgen import launch
from goalgen.config import compose
from goalgen.train.run_name import run_name_for

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
COMPONENT = f"{ROOT / 'jobs' / 'components.py'}:train"
ENTRY = str(ROOT / "src" / "train_generative.py")
FM = "train_fb_flow_matching"


def tiny(tmp_path: Path, synth_dir: Path, *extra: str) -> list[str]:
    return [
        *TINY,
        f"data.data_dir={synth_dir}",
        f"data.cache_dir={tmp_path}/cache",
        f"output_dir={tmp_path}/out",
        *extra,
    ]


def env_with_venv() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_"))}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


def last_state(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)


# ----------------------------------------------------------------------------- TorchX
def slurm_dryrun(*component_args: str, cfg: dict | None = None):
    from torchx.runner import get_runner

    with get_runner() as runner:
        info = runner.dryrun_component(
            COMPONENT, list(component_args), "slurm", cfg=cfg or {"time": "30"}
        )
    return info.request


def test_torchx_slurm_dryrun_requests_nodes_gpus_and_passes_overrides():
    req = slurm_dryrun(
        "--nnodes",
        "2",
        "--gpus_per_node",
        "4",
        "--cpu",
        "16",
        "--memMB",
        "64000",
        "--rdzv_port",
        "29777",
        "--",
        f"--config-name={FM}",
        "experiment=demo",
        "base_lr=5e-5",
    )
    assert len(req.replicas) == 2  # one heterogeneous group (one torchrun) per node
    for replica in req.replicas.values():
        opts = replica.sbatch_opts
        assert opts["ntasks-per-node"] == "1" and opts["gpus-per-task"] == "4"
        assert opts["cpus-per-task"] == "16" and opts["mem"] == "64000"
        assert opts["time"] == "30" and "requeue" in opts
        assert replica.env["OMP_NUM_THREADS"] == "4"  # 16 CPUs / 4 workers
    script = req.materialize()
    assert "--nnodes 2 --nproc_per_node 4" in script
    assert ":29777" in script  # rendezvous on the first node, our port
    assert f"src/train_generative.py --config-name={FM} experiment=demo base_lr=5e-5" in script
    # torchrun forwards USR1/USR2 to the workers (the list must survive srun --export)
    assert "PET_SIGNALS_TO_HANDLE=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1,SIGUSR2" in script
    assert f"{sys.executable} -m torch.distributed.run" in script


def test_torchx_component_defaults_one_process_per_gpu_and_checks_input():
    req = slurm_dryrun("--gpus_per_node", "2", "--", "max_epochs=1")
    (replica,) = req.replicas.values()
    assert "--nnodes 1 --nproc_per_node 2" in req.materialize()
    assert replica.sbatch_opts["cpus-per-task"] == "8"  # not dist.ddp's 2 CPUs / 1 GB
    assert replica.sbatch_opts["mem"] == "16384"
    with pytest.raises(ValueError, match="exceeds gpus_per_node"):
        slurm_dryrun("--gpus_per_node", "2", "--nproc_per_node", "4")


def test_torchx_cli_dryrun_reads_project_torchxconfig():
    out = subprocess.run(
        [
            str(BIN / "torchx"),
            "run",
            "-s",
            "slurm",
            "--dryrun",
            "jobs/components.py:train",
            "--",
            f"--config-name={FM}",
            "max_epochs=1",
        ],
        cwd=ROOT,
        env=env_with_venv(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    text = out.stdout + out.stderr
    # .torchxconfig: [slurm] time and [component:jobs/components.py:train] cpu/memMB
    assert "--time=24:00:00" in text and "--cpus-per-task=8" in text and "--mem=16384" in text
    assert "TORCHX_MAX_RETRIES=2" in text  # not the component's default 0
    assert f"--config-name={FM} max_epochs=1" in text


def test_torchx_slurm_wrapper_sets_signal_and_append_mode(tmp_path):
    fake = tmp_path / "torchx"
    fake.write_text('#!/bin/bash\necho "SIGNAL=$SBATCH_SIGNAL MODE=$SBATCH_OPEN_MODE ARGS=$*"\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    env = {**env_with_venv(), "TORCHX": str(fake)}
    run = lambda e: subprocess.run(  # noqa: E731
        [str(ROOT / "jobs" / "torchx_slurm.sh"), "jobs/components.py:train", "--", "a=1"],
        env=e,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout.strip()
    assert run(env) == (
        "SIGNAL=USR1@120 MODE=append ARGS=run -s slurm jobs/components.py:train -- a=1"
    )
    assert run({**env, "SBATCH_SIGNAL": "USR1@300"}).startswith("SIGNAL=USR1@300 ")


def _find_agent(marker: str) -> int | None:
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "torch.distributed.run" in cmd and marker in cmd and "bash" not in cmd.split()[0]:
            return int(proc.name)
    return None


@pytest.mark.slow
def test_torchx_local_cwd_two_processes_train_and_forward_usr1(tmp_path, synth_dir):
    """2 gloo workers under torchrun train to the end; a second run is stopped by SIGUSR1 sent
    to torchrun only: it must forward it (USR1 is not in torchrun's default list), the workers
    save last.ckpt and stop."""
    base = [
        str(BIN / "torchx"),
        "run",
        "-s",
        "local_cwd",
        COMPONENT,
        "--nproc_per_node",
        "2",
        "--cpu",
        "2",
        "--",
        f"--config-name={FM}",
    ]
    done = subprocess.run(
        base + tiny(tmp_path, synth_dir, "run_name=full", "max_epochs=2"),
        cwd=ROOT,
        env=env_with_venv(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    run_dir = tmp_path / "out" / "full"
    assert last_state(run_dir)["step"] == 4  # 43 scenes // 2 ranks // batch 8 = 2 per epoch
    assert list((run_dir / "checkpoints").glob("epoch*.ckpt"))
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert "rank 1/2" in done.stdout + done.stderr
    assert "weights identical on all 2 ranks" in done.stdout + done.stderr

    stop_dir = tmp_path / "out" / "stopme"
    proc = subprocess.Popen(
        base + tiny(tmp_path, synth_dir, "run_name=stopme", "max_epochs=500"),
        cwd=ROOT,
        env=env_with_venv(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 180
        while not (stop_dir / "checkpoints" / "last.ckpt").exists():
            assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint"
            time.sleep(0.2)
        agent = _find_agent(str(stop_dir.parent))
        assert agent is not None
        os.kill(agent, signal.SIGUSR1)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert "closing signal SIGUSR1" in out  # torchrun forwarded it
    assert out.count("received SIGUSR1") == 2, out[-3000:]
    assert "stopped by SIGUSR1" in out
    assert 0 < last_state(stop_dir)["step"] < 1000


# ----------------------------------------------------------------------------- goalgen-submit
def parse(*argv: str):
    return launch.build_parser().parse_args(list(argv))


def test_submit_arguments_map_to_executor_parameters():
    args = parse(
        "--nodes",
        "2",
        "--gpus-per-node",
        "4",
        "--cpus-per-task",
        "6",
        "--time",
        "90",
        "--partition",
        "gpu",
        "--account",
        "acc",
        "--qos",
        "high",
        "--mem-gb",
        "64",
        "--signal-delay-s",
        "150",
        "--slurm-arg",
        "constraint=a100",
        "--setup",
        "module load cuda",
        "base_lr=1e-4",
    )
    params = launch.executor_parameters(args, "run")
    assert params == {
        "name": "run",
        "timeout_min": 90,
        "nodes": 2,
        "tasks_per_node": 4,
        "cpus_per_task": 6,
        "gpus_per_node": 4,
        "mem_gb": 64,
        "slurm_signal_delay_s": 150,
        "slurm_partition": "gpu",
        "slurm_account": "acc",
        "slurm_qos": "high",
        "slurm_additional_parameters": {"constraint": "a100"},
        "slurm_setup": ["module load cuda"],
        "slurm_srun_args": ["--kill-on-bad-exit=1"],
    }
    assert isinstance(params["timeout_min"], int)
    # CPU-only partition: no GPU request, still one task
    cpu = launch.executor_parameters(parse("--gpus-per-node", "0"), "r")
    assert cpu["tasks_per_node"] == 1 and "gpus_per_node" not in cpu
    assert (
        launch.executor_parameters(parse("--gpus-per-node", "0", "--tasks-per-node", "3"), "r")[
            "tasks_per_node"
        ]
        == 3
    )


def test_submit_run_dir_is_the_entry_run_name_and_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    overrides, run_dir = launch.plan(parse("--config-name", FM, "experiment=demo", "base_lr=1e-3"))
    name = run_name_for(FM, ["experiment=demo", "base_lr=1e-3"])
    assert run_dir == tmp_path / "outputs" / name
    assert overrides[-2:] == [f"output_dir={tmp_path / 'outputs'}", f"run_name={name}"]
    # the job composes exactly these overrides without @hydra.main
    cfg = compose(FM, overrides)
    assert cfg.run_name == name and Path(cfg.output_dir).is_absolute()
    # an explicit run_name / output_dir wins and is not duplicated
    overrides, run_dir = launch.plan(parse("run_name=mine", "output_dir=rel"))
    assert run_dir == tmp_path / "rel" / "mine"
    assert [o for o in overrides if o.startswith(("run_name", "output_dir"))] == [
        f"output_dir={tmp_path / 'rel'}",
        "run_name=mine",
    ]


@pytest.fixture
def fake_srun(tmp_path, monkeypatch):
    """submitit's Slurm executor only checks that srun is on PATH; nothing is submitted."""
    bin_dir = tmp_path / "fakebin"
    bin_dir.mkdir()
    srun = bin_dir / "srun"
    srun.write_text("#!/bin/sh\nexit 1\n")
    srun.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


def test_submit_dry_run_prints_the_sbatch_script(tmp_path, fake_srun, capsys):
    launch.main(
        [
            "--dry-run",
            "--nodes",
            "2",
            "--gpus-per-node",
            "2",
            "--cpus-per-task",
            "3",
            "--time",
            "30",
            "--partition",
            "debug",
            "--signal-delay-s",
            "90",
            f"output_dir={tmp_path}",
            "max_epochs=3",
        ]
    )
    out = capsys.readouterr().out
    run_dir = tmp_path / run_name_for(FM, ["max_epochs=3"])
    assert f"run dir: {run_dir}" in out
    for line in (
        "--nodes=2",
        "--ntasks-per-node=2",
        "--gpus-per-node=2",
        "--cpus-per-task=3",
        "--time=30",
        "--partition=debug",
        "--signal=USR2@90",
        "--open-mode=append",
        f"--output={run_dir}/submitit/%j_0_log.out",
    ):
        assert f"#SBATCH {line}" in out, line
    assert "srun --unbuffered" in out and "--kill-on-bad-exit=1" in out
    assert "-m submitit.core._submit" in out


@pytest.mark.parametrize(
    "argv,reason",
    [
        (["--nodes", "0"], "--nodes=0"),
        (["--time", "0"], "--time=0"),
        (["--cluster", "debug", "--tasks-per-node", "2"], "--cluster local"),
        (["nosuchkey=1"], "nosuchkey"),
        (["--slurm-arg", "=x"], "KEY=VALUE"),
    ],
)
def test_submit_bad_input_fails_with_one_line(argv, reason, capsys, fake_srun):
    with pytest.raises(SystemExit) as exc:
        launch.main(["--dry-run", *argv])
    assert exc.value.code == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and reason in err and err.startswith("goalgen-submit:")


def test_submit_help_and_console_script():
    out = subprocess.run(
        [str(BIN / "goalgen-submit"), "--help"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0 and "--gpus-per-node" in out.stdout
    assert "--max-requeues" in out.stdout
    bad = subprocess.run(
        [sys.executable, str(ROOT / "jobs" / "submit.py"), "--cluster", "x"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and "invalid choice" in bad.stderr


def test_train_job_pickles_and_checkpoints_itself():
    import cloudpickle

    job = launch.TrainJob(FM, ["run_name=x"], "/tmp/x")
    again = cloudpickle.loads(cloudpickle.dumps(job))
    assert (again.config_name, again.overrides, again.run_dir) == (FM, ["run_name=x"], "/tmp/x")
    delayed = job.checkpoint()
    assert delayed.function is job and delayed.args == ()


@pytest.mark.slow
def test_submit_local_cluster_two_tasks_train_as_ddp_ranks(tmp_path, synth_dir):
    out = subprocess.run(
        [
            str(BIN / "goalgen-submit"),
            "--cluster",
            "local",
            "--tasks-per-node",
            "2",
            "--gpus-per-node",
            "0",
            "--cpus-per-task",
            "1",
            "--time",
            "10",
            *tiny(
                tmp_path,
                synth_dir,
                "run_name=loc",
                "max_epochs=2",
                "trainer.process_group_timeout_s=60",
            ),
        ],
        cwd=tmp_path,
        env=env_with_venv(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    run_dir = tmp_path / "out" / "loc"
    assert f"run dir: {run_dir}" in out.stdout and "done: {" in out.stdout
    assert last_state(run_dir)["step"] == 4  # 2 ranks: 2 batches per epoch
    assert (run_dir / ".hydra" / "config.yaml").exists()
    assert "rank 1/2" in (run_dir / "submitit").glob("*_1_log.err").__next__().read_text()
    assert "weights identical on all 2 ranks" in (run_dir / "train.log").read_text()
    assert "Resuming" not in (run_dir / "train.log").read_text()


# ----------------------------------------------------------------------------- Hydra presets
def compose_with_hydra(*overrides: str):
    return compose(FM, overrides, return_hydra_config=True)


def test_slurm_launcher_preset_composes_with_requeue_settings():
    cfg = compose_with_hydra("hydra/launcher=slurm", "hydra.launcher.partition=gpu", "run_name=x")
    lc = cfg.hydra.launcher
    assert lc._target_.endswith("submitit_launcher.SlurmLauncher")
    assert lc.max_num_timeout > 0 and lc.signal_delay_s == 120 and lc.timeout_min == 1440
    assert (lc.gpus_per_node, lc.tasks_per_node, lc.nodes) == (1, 1, 1)
    assert lc.partition == "gpu" and list(lc.setup) == ["export SLURM_KILL_BAD_EXIT=1"]
    assert lc.submitit_folder == "outputs/x/.submitit/%j"
    assert cfg.hydra.callbacks.goalgen_requeue._target_ == "goalgen.launch.SweepRequeueCallback"
    # every point's run dir is stable: <output_dir>/<run_name>/<job.num>, never ${now:}
    assert cfg.hydra.sweep.dir == "outputs/x"
    assert OmegaConf.to_container(cfg.hydra.sweep)["subdir"] == "${hydra.job.num}"
    assert cfg.max_epochs == 1000  # the training config itself is untouched


def test_local_launcher_preset_composes():
    cfg = compose_with_hydra("hydra/launcher=local", "run_name=x")
    assert cfg.hydra.launcher._target_.endswith("submitit_launcher.LocalLauncher")
    assert cfg.hydra.callbacks.goalgen_requeue._target_ == "goalgen.launch.SweepRequeueCallback"


def test_cfg_hydra_prints_the_slurm_preset():
    out = subprocess.run(
        [sys.executable, ENTRY, f"--config-name={FM}", "hydra/launcher=slurm", "--cfg", "hydra"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "max_num_timeout: 20" in out.stdout and "SweepRequeueCallback" in out.stdout


def fake_return(tmp_path: Path, epoch: int, step: int, max_epochs=3, max_steps=-1):
    ckpt = tmp_path / "run" / "checkpoints"
    ckpt.mkdir(parents=True, exist_ok=True)
    torch.save({"epoch": epoch, "step": step}, ckpt / "last.ckpt")
    hydra_cfg = OmegaConf.create({"hydra": {"runtime": {"output_dir": str(tmp_path / "run")}}})
    return SimpleNamespace(
        cfg=OmegaConf.create({"max_epochs": max_epochs, "max_steps": max_steps}),
        hydra_cfg=hydra_cfg,
    )


def test_sweep_callback_holds_back_the_result_of_a_point_stopped_for_requeue(tmp_path, monkeypatch):
    cb = launch.SweepRequeueCallback()
    for key in [k for k in os.environ if k.startswith(("SLURM_", "SUBMITIT_"))]:
        monkeypatch.delenv(key)
    stopped, finished = fake_return(tmp_path, 1, 5), fake_return(tmp_path / "f", 3, 15)
    assert launch._run_incomplete(stopped) and not launch._run_incomplete(finished)
    assert not launch._run_incomplete(fake_return(tmp_path / "s", 1, 7, max_steps=7))
    cb.on_job_end(job_return=stopped)  # not under Slurm: a plain return
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    monkeypatch.setenv("SLURM_JOB_ID", "12")
    cb.on_job_end(job_return=finished)  # complete: its result is reported
    with pytest.raises(SystemExit) as exc:
        cb.on_job_end(job_return=stopped)
    assert exc.value.code == 0


def test_sweep_callback_lets_run_name_resolve_in_the_multirun_process():
    from hydra.core.hydra_config import HydraConfig

    cfg = compose_with_hydra("hydra/launcher=slurm", "base_lr=5e-5")
    saved = HydraConfig.instance().cfg
    HydraConfig.instance().cfg = None
    try:
        launch.SweepRequeueCallback().on_multirun_start(config=cfg)
        assert list(cfg.hydra.overrides.task) == ["base_lr=5e-5"]
        name = run_name_for(FM, ["base_lr=5e-5"])
        assert cfg.run_name == name
        assert cfg.hydra.sweep.dir.endswith(name)
    finally:
        HydraConfig.instance().cfg = saved


@pytest.mark.slow
def test_hydra_sweep_on_the_local_launcher_trains_each_point_in_its_folder(tmp_path, synth_dir):
    out = subprocess.run(
        [
            sys.executable,
            ENTRY,
            f"--config-name={FM}",
            "-m",
            "hydra/launcher=local",
            *tiny(tmp_path, synth_dir, "max_epochs=1", "base_lr=1e-4,5e-5"),
        ],
        cwd=tmp_path,
        env=env_with_venv(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    points = sorted(
        (tmp_path / "out").glob("*/[01]/checkpoints/last.ckpt"), key=lambda p: p.parents[1].name
    )
    assert [p.parents[1].name for p in points] == ["0", "1"]
    assert points[0].parents[2] != points[1].parents[2]  # base_lr is in the run name
    for p in points:
        assert torch.load(p, weights_only=True)["step"] == 5
        assert list((p.parents[1] / "tensorboard").glob("events.*"))
