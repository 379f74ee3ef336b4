"""Synthetic NAMO generator: file format, scene invariants, determinism, stamp and CLI."""

import hashlib
import json
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from goalgen.data import geometry as geo
from goalgen.data import synthetic as synth
from goalgen.data.scenes import SCENE_KEYS, load_scene

GEOMETRY_KEYS = {
    "world_bounds": ((4,), np.float64),
    "robot_pose": ((2,), np.float64),
    "goal_pose": ((2,), np.float64),
    "robot_radius": ((), np.float64),
    "target_index": ((), np.int64),
    "target_goal_box": ((5,), np.float64),
    "seed": ((), np.int64),
    "spawn_key": ((1,), np.int64),
}


@pytest.fixture(scope="module")
def scenes() -> list[dict[str, np.ndarray]]:
    return [synth.generate_scene(np.random.SeedSequence(7, spawn_key=(i,))) for i in range(10)]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "data"
    return out, synth.generate_dataset(out, 4, seed=11)


def _bool(scene: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: scene[k] > 0 for k in SCENE_KEYS}


def _radius_px(scene, extra: float = 0.0) -> float:
    mpp = geo.metres_per_pixel(scene["world_bounds"], scene["robot_image"].shape)
    return (float(scene["robot_radius"]) + extra) / mpp


def test_files_have_exactly_the_guide_format(dataset):
    out, paths = dataset
    assert [p.name for p in paths] == [f"scene_{i:05d}.npz" for i in range(4)]
    for path in paths:
        with np.load(path, allow_pickle=False) as data:
            arrays = dict(data)
        assert set(arrays) == set(SCENE_KEYS) | set(GEOMETRY_KEYS) | {
            "movable_boxes",
            "static_walls",
        }
        for key in SCENE_KEYS:
            assert arrays[key].shape == (224, 224) and arrays[key].dtype == np.uint8, key
            assert set(np.unique(arrays[key])) == {0, 255}, key
        for key, (shape, dtype) in GEOMETRY_KEYS.items():
            assert arrays[key].shape == shape and arrays[key].dtype == dtype, key
        assert arrays["movable_boxes"].dtype == np.float64
        assert arrays["movable_boxes"].shape[1] == 5 and 3 <= len(arrays["movable_boxes"]) <= 8
        assert arrays["static_walls"].shape in {(6, 5), (8, 5), (10, 5)}  # 4 outer + 1-3 inner
        assert 0 <= arrays["target_index"] < len(arrays["movable_boxes"])
        stacked = np.stack([arrays[k] for k in SCENE_KEYS]) / 255
        np.testing.assert_array_equal(load_scene(path), stacked)  # the loader accepts it as is


def test_selected_box_is_movable_and_blocks_the_only_route(scenes):
    for scene in scenes:
        m = _bool(scene)
        assert (
            m["target_object"].any()
            and not (m["target_object"] & ~m["movable_objects_image"]).any()
        )
        walls, movable = m["static_objects_image"], m["movable_objects_image"]
        robot, goal = m["robot_image"], m["goal_image"]
        # blocked even for a robot DELTA thinner; open without the box even for one DELTA fatter
        thin, fat = _radius_px(scene, -synth.DELTA), _radius_px(scene, synth.DELTA)
        assert not geo.robot_can_reach(walls | movable, robot, goal, thin)
        assert geo.robot_can_reach(walls | (movable & ~m["target_object"]), robot, goal, fat)


def test_target_goal_is_a_valid_unblocking_placement(scenes):
    for scene in scenes:
        m = _bool(scene)
        walls, movable, target = (
            m["static_objects_image"],
            m["movable_objects_image"],
            m["target_object"],
        )
        moved = m["target_goal"]
        others = movable & ~target
        assert not geo.placement_collides(walls, others, moved, m["robot_image"], m["goal_image"])
        assert abs(int(moved.sum()) - int(target.sum())) <= 0.02 * target.sum()
        assert not np.array_equal(moved, target)
        args = (walls, movable, target, moved, m["robot_image"], m["goal_image"])
        assert geo.path_open_after_move(*args, _radius_px(scene, synth.DELTA))
        corners = geo.box_corners(*scene["target_goal_box"])
        x0, y0, x1, y1 = scene["world_bounds"]
        assert corners.min() > x0 + synth.OUTER_WALL and corners.max() < x1 - synth.OUTER_WALL
        box = scene["movable_boxes"][scene["target_index"]]
        np.testing.assert_array_equal(scene["target_goal_box"][2:], box[2:])  # orientation kept


def test_geometry_keys_agree_with_the_masks(scenes):
    for scene in scenes:
        bounds, size = scene["world_bounds"], 224
        np.testing.assert_array_equal(bounds, synth.WORLD_BOUNDS)
        boxes = [geo.box_mask(*b, bounds, size) for b in scene["movable_boxes"]]
        np.testing.assert_array_equal(np.any(boxes, 0), scene["movable_objects_image"] > 0)
        np.testing.assert_array_equal(boxes[scene["target_index"]], scene["target_object"] > 0)
        target_goal = geo.box_mask(*scene["target_goal_box"], bounds, size)
        np.testing.assert_array_equal(target_goal, scene["target_goal"] > 0)
        walls = np.any([geo.box_mask(*w, bounds, size) for w in scene["static_walls"]], 0)
        np.testing.assert_array_equal(walls, scene["static_objects_image"] > 0)
        for pose, key in (("robot_pose", "robot_image"), ("goal_pose", "goal_image")):
            disk = geo.disk_mask(scene[pose], float(scene["robot_radius"]), bounds, size)
            np.testing.assert_array_equal(disk, scene[key] > 0)


def test_goal_choice_varies_across_scenes(scenes):
    directions = set()
    for scene in scenes:
        shift = scene["target_goal_box"][:2] - scene["movable_boxes"][scene["target_index"]][:2]
        assert 0 < np.hypot(*shift) <= synth.MAX_PUSH * np.sqrt(2)
        directions.add(tuple(np.sign(np.round(shift, 2))))
    assert len(directions) >= 3


def test_scene_is_a_function_of_seed_and_size(scenes):
    again = synth.generate_scene(np.random.SeedSequence(7, spawn_key=(3,)))
    for key, value in scenes[3].items():
        np.testing.assert_array_equal(again[key], value, err_msg=key)
    assert int(again["seed"]) == 7 and again["spawn_key"].tolist() == [3]
    other = synth.generate_scene(np.random.SeedSequence(8, spawn_key=(3,)))
    assert not np.array_equal(other["static_objects_image"], again["static_objects_image"])
    small = synth.generate_scene(5, size=64)
    assert all(small[k].shape == (64, 64) for k in SCENE_KEYS)
    assert small["spawn_key"].shape == (0,)


def test_rooms_scenes_are_those_of_generator_version_2():
    """The rooms family is byte-stable: a change to its scenes must bump GENERATOR_VERSION."""
    scene = synth.generate_scene(np.random.SeedSequence(7, spawn_key=(3,)), size=64)
    digest = hashlib.sha256(b"".join(scene[k].tobytes() for k in SCENE_KEYS)).hexdigest()
    assert synth.GENERATOR_VERSION == 2
    assert digest == "3ccc4453f381805dba3ab1073f721f05cc616ed19a99468f53597192af9e0e23"


def test_generate_scene_rejects_bad_input_and_gives_up_clearly(monkeypatch):
    with pytest.raises(ValueError, match="size"):
        synth.generate_scene(0, size=32)
    with pytest.raises(ValueError, match="entropy"):
        synth.generate_scene(np.random.SeedSequence(2**70))
    monkeypatch.setattr(synth.rooms, "_attempt", lambda rng, size: "reachability")
    with pytest.raises(RuntimeError, match=f"after {synth.MAX_ATTEMPTS} layouts.*'reachability'"):
        synth.generate_scene(0)


def test_shift_collisions_match_brute_force():
    rng = np.random.default_rng(3)
    obstacles = rng.random((40, 40)) > 0.95
    piece = np.zeros((40, 40), dtype=bool)
    piece[15:19, 20:26] = rng.random((4, 6)) > 0.3
    reach = 6
    for outside in (True, False):
        padded = np.pad(obstacles, reach, constant_values=outside)
        expected = np.zeros((2 * reach + 1,) * 2, dtype=bool)
        for dr in range(-reach, reach + 1):
            for dc in range(-reach, reach + 1):
                moved = np.zeros_like(padded)
                moved[reach + dr : reach + dr + 40, reach + dc : reach + dc + 40] = piece
                expected[dr + reach, dc + reach] = (moved & padded).any()
        got = synth.rooms._shift_collisions(obstacles, piece, reach, outside)
        np.testing.assert_array_equal(got, expected)


def test_files_are_byte_identical_whatever_the_count_and_workers(dataset, tmp_path):
    _, paths = dataset
    again = synth.generate_dataset(tmp_path / "again", 4, seed=11)
    fewer = synth.generate_dataset(tmp_path / "fewer", 3, seed=11, workers=2)
    for i, path in enumerate(paths):
        assert again[i].read_bytes() == path.read_bytes()
        if i < 3:
            assert fewer[i].read_bytes() == path.read_bytes()
    with zipfile.ZipFile(paths[0]) as archive:  # np.savez_compressed would stamp the time
        assert {info.date_time for info in archive.infolist()} == {(1980, 1, 1, 0, 0, 0)}
    other = synth.generate_dataset(tmp_path / "other", 1, seed=12)
    assert other[0].read_bytes() != paths[0].read_bytes()


def test_stamp_short_circuits_a_completed_run(tmp_path, monkeypatch):
    out = tmp_path / "data"
    paths = synth.generate_dataset(out, 3, seed=1, size=64)
    stamp = json.loads((out / synth.STAMP_NAME).read_text())
    assert stamp == {"num_scenes": 3, "seed": 1, "size": 64, "version": synth.GENERATOR_VERSION}

    def fail(task):
        raise AssertionError("regenerated a complete data set")

    monkeypatch.setattr(synth.build, "_write_scene", fail)
    assert synth.generate_dataset(out, 3, seed=1, size=64) == paths
    with pytest.raises(AssertionError, match="regenerated"):  # another seed is another data set
        synth.generate_dataset(out, 3, seed=2, size=64)
    assert not (out / synth.STAMP_NAME).exists()  # the interrupted run is not complete


def test_a_smaller_run_replaces_a_larger_one(tmp_path):
    out = tmp_path / "data"
    synth.generate_dataset(out, 3, seed=1, size=64)
    (out / ".scene_00007.npz.tmp").write_bytes(b"left by a killed run")
    (out / "notes.txt").write_text("not ours")
    paths = synth.generate_dataset(out, 2, seed=1, size=64)
    assert sorted(p.name for p in out.iterdir()) == [
        synth.STAMP_NAME,
        "notes.txt",
        *[p.name for p in paths],
    ]
    assert json.loads((out / synth.STAMP_NAME).read_text())["num_scenes"] == 2


def test_cli_help_and_bad_arguments(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        synth.main(["--help"])
    assert exit_info.value.code == 0 and "--num-scenes" in capsys.readouterr().out
    bad = [
        ["--num-scenes", "2"],
        ["--out", str(tmp_path), "--num-scenes", "0"],
        ["--out", str(tmp_path), "--num-scenes", "two"],
        ["--out", str(tmp_path), "--num-scenes", "2", "--size", "32"],
        ["--out", str(tmp_path), "--num-scenes", "2", "--workers", "0"],
        ["--out", str(tmp_path), "--num-scenes", "2", "--seed", "-1"],
    ]
    for argv in bad:
        with pytest.raises(SystemExit) as exit_info:
            synth.main(argv)
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and err.startswith("goalgen-synth: error:"), argv
        assert err.count("\n") == 1, argv
    a_file = tmp_path / "file"
    a_file.write_text("")
    assert synth.main(["--out", str(a_file), "--num-scenes", "1", "--size", "64"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("goalgen-synth: error:") and err.count("\n") == 1


def test_cli_writes_then_reports_up_to_date(tmp_path):
    command = [sys.executable, "-m", "goalgen.data.synthetic", "--out", str(tmp_path)]
    command += ["--num-scenes", "2", "--size", "64"]
    first = subprocess.run(command, capture_output=True, text=True, check=True)
    assert (
        first.stdout.startswith("goalgen-synth: wrote 2 scenes") and first.stdout.count("\n") == 1
    )
    second = subprocess.run(command, capture_output=True, text=True, check=True)
    assert "already complete" in second.stdout
    assert sorted(p.name for p in tmp_path.glob("*.npz")) == ["scene_00000.npz", "scene_00001.npz"]


def test_demo_generates_into_an_empty_folder_but_never_over_user_scenes(tmp_path):
    from omegaconf import OmegaConf

    from goalgen.train.entry import _ensure_synthetic_data

    def ensure(data_dir) -> None:
        cfg = OmegaConf.create(
            {"data": {"data_dir": data_dir, "synthetic": {"num_scenes": 2, "seed": 0}}}
        )
        _ensure_synthetic_data(cfg, True, lambda: None)

    ensure(str(tmp_path / "new"))
    assert sorted(p.name for p in (tmp_path / "new").glob("*.npz")) == [
        "scene_00000.npz",
        "scene_00001.npz",
    ]
    user = tmp_path / "user"
    user.mkdir()
    (user / "scene_00007.npz").write_bytes(b"the user's own scene")
    ensure(str(user))
    assert [p.name for p in user.iterdir()] == ["scene_00007.npz"]
    with pytest.raises(ValueError, match="data.synthetic generates one folder"):
        ensure([str(user), str(tmp_path / "new")])


def test_a_recipe_generates_its_mix_of_families(tmp_path):
    """data.synthetic's maze and arena shares reach the generator (experiment=planner_mix)."""
    from omegaconf import OmegaConf

    from goalgen.train.entry import _ensure_synthetic_data

    mix = {"num_scenes": 3, "seed": 0, "family": "mixed", "maze_share": 0.0, "arena_share": 1.0}
    cfg = OmegaConf.create({"data": {"data_dir": str(tmp_path / "mix"), "synthetic": mix}})
    _ensure_synthetic_data(cfg, True, lambda: None)
    stamp = json.loads((tmp_path / "mix" / synth.STAMP_NAME).read_text())
    assert stamp["arena_share"] == 1.0 and stamp["maze_share"] == 0.0
    for path in sorted((tmp_path / "mix").glob("*.npz")):
        with np.load(path) as scene:
            assert "arena_side" in scene.files, path.name
