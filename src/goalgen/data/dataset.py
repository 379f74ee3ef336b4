"""Datasets, splits and a resumable sampler over the packed scene cache.

Model tensors (design contract): ``context`` float32 ``(5, S, S)`` (robot, goal, movable, static,
target_object) and ``target`` float32 ``(1, S, S)``, both ``u8 / 127.5 - 1`` in [-1, 1].
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler, default_collate

from goalgen.data.pack import PackedScenes, prepare_scenes
from goalgen.data.scenes import CONTEXT_KEYS, Sources, as_path_list

NO_DATA_MESSAGE = (
    "data.data_dir is not set: set data.data_dir=/path/to/npz, or run "
    "`goalgen-synth --out DIR --num-scenes N` to generate synthetic scenes, "
    "or use experiment=demo"
)
_C = len(CONTEXT_KEYS)


def _to_model_range(u8: np.ndarray) -> torch.Tensor:
    """uint8 -> contiguous float32 ``u8 / 127.5 - 1``, in numpy: no intra-op thread pool to wake
    (on busy CPUs torch's threads made this 10-50x slower than one numpy pass)."""
    x = np.array(u8, dtype=np.float32)  # a plain-ndarray copy, also out of the memmap
    x /= np.float32(127.5)
    x -= np.float32(1.0)
    return torch.from_numpy(x)


class PackedSceneDataset(Dataset):
    """Scenes ``packed.masks[indices]`` as model tensors.

    ``ds[i]`` -> ``{"context": (5, S, S), "target": (1, S, S), "index": int64 scalar}`` where
    ``index`` is the row in the packed array (``packed.files[index]`` is the source file).
    ``ds.__getitems__(list)`` returns the same dict already batched (one fancy index on the
    memmap); use ``DataLoader(ds, batch_size=B, collate_fn=collate_batch)`` (torch's default
    collate cannot take that dict and fails with ``KeyError: 0``).
    """

    def __init__(self, packed: PackedScenes, indices: Sequence[int] | np.ndarray | None = None):
        self.packed = packed
        n = len(packed.files)
        self.indices = np.asarray(np.arange(n) if indices is None else indices, dtype=np.int64)
        if self.indices.size and not (self.indices.min() >= 0 and self.indices.max() < n):
            raise IndexError(f"indices outside the {n} packed scenes")

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        j = int(self.indices[i])
        u8 = self.packed.masks[j]
        return {
            "context": _to_model_range(u8[:_C]),
            "target": _to_model_range(u8[_C:]),
            "index": torch.tensor(j, dtype=torch.int64),
        }

    def __getitems__(
        self, items: Sequence[int] | Sequence[tuple[int, int]]
    ) -> dict[str, torch.Tensor]:
        """The batch of ``items``; ``(epoch, item)`` pairs (a sampler with ``tag_epoch``) add
        ``epoch`` ``(B,)`` int64, so that a worker can draw the epoch's per-sample noise."""
        epochs = None
        if len(items) and isinstance(items[0], tuple):
            epochs, items = zip(*items, strict=True)
        rows = self.indices[np.asarray(items, dtype=np.int64)]
        order = np.argsort(rows, kind="stable")  # ascending reads: page-cache friendly
        u8 = np.empty((len(rows), *self.packed.masks.shape[1:]), np.uint8)
        u8[order] = self.packed.masks[rows[order]]
        batch = {
            "context": _to_model_range(u8[:, :_C]),
            "target": _to_model_range(u8[:, _C:]),
            "index": torch.from_numpy(rows),
        }
        if epochs is not None:
            batch["epoch"] = torch.tensor(epochs, dtype=torch.int64)
        return batch


def collate_batch(batch: Mapping | list) -> Mapping:
    """``collate_fn`` for ``PackedSceneDataset``: its ``__getitems__`` already collates.

    Lists of per-item dicts (datasets without ``__getitems__``) go through ``default_collate``.
    """
    return batch if isinstance(batch, Mapping) else default_collate(batch)


def split_indices(
    n: int, train_split: float = 0.9, seed: int = 42
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded train/val split of ``range(n)``: sorted, disjoint, ``>= 1`` val item when n >= 2.

    Depends only on ``(n, train_split, seed)`` (own ``np.random.default_rng``), never on the
    global RNG.
    """
    if not 0.0 < train_split <= 1.0:
        raise ValueError(f"train_split must be in (0, 1], got {train_split}")
    n_val = min(max(1, round(n * (1.0 - train_split))), n - 1) if n >= 2 else 0
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


class ResumableDistributedSampler(Sampler[int]):
    """``DistributedSampler`` semantics with exact mid-epoch resume.

    Epoch order: ``torch.randperm`` from ``torch.Generator().manual_seed(seed + epoch)`` (never
    the global RNG), truncated (``drop_last``) or padded by wrapping to a multiple of
    ``num_replicas``; rank ``r`` takes ``order[r::num_replicas]``. ``set_start_index(k)`` skips
    the first ``k`` of this rank's samples in the current epoch (nothing is read for them): to
    resume after ``b`` batches of size ``B``, call ``set_epoch(e)`` then ``set_start_index(b * B)``.
    ``tag_epoch``: yield ``(epoch, index)`` pairs, which :class:`PackedSceneDataset` batches
    with an ``epoch`` entry (loader workers do not see ``set_epoch``).
    """

    def __init__(
        self,
        dataset_len: int,
        num_replicas: int = 1,
        rank: int = 0,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = True,
        tag_epoch: bool = False,
    ) -> None:
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is not in [0, {num_replicas})")
        per_rank = (
            dataset_len // num_replicas if drop_last else math.ceil(dataset_len / num_replicas)
        )
        if per_rank == 0:
            raise ValueError(f"{dataset_len} samples cannot feed {num_replicas} replicas")
        self.dataset_len, self.num_replicas, self.rank = dataset_len, num_replicas, rank
        self.shuffle, self.seed, self.drop_last = shuffle, seed, drop_last
        self.tag_epoch = tag_epoch
        self.num_samples = per_rank  # per rank and epoch, before set_start_index
        self.epoch = 0
        self.start_index = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's permutation and reset the start index to 0."""
        self.epoch = epoch
        self.start_index = 0

    def set_start_index(self, k: int) -> None:
        """Skip this rank's first ``k`` samples of the current epoch."""
        if not 0 <= k <= self.num_samples:
            raise ValueError(f"start index {k} is not in [0, {self.num_samples}]")
        self.start_index = k

    def _rank_order(self) -> list[int]:
        n = self.dataset_len
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(n, generator=g).tolist()
        else:
            order = list(range(n))
        total = self.num_samples * self.num_replicas
        order = (order * math.ceil(total / n))[:total]
        return order[self.rank :: self.num_replicas]

    def __iter__(self) -> Iterator[int] | Iterator[tuple[int, int]]:
        order = self._rank_order()[self.start_index :]
        return iter([(self.epoch, i) for i in order] if self.tag_epoch else order)

    def __len__(self) -> int:
        return self.num_samples - self.start_index


def build_datasets(
    data_dir: Sources | None,
    image_size: int,
    *,
    val_dir: Sources | None = None,
    train_split: float = 0.9,
    seed: int = 42,
    cache_dir: str | os.PathLike | None = None,
    on_bad_file: str = "fail",
    workers: int | None = None,
    local_rank: int = 0,
    barrier: Callable[[], object] | None = None,
) -> tuple[PackedSceneDataset, PackedSceneDataset]:
    """``(train, val)`` datasets: ``val_dir`` packed separately, else a seeded split of data_dir.

    Every rank must call this (it calls ``barrier`` once per packed source, see
    ``prepare_scenes``).
    """
    if data_dir is None or not [p for p in as_path_list(data_dir) if str(p).strip()]:
        raise ValueError(NO_DATA_MESSAGE)
    opts = dict(
        cache_dir=cache_dir,
        on_bad_file=on_bad_file,
        workers=workers,
        local_rank=local_rank,
        barrier=barrier,
    )
    train = prepare_scenes(data_dir, image_size, **opts)
    if val_dir:
        val = prepare_scenes(val_dir, image_size, **opts)
        return PackedSceneDataset(train), PackedSceneDataset(val)
    train_idx, val_idx = split_indices(len(train.files), train_split, seed)
    if len(val_idx) == 0:
        raise ValueError(
            f"validation split is empty: {data_dir} holds {len(train.files)} usable scene(s); "
            "add scenes or set data.val_dir"
        )
    return PackedSceneDataset(train, train_idx), PackedSceneDataset(train, val_idx)
