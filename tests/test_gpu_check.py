"""``make gpu-check`` on a CPU: every check runs the real code path a GPU takes (fp16's scaler
on fp32 arithmetic, gloo for the process group, the bench in --quick mode) and passes, and the
README rows come out of the bench's own figures."""

import json

import pytest

from conftest import load_job

gpu_check = load_job("gpu_check")


@pytest.mark.slow
def test_gpu_check_passes_on_a_cpu_and_writes_its_rows(tmp_path, capsys):
    out = tmp_path / "gpu_check.json"
    assert gpu_check.main(["--quick", "--out", str(out), "--work-dir", str(tmp_path)]) == 0
    report = json.loads(out.read_text())
    checks = report["checks"]
    assert set(checks) == {"fp16", "resume", "bf16", "compile", "nccl", "bench"}
    assert all(c["ok"] for c in checks.values()), checks
    assert checks["fp16"]["skipped"] == 1 and checks["fp16"]["scale"] == 2.0**16 / 2
    assert checks["resume"]["written_with"] == "bf16-mixed" and checks["resume"]["steps"] == 4
    assert checks["nccl"]["backend"] == "gloo"
    rows = report["readme_rows"]
    runs = report["bench"]["train"]["runs"]
    assert len(rows) >= len(runs) and all(r.startswith("| ") for r in rows)
    assert f"{runs[0]['step_ms']:.1f} ms" in rows[0]
    printed = capsys.readouterr().out
    assert "all checks passed" in printed and rows[0] in printed


def test_readme_rows_read_the_bench_figures():
    bench = {
        "train": {
            "runs": [
                {
                    "precision": "bf16-mixed",
                    "compiled": True,
                    "step_ms": 12.345,
                    "samples_per_s": 2592.0,
                    "mfu": 0.41,
                    "peak_gflop_per_s": 700000.0,
                    "peak_mem_mb": 2048.0,
                }
            ]
        },
        "propose": {
            "top": 8,
            "scenes": {
                "maze": {"sampling_ms": 15.0, "post_ms": 120.0, "samples_drawn_for_top": 64}
            },
        },
    }
    rows = gpu_check.readme_rows(bench)
    assert rows == [
        "| train step, bf16-mixed compiled | 12.3 ms (2592 samples/s), MFU 41 % of 700 TFLOP/s, "
        "2.0 GiB |",
        "| propose (maze, top 8) | sampling 15.0 ms + post-processing 120.0 ms (64 samples) |",
    ]
