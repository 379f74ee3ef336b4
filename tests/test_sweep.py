"""Sweeps a person can read: HParams and metrics.json of every run, the sweep objective, and
``goalgen-sweep`` on a real sweep through the local launcher (hydra/launcher=local: the same
submitit code path as Slurm, no cluster), with a failing point and a re-run of the command.
The Slurm side (DDP inside points, requeues, sacct, Optuna) is tests/test_sweep_slurm.py."""

from __future__ import annotations

import csv
import io
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from conftest import TINY
from goalgen.checkpoint import rank_checkpoints
from goalgen.sweep import main as sweep_main
from goalgen.sweep import parse_sacct, read_sweep, rows, sort_rows
from goalgen.train.entry import objective_direction, objective_value
from goalgen.train.logger import RunLogger
from goalgen.train.run_name import run_name_for

ROOT = Path(__file__).resolve().parents[1]
ENTRY = str(ROOT / "src" / "train_generative.py")
FM = "train_fb_flow_matching"


def session_hparams(log_dir: Path) -> dict:
    """The HParams session start info TensorBoard reads from a run's events."""
    acc = EventAccumulator(str(log_dir)).Reload()
    content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    data = plugin_data_pb2.HParamsPluginData.FromString(content)
    out = {}
    for key, value in data.session_start_info.hparams.items():
        kind = value.WhichOneof("kind")
        out[key] = getattr(value, kind)
    return out


def last_scalar(log_dir: Path, tag: str) -> float:
    return EventAccumulator(str(log_dir)).Reload().Scalars(tag)[-1].value


# ----------------------------------------------------------------------------- HParams
def test_every_run_logs_its_defining_overrides_as_hparams_and_its_metrics(tmp_path, monkeypatch):
    run = tmp_path / "run"
    overrides = [
        "base_lr=1e-4",
        "model.aux_loss_weight=0.25",
        "experiment=demo",
        "trainer.compile=false",
        "+model.sampler.eta=0.5",
        "output_dir=/somewhere",  # not part of the run name: no hparam
        "num_workers=3",
        "hydra.launcher.tasks_per_node=2",
    ]
    (run / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(overrides), run / ".hydra" / "overrides.yaml")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "2")
    logger = RunLogger(run / "tensorboard", enabled=True)
    logger.scalars({"train_loss": 1.0, "epoch": 0}, 3)
    logger.scalars({"val_loss": 0.5, "val_validity": 0.25, "val_diversity": math.nan}, 7)
    logger.scalars({"val_loss": 0.4, "val_validity": 0.5, "val_loss_best": 0.4}, 9)
    logger.close()

    assert session_hparams(run / "tensorboard") == {
        "base_lr": pytest.approx(1e-4),
        "model.aux_loss_weight": pytest.approx(0.25),
        "experiment": "demo",
        "trainer.compile": False,
        "model.sampler.eta": pytest.approx(0.5),
    }
    # the HParams metrics are the run's own scalars
    assert last_scalar(run / "tensorboard", "step") == 9
    assert last_scalar(run / "tensorboard", "requeues") == 2
    assert last_scalar(run / "tensorboard", "val_validity") == 0.5
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["step"] == 9 and metrics["requeues"] == 2
    assert metrics["val_loss_best"] == pytest.approx(0.4)
    assert metrics["val_validity"] == 0.5
    assert metrics["val_diversity"] is None  # NaN: not a number in JSON
    assert metrics["hparams"]["base_lr"] == pytest.approx(1e-4)


def test_a_run_without_hydra_overrides_writes_no_session(tmp_path):
    logger = RunLogger(tmp_path / "run" / "tensorboard", enabled=True)
    logger.scalars({"val_loss": 1.0}, 1)
    logger.close()
    acc = EventAccumulator(str(tmp_path / "run" / "tensorboard")).Reload()
    with pytest.raises(KeyError):  # no HParams session at all
        acc.PluginTagToContent("hparams")
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["hparams"] == {}


def test_other_ranks_write_nothing(tmp_path):
    logger = RunLogger(tmp_path / "run" / "tensorboard", enabled=False)
    logger.scalars({"val_loss": 1.0}, 1)
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- objective
def test_the_objective_is_what_the_run_last_validated(tmp_path):
    (tmp_path / "metrics.json").write_text(
        json.dumps({"val_loss_best": 0.3, "val_validity": 0.75, "val_diversity": None})
    )
    cfg = OmegaConf.create({})
    assert objective_value(cfg, tmp_path, None) == 0.3
    assert objective_value(OmegaConf.create({"objective": "val_validity"}), tmp_path, None) == 0.75
    assert math.isnan(
        objective_value(OmegaConf.create({"objective": "val_diversity"}), tmp_path, None)
    )
    with pytest.raises(ValueError, match=r"objective=val_hit_at_k .*metrics\.json.*val_validity"):
        objective_value(OmegaConf.create({"objective": "val_hit_at_k"}), tmp_path, None)
    assert objective_direction("val_loss_best") == "minimize"
    assert objective_direction("val_validity") == "maximize"


def test_objective_does_not_move_the_run_dir():
    assert run_name_for(FM, ["base_lr=1e-4", "objective=val_validity"]) == run_name_for(
        FM, ["base_lr=1e-4"]
    )


def test_the_tpe_preset_composes_with_the_slurm_launcher():
    from hydra import compose, initialize_config_dir

    import goalgen.train.entry  # noqa: F401  (registers the resolvers)
    from goalgen.config import config_dir

    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        cfg = compose(
            FM,
            ["hydra/sweeper=tpe", "hydra/launcher=slurm", "objective=val_validity", "run_name=x"],
            return_hydra_config=True,
        )
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper")
    assert sweeper.direction == "maximize"  # follows the objective
    assert sweeper.max_failure_rate == 1.0  # a failed trial does not stop the search
    assert set(sweeper.params) == {"base_lr", "model.aux_loss_weight"}
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")


# ----------------------------------------------------------------------------- faults
def test_points_starting_on_one_demo_folder_generate_it_once(tmp_path, caplog, monkeypatch):
    """Sweep points share data.data_dir: one generates the scenes, the others wait for it
    (without the lock they all wrote the same files at once, and one point's packer saw them
    change under it: "no valid packed cache"; or a half-written folder looked like the user's)."""
    import threading
    import time

    import goalgen.data.synthetic as synthetic
    from goalgen.train.entry import _ensure_synthetic_data

    real, spans = synthetic.generate_dataset, []

    def timed(*args, **kwargs):
        t0 = time.monotonic()
        out = real(*args, **kwargs)
        spans.append((t0, time.monotonic()))
        return out

    monkeypatch.setattr(synthetic, "generate_dataset", timed)
    cfg = OmegaConf.create(
        {"data": {"data_dir": str(tmp_path / "demo"), "synthetic": {"num_scenes": 6, "seed": 0}}}
    )
    errors: list[BaseException] = []

    def point() -> None:
        try:
            _ensure_synthetic_data(cfg, True, lambda: None)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    caplog.set_level("INFO", logger="goalgen")
    threads = [threading.Thread(target=point) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors
    assert len(spans) == 3
    spans.sort()
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:], strict=False)), spans  # serial
    assert "not written by goalgen-synth" not in caplog.text
    assert len(list((tmp_path / "demo").glob("scene_*.npz"))) == 6


# ----------------------------------------------------------------------------- goalgen-sweep
def test_sacct_attempts_of_each_array_element():
    out = "\n".join(
        [
            "12_0|REQUEUED|0:0",
            "12_1|COMPLETED|0:0",
            "12_0|RUNNING|0:0",
            "13_[0-2%2]|PENDING|0:0",
            "13_3|FAILED|1:0",
            "14|CANCELLED by 0|0:0",
        ]
    )
    records = parse_sacct(out)
    assert records["12_0"] == [("REQUEUED", "0:0"), ("RUNNING", "0:0")]
    assert records["12_1"] == [("COMPLETED", "0:0")]
    assert [records[f"13_{i}"] for i in range(3)] == [[("PENDING", "0:0")]] * 3
    assert records["13_3"] == [("FAILED", "1:0")]
    assert records["14"] == [("CANCELLED", "0:0")]


def sweep_cmd(tmp_path: Path, synth_dir: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        ENTRY,
        f"--config-name={FM}",
        "-m",
        "hydra/launcher=local",
        *TINY,
        f"data.data_dir={synth_dir}",
        f"data.cache_dir={tmp_path}/cache",
        f"output_dir={tmp_path}/out",
        "max_epochs=2",
        "val.metric_scenes=2",
        *extra,
    ]


def sweep_dir_of(tmp_path: Path) -> Path:
    [found] = [p.parent for p in (tmp_path / "out").glob("*/.submitit")]
    return found


@pytest.fixture(scope="module")
def failed_sweep(tmp_path_factory, synth_dir):
    """A 2-point local sweep whose point 1 cannot train (batch_size larger than the data),
    run twice with the same command."""
    tmp_path = tmp_path_factory.mktemp("sweep")
    cmd = sweep_cmd(tmp_path, synth_dir, "batch_size=8,100")
    first = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    sweep_dir = sweep_dir_of(tmp_path)
    before = read_sweep(sweep_dir)
    ckpt0 = before[0].run_dir / "checkpoints" / "last.ckpt"
    mtime0 = ckpt0.stat().st_mtime_ns
    second = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    return tmp_path, sweep_dir, first, second, before, mtime0


@pytest.mark.slow
def test_a_failing_point_fails_alone_and_goalgen_sweep_names_why(failed_sweep):
    tmp_path, sweep_dir, first, _, points, _ = failed_sweep
    # the -m command reports the failure, after the other point has finished
    assert first.returncode != 0
    assert "exceeds the" in first.stdout + first.stderr
    assert [p.num for p in points] == [0, 1]
    ok, bad = points
    assert ok.params["batch_size"] == "8" and bad.params["batch_size"] == "100"
    assert ok.state == "completed" and ok.epoch == 2 and ok.requeues == 0
    last = torch.load(ok.run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert ok.step == last["step"] > 0
    assert ok.val_loss_best == pytest.approx(last["val_loss_best"])
    assert ok.best_checkpoint == rank_checkpoints(ok.run_dir / "checkpoints")[0][2]
    assert ok.metrics["val_validity"] is not None  # the task metrics of its last validation
    assert bad.state == "failed"
    assert "batch_size=100 x 1 process(es) exceeds the" in bad.reason
    assert bad.epoch is None and bad.best_checkpoint is None


@pytest.mark.slow
def test_rerunning_the_sweep_reruns_only_what_did_not_finish(failed_sweep):
    tmp_path, sweep_dir, _, second, before, mtime0 = failed_sweep
    assert second.returncode != 0  # point 1 fails again, the same way
    after = read_sweep(sweep_dir)
    assert [p.num for p in after] == [0, 1]
    ok, bad = after
    assert ok.job_id != before[0].job_id  # resubmitted ...
    log0 = (ok.run_dir / "train.log").read_text()
    assert "Run already complete (epoch 2" in log0  # ... and exited at once
    assert (ok.run_dir / "checkpoints" / "last.ckpt").stat().st_mtime_ns == mtime0
    assert ok.state == "completed" and bad.state == "failed"
    assert bad.job_id != before[1].job_id and "exceeds the" in bad.reason


@pytest.mark.slow
def test_goalgen_sweep_formats_and_sorting(failed_sweep, capsys):
    _, sweep_dir, _, _, _, _ = failed_sweep
    sweep_main([str(sweep_dir), "--csv", "--sort", "batch_size", "--reverse"])
    table = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["batch_size"] for r in table] == ["100", "8"]
    assert [r["state"] for r in table] == ["failed", "completed"]
    assert table[1]["epoch"] == "2" and Path(table[1]["best_checkpoint"]).is_file()
    assert "val_validity" in table[0]  # --csv: every task metric
    sweep_main([str(sweep_dir), "--markdown", "--sort", "val_loss_best"])
    out = capsys.readouterr().out
    lines = [ln for ln in out.splitlines() if ln.startswith("|")]
    cells = [[c.strip() for c in ln.split("|")[1:-1]] for ln in lines]
    assert cells[0][:3] == ["point", "batch_size", "state"]
    assert [c[2] for c in cells[2:]] == ["completed", "failed"]  # empty val_loss_best last
    assert "2 points, 1 completed, 1 failed" in out
    columns, table = rows(read_sweep(sweep_dir, use_sacct=False))
    with pytest.raises(ValueError, match="--sort nope: no such column; use one of point, batch"):
        sort_rows(columns, table, "nope", False)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p / "missing", "SWEEP_DIR .*missing does not exist"),
        (lambda p: (p / ".hydra").mkdir() or p, "is a run dir .*not a sweep dir"),
        (lambda p: p, "has no .submitit/ folder"),
    ],
)
def test_goalgen_sweep_bad_dirs_are_one_line_errors(tmp_path, make, message):
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "goalgen-sweep"), str(make(tmp_path))],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith("goalgen-sweep: error: ")
    assert re.search(message, proc.stderr), proc.stderr


@pytest.mark.slow
def test_failed_trials_do_not_stop_an_optuna_search(tmp_path, synth_dir):
    """Every trial's objective fails here (no task metrics without val.metric_scenes): the
    search still runs both rounds, Optuna records the failures, goalgen-sweep names them."""
    cmd = sweep_cmd(
        tmp_path,
        synth_dir,
        "hydra/sweeper=tpe",
        "hydra.sweeper.n_trials=4",
        "hydra.sweeper.n_jobs=2",
        "max_epochs=1",
        "val.metric_scenes=0",
        "objective=val_validity",
    )
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0  # no trial completed: Optuna has no best one
    assert out.count("Failed experiment") == 4 and "Directions: ['maximize']" in out
    points = read_sweep(sweep_dir_of(tmp_path))
    assert [p.num for p in points] == [0, 1, 2, 3]  # the second round ran after the first failed
    for p in points:
        assert p.state == "failed" and p.epoch == 1  # trained; the objective is what failed
        assert p.reason.startswith("objective=val_validity is not among the metrics of ")
