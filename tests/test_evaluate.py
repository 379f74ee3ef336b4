"""goalgen-eval: the report (model + baselines + cost), the random baseline, --compare."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from goalgen.data.dataset import split_indices
from goalgen.data.scenes import find_scene_files
from goalgen.eval.evaluate import choose_files, evaluate_run, main
from goalgen.eval.metrics import invalid_reason
from goalgen.eval.report import format_table
from goalgen.eval.scoring import METHODS, OPTIONAL_METHODS, random_valid_placements
from run_helpers import train_tiny_run
from test_metrics import corridor_scene, scene_masks

METRICS = (
    "validity",
    "iou_mean",
    "dice_mean",
    "best_iou",
    "best_dice",
    "hit_at_k",
    "diversity",
    "success_rate",
    "success_at_1",
    "success_at_k",
    "invalid",
)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, synth_dir) -> Path:
    return train_tiny_run(tmp_path_factory.mktemp("evaluate"), synth_dir)


@pytest.fixture(scope="module")
def report(run_dir, synth_dir) -> dict:
    return evaluate_run(run_dir, synth_dir, num_samples=3, max_scenes=4, seed=0, device="cpu")


def test_report_has_model_baselines_and_cost(report, synth_dir):
    assert set(report["methods"]) == set(METHODS) | set(OPTIONAL_METHODS)
    for method in METHODS:
        assert set(METRICS) <= set(report["methods"][method]), method
        assert report["methods"][method]["scenes"] == 4
    assert report["methods"]["leave_in_place"]["diversity"] == 0.0
    assert report["methods"]["ground_truth"]["iou_mean"] == 1.0
    assert report["methods"]["random_valid"]["validity"] >= 0.5
    assert report["cost"]["nfe"] == 4 and report["cost"]["calls"] == 1
    assert report["cost"]["seconds_per_scene"] > 0
    assert report["split"] == "val" and report["num_scenes"] == 4  # the run's own data
    assert report["scenes_with_world_geometry"] == 4
    assert report["method"] == "midpoint" and report["steps"] == 2
    assert len(report["per_scene"]) == 4 and set(METHODS) <= set(report["per_scene"][0])
    json.dumps(report, allow_nan=False)  # strict JSON: NaN became null


def test_val_split_repeats_the_training_split(synth_dir):
    config = {"seed": 42, "data": {"data_dir": str(synth_dir), "train_split": 0.9}}
    files, split = choose_files(synth_dir, "auto", config)
    _, val = split_indices(48, 0.9, 42)
    assert split == "val" and files == [find_scene_files(synth_dir)[i] for i in val]
    assert choose_files(synth_dir, "auto", {"data": {"data_dir": "/elsewhere"}})[1] == "all"
    assert len(choose_files(synth_dir, "train", config)[0]) == 48 - len(val)


def test_random_valid_placements_are_valid_varied_and_seeded():
    scene = scene_masks()
    soft = corridor_scene()["target_object"].astype(np.float32)
    a, failed = random_valid_placements(scene, soft, 6, np.random.default_rng(0))
    b, _ = random_valid_placements(scene, soft, 6, np.random.default_rng(0))
    assert failed == 0 and np.array_equal(a, b)
    assert all(invalid_reason(m, scene) is None for m in a)
    assert len({m.tobytes() for m in a}) > 1


def test_cli_report_and_compare(run_dir, synth_dir, report, tmp_path, capsys):
    out = tmp_path / "a.json"
    assert (
        main(
            [
                str(run_dir),
                "--data",
                str(synth_dir),
                "--samples",
                "3",
                "--max-scenes",
                "4",
                "--device",
                "cpu",
                "--out",
                str(out),
                "--no-per-scene",
            ]
        )
        == 0
    )
    saved = json.loads(out.read_text())
    assert "per_scene" not in saved
    # same seed, same scenes: the CLI reproduces the API's numbers
    assert saved["methods"] == {k: v for k, v in report["methods"].items()}
    table = capsys.readouterr().out
    assert "random_valid" in table and "leave_in_place" in table and "success@K" in table

    other = dict(saved, run_name="other_run")
    other["methods"] = {
        **saved["methods"],
        "model": {**saved["methods"]["model"], "validity": 0.123},
    }
    (tmp_path / "b.json").write_text(json.dumps(other))
    assert main(["--compare", str(out), str(tmp_path / "b.json")]) == 0
    plain = capsys.readouterr().out
    header = next(line for line in plain.splitlines() if line.startswith("metric"))
    assert "tiny" in header and "other_run" in header and header.count("random_valid") == 1
    assert "0.123" in plain
    assert main(["--compare", str(out), str(tmp_path / "b.json"), "--markdown"]) == 0
    md = capsys.readouterr().out
    assert (
        "| metric | tiny | tiny proposals | other_run | other_run proposals | random_valid |" in md
    )
    assert "|---|" in md

    assert format_table([saved]).count("\n") > len(METRICS)


def test_compare_a_run_dir_uses_its_saved_report(run_dir, report, tmp_path, capsys):
    saved = run_dir / "eval" / "report.json"
    saved.parent.mkdir(exist_ok=True)
    saved.write_text(json.dumps(report))
    try:
        assert main(["--compare", str(run_dir), str(saved)]) == 0
        assert "saved report" in capsys.readouterr().err
    finally:
        saved.unlink()


def test_a_checkpoint_file_reports_into_the_cwd_and_compares(
    run_dir, synth_dir, tmp_path, monkeypatch, capsys
):
    """A file (or a shipped weights name) is not a run dir: its report goes to
    ./eval/<stem>_report.json, never beside the file; --compare evaluates it like a run."""
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    monkeypatch.chdir(tmp_path)
    common = ["--data", str(synth_dir), "--samples", "2", "--max-scenes", "2", "--device", "cpu"]
    assert main([str(ckpt), *common, "--no-proposals"]) == 0
    assert json.loads((tmp_path / "eval" / "last_report.json").read_text())["num_scenes"] == 2
    assert not (ckpt / "eval").exists()
    capsys.readouterr()
    assert main(["--compare", str(ckpt), "eval/last_report.json", *common]) == 0
    assert "validity" in capsys.readouterr().out


def test_cli_errors_are_one_line(run_dir, tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    for args, message in [
        (["--compare", str(tmp_path / "nothing")], "neither a report, a run directory"),
        (["--compare", str(bad)], "not a goalgen-eval report"),
        ([str(run_dir), "--data", str(tmp_path / "nodata")], "does not exist"),
    ]:
        assert main(args) == 1
        err = capsys.readouterr().err
        assert err.startswith("goalgen-eval: error:") and message in err, err
        assert err.count("\n") == 1
    with pytest.raises(SystemExit) as exit_info:
        main([])
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0 and "--compare" in capsys.readouterr().out
