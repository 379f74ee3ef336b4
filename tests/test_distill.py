"""Reflow students (goalgen.train.distill): the teacher's targets, the student's times, its
start from the teacher's weights and its exact resume."""

from __future__ import annotations

import pytest
import torch

from goalgen import checkpoint as ckpt
from goalgen.model.generative import coordinate_grid
from goalgen.train.distill import Teacher, distill_times
from goalgen.train.loop import Trainer, train
from run_helpers import CPU, run_dir_of, scalars, train_tiny_run


@pytest.fixture
def teacher_run(tmp_path, synth_dir):
    return train_tiny_run(tmp_path / "teacher", synth_dir)


def test_the_teachers_targets_are_its_euler_samples_from_the_given_noise(teacher_run):
    """Against a hand-written euler loop on the teacher's x1 predictions (condOT: velocity
    ``(x1_hat - x) / (1 - t)``; the last step lands on ``x1_hat``)."""
    steps = 4
    teacher = Teacher(str(teacher_run), steps, "euler", CPU.device, "32", "flow", 16)
    g = torch.Generator().manual_seed(0)
    context = torch.rand(3, 5, 16, 16, generator=g) * 2 - 1
    noise = torch.randn(3, 1, 16, 16, generator=g)
    model = teacher.predictor.model
    x = noise.clone()
    with torch.no_grad():
        for i in range(steps):
            t = torch.full((3,), i / steps)
            coords = coordinate_grid(3, 16, x.device, x.dtype)
            x1_hat = model.network(torch.cat([context, coords, x], 1), t)
            x = x1_hat if i == steps - 1 else x + (x1_hat - x) / (1 - t[0]) / steps
    got = teacher.targets(context, noise)
    torch.testing.assert_close(got, x.clamp(-1, 1), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(got, teacher.targets(context, torch.randn_like(noise)))


def test_distill_times_send_a_share_to_zero_and_keep_the_rest_uniform():
    t = torch.linspace(0, 0.999, 10001)[:-1]
    out = distill_times(t, 0.25, 0.999)
    assert (out == 0).float().mean().item() == pytest.approx(0.25, abs=1e-3)
    rest = out[out > 0]
    assert rest.max() <= 0.999 and rest.mean().item() == pytest.approx(0.4995, abs=2e-3)
    assert torch.equal(distill_times(t, 0.0, 0.999), t / 0.999 * 0.999)
    with pytest.raises(ValueError, match="t_zero"):
        distill_times(t, 1.0, 0.999)


def test_a_student_starts_from_the_teacher_learns_its_samples_and_resumes_bitwise(
    tiny_cfg, teacher_run, tmp_path
):
    """The recipe: a weights file as teacher and as run_path (its EMA weights); the student's
    loss is not the plain fine-tune's; part + requeue = one uninterrupted run, bitwise."""
    weights = tmp_path / "teacher.pt"
    teacher_state = torch.load(ckpt.select_checkpoint(teacher_run, "last"), weights_only=True)
    ckpt.export_weights(teacher_state, weights, dtype=torch.float32)
    distill = (f"distill.teacher={weights}", f"run_path={weights}", "distill.steps=3")
    common = ("max_epochs=2", "optim.decay_steps=100", "val.num_images=0")

    start = Trainer(tiny_cfg("train_fb_flow_matching", *distill, *common), tmp_path / "s", CPU)
    for key, value in ckpt.network_state(start.model.network).items():
        assert torch.equal(value, teacher_state["ema"][key]), key

    full = tiny_cfg("train_fb_flow_matching", *distill, *common, "run_name=full")
    train(full, run_dir_of(full), CPU)
    plain = tiny_cfg("train_fb_flow_matching", f"run_path={weights}", *common, "run_name=plain")
    train(plain, run_dir_of(plain), CPU)
    first = dict(scalars(run_dir_of(full), "train_loss"))[1]
    assert first != pytest.approx(dict(scalars(run_dir_of(plain), "train_loss"))[1], rel=1e-3)

    part = tiny_cfg("train_fb_flow_matching", *distill, *common, "run_name=part", "max_steps=3")
    assert train(part, run_dir_of(part), CPU).step == 3
    requeued = tiny_cfg("train_fb_flow_matching", *distill, *common, "run_name=part")
    assert train(requeued, run_dir_of(requeued), CPU).step == 10
    a = torch.load(run_dir_of(full) / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(run_dir_of(part) / "checkpoints" / "last.ckpt", weights_only=True)
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key


def test_a_diffusion_teacher_or_another_size_is_refused(tiny_cfg, teacher_run, tmp_path, synth_dir):
    diffusion = train_tiny_run(tmp_path / "hf", synth_dir, "train_hf_diffusion")
    with pytest.raises(ValueError, match="reflow needs a flow teacher"):
        Teacher(str(diffusion), 2, "euler", CPU.device, "32", "flow", 16)
    with pytest.raises(ValueError, match="student image_size=32"):
        Teacher(str(teacher_run), 2, "euler", CPU.device, "32", "flow", 32)
    with pytest.raises(ValueError, match="distill.method='ddim'"):
        Teacher(str(teacher_run), 2, "ddim", CPU.device, "32", "flow", 16)
    with pytest.raises(FileNotFoundError, match="train the teacher first"):
        Teacher(str(tmp_path / "no_run"), 2, "euler", CPU.device, "32", "flow", 16)
