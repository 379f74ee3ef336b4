"""Scene loading and validation: aliases, dtypes, every bad-input case, file discovery."""

from __future__ import annotations

import re

import numpy as np
import pytest
from omegaconf import OmegaConf

from data_helpers import scene_masks, write_scene, write_scenes
from goalgen.data.scenes import (
    CACHE_DIRNAME,
    CONTEXT_KEYS,
    LEGACY_ALIASES,
    SCENE_KEYS,
    TARGET_KEY,
    SceneError,
    find_scene_files,
    load_scene,
)


def test_key_constants():
    assert SCENE_KEYS == CONTEXT_KEYS + (TARGET_KEY,)
    assert SCENE_KEYS[-1] == "target_goal" and len(CONTEXT_KEYS) == 5
    assert LEGACY_ALIASES == {
        "robot_image": "robot",
        "goal_image": "goal",
        "movable_objects_image": "movable",
        "static_objects_image": "static",
    }


@pytest.mark.parametrize("legacy", [False, True])
@pytest.mark.parametrize("dtype", ["bool", "uint8_255", "uint8_01", "float32"])
def test_load_every_alias_and_dtype(tmp_path, dtype, legacy):
    path = write_scene(tmp_path / "s.npz", 32, seed=3, dtype=dtype, legacy=legacy)
    scene = load_scene(path)
    expected = np.stack([m.astype(np.float32) for m in scene_masks(32, seed=3).values()])
    assert scene.dtype == np.float32 and scene.shape == (6, 32, 32)
    np.testing.assert_array_equal(scene, expected)


def test_grey_values_and_wider_integers(tmp_path):
    grey = np.full((32, 32), 0.5, np.float32)
    counts = np.full((32, 32), 51, np.int64)  # 0..255 scale in a wider integer type
    path = write_scene(tmp_path / "s.npz", goal_image=grey, robot_image=counts)
    scene = load_scene(path)
    np.testing.assert_allclose(scene[1], 0.5)
    np.testing.assert_allclose(scene[0], 0.2)


def test_extra_keys_are_ignored_and_canonical_name_wins(tmp_path):
    masks = scene_masks(32)
    path = write_scene(tmp_path / "s.npz", extra=True, robot=np.zeros((5, 5), np.float32))
    scene = load_scene(path)  # object/str/float extras and a bogus legacy key are never read
    np.testing.assert_array_equal(scene[0], masks["robot_image"])


def test_compressed_npz(tmp_path):
    path = write_scene(tmp_path / "s.npz", compressed=True, dtype="uint8_255")
    np.testing.assert_array_equal(load_scene(path)[5], scene_masks(32)[TARGET_KEY])


def _corrupt_member(path):
    data = bytearray(path.read_bytes())
    mid = len(data) // 3  # inside the first stored member's data
    data[mid : mid + 8] = bytes(255 - b for b in data[mid : mid + 8])
    path.write_bytes(bytes(data))


def _save_npy(path):
    with open(path, "wb") as f:
        np.save(f, np.zeros(3))


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (lambda p: p.write_text("robot_image,goal_image\n1,0\n"), "not an .npz (zip) archive"),
        (lambda p: p.write_bytes(b""), "file is empty"),
        (_save_npy, "single-array .npy file"),
        (_truncate, "truncated or corrupt"),
        (_corrupt_member, "cannot read key"),
    ],
    ids=["text", "empty", "npy", "truncated", "corrupt-member"],
)
def test_unreadable_files(tmp_path, damage, expected):
    path = write_scene(tmp_path / "bad_scene.npz")
    damage(path)
    with pytest.raises(SceneError, match=re.escape(expected)) as err:
        load_scene(path)
    assert str(err.value).startswith(str(path)) and err.value.path == str(path)


def test_missing_key_lists_found_keys_and_aliases(tmp_path):
    path = write_scene(tmp_path / "s.npz", legacy=True, movable=None, extra=True)
    with pytest.raises(SceneError) as err:
        load_scene(path)
    msg = str(err.value)
    assert str(path) in msg and "missing key 'movable_objects_image'" in msg
    assert "found keys ['distance_field', 'goal', 'metadata', 'robot'" in msg
    assert "movable_objects_image (or movable)" in msg


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ({"goal_image": np.zeros((32, 32, 1), bool)}, "'goal_image' has shape (32, 32, 1)"),
        ({"goal_image": np.zeros((48, 48), bool)}, "masks differ in shape"),
        ({k: np.ones((32, 40), bool) for k in SCENE_KEYS}, "shape (32, 40); expected square"),
        ({k: np.ones((8, 8), bool) for k in SCENE_KEYS}, "at least 16x16"),
        ({"static_objects_image": np.full((32, 32), "x")}, "'static_objects_image' has dtype <U1"),
        ({"robot_image": np.zeros((32, 32), np.complex64)}, "'robot_image' has dtype complex64"),
        ({"robot_image": np.zeros((32, 32), object)}, "cannot read key 'robot_image'"),
        ({"goal_image": np.full((32, 32), 300, np.int16)}, "'goal_image' (int16) has values in"),
        ({"goal_image": np.full((32, 32), -1, np.int8)}, "values in [-1, -1]"),
        ({"target_object": np.full((32, 32), 1.5)}, "'target_object' (float64) has values in [1.5"),
        ({"movable_objects_image": np.full((32, 32), np.nan)}, "'movable_objects_image' contains"),
        ({"robot_image": np.full((32, 32), np.inf, np.float32)}, "'robot_image' contains NaN or inf"),
        ({"target_goal": np.zeros((32, 32), np.uint8)}, "'target_goal' is empty"),
        ({"target_object": np.zeros((32, 32), np.float32)}, "'target_object' is empty"),
    ],
    ids=[
        "3d", "unequal", "non-square", "too-small", "str", "complex", "object", "int>255",
        "negative-int", "float>1", "nan", "inf", "empty-target-goal", "empty-target-object",
    ],
)  # fmt: skip
def test_invalid_masks(tmp_path, override, expected):
    path = write_scene(tmp_path / "odd.npz", **override)
    with pytest.raises(SceneError) as err:
        load_scene(path)
    assert str(path) in str(err.value) and expected in str(err.value)


def test_float_tolerance_is_clipped(tmp_path):
    path = write_scene(tmp_path / "s.npz", goal_image=np.full((32, 32), 1.0004, np.float32))
    assert load_scene(path)[1].max() == 1.0


def test_find_folder_recursive_sorted_skipping_cache(tmp_path):
    write_scenes(tmp_path / "b", 2)
    write_scenes(tmp_path / "a" / "deep", 1)
    write_scene(tmp_path / CACHE_DIRNAME / "x.npz")
    (tmp_path / "notes.txt").write_text("not a scene")
    found = find_scene_files(tmp_path)
    rel = [p.relative_to(tmp_path).as_posix() for p in found]
    assert rel == ["a/deep/scene_000.npz", "b/scene_000.npz", "b/scene_001.npz"]
    assert all(p.is_absolute() for p in found)


def test_find_file_and_lists(tmp_path, monkeypatch):
    a = write_scenes(tmp_path / "a", 2)
    b = write_scene(tmp_path / "b" / "x.npz")
    monkeypatch.chdir(tmp_path)
    assert find_scene_files("b/x.npz") == [b]
    expected = sorted([*a, b])
    assert find_scene_files([str(b), tmp_path / "a"]) == expected
    assert find_scene_files((tmp_path / "a", b, a[0])) == expected  # de-duplicated
    assert find_scene_files(OmegaConf.create([str(tmp_path / "a"), "b/x.npz"])) == expected


def test_find_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="data path does not exist: .*nowhere"):
        find_scene_files([tmp_path, tmp_path / "nowhere"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=f"no .npz scene files found in {tmp_path}/empty"):
        find_scene_files(tmp_path / "empty")
    with pytest.raises(TypeError, match="list of paths"):
        find_scene_files(3)
