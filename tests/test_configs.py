"""Every command of the training guide composes, validates and names its run stably."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from conftest import compose_config
from goalgen.model.build import build_model
from goalgen.precision import resolve_precision
from goalgen.train.entry import requested_devices
from goalgen.train.run_name import run_name_for

ROOT = Path(__file__).resolve().parents[1]
FM, HF = "train_fb_flow_matching", "train_hf_diffusion"

GUIDE_COMMANDS = [
    (FM, []),
    (FM, ["trainer=multi_gpu"]),
    (FM, ["trainer=multi_gpu", "trainer.devices=4"]),
    (FM, ["model.sampler.method=dopri5"]),
    (FM, ["model.sampler.method=euler"]),
    (FM, ["model.sampler.method=rk4"]),
    (FM, ["model.path.scheduler=cosine"]),
    (FM, ["model.path.scheduler=vp"]),
    (FM, ["model.path.scheduler=linear_vp"]),
    (FM, ["model.path.prediction=velocity"]),
    (FM, ["batch_size=128"]),
    (FM, ["base_lr=5e-5"]),
    (FM, ["data.data_dir=/path/to/data"]),
    (FM, ["max_epochs=500"]),
    (FM, ["ckpt_path=/path/to/checkpoint.ckpt"]),
    (FM, ["model.aux_loss_weight=0.01"]),
    (FM, ["trainer.precision=32"]),
    (FM, ["trainer.precision=bf16-mixed"]),
    (FM, ["num_workers=8", "max_epochs=2000"]),
    (HF, []),
    (HF, ["model.sampler.sampler_type=ddpm"]),
    (HF, ["model.sampler.eta=0.5"]),
    (HF, ["model.path.beta_schedule=linear"]),
    (HF, ["model.path.prediction_type=v_prediction"]),
    (HF, ["sampling_steps=20"]),
    (HF, ["experiment=demo"]),
    (FM, ["experiment=demo"]),
]


@pytest.mark.parametrize("config_name,overrides", GUIDE_COMMANDS)
def test_guide_command_composes_and_builds(config_name, overrides):
    cfg = compose_config(
        config_name, overrides + ["run_name=x", "image_size=16", "model.network.depth=1"]
    )
    for override in overrides:  # each value override really landed in the config
        key, value = override.split("=", 1)
        if key in ("trainer", "experiment"):  # config groups, not values
            continue
        node = OmegaConf.select(cfg, key)
        assert str(node) == value or float(node) == float(value), override
    model = build_model(cfg)
    assert model.family == ("flow" if config_name == FM else "diffusion")
    resolve_precision(cfg.trainer.precision, torch.device("cpu"))
    requested_devices(cfg)


@pytest.mark.parametrize("experiment", ["planner", "planner_gpu"])
@pytest.mark.parametrize("config_name", [FM, HF])
def test_planner_recipes_compose_and_build(config_name, experiment):
    cfg = compose_config(config_name, [f"experiment={experiment}", "run_name=x"])
    assert cfg.data.synthetic.family == "mixed" and cfg.image_size == 64
    assert cfg.trainer.precision == "bf16-mixed" and cfg.max_steps > 0
    tokens = (cfg.image_size // cfg.model.network.patch_size) ** 2
    assert tokens == (64 if experiment == "planner" else 256)
    assert cfg.model.network.refine_channels == (32 if experiment == "planner" else 0)
    model = build_model(cfg)
    assert model.family == ("flow" if config_name == FM else "diffusion")


def test_guide_defaults():
    for name, steps in ((FM, 20), (HF, 50)):
        cfg = compose_config(name, ["run_name=x"])
        assert (cfg.seed, cfg.batch_size, cfg.max_epochs, cfg.base_lr, cfg.image_size) == (
            42,
            64,
            1000,
            1e-4,
            64,
        )
        assert cfg.sampling_steps == steps
        assert cfg.trainer.precision == "16-mixed" and cfg.trainer.gradient_clip_val == 1.0
    multi = compose_config(FM, ["run_name=x", "trainer=multi_gpu"]).trainer
    assert (
        multi.devices,
        multi.strategy,
        multi.static_graph,
        multi.find_unused_parameters,
        multi.sync_batchnorm,
    ) == ("auto", "ddp", True, False, True)
    hf = compose_config(HF, ["run_name=x"]).model
    assert (
        hf.path.beta_schedule,
        hf.path.prediction_type,
        hf.path.num_train_timesteps,
        hf.sampler.sampler_type,
        hf.sampler.eta,
    ) == ("squaredcos_cap_v2", "epsilon", 1000, "ddim", 0.0)


def test_mismatched_sampler_is_refused_at_build():
    cfg = compose_config(
        HF,
        [
            "run_name=x",
            "image_size=16",
            "model.network.depth=1",
            "+model.sampler.beta_schedule=linear",
        ],
    )
    with pytest.raises(ValueError, match="beta_schedule"):
        build_model(cfg)


def test_run_name_is_a_pure_function_of_the_run_changing_overrides():
    a = run_name_for(FM, ["base_lr=5e-5", "batch_size=128"])
    assert a == run_name_for(FM, ["batch_size=128", "base_lr=5e-5"])
    assert a == run_name_for(
        FM, ["batch_size=128", "base_lr=5e-5", "ckpt_path=/x.ckpt", "resume=false", "num_workers=2"]
    )
    assert a != run_name_for(FM, ["base_lr=1e-4", "batch_size=128"])
    assert a != run_name_for(HF, ["batch_size=128", "base_lr=5e-5"])
    assert run_name_for(FM, []) == FM
    assert run_name_for(FM, ["experiment=demo"]) == f"{FM}-demo"
    assert "/" not in run_name_for(FM, ["data.data_dir=/a/b"])


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "src" / "train_generative.py"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


@pytest.mark.parametrize(
    "config_name,overrides",
    [
        (FM, ["trainer=multi_gpu", "trainer.devices=4", "model.sampler.method=dopri5"]),
        (HF, ["model.sampler.sampler_type=ddpm", "model.path.beta_schedule=linear"]),
    ],
)
def test_cli_cfg_job_prints_the_composed_config(config_name, overrides):
    out = run_cli(f"--config-name={config_name}", *overrides, "--cfg", "job")
    assert out.returncode == 0, out.stderr
    for override in overrides:
        if "." in override:
            assert override.rsplit(".", 1)[-1].replace("=", ": ") in out.stdout


def test_bare_command_without_data_names_the_fix(tmp_path):
    out = run_cli(f"--config-name={FM}", f"output_dir={tmp_path}")
    assert out.returncode != 0
    assert "data.data_dir" in out.stderr and "experiment=demo" in out.stderr
    assert "goalgen-synth" in out.stderr
    assert "Traceback" not in out.stderr


def test_multirun_with_the_basic_launcher_gives_each_point_its_own_run_dir(tmp_path, synth_dir):
    tiny = [
        "image_size=16",
        "batch_size=8",
        "num_workers=0",
        "model.network.dim=32",
        "model.network.depth=1",
        "model.network.heads=2",
        "trainer.accelerator=cpu",
        "trainer.precision=32",
        "max_steps=1",
        "val.metric_scenes=0",
        "val.num_images=0",
        f"data.data_dir={synth_dir}",
        f"data.cache_dir={tmp_path}/cache",
        f"output_dir={tmp_path}/out",
    ]
    out = run_cli(f"--config-name={FM}", "-m", "base_lr=1e-4,5e-5", *tiny, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    lasts = sorted((tmp_path / "out").glob("*/*/checkpoints/last.ckpt"))
    assert len(lasts) == 2 and lasts[0].parent.parent != lasts[1].parent.parent


def test_the_planner_student_is_the_planner_network_reflowed_from_its_run():
    """The student keeps the teacher's network (it starts from its weights) and samples in
    one euler step; its teacher and start are the planner recipe's run unless given."""
    planner = compose_config(FM, ["experiment=planner", "run_name=x"])
    student = compose_config(FM, ["experiment=planner_student", "run_name=x"])
    assert student.model.network == planner.model.network and student.image_size == 64
    assert (student.sampling_steps, student.model.sampler.method) == (1, "euler")
    assert student.run_path == student.distill.teacher == "outputs/train_fb_flow_matching-planner"
    given = compose_config(FM, ["experiment=planner_student", "distill.teacher=t.pt"])
    assert given.run_path == "t.pt" and 0 < given.distill.t_zero < 1


def test_the_three_family_planner_is_the_planner_run_fine_tuned_then_reflowed():
    """experiment=planner_mix fine-tunes the planner run on rooms, mazes and arenas (one
    network); its continuation to 16,000 steps (the README's command) trains on in its own run
    dir, which planner_mix_student reflows, starting from the rooms + mazes student."""
    planner = compose_config(FM, ["experiment=planner", "run_name=x"])
    mix = compose_config(FM, ["experiment=planner_mix", "run_name=x"])
    student = compose_config(FM, ["experiment=planner_mix_student", "run_name=x"])
    assert mix.model.network == student.model.network == planner.model.network
    assert mix.run_path == "outputs/train_fb_flow_matching-planner" and mix.distill.teacher is None
    synth = mix.data.synthetic
    assert synth.family == "mixed" and synth.arena_share > 0 and synth.maze_share > 0
    assert student.data == mix.data
    last = "outputs/train_fb_flow_matching-planner_mix/checkpoints/last.ckpt"
    longer = compose_config(
        FM,
        [
            "experiment=planner_mix",
            "max_steps=16000",
            "run_path=null",
            "run_name=train_fb_flow_matching-planner_mix_16k",
            f"ckpt_path={last}",
        ],
    )
    assert longer.run_path is None and longer.ckpt_path == last and longer.max_steps == 16000
    assert student.distill.teacher == f"{longer.output_dir}/{longer.run_name}"
    assert student.run_path == "outputs/train_fb_flow_matching-planner_student"
    assert (student.sampling_steps, student.model.sampler.method) == (1, "euler")
