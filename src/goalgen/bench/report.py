"""The report: device and versions, the summary lines, the targets table."""

from __future__ import annotations

import os
import platform
from importlib import metadata
from typing import Any

import torch

from goalgen.bench.propose import PARTS


# ------------------------------------------------------------------------------ report
def device_info(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "type": device.type,
        "threads": torch.get_num_threads(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
    }
    if device.type == "cuda":
        info.update(
            name=torch.cuda.get_device_name(device),
            cuda=torch.version.cuda,
            memory_gb=torch.cuda.get_device_properties(device).total_memory / 2**30,
        )
    else:
        info["name"] = info["cpu"]
    return info


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "torch": torch.__version__}
    for dist in ("goalgen", "numpy", "flow-matching", "diffusers", "hydra-core"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def summary_lines(results: dict[str, Any]) -> list[str]:
    """A few human-readable lines per section (the JSON has everything)."""
    lines = [
        f"device: {results['device']['name']} ({results['device']['type']}, "
        f"{results['device']['threads']} threads){'  [--quick]' if results['quick'] else ''}"
    ]
    if "train" in results:
        t = results["train"]
        lines.append(
            f"train: {t['gflop_per_step']:.1f} GFLOP/step, batch {t['batch_size']}, "
            f"load {t['load_avg']}"
        )
        for r in t["runs"]:
            mode = "compiled" if r["compiled"] else "eager"
            lines.append(
                f"  {r['precision']:>10} {mode:<8} {r['step_ms']:9.1f} ms/step "
                f"{r['samples_per_s']:8.1f} samples/s  MFU {100 * r['mfu']:5.1f}% of "
                f"{r['peak_gflop_per_s']:.0f} GFLOP/s  peak mem {r['peak_mem_mb']:.0f}"
                " MiB"
            )
        if "compile" in t:
            c = t["compile"]
            even = c["break_even_steps"]
            lines.append(
                f"  compile=auto picks {c['auto_picks']}: compiled/eager speedup "
                f"{c['speedup']:.2f} after {c['compile_warmup_s']:.0f} s of compiling"
                f"{f' (earned back after {even} steps)' if even else ''}; auto/eager "
                f"{c['auto_over_eager_speedup']:.2f}"
            )
    if "data" in results:
        d = results["data"]
        lines.append(
            f"data: packed {d['packed_samples_per_s']:.0f} vs per-file "
            f"{d['per_file_samples_per_s']:.0f} samples/s = {d['speedup']:.0f}x; "
            f"loader {100 * d['loader_share']:.2f}% of a {d['train_step_ms']:.0f} ms "
            f"step ({d['num_scenes']} scenes)"
        )
    if "sample" in results:
        s = results["sample"]
        lines.append(f"sample: {s['samples_per_scene']} samples/scene, {s['precision']}")
        for r in s["runs"]:
            lines.append(
                f"  {r['method']:>8} {r['steps'] or 'adaptive':>8} NFE "
                f"{r['nfe_per_sample_batched']:5.1f}  batched "
                f"{r['batched_ms_per_scene']:9.1f} ms/scene  sequential "
                f"{r['sequential_ms_per_scene']:9.1f} ms  speedup {r['speedup']:.1f}x"
            )
        if "compile" in s:
            lines.append(
                f"  compiled {s['compile']['method']}: batched speedup over eager "
                f"{s['compile']['speedup']:.2f}"
            )
        if "quality" in s:
            q = s["quality"]
            lines.append(
                f"  quality on {q['scenes']} scenes x {q['samples_per_scene']} samples "
                f"({q['run_dir']}):"
            )
            for r in q["runs"]:
                lines.append(
                    f"  {r['method']:>8} {r['steps'] or 'adaptive':>8} NFE "
                    f"{r['nfe']:5.1f}  {r['ms_per_scene']:9.1f} ms/scene  success "
                    f"{100 * r['success_rate']:5.1f}%  hit@K {100 * r['hit_at_k']:5.1f}%"
                )
            rec = q["recommended"]
            lines.append(
                f"  recommended: {rec['method']} {rec['steps'] or 'adaptive'} "
                f"(within {q['within_points']:g} points of the best, "
                f"{rec['speedup']:.1f}x faster than the best-scoring setting)"
            )
    if "checkpoint" in results:
        c = results["checkpoint"]
        lines.append(
            f"checkpoint: {c['file_mb']:.1f} MiB, save {c['save_ms']:.0f} ms "
            f"({c['save_in_steps']:.2f} steps), load {c['load_ms']:.0f} ms; overhead "
            f"{c['overhead_pct']:.2f}% at {c['epoch_steps']} steps/epoch"
        )
    if "synth" in results:
        y = results["synth"]
        lines.append(f"synth: {y['scenes_per_family']} scenes per family, one core")
        for family, f in y["families"].items():
            why = ", ".join(f"{k} {v}" for k, v in sorted(f["rejected"].items())) or "none"
            extra = (
                f"; {f['feasible_poses_mean']:.0f} feasible poses, {f['modes_mean']:.1f} modes/scene"
                if "modes_mean" in f
                else ""
            )
            lines.append(
                f"  {family:>6} {f['scenes_per_s']:7.2f} scenes/s  rejected "
                f"{100 * f['rejected_share']:4.1f}% of {f['layouts']} layouts ({why}){extra}"
            )
        lines.append(f"  10,000 maze scenes on 2 cores: {y['maze_10k_minutes_on_2_cores']:.1f} min")
    if "propose" in results:
        p = results["propose"]
        lines.append(
            f"propose: {p['num_samples']} proposals/scene, {p['method']} {p['steps']} steps at "
            f"{p['image_size']} px, {p['weights']} weights"
        )
        for family, s in p["scenes"].items():
            split = " + ".join(f"{part} {s[f'{part}_ms']:.0f}" for part in PARTS)
            lines.append(
                f"  {family:>6} call p50 {s['call_ms_p50']:7.1f} ms  p95 {s['call_ms_p95']:7.1f} ms"
                f" (mean {split} ms; {s['redraws']:.1f} redraws, {s['verified_of_top']:.1f} "
                f"verified)  post / sampling {100 * s['post_over_sampling']:.1f}% (on "
                f"feasible-pose samples {100 * s['post_over_sampling_feasible_samples']:.1f}%)"
            )
            if "baseline" in s:
                lines.append(
                    f"  {'':>6} baseline p50 {s['baseline']['call_ms_p50']:7.1f} ms  p95 "
                    f"{s['baseline']['call_ms_p95']:7.1f} ms: new / baseline "
                    f"{s['call_p50_over_baseline']:.2f}"
                )
    if "episodes" in results:
        e = results["episodes"]
        lines.append(f"episodes: {e['strategy']} ({e['weights']} weights), s per opening")
        for family, f in e["families"].items():
            lines.append(
                f"  {family:>6} p50 {f['opening_s_p50']:.2f} s  p95 {f['opening_s_p95']:.2f} s "
                f"(mean model {f['model_s_mean']:.2f} + physics {f['physics_s_mean']:.2f} + "
                f"other {f['other_s_mean']:.2f} s); success {f['success']:.2f}, "
                f"{f['pushes_mean']:.1f} pushes"
            )
    for row in results.get("targets", []):
        lines.append(
            f"target {'met' if row['met'] else 'MISSED'}: {row['target']} = "
            f"{row['value']:.3g} ({row['op']} {row['threshold']:g})"
        )
    return lines


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The performance targets (issue "Fast"), each with its figure, threshold and whether this
    run meets it; only for the sections that ran. On a --quick run they mean nothing."""
    rows: list[dict[str, Any]] = []

    def add(name: str, value: float, op: str, threshold: float) -> None:
        met = value >= threshold if op == ">=" else value < threshold
        rows.append(
            {"target": name, "value": value, "op": op, "threshold": threshold, "met": bool(met)}
        )

    if "data" in results:
        d = results["data"]
        add("data: packed cache / per-file load+resize", d["speedup"], ">=", 50)
        add("data: loader share of a step", d["loader_share"], "<", 0.05)
    if "train" in results:
        t = results["train"]
        mode = t.get("compile", {}).get("auto_picks", "eager")
        add(f"train: MFU ({t['default_precision']}, {mode} = compile=auto)", t["mfu"], ">=", 0.5)
        if "compile" in t:
            add("train: compile=auto / eager", t["compile"]["auto_over_eager_speedup"], ">=", 1.0)
    if "sample" in results:
        add(
            "sample: batched / sequential (min over settings)",
            results["sample"]["speedup_min"],
            ">=",
            10,
        )
    if "checkpoint" in results:
        add(
            "checkpoint: share of training time (with top-k saves)",
            results["checkpoint"]["overhead_with_top_k_pct"] / 100,
            "<",
            0.01,
        )
    if "synth" in results:
        add(
            "synth: 10,000 maze scenes on 2 cores (minutes)",
            results["synth"]["maze_10k_minutes_on_2_cores"],
            "<",
            30,
        )
    if "propose" in results:
        p = results["propose"]
        add(
            "propose: post-processing / sampling (max over scenes)",
            p["post_over_sampling_max"],
            "<",
            0.2,
        )
        add("propose: call p50 (s, max over families)", p["call_ms_p50_max"] / 1e3, "<", 0.25)
        add("propose: call p95 (s, max over families)", p["call_ms_p95_max"] / 1e3, "<", 0.5)
    if "episodes" in results:
        e = results["episodes"]
        add("episodes: s per opening p50 (max over families)", e["opening_s_p50_max"], "<", 1.0)
    return rows
