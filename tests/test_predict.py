"""GoalPredictor and goalgen-predict: checkpoint choice, batched sampling, inputs, CLI."""

from __future__ import annotations

import json
from importlib.metadata import entry_points
from pathlib import Path

import numpy as np
import pytest
import torch

from goalgen import checkpoint as ckpt
from goalgen.data.synthetic import save_npz
from goalgen.eval import predict as predict_mod
from goalgen.eval.predict import main
from goalgen.infer import GoalPredictor
from goalgen.model.generative import GenerativeModel
from run_helpers import train_tiny_run

REASONS = ("empty", "fragmented: ", "area ")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, synth_dir) -> Path:
    return train_tiny_run(tmp_path_factory.mktemp("predict"), synth_dir)


@pytest.fixture(scope="module")
def predictor(run_dir) -> GoalPredictor:
    return GoalPredictor.from_run(run_dir, device="cpu")


def scene_files(synth_dir: Path, n: int) -> list[Path]:
    return sorted(synth_dir.glob("scene_*.npz"))[:n]


# ----------------------------------------------------------------------------- checkpoints
def test_from_run_loads_the_best_checkpoint_with_ema_weights(run_dir, predictor):
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    best_loss, _, best_name = last["top_k"][0]
    assert predictor.checkpoint_path.name == best_name
    state = torch.load(predictor.checkpoint_path, weights_only=True)
    assert state["val_loss"] == pytest.approx(best_loss)
    for key, value in predictor.model.state_dict().items():
        assert torch.equal(value, state["ema"][key]), key
    assert not predictor.model.training and predictor.image_size == 16
    assert predictor.family == "flow" and predictor.method == "midpoint"


@pytest.mark.parametrize("precision", [None, "bf16-mixed"])
def test_sampling_runs_in_the_chosen_precision(run_dir, precision):
    """fp32 by default on a CPU; bf16-mixed autocasts the network's matmuls; masks come back
    as float32 either way."""
    predictor = GoalPredictor.from_run(run_dir, device="cpu", precision=precision)
    dtypes = set()
    linear = next(m for m in predictor.model.network.modules() if isinstance(m, torch.nn.Linear))
    hook = linear.register_forward_hook(lambda m, i, out: dtypes.add(out.dtype))
    try:
        context = torch.zeros(1, 5, 16, 16) - 1
        out = predictor.sample(context, 2, 2, generator=torch.Generator().manual_seed(0))
    finally:
        hook.remove()
    assert out.dtype is torch.float32 and out.shape == (1, 2, 1, 16, 16)
    assert dtypes == {torch.bfloat16 if precision else torch.float32}
    assert predictor.precision.name == (precision or "32")


def test_a_weights_file_may_name_its_cpu_precision(run_dir, tmp_path):
    """``goalgen-export --cpu-precision bf16-mixed``: the file samples in bf16 on a CPU unless
    the caller names a precision; a file without it stays fp32."""
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    fast = ckpt.export_weights(state, tmp_path / "fast.pt", cpu_precision="bf16-mixed")
    plain = ckpt.export_weights(state, tmp_path / "plain.pt")
    for asked in (None, "auto"):
        assert GoalPredictor.from_run(fast, device="cpu", precision=asked).precision.name == (
            "bf16-mixed"
        )
        assert GoalPredictor.from_run(plain, device="cpu", precision=asked).precision.name == "32"
    assert GoalPredictor.from_run(fast, device="cpu", precision="32").precision.name == "32"
    with pytest.raises(ValueError, match="cpu_precision 'fp8'"):
        ckpt.export_weights(state, tmp_path / "bad.pt", cpu_precision="fp8")


# ----------------------------------------------------------------------------- predict
def test_predict_shapes_poses_and_one_batched_call(predictor, synth_dir, monkeypatch):
    calls = []
    real_sample = GenerativeModel.sample

    def spy(self, context, *args, **kwargs):
        calls.append(context.shape[0])
        return real_sample(self, context, *args, **kwargs)

    monkeypatch.setattr(GenerativeModel, "sample", spy)
    files = scene_files(synth_dir, 3)
    results = predictor.predict(files, num_samples=4, seed=0)
    assert calls == [12]  # 3 scenes x 4 samples, one call
    assert predictor.last_cost.nfe == 4  # midpoint, sampling_steps=2: 2 evaluations per step
    for path, r in zip(files, results, strict=True):
        assert r.name == path.stem
        assert r.probs.shape == (4, 16, 16) and r.probs.dtype == np.float32
        assert r.masks.dtype == bool and np.array_equal(r.masks, r.probs >= 0.5)
        assert r.probs.min() >= 0.0 and r.probs.max() <= 1.0
        assert len(r.poses) == 4 and r.truth.shape == (16, 16) and r.geometry is not None
        for k, pose in enumerate(r.poses):
            if pose is None:
                assert r.rejected[k].startswith(REASONS)
            else:
                assert k not in r.rejected and 0 <= pose.angle < np.pi
                assert pose.center_world is not None  # synthetic scenes carry world bounds
        json.dumps(r.to_json())
    calls.clear()
    predictor.predict(files, num_samples=4, batch_size=2)
    assert calls == [8, 4]


def test_same_seed_same_masks(predictor, synth_dir):
    files = scene_files(synth_dir, 2)
    a = predictor.predict(files, num_samples=3, seed=7)
    b = predictor.predict(files, num_samples=3, seed=7)
    c = predictor.predict(files, num_samples=3, seed=8)
    for x, y in zip(a, b, strict=True):
        assert np.array_equal(x.probs, y.probs)
    assert not np.array_equal(a[0].probs, c[0].probs)


def test_arrays_at_any_resolution_and_files_without_ground_truth(predictor, synth_dir, tmp_path):
    path = scene_files(synth_dir, 1)[0]
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    full = (
        np.stack(
            [
                arrays[k]
                for k in (
                    "robot_image",
                    "goal_image",
                    "movable_objects_image",
                    "static_objects_image",
                    "target_object",
                    "target_goal",
                )
            ]
        ).astype(np.float32)
        / 255
    )
    from_file, from_array = predictor.predict([path, full], num_samples=2, seed=3)
    assert np.allclose(from_file.context, from_array.context)
    assert from_array.geometry is None and from_array.name == "scene1"
    # five channels at another resolution; one array alone
    small = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(full[:5]), 64).numpy()
    [r] = predictor.predict(small, num_samples=2)
    assert r.truth is None and r.masks.shape == (2, 16, 16)
    # a planner's file: no target_goal key
    no_truth = tmp_path / "query.npz"
    save_npz(no_truth, {k: v for k, v in arrays.items() if k != "target_goal"})
    [q] = predictor.predict([no_truth], num_samples=2)
    assert q.truth is None and q.geometry["robot_radius"] == pytest.approx(
        float(arrays["robot_radius"])
    )
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        predictor.predict([full * 2 - 1])
    with pytest.raises(ValueError, match="expected masks"):
        predictor.predict([full[0]])


def test_method_and_steps_override(predictor, synth_dir):
    path = scene_files(synth_dir, 1)
    predictor.predict(path, num_samples=2, steps=3, method="euler")
    assert predictor.last_cost.nfe == 3
    assert predictor.method == "midpoint"  # restored after the call
    predictor.predict(path, num_samples=2, steps=3)
    assert predictor.last_cost.nfe == 6
    with pytest.raises(ValueError, match="not a flow sampler"):
        predictor.predict(path, num_samples=2, method="ddim")


def test_diffusion_sampler_override(tmp_path, synth_dir):
    run = train_tiny_run(tmp_path, synth_dir, "train_hf_diffusion", "max_steps=1")
    diffusion = GoalPredictor.from_run(run, device="cpu")
    path = scene_files(synth_dir, 1)
    ddim = diffusion.predict(path, num_samples=2, seed=1)[0]
    ddpm = diffusion.predict(path, num_samples=2, seed=1, method="ddpm", steps=3)[0]
    assert diffusion.last_cost.nfe == 3 and diffusion.method == "ddim"
    assert ddim.probs.shape == ddpm.probs.shape == (2, 16, 16)


# ----------------------------------------------------------------------------- CLI
def test_cli_writes_outputs_and_agrees_with_the_api(
    run_dir, predictor, synth_dir, tmp_path, capsys
):
    files = scene_files(synth_dir, 2)
    out = tmp_path / "pred"
    args = [
        str(run_dir),
        *map(str, files),
        "--samples",
        "3",
        "--seed",
        "5",
        "--out",
        str(out),
        "--device",
        "cpu",
    ]
    assert main(args) == 0
    api = predictor.predict(files, num_samples=3, seed=5)
    for path, r in zip(files, api, strict=True):
        with np.load(out / f"{path.stem}_masks.npz") as saved:
            assert np.array_equal(saved["masks"], r.masks)
            assert np.allclose(saved["probs"], r.probs)
        poses = json.loads((out / f"{path.stem}_poses.json").read_text())
        assert poses["num_samples"] == 3 and len(poses["samples"]) == 3
        assert poses["num_valid"] == len(r.valid_poses)
        assert (out / f"{path.stem}_grid.png").stat().st_size > 0
    assert "network evaluations" in capsys.readouterr().out


def test_cli_errors_are_one_line(run_dir, synth_dir, tmp_path, capsys):
    scene = str(scene_files(synth_dir, 1)[0])
    cases = [
        ([str(tmp_path / "missing_run"), scene], "does not exist"),
        ([str(run_dir), str(tmp_path / "missing.npz")], "no such file"),
        ([str(run_dir), scene, "--method", "warp"], "not a flow sampler"),
        ([str(run_dir), scene, "--checkpoint", "nope.ckpt"], "does not exist"),
    ]
    for args, message in cases:
        assert main([*args, "--out", str(tmp_path / "o"), "--samples", "1"]) == 1
        err = capsys.readouterr().err
        assert err.startswith("goalgen-predict: error:") and message in err
        assert err.count("\n") == 1 and "Traceback" not in err
    with pytest.raises(SystemExit) as exit_info:
        main([str(run_dir), scene, "--out", "o", "--samples", "0"])
    assert exit_info.value.code == 2 and capsys.readouterr().err.count("\n") == 1
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0 and "--samples" in capsys.readouterr().out


def test_console_scripts_are_declared():
    scripts = {e.name: e.value for e in entry_points(group="console_scripts")}
    assert scripts["goalgen-predict"] == "goalgen.eval.predict:main"
    assert scripts["goalgen-eval"] == "goalgen.eval.evaluate:main"
    assert predict_mod.main is main


def test_cli_warns_in_one_line_when_only_last_exists(run_dir, synth_dir, tmp_path, capsys):
    only_last = tmp_path / "run" / "checkpoints"
    only_last.mkdir(parents=True)
    (only_last / "last.ckpt").write_bytes((run_dir / "checkpoints" / "last.ckpt").read_bytes())
    scene = str(scene_files(synth_dir, 1)[0])
    assert (
        main(
            [
                str(tmp_path / "run"),
                scene,
                "--samples",
                "1",
                "--out",
                str(tmp_path / "o"),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    err = capsys.readouterr().err
    assert err == f"goalgen-predict: warning: no best checkpoint in {only_last}: using last.ckpt\n"


def test_trajectory_from_noise_to_the_sample(predictor, synth_dir, tmp_path):
    """``return_trajectory``: (K, steps + 1, S, S); the last state is the sample (before the
    clamp), the first the seeded noise; the masks equal a call without it; the CLI writes the
    strip and the array."""
    files = scene_files(synth_dir, 2)
    plain = predictor.predict(files, num_samples=3, steps=4, seed=2)
    traced = predictor.predict(files, num_samples=3, steps=4, seed=2, return_trajectory=True)
    size = predictor.image_size
    for a, b in zip(plain, traced, strict=True):
        assert a.trajectory is None and b.trajectory.shape == (3, 5, size, size)
        assert np.array_equal(a.masks, b.masks)
        assert np.allclose(np.clip(b.trajectory[:, -1], 0, 1), b.probs, atol=1e-6)
    noise = torch.randn((6, 1, size, size), generator=torch.Generator().manual_seed(2))
    first = (noise[:3, 0].numpy() + 1) / 2
    assert np.allclose(traced[0].trajectory[:, 0], first, atol=1e-6)
    out = tmp_path / "traj"
    args = [str(predictor.checkpoint_path), str(files[0]), "--samples", "3", "--steps", "4"]
    assert main([*args, "--seed", "2", "--out", str(out), "--device", "cpu", "--trajectory"]) == 0
    with np.load(out / f"{files[0].stem}_masks.npz") as saved:
        assert np.allclose(saved["trajectory"], traced[0].trajectory[:, :], atol=1e-6)
    assert (out / f"{files[0].stem}_trajectory.png").stat().st_size > 0
