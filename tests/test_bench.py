"""goalgen-bench: the --quick run end to end (JSON structure, consistent ratios, NFE counts)
and its command-line errors. No timing assertions: only that figures exist, are positive and
agree with each other."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from importlib import metadata

import pytest
import torch

from data_helpers import write_scenes
from goalgen.bench import cli, measure, settings
from goalgen.bench.data import benchmark_loader
from goalgen.bench.train import train_precisions
from goalgen.infer.proposals import DRAWS

NFE_PER_STEP = {"euler": 1, "midpoint": 2, "rk4": 4, "ddim": 1, "ddpm": 1}


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def raw_figures(node, path=""):
    """(path, value) of every ``*_per_s``, ``*_ms``, ``mfu`` and ``peak_*`` figure."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from raw_figures(value, f"{path}.{key}")
            if (
                key.endswith(("_per_s", "_ms"))
                or key == "mfu"
                or (key.startswith("peak_") and key != "peak_mem_kind")
            ):
                yield f"{path}.{key}", value
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from raw_figures(value, f"{path}[{i}]")


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory, synth_dir):
    tmp = tmp_path_factory.mktemp("bench")
    out = tmp / "bench.json"
    cmd = [
        sys.executable,
        "-m",
        "goalgen.bench",
        "all",
        "--quick",
        "--json",
        str(out),
        "--data-dir",
        str(synth_dir),
        "--work-dir",
        str(tmp / "work"),
        f"data.cache_dir={tmp / 'cache'}",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "train:" in proc.stdout and "checkpoint:" in proc.stdout
    assert not list((tmp / "work").glob("run-*")), "scratch folder left behind"
    return json.loads(out.read_text())


@pytest.mark.slow
def test_quick_json_has_every_section_device_and_versions(quick_results):
    r = quick_results
    assert r["quick"] is True and r["repeats"] == 1
    assert set(settings.SECTIONS) <= set(r)
    assert r["device"]["type"] in ("cpu", "cuda") and r["device"]["threads"] >= 1
    assert r["versions"]["torch"] == torch.__version__
    for section in settings.SECTIONS:
        assert len(r[section]["load_avg"]) in (0, 3)
        assert r[section]["section_s"] > 0
    figures = list(raw_figures(r))
    assert len(figures) > 50
    for where, value in figures:
        assert isinstance(value, (int, float)) and math.isfinite(value), where
        may_be_zero = (
            "peak_mem_mb",
            "rejected_share",
            "verified_share",
            "verified_of_top",
            "snap_ms",  # an untrained network's samples give no fit to snap or plan
            "rank_ms",
            "redraws",
        )
        assert value > 0 or (where.endswith(may_be_zero) and value >= 0), where


@pytest.mark.slow
def test_quick_train_figures_agree(quick_results):
    t = quick_results["train"]
    assert t["gflop_per_step"] > 0 and t["params_m"] > 0
    combos = {(run["precision"], run["compiled"]) for run in t["runs"]}
    expected = train_precisions(torch.device(quick_results["device"]["type"]))
    assert combos == {(p, c) for p in expected for c in (False, True)}
    for run in t["runs"]:
        assert close(run["samples_per_s"], t["batch_size"] / (run["step_ms"] / 1e3))
        assert close(run["achieved_gflop_per_s"], t["gflop_per_step"] / (run["step_ms"] / 1e3))
        assert close(run["mfu"], run["achieved_gflop_per_s"] / run["peak_gflop_per_s"])
        assert len(run["step_ms_runs"]) == quick_results["repeats"]
        if "peak_rss_mb" in run:  # CPU: the absolute peak holds the peak above entry
            assert run["peak_rss_mb"] >= run["peak_mem_mb"]
    by = {(run["precision"], run["compiled"]): run for run in t["runs"]}
    c = t["compile"]
    assert c["backend"] == "aot_eager"
    assert close(c["speedup"], c["eager_step_ms"] / c["compiled_step_ms"])
    assert c["eager_step_ms"] == by[(t["default_precision"], False)]["step_ms"]
    if quick_results["device"]["type"] == "cpu":  # a long run compiles where g++ exists
        auto = "compiled" if shutil.which(os.environ.get("CXX", "g++")) else "eager"
        assert t["default_precision"] == "bf16-mixed" and c["auto_picks"] == auto
        assert t["step_ms"] == c[f"{auto}_step_ms"]
    picked, other = (
        (c["compiled_step_ms"], c["eager_step_ms"])
        if c["auto_picks"] == "compiled"
        else (c["eager_step_ms"], c["compiled_step_ms"])
    )
    assert c["auto_is_faster"] == (picked <= other)
    assert close(c["auto_over_eager_speedup"], c["eager_step_ms"] / picked)
    m = t["mixed_precision"]
    assert close(m["speedup"], m["fp32_step_ms"] / m["mixed_step_ms"])


@pytest.mark.slow
def test_quick_data_figures_agree(quick_results):
    d = quick_results["data"]
    assert d["num_scenes"] == 48 and "fewer than the 500" in d["note"]
    assert close(d["speedup"], d["packed_samples_per_s"] / d["per_file_samples_per_s"])
    assert close(d["packed_ms_per_batch"], 1e3 * d["batch_size"] / d["packed_samples_per_s"])
    assert close(d["loader_share"], d["packed_ms_per_batch"] / d["train_step_ms"])
    assert d["train_step_ms"] == quick_results["train"]["step_ms"]


@pytest.mark.slow
def test_quick_sample_counts_function_evaluations(quick_results):
    s = quick_results["sample"]
    methods = [(run["method"], run["steps"]) for run in s["runs"]]
    assert methods == [tuple(x) for x in settings.QUICK_SAMPLE_GRID]
    for run in s["runs"]:
        if run["method"] in NFE_PER_STEP:
            nfe = NFE_PER_STEP[run["method"]] * run["steps"]
            if run["method"] == "rk4":  # x1 prediction: the step that ends at t = 1 is midpoint
                nfe = 4 * (run["steps"] - 1) + 2
            assert run["nfe_per_sample_batched"] == run["nfe_per_sample_sequential"] == nfe
        else:  # adaptive: at least one accepted step of dopri5 (6 evaluations)
            assert run["nfe_per_sample_batched"] >= 6
        assert close(run["speedup"], run["sequential_ms_per_scene"] / run["batched_ms_per_scene"])
        assert close(run["batched_scenes_per_s"], 1e3 / run["batched_ms_per_scene"])
    c = s["compile"]
    assert close(
        c["speedup"], c["eager"]["batched_ms_per_scene"] / c["compiled"]["batched_ms_per_scene"]
    )
    assert c["compiled"]["nfe_per_sample_batched"] > 0


@pytest.mark.slow
def test_quick_checkpoint_figures_agree(quick_results):
    c = quick_results["checkpoint"]
    assert c["file_mb"] > 0 and c["epoch_steps"] == int(48 * 0.9) // 8
    assert close(c["save_in_steps"], c["save_ms"] / c["train_step_ms"])
    epoch_s = c["epoch_steps"] * c["train_step_ms"] / 1e3
    assert close(c["overhead_pct"], 100 * c["saves_per_epoch"] * c["save_ms"] / 1e3 / epoch_s)
    assert c["overhead_with_top_k_pct"] > c["overhead_pct"]


@pytest.mark.slow
def test_quick_synth_and_propose_figures_agree(quick_results):
    y = quick_results["synth"]
    assert set(y["families"]) == {"rooms", "maze", "arena"} and y["scenes_per_family"] == 2
    for f in y["families"].values():
        assert f["scenes"] == 2 and f["layouts"] == 2 + sum(f["rejected"].values())
        assert close(f["scenes_per_s"], f["scenes"] / f["seconds"])
        assert close(f["rejected_share"], 1 - f["scenes"] / f["layouts"])
    rate = y["families"]["maze"]["scenes_per_s"]
    assert close(y["maze_10k_minutes_on_2_cores"], 10_000 / (2 * rate) / 60)
    p = quick_results["propose"]
    assert (
        p["num_samples"] == 4
        and p["weights"] == "untrained"
        and set(p["scenes"]) == {"maze", "rooms", "arena"}
    )
    for s in p["scenes"].values():
        assert s["calls"] == p["scenes_per_family"] == 1
        assert close(s["post_over_sampling"], s["post_ms"] / s["sampling_ms"])
        parts = ("setup", "fit", "snap", "check", "rank")
        assert close(s["post_ms"], sum(s[f"{part}_ms"] for part in parts))
        assert s["post_ms"] >= s["setup_ms"] > 0 and s["fit_ms"] > 0
        # one call: its whole time is its parts (and the call's own bookkeeping)
        assert s["post_ms"] + s["sampling_ms"] <= s["call_ms_p50"] == s["call_ms_p95"]
        assert s["samples_drawn_for_top"] <= DRAWS * p["num_samples"] == p["max_samples"]
        assert close(s["oversampling"], s["samples_drawn_for_top"] / p["num_samples"])
        assert close(s["redraws"], s["oversampling"] - 1)
    by_name = {row["target"]: row for row in quick_results["targets"]}
    row = by_name["propose: post-processing / sampling (max over scenes)"]
    assert row["value"] == p["post_over_sampling_max"] and row["threshold"] == 0.2
    row = by_name["propose: call p50 (s, max over families)"]
    assert close(row["value"], max(s["call_ms_p50"] for s in p["scenes"].values()) / 1e3)
    lines = "\n".join(cli.summary_lines(quick_results))
    assert "synth:" in lines and "scenes/s" in lines and "propose:" in lines


def test_quick_episodes_figures_agree(quick_results):
    e = quick_results["episodes"]
    assert e["strategy"] == "random_local" and e["scenes_per_family"] == 1  # untrained weights
    assert set(e["families"]) == {"maze", "rooms", "arena"}
    for f in e["families"].values():
        # one episode: its median and 95th percentile are the same opening time
        assert f["episodes"] == 1 and f["opening_s_p50"] == f["opening_s_p95"] > 0
        assert f["model_s_mean"] >= 0 and f["physics_s_mean"] >= 0
        assert close(
            f["opening_s_p50"], f["model_s_mean"] + f["physics_s_mean"] + f["other_s_mean"]
        )
    by_name = {row["target"]: row for row in quick_results["targets"]}
    row = by_name["episodes: s per opening p50 (max over families)"]
    assert row["value"] == e["opening_s_p50_max"] and row["threshold"] == 1.0
    assert "episodes: random_local" in "\n".join(cli.summary_lines(quick_results))


def test_peak_memory_sees_an_allocation():
    with measure.PeakMemory(torch.device("cpu")) as mem:
        x = torch.ones(16 * 2**20)  # 64 MiB, every page touched
        del x
    if mem.kind != "rss_peak_above_entry":
        pytest.skip("no resettable RSS high-water mark here")
    assert mem.peak_mb >= 60


@pytest.mark.parametrize(
    "argv, message",
    [
        (["nonsense"], "unknown section 'nonsense'"),
        (["train", "seed=1", "stray"], "'stray' is neither a section nor a key=value override"),
        (["train", "--repeats", "0"], "--repeats must be >= 1"),
        (["train", "model.network.no_such_key=1"], "goalgen-bench: error:"),
    ],
)
def test_bad_input_exits_2_with_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_help_and_console_script(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0 and "--quick" in capsys.readouterr().out
    scripts = {e.name: e.value for e in metadata.entry_points(group="console_scripts")}
    assert scripts.get("goalgen-bench") == "goalgen.bench.cli:main"


@pytest.mark.slow
def test_sample_section_with_a_trained_run_scores_settings_and_recommends(tiny_cfg, tmp_path):
    from pathlib import Path

    from goalgen.train.distributed import DistContext
    from goalgen.train.loop import train

    cfg = tiny_cfg("train_fb_flow_matching", "max_epochs=1")
    run_dir = Path(cfg.output_dir) / cfg.run_name
    result = train(cfg, run_dir, DistContext(0, 0, 1, 1, torch.device("cpu"), None))
    out = tmp_path / "sample.json"
    assert (
        cli.main(
            [
                "sample",
                "--quick",
                "--no-compile",
                "--ckpt",
                str(result.best_checkpoint),
                "--run",
                str(run_dir),
                "--json",
                str(out),
                "--work-dir",
                str(tmp_path / "work"),
            ]
        )
        == 0
    )
    s = json.loads(out.read_text())["sample"]
    assert s["weights"].startswith("EMA of")
    q = s["quality"]
    assert [(r["method"], r["steps"]) for r in q["runs"]] == [
        tuple(x) for x in settings.QUICK_QUALITY_GRID["flow"]
    ]
    assert q["scenes"] == 4 and all(r["ms_per_scene"] > 0 for r in q["runs"])
    rec = q["recommended"]
    assert 100 * rec["success_rate"] >= 100 * q["best_success_rate"] - settings.QUALITY_POINTS
    band = [
        r
        for r in q["runs"]
        if 100 * r["success_rate"] >= 100 * q["best_success_rate"] - settings.QUALITY_POINTS
    ]
    assert rec["ms_per_scene"] == min(r["ms_per_scene"] for r in band)
    assert rec["speedup"] >= 1


def test_run_without_checkpoints_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["sample", "--run", str(tmp_path)])
    assert exc.value.code == 2 and "has no checkpoints/ folder" in capsys.readouterr().err


@pytest.mark.slow
def test_quick_targets_restate_the_section_figures(quick_results):
    assert len(quick_results["targets"]) == 11
    by_name = {row["target"]: row for row in quick_results["targets"]}
    data = by_name["data: packed cache / per-file load+resize"]
    assert data["value"] == quick_results["data"]["speedup"] and data["threshold"] == 50
    assert data["met"] == (data["value"] >= 50)
    ckpt_row = by_name["checkpoint: share of training time (with top-k saves)"]
    assert close(ckpt_row["value"], quick_results["checkpoint"]["overhead_with_top_k_pct"] / 100)
    assert ckpt_row["met"] == (ckpt_row["value"] < 0.01)


def test_benchmark_loader(tmp_path):
    write_scenes(tmp_path, 6)
    r = benchmark_loader(tmp_path, 8, batch_size=4, num_batches=3, per_file_samples=8, workers=1)
    assert r["num_scenes"] == 6 and r["image_size"] == 8
    assert r["packed_samples_per_s"] > 0 and r["per_file_samples_per_s"] > 0
    assert r["speedup"] == pytest.approx(r["packed_samples_per_s"] / r["per_file_samples_per_s"])


def test_the_benchmark_times_the_loops_own_step(tiny_cfg):
    """The learner ``goalgen-bench train`` times, fed the loop's first batches, ends with the
    loop's weights: the benchmark measures the training step itself, not a copy of it."""
    from types import SimpleNamespace

    from torch.utils.data import DataLoader

    from goalgen.bench.train import make_learner
    from goalgen.checkpoint import network_state
    from goalgen.data.dataset import collate_batch
    from goalgen.train.loop import Trainer, train
    from run_helpers import CPU, run_dir_of

    common = ("max_steps=4", "optim.warmup_steps=1")  # the LR decays within the 4 steps
    cfg = tiny_cfg("train_fb_flow_matching", *common, "val.samples_per_scene=0")
    train(cfg, run_dir_of(cfg), CPU)
    state = torch.load(run_dir_of(cfg) / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["step"] == 4
    fresh = tiny_cfg("train_fb_flow_matching", *common, "run_name=batches")
    trainer = Trainer(fresh, run_dir_of(fresh), CPU)  # only for the loop's batch order
    trainer.sampler.set_epoch(0)
    loader = DataLoader(
        trainer.train_set, cfg.batch_size, sampler=trainer.sampler, collate_fn=collate_batch
    )
    bench_settings = SimpleNamespace(cfg=cfg, device=torch.device("cpu"), compile_backend="eager")
    learner = make_learner(bench_settings, "32", False, total_steps=trainer.total_steps)
    for _, batch in zip(range(4), loader, strict=False):
        assert learner.train_step(batch, 0).outcome == "applied"
    for key, value in network_state(learner.model.network).items():
        assert torch.equal(value, state["model"][key]), key
    for key, value in learner.ema.module.state_dict().items():
        assert torch.equal(value, state["ema"][key]), key
