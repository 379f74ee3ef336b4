"""jobs/ablate_context.py: the shuffled-context ablation on a tiny model and mixed scenes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import load_job
from goalgen.data.synthetic import generate_scene, save_npz
from goalgen.infer import prepare_scene
from run_helpers import train_tiny_run


@pytest.fixture(scope="module")
def ablation():
    return load_job("ablate_context")


@pytest.fixture(scope="module")
def mixed_dir(tmp_path_factory, synth_dir) -> Path:
    out = tmp_path_factory.mktemp("ablation_mixed")
    for i in range(2):
        seq = np.random.SeedSequence(7, spawn_key=(i,))
        save_npz(
            out / f"maze_{i}.npz", generate_scene(seq, 224, "maze", maze_opts={"grid_size": 5})
        )
    for p in sorted(synth_dir.glob("*.npz"))[:3]:
        shutil.copy(p, out / f"rooms_{p.name}")
    return out


def test_derangement_stays_in_family(ablation):
    groups = ["maze"] * 5 + ["rooms"] * 4 + ["planner"]
    for seed in range(20):
        perm = ablation.derangement(groups, np.random.default_rng(seed))
        assert sorted(perm) == list(range(len(groups)))
        for i, j in enumerate(perm):
            assert groups[i] == groups[j]
            assert (i != j) or groups.count(groups[i]) == 1


def test_shuffle_context_takes_named_channels(ablation, mixed_dir):
    files = sorted(mixed_dir.glob("*.npz"))[:2]
    scenes = [prepare_scene(f, 16) for f in files]
    out = ablation.shuffle_context(scenes, np.array([1, 0]), ["static"])
    assert np.array_equal(out[0].context[3], scenes[1].context[3])
    assert np.array_equal(out[0].context[:3], scenes[0].context[:3])
    assert np.array_equal(out[0].context[4], scenes[0].context[4])
    assert out[0].truth is scenes[0].truth  # scored against its own scene


def test_cli_reports_own_and_shuffled(ablation, tmp_path, synth_dir, mixed_dir, capsys):
    run_dir = train_tiny_run(tmp_path, synth_dir)
    out = tmp_path / "ablation.json"
    args = [str(run_dir), "--data", str(mixed_dir), "--samples", "2", "--out", str(out)]
    assert ablation.main(args) == 0
    report = json.loads(out.read_text())
    assert report["all"]["num_scenes"] == 5
    assert set(report["families"]) == {"maze", "rooms"}
    for variant in ("own", "shuffled"):
        block = report["families"]["maze"][variant]
        assert {"model", "proposals"} <= set(block)
        assert "success_near_at_1" in block["model"]
        assert 0 <= block["model"]["validity"] <= 1
    perm = report["permutation"]
    assert all(i != j for i, j in enumerate(perm))
    assert "shuffled" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        ablation.main([str(run_dir), "--data", str(mixed_dir), "--channels", "walls"])
