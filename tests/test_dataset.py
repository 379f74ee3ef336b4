"""Dataset items and batches, splits, the resumable sampler, build_datasets, loader benchmark."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler, default_collate

from data_helpers import write_scene, write_scenes
from goalgen.data.dataset import (
    PackedSceneDataset,
    ResumableDistributedSampler,
    build_datasets,
    collate_batch,
    split_indices,
)
from goalgen.data.pack import pack_scenes

S = 16


@pytest.fixture
def packed(tmp_path):
    write_scenes(tmp_path, 10)
    return pack_scenes(tmp_path, S, workers=1, progress=False)


def test_item_layout_and_range(packed):
    ds = PackedSceneDataset(packed, [7, 2])
    item = ds[0]
    assert len(ds) == 2 and set(item) == {"context", "target", "index"}
    assert item["context"].shape == (5, S, S) and item["target"].shape == (1, S, S)
    assert item["context"].dtype == item["target"].dtype == torch.float32
    assert item["index"].dtype == torch.int64 and item["index"].ndim == 0 and item["index"] == 7
    u8 = torch.from_numpy(np.array(packed.masks[7])).float()
    torch.testing.assert_close(item["context"], u8[:5] / 127.5 - 1)
    torch.testing.assert_close(item["target"], u8[5:] / 127.5 - 1)
    assert item["target"].min() == -1 and item["target"].max() == 1
    with pytest.raises(IndexError):
        PackedSceneDataset(packed, [10])


def test_batched_loader_equals_per_item_default_collate(packed, monkeypatch):
    ds = PackedSceneDataset(packed, [9, 1, 4, 6, 0, 3])
    order = [5, 0, 3, 1, 1, 4, 2]  # unsorted, with a repeat inside a batch
    expected = [default_collate([ds[i] for i in order[k : k + 3]]) for k in (0, 3, 6)]
    # Make the per-item path unusable: the loader must go through __getitems__.
    monkeypatch.setattr(PackedSceneDataset, "__getitem__", lambda self, i: 1 / 0)
    got = list(DataLoader(ds, batch_size=3, sampler=order, collate_fn=collate_batch))
    assert len(got) == len(expected) == 3
    for g, e in zip(got, expected, strict=True):
        assert g.keys() == e.keys()
        for k in e:
            assert g[k].dtype == e[k].dtype and g[k].is_contiguous()
            torch.testing.assert_close(g[k], e[k], rtol=0, atol=0)
    assert got[1]["index"].tolist() == [1, 1, 0]


def test_collate_batch_falls_back_to_default_collate():
    items = [{"x": torch.tensor(1)}, {"x": torch.tensor(2)}]
    assert collate_batch(items)["x"].tolist() == default_collate(items)["x"].tolist() == [1, 2]
    batch = {"x": torch.zeros(2)}
    assert collate_batch(batch) is batch


def test_dataset_pickles_by_path(packed):
    ds = PackedSceneDataset(packed, [3, 4])
    blob = pickle.dumps(ds)
    assert len(blob) < packed.masks.nbytes  # never ships the array to spawned workers
    clone = pickle.loads(blob)
    torch.testing.assert_close(clone[1]["context"], ds[1]["context"])


def test_split_is_seeded_stable_disjoint_sorted():
    train, val = split_indices(100, 0.9, seed=42)
    assert len(val) == 10 and len(train) == 90
    assert sorted({*train, *val}) == list(range(100)) and not set(train) & set(val)
    assert (np.diff(train) > 0).all() and (np.diff(val) > 0).all()
    np.random.seed(0)
    torch.manual_seed(0)
    again = split_indices(100, 0.9, seed=42)  # global RNG state does not matter
    np.testing.assert_array_equal(again[1], val)
    assert not np.array_equal(split_indices(100, 0.9, seed=43)[1], val)


def test_split_edge_sizes():
    assert [len(x) for x in split_indices(2, 0.9)] == [1, 1]
    assert [len(x) for x in split_indices(5, 1.0)] == [4, 1]
    assert [len(x) for x in split_indices(1)] == [1, 0]
    with pytest.raises(ValueError, match="train_split"):
        split_indices(10, 0.0)


@pytest.mark.parametrize("drop_last", [True, False])
def test_sampler_matches_distributed_sampler(drop_last):
    for rank in range(3):
        ours = ResumableDistributedSampler(10, 3, rank, seed=5, drop_last=drop_last)
        ref = DistributedSampler(range(10), 3, rank, seed=5, drop_last=drop_last)
        for epoch in (0, 1):
            ours.set_epoch(epoch)
            ref.set_epoch(epoch)
            assert list(ours) == list(ref) and len(ours) == len(ref)


def test_sampler_ranks_disjoint_and_cover():
    ranks = [ResumableDistributedSampler(11, 4, r, seed=1, drop_last=True) for r in range(4)]
    seen = [list(s) for s in ranks]
    flat = [i for s in seen for i in s]
    assert all(len(s) == 2 for s in seen) and len(set(flat)) == 8
    padded = [list(ResumableDistributedSampler(11, 4, r, drop_last=False)) for r in range(4)]
    assert set().union(*padded) == set(range(11)) and all(len(s) == 3 for s in padded)


def test_sampler_reseeds_per_epoch_without_global_rng():
    s = ResumableDistributedSampler(50, seed=3)
    first = list(s)
    torch.manual_seed(123)
    assert list(s) == first
    s.set_epoch(1)
    second = list(s)
    assert second != first and sorted(second) == list(range(50))
    unshuffled = ResumableDistributedSampler(5, shuffle=False)
    assert list(unshuffled) == [0, 1, 2, 3, 4]


def test_set_start_index_equals_slicing():
    s = ResumableDistributedSampler(40, 2, 1, seed=7)
    s.set_epoch(3)
    full = list(s)
    s.set_start_index(12)
    assert list(s) == full[12:] and len(s) == 8
    s.set_epoch(4)  # resets the start
    assert len(s) == 20 and len(list(s)) == 20
    with pytest.raises(ValueError, match="start index 21"):
        s.set_start_index(21)
    # resume after b batches of B: the remaining batches are the uninterrupted ones
    s.set_epoch(3)
    batches = [b.tolist() for b in DataLoader(range(40), batch_size=4, sampler=s)]
    s.set_start_index(2 * 4)
    assert [b.tolist() for b in DataLoader(range(40), batch_size=4, sampler=s)] == batches[2:]


def test_build_datasets_split_and_val_dir(tmp_path):
    write_scenes(tmp_path / "train", 10)
    for i in range(3):
        write_scene(tmp_path / "val" / f"v{i}.npz", seed=100 + i)
    train, val = build_datasets(tmp_path / "train", S, train_split=0.8, seed=1, workers=1)
    assert (len(train), len(val)) == (8, 2) and train.packed is val.packed
    assert not set(train.indices) & set(val.indices)
    same = build_datasets(str(tmp_path / "train"), S, train_split=0.8, seed=1, workers=1)
    np.testing.assert_array_equal(same[1].indices, val.indices)
    train, val = build_datasets(tmp_path / "train", S, val_dir=tmp_path / "val", workers=1)
    assert (len(train), len(val)) == (10, 3) and "v0.npz" in val.packed.files[0]
    log = []
    build_datasets(tmp_path / "train", S, val_dir=tmp_path / "val", barrier=lambda: log.append(1))
    assert log == [1, 1]  # one barrier per packed source


@pytest.mark.parametrize("data_dir", [None, "", []])
def test_build_datasets_without_data(data_dir):
    with pytest.raises(ValueError) as err:
        build_datasets(data_dir, S)
    msg = str(err.value)
    assert "data.data_dir=/path/to/npz" in msg and "experiment=demo" in msg
    assert "`goalgen-synth --out DIR --num-scenes N`" in msg


def test_build_datasets_empty_val_split(tmp_path):
    write_scene(tmp_path / "only.npz")
    with pytest.raises(ValueError, match="validation split is empty.*1 usable scene"):
        build_datasets(tmp_path, S, workers=1)
