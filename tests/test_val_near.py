"""Near metrics in the validation pass: task_metrics reads each scene's file, and a training run
on maze scenes logs val_success_near_*."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from goalgen.data.pack import resize_masks
from goalgen.data.scenes import SCENE_KEYS
from goalgen.data.synthetic import generate_scene, save_npz
from goalgen.eval import near
from goalgen.eval.validation import NEAR_VAL_KEYS, task_metrics
from run_helpers import scalars, train_tiny_run

SIZE = 32


@pytest.fixture(scope="module")
def maze_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("maze")
    for i in range(12):
        seq = np.random.SeedSequence(3, spawn_key=(i,))
        save_npz(
            out / f"scene_{i:05d}.npz", generate_scene(seq, 224, "maze", maze_opts={"grid_size": 5})
        )
    return out


def _tensors(paths, size=SIZE):
    masks = []
    for p in paths:
        with np.load(p) as npz:
            masks.append(np.stack([npz[k].astype(np.float32) / 255 for k in SCENE_KEYS]))
    soft = np.stack([resize_masks(m, size) for m in masks])
    model = torch.from_numpy(soft) * 2 - 1
    return model[:, :5], model[:, 5:]


def test_task_metrics_adds_near_metrics_for_maze_files(maze_dir, synth_dir):
    paths = sorted(maze_dir.glob("*.npz"))[:3]
    context, truth = _tensors(paths)
    samples = torch.stack([truth, truth], 1)  # (N, K=2, 1, S, S): the ground truth twice
    got = task_metrics(context, truth, samples, scenes=paths)
    assert set(NEAR_VAL_KEYS) <= set(got)
    # the same numbers as score_near on each file, averaged (no second implementation here:
    # score_near itself is checked against the stored feasible set in test_near)
    expected = []
    for p, t in zip(paths, truth, strict=True):
        arrays = dict(np.load(p))
        binary = np.repeat((t.numpy() >= 0)[None, 0], 2, 0)
        expected.append(near.score_near(arrays, binary)["success_near_at_1"])
    assert got["success_near_at_1"] == pytest.approx(np.mean(expected))
    assert got["in_feasible_at_k"] == 1.0 and got["within_half_width_at_k"] == 1.0
    left = task_metrics(context, truth, torch.stack([context[:, 4:5]] * 2, 1), scenes=paths)
    assert left["success_near_at_k"] == 0.0
    # rooms files (no feasible set): the same metrics as before, geometry from the file
    rooms = sorted(synth_dir.glob("*.npz"))[:2]
    c2, t2 = _tensors(rooms)
    plain = task_metrics(c2, t2, t2[:, None], scenes=rooms)
    assert not set(NEAR_VAL_KEYS) & set(plain)
    with pytest.raises(ValueError, match="entries for 2 scenes"):
        task_metrics(c2, t2, t2[:, None], scenes=rooms[:1])


def test_a_run_on_maze_scenes_logs_near_metrics(tmp_path, maze_dir):
    run = train_tiny_run(tmp_path, maze_dir, "train_fb_flow_matching", "val.metric_scenes=2")
    for tag in ("val_success_near_at_1", "val_in_feasible_at_k", "val_validity"):
        assert scalars(run, tag), tag
