"""The training loop on tiny CPU models: schedule, EMA, precision, NaN policy, checkpoints,
resume, and that a short run actually learns."""

from __future__ import annotations

import logging
import math

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from goalgen import checkpoint as ckpt
from goalgen.data.dataset import build_datasets, collate_batch
from goalgen.eval.validation import task_metrics
from goalgen.model.build import build_model
from goalgen.model.generative import GenerativeModel
from goalgen.precision import Precision, inference_precision, resolve_precision, use_tf32
from goalgen.train import loop as loop_module
from goalgen.train import step as step_module
from goalgen.train.distributed import DistContext
from goalgen.train.loop import NonFiniteLossError, Trainer, train
from goalgen.train.state import lr_factor, make_ema
from run_helpers import CPU, assert_same_weights, run_dir_of, scalars


def test_lr_schedule_values():
    assert lr_factor(0, 10, 100, 0.01) == pytest.approx(0.1)
    assert lr_factor(9, 10, 100, 0.01) == pytest.approx(1.0)
    assert lr_factor(10, 10, 100, 0.01) == pytest.approx(1.0)
    assert lr_factor(60, 10, 100, 0.01) == pytest.approx(0.01 + 0.99 * 0.5)
    assert lr_factor(110, 10, 100, 0.01) == pytest.approx(0.01)
    assert lr_factor(10_000, 10, 100, 0.01) == pytest.approx(0.01)


def test_ema_follows_the_warmed_up_decay():
    model = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.zeros_(model.weight)
    ema = make_ema(model, decay=0.9, warmup=True)
    expected = 0.0
    for n, value in enumerate([1.0, 2.0, 3.0, 4.0]):
        model.weight.data.fill_(value)
        ema.update_parameters(model)
        if n == 0:
            expected = value  # AveragedModel copies the weights on the first update
        else:
            d = min(0.9, (1 + n) / (10 + n))
            expected = d * expected + (1 - d) * value
        assert ema.module.weight.item() == pytest.approx(expected)


def test_precision_names(caplog):
    cpu = torch.device("cpu")
    assert resolve_precision("32", cpu).dtype is None
    assert resolve_precision(32, cpu).dtype is None
    assert resolve_precision("bf16-mixed", cpu).dtype is torch.bfloat16
    with caplog.at_level(logging.WARNING):
        p = resolve_precision("16-mixed", cpu)
    assert p.dtype is torch.bfloat16 and not p.use_scaler and "bf16" in caplog.text
    with pytest.raises(ValueError, match="trainer.precision"):
        resolve_precision("fp8", cpu)


@pytest.mark.parametrize("capability", [(7, 0), (7, 5), (8, 0), (9, 0)])
def test_bf16_on_a_gpu_needs_native_bf16(monkeypatch, capability):
    """torch.cuda.is_bf16_supported() says True on a V100/T4 (emulation): the capability
    decides (a simulated device: nothing runs on it)."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *_: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *_, **__: True)
    cuda = torch.device("cuda", 0)
    if capability >= (8, 0):
        assert resolve_precision("bf16-mixed", cuda).dtype is torch.bfloat16
    else:
        with pytest.raises(ValueError, match=r"capability 7\.\d.*emulates bf16.*16-mixed"):
            resolve_precision("bf16-mixed", cuda)
    assert resolve_precision("16-mixed", cuda).use_scaler


@pytest.mark.parametrize("capability", [(7, 5), (8, 0)])
def test_inference_precision_autocasts_on_gpus_only(monkeypatch, capability):
    """auto: fp32 on a CPU; bf16 autocast on a GPU with native bf16, fp16 before it (a
    simulated device); never a grad scaler; explicit names as training reads them."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *_: capability)
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert inference_precision(None, cpu).dtype is None
    assert inference_precision("auto", cpu).name == "32"
    on_gpu = inference_precision(None, cuda)
    assert on_gpu.dtype is (torch.bfloat16 if capability >= (8, 0) else torch.float16)
    assert not on_gpu.use_scaler and not inference_precision("16-mixed", cuda).use_scaler
    assert inference_precision("bf16-mixed", cpu).dtype is torch.bfloat16
    with pytest.raises(ValueError, match="precision"):
        inference_precision("fp8", cpu)


def test_tf32_is_set_for_gpus_through_the_api_inductor_reads():
    """use_tf32 leaves a CPU's matmuls alone and sets a GPU's through the global API: after
    the per-backend one, torch.get_float32_matmul_precision() (read by inductor's cache key)
    raises on the mix."""
    assert torch.get_float32_matmul_precision() == "highest"
    use_tf32(torch.device("cpu"))
    assert torch.get_float32_matmul_precision() == "highest"
    try:
        use_tf32(torch.device("cuda", 0))  # a device object: nothing runs on it
        assert torch.get_float32_matmul_precision() == "high"
        assert torch.backends.cuda.matmul.fp32_precision == "tf32"
        use_tf32(torch.device("cuda", 0), enabled=False)
        assert torch.get_float32_matmul_precision() == "highest"
    finally:
        torch.set_float32_matmul_precision("highest")


def test_one_all_reduce_per_step_carries_the_stop_and_save_flags(tiny_cfg, monkeypatch):
    """Each step's ranks agree on its non-finite checks and the loop's stop/save flags in one
    all-reduce; a save due (every_minutes=0) saves after every step."""
    calls = []
    real = DistContext.all_reduce_max

    def counting(self, values):
        calls.append(values.numel())
        return real(self, values)

    monkeypatch.setattr(DistContext, "all_reduce_max", counting)
    saves = []
    real_save = Trainer.save_last
    monkeypatch.setattr(
        Trainer, "save_last", lambda self: (saves.append(self.step), real_save(self))
    )
    cfg = tiny_cfg("train_fb_flow_matching", "max_steps=3", "checkpoint.every_minutes=0")
    result = train(cfg, run_dir_of(cfg), CPU)
    assert result.step == 3
    assert calls == [4, 4, 4]  # loss, gradient, stop, save: once per step
    assert saves[:3] == [1, 2, 3]


def test_an_fp16_run_resumes_a_checkpoint_written_without_a_grad_scaler(tiny_cfg, monkeypatch):
    """A bf16 (or fp32, or CPU) run's last.ckpt holds an empty scaler state; resumed with an
    enabled scaler (16-mixed on a GPU) it starts a fresh one instead of crashing."""
    cfg = tiny_cfg("train_fb_flow_matching", "max_steps=1", "trainer.precision=bf16-mixed")
    train(cfg, run_dir_of(cfg), CPU)
    state = torch.load(run_dir_of(cfg) / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["scaler"] == {}
    monkeypatch.setattr(step_module, "resolve_precision", lambda *_: FP16_ON_CPU)
    resumed = tiny_cfg("train_fb_flow_matching", "max_steps=2", "trainer.precision=bf16-mixed")
    result = train(resumed, run_dir_of(resumed), CPU)
    assert result.step == 2
    state = torch.load(run_dir_of(cfg) / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["scaler"]["scale"] == 2.0**16  # a fresh scaler, one clean step


@pytest.mark.parametrize("config_name", ["train_fb_flow_matching", "train_hf_diffusion"])
@pytest.mark.parametrize("precision", ["32", "bf16-mixed", "16-mixed"])
def test_train_run_leaves_the_guide_output_tree(tiny_cfg, config_name, precision):
    cfg = tiny_cfg(config_name, "max_epochs=2", f"trainer.precision={precision}")
    result = train(cfg, run_dir_of(cfg), CPU)
    run = run_dir_of(cfg)
    assert result.step == 2 * 5 and result.epoch == 2  # 43 train scenes / batch 8
    assert (run / "checkpoints" / "last.ckpt").is_file()
    best = sorted((run / "checkpoints").glob("epoch*-val_loss*.ckpt"))
    assert 1 <= len(best) <= 3 and all(
        math.isfinite(float(p.stem.split("val_loss")[1])) for p in best
    )
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    acc = EventAccumulator(str(run / "tensorboard")).Reload()
    for tag in (
        "train_loss",
        "val_loss",
        "val_loss_best",
        "lr",
        "grad_norm",
        "samples_per_s",
        "val_validity",
        "val_success_rate",
        "val_best_iou",
        "val_hit_at_k",
    ):
        assert tag in acc.Tags()["scalars"], tag
    assert any(t.startswith("Validation_Samples_") for t in acc.Tags()["images"])
    assert list((run / "samples").glob("epoch*.png"))
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert {"model", "ema", "optimizer", "epoch", "step", "batch_in_epoch", "config"} <= set(state)
    assert not any("_orig_mod" in k for k in state["model"])
    assert state["config"]["model"]["network"]["dim"] == 32


def test_loader_workers_draw_the_noise_the_step_would(tiny_cfg, monkeypatch):
    """Worker processes make the batches and draw their per-sample noise (NoisyBatches, off
    the step's path): the run is bitwise the one whose step draws the noise itself."""
    cfg = tiny_cfg("train_fb_flow_matching", "max_epochs=2", "num_workers=2", "run_name=w2")
    assert train(cfg, run_dir_of(cfg), CPU).step == 10
    monkeypatch.setattr(loop_module, "NoisyBatches", lambda *_: collate_batch)
    plain = tiny_cfg("train_fb_flow_matching", "max_epochs=2", "run_name=plain")
    assert train(plain, run_dir_of(plain), CPU).step == 10
    assert_same_weights(*(run_dir_of(c) / "checkpoints" / "last.ckpt" for c in (cfg, plain)))


def test_compiled_network_saves_plain_keys(tiny_cfg):
    cfg = tiny_cfg(
        "train_fb_flow_matching", "max_steps=1", "trainer.compile=true", "val.num_images=0"
    )
    train(cfg, run_dir_of(cfg), CPU)
    state = torch.load(run_dir_of(cfg) / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["model"] and not any("_orig_mod" in k for k in state["model"])


def test_resume_continues_the_same_curve_bitwise(tiny_cfg, tmp_path):
    common = ("optim.decay_steps=100", "max_epochs=2", "trainer.precision=bf16-mixed")
    full = tiny_cfg("train_fb_flow_matching", *common, "run_name=full")
    train(full, run_dir_of(full), CPU)

    part = tiny_cfg("train_fb_flow_matching", *common, "run_name=part", "max_steps=3")
    assert train(part, run_dir_of(part), CPU).step == 3
    last = run_dir_of(part) / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["batch_in_epoch"] == 3  # stopped mid-epoch
    # resume elsewhere through ckpt_path, as the guide's command does
    resumed = tiny_cfg("train_fb_flow_matching", *common, "run_name=part2", f"ckpt_path={last}")
    train(resumed, run_dir_of(resumed), CPU)

    a = torch.load(run_dir_of(full) / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(run_dir_of(resumed) / "checkpoints" / "last.ckpt", weights_only=True)
    assert a["step"] == b["step"] == 10
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
        assert torch.equal(a["ema"][key], b["ema"][key]), key
    full_curve = dict(scalars(run_dir_of(full), "train_loss"))
    resumed_curve = dict(scalars(run_dir_of(part), "train_loss")) | dict(
        scalars(run_dir_of(resumed), "train_loss")
    )
    assert resumed_curve == full_curve


def test_auto_resume_and_finished_run_exits_at_once(tiny_cfg, caplog):
    cfg = tiny_cfg("train_fb_flow_matching", "max_epochs=1")
    train(cfg, run_dir_of(cfg), CPU)
    mtime = (run_dir_of(cfg) / "checkpoints" / "last.ckpt").stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="goalgen"):
        result = train(cfg, run_dir_of(cfg), CPU)
    assert "Resuming from" in caplog.text and "already complete" in caplog.text
    assert result.step == 5
    assert (run_dir_of(cfg) / "checkpoints" / "last.ckpt").stat().st_mtime_ns == mtime
    longer = tiny_cfg("train_fb_flow_matching", "max_epochs=2")
    assert train(longer, run_dir_of(longer), CPU).step == 10


def test_resume_into_another_model_shape_is_a_clear_error(tiny_cfg):
    cfg = tiny_cfg("train_fb_flow_matching", "max_steps=1", "val.num_images=0")
    train(cfg, run_dir_of(cfg), CPU)
    wider = tiny_cfg("train_fb_flow_matching", "max_steps=2", "model.network.dim=64")
    with pytest.raises(ValueError, match="another shape.*run_name.*resume=false"):
        train(wider, run_dir_of(wider), CPU)


FP16_ON_CPU = Precision("16-mixed", "cpu", None, True)  # fp32 math, a real GradScaler("cpu")


@pytest.mark.parametrize("fp16", [False, True], ids=["fp32", "fp16-scaler"])
def test_nonfinite_steps_are_skipped_then_abort(tiny_cfg, monkeypatch, caplog, fp16):
    if fp16:  # the guide's CUDA default: before the fix the step after a NaN loss crashed
        monkeypatch.setattr(step_module, "resolve_precision", lambda *_: FP16_ON_CPU)
    real_forward = GenerativeModel.forward
    calls = {"n": 0}

    def flaky(self, *args):
        calls["n"] += 1
        losses = real_forward(self, *args)
        if self.training and calls["n"] in (2, 3):
            losses["loss"] = losses["loss"] * float("nan")
        return losses

    monkeypatch.setattr(GenerativeModel, "forward", flaky)
    cfg = tiny_cfg("train_fb_flow_matching", "max_epochs=1")
    with caplog.at_level(logging.WARNING):
        result = train(cfg, run_dir_of(cfg), CPU)
    assert result.step == 5 - 2 and "non-finite" in caplog.text
    assert dict(scalars(run_dir_of(cfg), "nonfinite_steps"))
    state = torch.load(run_dir_of(cfg) / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["nonfinite_total"] == 2
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    if fp16:  # each NaN step backed the loss scale off (x0.5); no growth within 2000 steps
        assert state["scaler"]["scale"] == pytest.approx(2.0**16 * 0.5**2)

    def always_nan(self, *args):
        losses = real_forward(self, *args)
        if self.training:
            losses["loss"] = losses["loss"] * float("nan")
        return losses

    monkeypatch.setattr(GenerativeModel, "forward", always_nan)
    cfg = tiny_cfg(
        "train_fb_flow_matching", "trainer.max_consecutive_nonfinite=3", "run_name=always_nan"
    )
    with pytest.raises(NonFiniteLossError, match="3 steps in a row.*base_lr"):
        train(cfg, run_dir_of(cfg), CPU)


def test_validation_loss_is_deterministic(tiny_cfg):
    cfg = tiny_cfg("train_hf_diffusion", "max_steps=1")
    trainer = Trainer(cfg, run_dir_of(cfg), CPU)
    assert trainer.validate(0) == trainer.validate(0)


@pytest.mark.slow
@pytest.mark.parametrize(
    "config_name,extra",
    [
        ("train_fb_flow_matching", []),
        ("train_hf_diffusion", ["model.path.prediction_type=sample"]),
    ],
)
def test_short_training_learns(tiny_cfg, synth_dir, config_name, extra):
    """Fitting 16 scenes (validated on the same scenes through ``data.val_dir``), a short run
    lowers the val loss clearly, and its samples overlap the ground truth far better than noise
    does: the loss is wired to the sampler, so a broken sampler or path conversion fails here."""
    files = ",".join(sorted(str(p) for p in synth_dir.glob("*.npz"))[:16])
    cfg = tiny_cfg(
        config_name,
        f"data.data_dir=[{files}]",
        f"data.val_dir=[{files}]",
        "image_size=32",
        "batch_size=16",
        "max_epochs=400",
        "base_lr=1e-3",
        "model.network.dim=64",
        "model.network.depth=2",
        "model.aux_loss_weight=1.0",
        "trainer.precision=bf16-mixed",
        "trainer.check_val_every_n_epoch=10",
        "val.num_images=0",
        "val.metric_scenes=0",
        "optim.warmup_steps=20",
        "ema.decay=0.9",
        "sampling_steps=10",
        *extra,
    )
    result = train(cfg, run_dir_of(cfg), CPU)
    val = [v for _, v in scalars(run_dir_of(cfg), "val_loss")]
    assert val[-1] < 0.5 * val[0], val
    model = build_model(cfg)
    model.load_state_dict(torch.load(result.best_checkpoint, weights_only=True)["ema"])
    train_set, _ = build_datasets(
        cfg.data.data_dir, 32, cache_dir=cfg.data.cache_dir, val_dir=cfg.data.val_dir
    )
    batch = train_set.__getitems__(list(range(len(train_set))))
    k = 4
    samples = model.sample(
        batch["context"].repeat_interleave(k, 0), 10, torch.Generator().manual_seed(0)
    ).view(-1, k, 1, 32, 32)
    noise = torch.randn(samples.shape, generator=torch.Generator().manual_seed(0))
    learned = task_metrics(batch["context"], batch["target"], samples)
    floor = task_metrics(batch["context"], batch["target"], noise)
    assert learned["best_iou"] > 3 * floor["best_iou"], (learned, floor)
    assert learned["validity"] > floor["validity"], (learned, floor)  # some box-like blobs


def test_val_loss_best_does_not_depend_on_top_k(tiny_cfg):
    cfg = tiny_cfg("train_fb_flow_matching", "max_epochs=2", "checkpoint.save_top_k=0")
    result = train(cfg, run_dir_of(cfg), CPU)
    assert math.isfinite(result.val_loss_best) and result.val_loss_best <= result.val_loss
    assert not list((run_dir_of(cfg) / "checkpoints").glob("epoch*.ckpt"))
    assert math.isfinite(scalars(run_dir_of(cfg), "val_loss_best")[-1][1])


def test_ckpt_path_start_then_requeues_continue_from_the_runs_own_last(tiny_cfg, caplog):
    """The guide's ``ckpt_path=`` command re-run (a Slurm requeue re-runs the same command)
    continues from its own newer last.ckpt, not from ckpt_path again; resume=false restarts
    from ckpt_path; another run's top-k table does not follow into this run dir."""
    source = tiny_cfg("train_fb_flow_matching", "max_steps=3", "run_name=source")
    train(source, run_dir_of(source), CPU)
    start = run_dir_of(source) / "checkpoints" / "last.ckpt"
    common = (f"ckpt_path={start}", "run_name=continued")
    run = run_dir_of(source).parent / "continued"
    first = train(tiny_cfg("train_fb_flow_matching", *common, "max_steps=6"), run, CPU)
    assert first.step == 6
    own = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert all((run / "checkpoints" / name).is_file() for _, _, name in own["top_k"])
    assert first.best_checkpoint is not None and first.best_checkpoint.parent == run / "checkpoints"
    with caplog.at_level(logging.INFO, logger="goalgen"):
        again = Trainer(tiny_cfg("train_fb_flow_matching", *common, "max_steps=9"), run, CPU)
    assert again.step == 6 and "was this run's starting point" in caplog.text
    fresh = Trainer(
        tiny_cfg("train_fb_flow_matching", *common, "max_steps=9", "resume=false"), run, CPU
    )
    assert fresh.step == 3
    other = tiny_cfg("train_fb_flow_matching", "max_steps=2", "run_name=other")
    train(other, run_dir_of(other), CPU)
    chosen = Trainer(
        tiny_cfg(
            "train_fb_flow_matching",
            "run_name=continued",
            "max_steps=9",
            f"ckpt_path={run_dir_of(other)}/checkpoints/last.ckpt",
        ),
        run,
        CPU,
    )
    assert chosen.step == 2  # a new ckpt_path wins over the run's own last.ckpt


def test_compile_auto_picks_compiled_only_where_it_pays(monkeypatch):
    from goalgen.train.step import CPU_COMPILE_MIN_STEPS, resolve_compile

    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert resolve_compile("auto", cuda, 10) is True
    assert resolve_compile(False, cuda) is False and resolve_compile(True, cpu, 1) is True
    assert resolve_compile("auto", cpu, CPU_COMPILE_MIN_STEPS - 1) is False  # the demo: 825
    monkeypatch.setenv("CXX", "sh")  # any program on PATH stands for the compiler here
    assert resolve_compile("auto", cpu, CPU_COMPILE_MIN_STEPS) is True
    assert resolve_compile("auto", cpu) is True  # unknown length: a long run
    monkeypatch.setenv("CXX", "no-such-compiler-here")
    assert resolve_compile("auto", cpu, 10**6) is False
    with pytest.raises(ValueError, match="trainer.compile='fast'"):
        resolve_compile("fast", cpu)


def test_decay_steps_zero_means_no_decay_and_null_the_whole_run(tiny_cfg):
    from goalgen.train.loop import Trainer

    flat_cfg = tiny_cfg("train_fb_flow_matching", "max_steps=12", "optim.decay_steps=0")
    full_cfg = tiny_cfg("train_fb_flow_matching", "max_steps=12", "run_name=decays")
    flat, full = (
        Trainer(flat_cfg, run_dir_of(flat_cfg), CPU),
        Trainer(full_cfg, run_dir_of(full_cfg), CPU),
    )
    for trainer in (flat, full):
        for _ in range(10):
            trainer.learner.lr_schedule.step()
    base = flat.learner.lr
    assert flat.learner.lr_schedule.get_last_lr()[0] == pytest.approx(base)  # 0: flat after warmup
    assert full.learner.lr_schedule.get_last_lr()[0] < 0.2 * base  # null: decays over the run


def test_run_path_fine_tunes_from_another_runs_best_weights(tiny_cfg, caplog):
    source_cfg = tiny_cfg("train_fb_flow_matching", "max_epochs=2", "run_name=source")
    train(source_cfg, run_dir_of(source_cfg), CPU)
    source_dir = run_dir_of(source_cfg)
    best = ckpt.select_checkpoint(source_dir, "best")
    best_state = torch.load(best, weights_only=True)
    cfg = tiny_cfg("train_fb_flow_matching", "max_steps=2", f"run_path={source_dir}")
    with caplog.at_level(logging.INFO, logger="goalgen"):
        trainer = Trainer(cfg, run_dir_of(cfg), CPU)
    assert f"Fine-tuning from {best}" in caplog.text and trainer.step == 0
    for key, value in ckpt.network_state(trainer.model.network).items():
        assert torch.equal(value, best_state["model"][key]), key
    for key, value in trainer.learner.ema.module.state_dict().items():
        assert torch.equal(value, best_state["ema"][key]), key
    assert not trainer.learner.optimizer.state  # a new optimizer, LR schedule at its start
    assert trainer.learner.lr_schedule.last_epoch == 0
    result = trainer.fit()
    assert result.step == 2
    # a requeue (same command) resumes the fine-tuning run's own last.ckpt, never re-inits
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="goalgen"):
        again = Trainer(
            tiny_cfg("train_fb_flow_matching", "max_steps=3", f"run_path={best}"),
            run_dir_of(cfg),
            CPU,
        )
    assert again.step == 2 and "Resuming from" in caplog.text and "Fine-tuning" not in caplog.text
    wide = tiny_cfg(
        "train_fb_flow_matching", f"run_path={best}", "model.network.dim=64", "run_name=wide"
    )
    with pytest.raises(ValueError, match=r"shape patch_embed.weight .*another shape.*run_path"):
        Trainer(wide, run_dir_of(wide), CPU)
    both = tiny_cfg("train_fb_flow_matching", f"run_path={best}", f"ckpt_path={best}")
    with pytest.raises(ValueError, match="give one"):
        Trainer(both, run_dir_of(both), CPU)
