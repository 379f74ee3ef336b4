"""``data`` section: the packed-cache loader against per-file ``np.load`` + resize."""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from goalgen.bench.measure import load_avg
from goalgen.bench.settings import Bench
from goalgen.bench.train import reference_step_ms
from goalgen.data.dataset import PackedSceneDataset, collate_batch
from goalgen.data.pack import pack_scenes, resize_masks
from goalgen.data.scenes import CONTEXT_KEYS, Sources, load_scene


def bench_data_dir(b: Bench) -> Path:
    """``--data-dir``, else ``num_scenes`` synthetic scenes (224², the guide's format) generated
    once into the work dir."""
    if b.data_dir is not None:
        return b.data_dir
    from goalgen.data.synthetic import generate_dataset

    out = b.work_dir / f"scenes-{b.num_scenes}-seed0"
    generate_dataset(out, b.num_scenes, seed=0, workers=max(1, os.cpu_count() or 1))
    return out


def bench_data(b: Bench) -> dict[str, Any]:
    """Packed-cache loader vs per-file ``np.load`` + resize (``benchmark_loader``, both with
    num_workers=0), and the packed loader's time per batch as a share of the train step."""
    out: dict[str, Any] = {"load_avg": load_avg()}
    data_dir = bench_data_dir(b)
    batch = b.cfg.batch_size
    runs = [
        benchmark_loader(
            data_dir,
            b.cfg.image_size,
            batch,
            5 if b.quick else 40,
            per_file_samples=2 * batch if b.quick else 256,
            cache_dir=b.cfg.data.cache_dir,
            workers=b.cfg.data.pack_workers,
            seed=i,
        )
        for i in range(b.repeats)
    ]
    packed = statistics.median(r["packed_samples_per_s"] for r in runs)
    per_file = statistics.median(r["per_file_samples_per_s"] for r in runs)
    step_ms = reference_step_ms(b)
    loader_ms = 1e3 * batch / packed
    b.shared["num_scenes"] = runs[0]["num_scenes"]
    out.update(
        {
            "data_dir": str(data_dir),
            "num_scenes": runs[0]["num_scenes"],
            "image_size": b.cfg.image_size,
            "batch_size": batch,
            "packed_samples_per_s": packed,
            "per_file_samples_per_s": per_file,
            "speedup": packed / per_file,  # packed cache over per-file load + resize
            "packed_ms_per_batch": loader_ms,
            "per_file_ms_per_batch": 1e3 * batch / per_file,
            "train_step_ms": step_ms,
            "loader_share": loader_ms / step_ms,
            "per_file_loader_share": 1e3 * batch / per_file / step_ms,
            "runs": [
                {k: r[k] for k in ("packed_samples_per_s", "per_file_samples_per_s")} for r in runs
            ],
            "load_avg_end": load_avg(),
        }
    )
    if runs[0]["num_scenes"] < 500:
        out["note"] = (
            f"{runs[0]['num_scenes']} scenes: fewer than the 500 the contract asks "
            "for" + (" (--quick)" if b.quick else "")
        )
    return out


class _PerFileSceneDataset(Dataset):
    """The naive baseline: ``load_scene`` + area resize for every item."""

    def __init__(self, files: Sequence[str], image_size: int) -> None:
        self.files, self.image_size = files, image_size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        x = torch.from_numpy(resize_masks(load_scene(self.files[i]), self.image_size)) * 2 - 1
        c = len(CONTEXT_KEYS)
        return {"context": x[:c], "target": x[c:], "index": torch.tensor(i)}


def _samples_per_s(loader: DataLoader, num_batches: int) -> float:
    """Steady-state throughput: one warm-up batch, then ``num_batches`` timed batches."""
    it = iter(loader)
    next(it)
    count, t0 = 0, time.perf_counter()
    for _ in range(num_batches):
        count += len(next(it)["index"])
    return count / (time.perf_counter() - t0)


def benchmark_loader(
    data_dir: Sources,
    image_size: int = 64,
    batch_size: int = 64,
    num_batches: int = 50,
    *,
    per_file_samples: int = 256,
    cache_dir: str | os.PathLike | None = None,
    workers: int | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """Samples/s of the packed loader vs per-file ``load_scene`` + resize (both num_workers=0).

    The cache is built (or reused) before timing. The packed side times ``num_batches``
    shuffled batches; the per-file side times ``per_file_samples`` samples (>= 200 advised),
    files drawn in a seeded random order (repeated when there are fewer files).
    """
    packed = pack_scenes(data_dir, image_size, cache_dir=cache_dir, workers=workers)
    n = len(packed.files)
    g = torch.Generator().manual_seed(seed)
    steps = num_batches + 1  # + warm-up
    order = torch.randint(n, (steps * batch_size,), generator=g).tolist()
    fast = DataLoader(
        PackedSceneDataset(packed), batch_size=batch_size, sampler=order, collate_fn=collate_batch
    )
    per_file_batches = max(1, math.ceil(per_file_samples / batch_size))
    slow = DataLoader(
        _PerFileSceneDataset(packed.files, image_size),
        batch_size=batch_size,
        sampler=order[: (per_file_batches + 1) * batch_size],
    )
    fast_rate = _samples_per_s(fast, num_batches)
    slow_rate = _samples_per_s(slow, per_file_batches)
    return {
        "packed_samples_per_s": fast_rate,
        "per_file_samples_per_s": slow_rate,
        "speedup": fast_rate / slow_rate,
        "num_scenes": n,
        "image_size": image_size,
        "batch_size": batch_size,
    }
