"""Maze scenes: the planner's image convention, invariants checked by code independent of the
generator's search (a plain flood fill), the stored feasible set, options, families and CLI."""

import json
import zipfile

import numpy as np
import pytest
from scipy import ndimage

from goalgen.data import geometry as geo
from goalgen.data import synthetic as synth
from goalgen.data.scenes import SCENE_KEYS, load_scene
from goalgen.data.synthetic import arena, feasible, maze

SMALL = maze.MazeOptions(grid_size=5)
SMALL_SIZE = 112
ARENA_SIZE = 128


@pytest.fixture(scope="module")
def scenes() -> list[dict[str, np.ndarray]]:
    seqs = [np.random.SeedSequence(21, spawn_key=(i,)) for i in range(5)]
    return [maze.generate_scene(s, SMALL_SIZE, SMALL) for s in seqs]


@pytest.fixture(scope="module")
def full() -> dict[str, np.ndarray]:
    """One scene of the default 11 x 11 maze at the planner's 224 px."""
    return maze.generate_scene(np.random.SeedSequence(3, spawn_key=(0,)), 224)


@pytest.fixture(scope="module")
def arenas() -> list[dict[str, np.ndarray]]:
    seqs = [np.random.SeedSequence(23, spawn_key=(i,)) for i in range(5)]
    return [arena.generate_scene(s, ARENA_SIZE) for s in seqs]


# ------------------------------------------------------------------ independent reference
def _spec_frame(scene) -> tuple[float, float, float, int]:
    """``(cx, cy, scale, size)`` recomputed from the stored geometry by the planner's rule."""
    boxes = np.concatenate([scene["static_walls"], scene["movable_boxes"]])
    corners = np.concatenate([geo.box_corners(*b) for b in boxes])
    lo, hi = corners.min(0), corners.max(0)
    pad = np.minimum(0.1 * (hi - lo), 0.2)
    lo, hi = lo - pad, hi + pad
    size = scene["target_object"].shape[0]
    return (lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, size / max(hi - lo), size


def _spec_pixel(scene, xy) -> tuple[int, int]:
    cx, cy, scale, size = _spec_frame(scene)
    px = min(max(int((xy[0] - cx) * scale + size / 2), 0), size - 1)
    py = min(max(int((xy[1] - cy) * scale + size / 2), 0), size - 1)
    return py, px


def _spec_points(scene) -> tuple[np.ndarray, np.ndarray]:
    """World ``x`` ``(1, S)`` and ``y`` ``(S, 1)`` of every pixel: ``(p - S/2) / scale + c``."""
    cx, cy, scale, size = _spec_frame(scene)
    p = np.arange(size)
    return ((p - size / 2) / scale + cx)[None, :], ((p - size / 2) / scale + cy)[:, None]


def _spec_box(scene, box) -> np.ndarray:
    x, y = _spec_points(scene)
    cx, cy, w, h, theta = box
    c, s = np.cos(theta), np.sin(theta)
    dx, dy = x - cx, y - cy
    return (np.abs(dx * c + dy * s) <= w / 2) & (np.abs(dy * c - dx * s) <= h / 2)


def _spec_disk(scene, center, radius) -> np.ndarray:
    x, y = _spec_points(scene)
    return (x - center[0]) ** 2 + (y - center[1]) ** 2 <= radius**2


def _reaches(scene, obstacles: np.ndarray, radius: float, target=None) -> bool:
    """Plain flood fill: does a disk of ``radius`` m get from the robot pixel to the goal pixel
    (or, with ``target``, next to that mask)?"""
    mpp = 1 / _spec_frame(scene)[2]
    r = int(np.floor(radius / mpp))
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    disk = xx**2 + yy**2 <= (radius / mpp) ** 2
    blocked = ndimage.binary_dilation(obstacles, structure=disk)
    labels, _ = ndimage.label(~blocked, structure=np.ones((3, 3)))
    start = labels[_spec_pixel(scene, scene["robot_pose"])]
    if target is not None:
        near = ndimage.binary_dilation(target, structure=disk, iterations=1)
        near = ndimage.binary_dilation(near, iterations=2) & ~blocked
        return start > 0 and bool((labels[near] == start).any())
    return start > 0 and start == labels[_spec_pixel(scene, scene["goal_pose"])]


def _parts(scene):
    m = {k: scene[k] > 0 for k in SCENE_KEYS}
    others = m["movable_objects_image"] & ~m["target_object"]
    return m, others


# ------------------------------------------------------------------ convention
def test_namo_frame_follows_the_planners_formulas():
    frame = geo.NamoFrame.from_bounds((-0.25, -0.25, 11.25, 10.0), 224)  # 11.5 x 10.25 m
    assert frame.side == 11.5 and frame.scale == 224 / 11.5
    np.testing.assert_allclose(frame.bounds, (-0.25, -0.875, 11.25, 10.625))
    xy = np.array([[0.0, 0.0], [5.5, 4.875], [11.3, -3.0], [3.21, 7.77], [-0.2, 10.6]])
    rows = [min(max(int((y - 4.875) * frame.scale + 112), 0), 223) for _, y in xy]
    cols = [min(max(int((x - 5.5) * frame.scale + 112), 0), 223) for x, _ in xy]
    got = frame.world_to_pixel(xy)
    assert got[:, 0].tolist() == rows and got[:, 1].tolist() == cols  # row from y: no flip
    assert got[2].tolist() == [0, 223]  # clamped
    np.testing.assert_allclose(frame.pixel_to_world(np.array([112, 112])), [5.5, 4.875])
    np.testing.assert_allclose(frame.pixel_to_world(np.array([0, 0])), frame.bounds[:2])
    mask = frame.box_mask(3.0, 6.0, 1.0, 0.5, 0.3)  # the mean pixel maps back to the centre
    np.testing.assert_allclose(
        frame.pixel_to_world(np.argwhere(mask).mean(0)), [3.0, 6.0], atol=0.02
    )
    disk = frame.disk_mask((3.0, 6.0), 0.4)
    assert abs(disk.sum() / (np.pi * (0.4 * frame.scale) ** 2) - 1) < 0.05
    assert frame.resized(64).scale == 64 / 11.5
    assert geo.padded_bounds(np.array([[1.0, 1.0, 2.0, 2.0, 0.0]])) == (-0.2, -0.2, 2.2, 2.2)
    np.testing.assert_allclose(
        geo.padded_bounds(np.array([[0.5, 0.5, 1.0, 0.5, 0.0]])), (-0.1, 0.2, 1.1, 0.8)
    )


def test_masks_follow_the_planners_convention_at_224(full):
    assert int(full["image_convention"]) == 1
    cx, cy, scale, size = _spec_frame(full)
    assert size == 224
    np.testing.assert_allclose(
        full["world_bounds"],
        [cx - 112 / scale, cy - 112 / scale, cx + 112 / scale, cy + 112 / scale],
    )
    walls = np.any([_spec_box(full, w) for w in full["static_walls"]], axis=0)
    np.testing.assert_array_equal(walls, full["static_objects_image"] > 0)
    boxes = [_spec_box(full, b) for b in full["movable_boxes"]]
    np.testing.assert_array_equal(np.any(boxes, axis=0), full["movable_objects_image"] > 0)
    np.testing.assert_array_equal(boxes[int(full["target_index"])], full["target_object"] > 0)
    np.testing.assert_array_equal(_spec_box(full, full["target_goal_box"]), full["target_goal"] > 0)
    for pose, key, radius in (
        ("robot_pose", "robot_image", 0.2),
        ("goal_pose", "goal_image", 0.25),
    ):
        np.testing.assert_array_equal(_spec_disk(full, full[pose], radius), full[key] > 0)
        rc = np.argwhere(full[key] > 0).mean(0)  # row is y (row 0 = y_min): no flip
        np.testing.assert_allclose(
            [rc[1] - 112, rc[0] - 112], (full[pose] - [cx, cy]) * scale, atol=0.6
        )
    assert float(full["robot_radius"]) == 0.15 and float(full["goal_radius"]) == 0.3
    assert 3 <= len(full["movable_boxes"]) <= 17 and int(full["grid_size"]) == 11
    half = full["movable_boxes"][:, 2:4] / 2
    assert half.min() >= 0.25 - 1e-9 and half.max() <= 0.47 + 1e-9
    assert 0.5 <= float(full["deletion_rate"]) <= 0.9


# ------------------------------------------------------------------ invariants
def _real_robot(scene) -> np.ndarray:
    """The robot's disk at its real radius (the drawn one is larger in arenas)."""
    return _spec_disk(scene, scene["robot_pose"], float(scene["robot_radius"]))


@pytest.mark.parametrize("family", ["maze", "arena"])
def test_route_is_blocked_and_moving_the_box_to_its_goal_opens_it(family, request):
    sets = [*request.getfixturevalue("scenes"), request.getfixturevalue("full")]
    for scene in sets if family == "maze" else request.getfixturevalue("arenas"):
        m, others = _parts(scene)
        walls = m["static_objects_image"]
        radius = float(scene["robot_radius"])
        assert not _reaches(scene, walls | m["movable_objects_image"], radius)
        assert _reaches(scene, walls | others, radius)
        assert _reaches(scene, walls | others, radius, target=m["target_object"])
        moved = m["target_goal"]
        goal_disk = _spec_disk(scene, scene["goal_pose"], float(scene["goal_radius"]))
        robot = m["robot_image"] if family == "maze" else _real_robot(scene)
        goal = m["goal_image"] if family == "maze" else goal_disk
        assert not (moved & (robot | goal | m["static_objects_image"])).any()
        assert not (moved & others).any() and moved.sum() > 0
        assert _reaches(scene, walls | others | moved, radius)
        assert not _reaches(scene, walls | others | m["target_object"], radius)


@pytest.mark.parametrize("family", ["maze", "arena"])
def test_every_stored_feasible_pose_opens_the_route_without_collision(family, request):
    for scene in request.getfixturevalue("scenes" if family == "maze" else "arenas")[:3]:
        m, others = _parts(scene)
        w, h = scene["movable_boxes"][int(scene["target_index"])][2:4]
        goal_disk = _spec_disk(scene, scene["goal_pose"], float(scene["goal_radius"]))
        robot = m["robot_image"] if family == "maze" else _real_robot(scene)
        keep_out = m["static_objects_image"] | others | robot | goal_disk
        for x, y, theta in scene["feasible_poses"]:
            mask = _spec_box(scene, (x, y, w, h, theta))
            assert mask.any() and not (mask & keep_out).any()
            obstacles = m["static_objects_image"] | others | mask
            assert _reaches(scene, obstacles, float(scene["robot_radius"]))


@pytest.mark.parametrize("family", ["maze", "arena"])
def test_feasible_set_is_ordered_and_consistent(family, request):
    for scene in request.getfixturevalue("scenes" if family == "maze" else "arenas"):
        poses, push = scene["feasible_poses"], scene["feasible_push"]
        box = scene["movable_boxes"][int(scene["target_index"])]
        assert poses.shape == (len(push), 3) and len(push) >= 1
        assert np.all(np.diff(push) >= -1e-9) and push[-1] <= float(scene["push_search_radius"])
        np.testing.assert_allclose(poses[0], scene["target_goal_box"][[0, 1, 4]])
        np.testing.assert_array_equal(scene["target_goal_box"][2:4], box[2:4])
        assert np.all(push >= np.hypot(*(poses[:, :2] - box[:2]).T) - 1e-9)  # geodesic >= line
        modes = scene["feasible_mode"]
        assert modes[0] == 0 and set(modes) == set(range(int(scene["num_modes"])))
        field, step = scene["push_field"], float(scene["push_field_step"])
        n = field.shape[-1]
        assert field.dtype == np.uint16 and field[0, n // 2, n // 2] == 0  # where it stands
        a = np.rint((poses[:, 1] - box[1]) / step).astype(int) + n // 2
        b = np.rint((poses[:, 0] - box[0]) / step).astype(int) + n // 2
        k = np.rint(np.mod(poses[:, 2] - box[4], np.pi) / (np.pi / 12)).astype(int) % 12
        np.testing.assert_allclose(field[k, a, b] / 100, push, atol=0.006)


def test_files_keep_the_guide_format_with_plain_numeric_extras(scenes, tmp_path):
    path = tmp_path / "scene.npz"
    synth.save_npz(path, scenes[0])
    with np.load(path, allow_pickle=False) as data:
        arrays = dict(data)
    for key, value in arrays.items():
        assert value.dtype.kind in "iuf", key
    for key in SCENE_KEYS:
        assert arrays[key].shape == (SMALL_SIZE, SMALL_SIZE) and arrays[key].dtype == np.uint8
        assert set(np.unique(arrays[key])) == {0, 255}, key
    stacked = np.stack([arrays[k] for k in SCENE_KEYS]) / 255
    np.testing.assert_array_equal(load_scene(path), stacked)


def test_scene_is_a_function_of_seed_size_and_options(scenes):
    seq = np.random.SeedSequence(21, spawn_key=(2,))
    again = maze.generate_scene(seq, SMALL_SIZE, SMALL)
    for key, value in scenes[2].items():
        np.testing.assert_array_equal(again[key], value, err_msg=key)
    other = maze.generate_scene(np.random.SeedSequence(22, spawn_key=(2,)), SMALL_SIZE, SMALL)
    assert not np.array_equal(other["static_objects_image"], again["static_objects_image"])


def test_arenas_scale_with_their_cell_and_robot_and_are_drawn_the_planners_way(arenas):
    for scene in arenas:
        side, n, cell = (
            float(scene["arena_side"]),
            int(scene["grid_size"]),
            float(scene["cell_size"]),
        )
        radius = float(scene["robot_radius"])
        assert arena.SIDE[0] <= side <= arena.SIDE[1] and 2 <= n <= 5
        assert cell == pytest.approx(side / n) and 0.4 - 1e-9 <= cell <= 0.75 + 1e-9
        assert 0.03 <= radius <= 0.1 and 2 <= len(scene["movable_boxes"]) <= 5
        assert float(scene["push_search_radius"]) == pytest.approx(1.5 * cell)
        sides = scene["movable_boxes"][:, 2:4]
        assert sides.min() >= 0.25 * cell - 1e-9 and sides.max() <= 0.94 * cell + 1e-9
        walls = np.sort(scene["static_walls"][:, 2:4], axis=1)[:, 0]  # thickness
        assert np.all((walls >= 0.06 * cell - 1e-9) & (walls <= 0.10 * cell + 1e-9))
        assert float(scene["wall_thickness"]) == pytest.approx(walls[0])
        # whatever the robot's size, the planners' 0.2 m robot and 0.25 m goal disks
        np.testing.assert_array_equal(
            scene["robot_image"] > 0, _spec_disk(scene, scene["robot_pose"], 0.2)
        )
        np.testing.assert_array_equal(
            scene["goal_image"] > 0, _spec_disk(scene, scene["goal_pose"], 0.25)
        )
        assert int(scene["image_convention"]) == 1 and int(scene["generator_version"]) == 1
    radii = [float(s["robot_radius"]) for s in arenas]
    assert len(set(radii)) == len(arenas)  # drawn per scene


# ------------------------------------------------------------------ search internals
def test_shift_overlaps_and_opens_route_match_brute_force():
    rng = np.random.default_rng(3)
    size, reach = 48, 10
    free = ndimage.binary_opening(rng.random((size, size)) > 0.3)
    kernels = np.zeros((2, size, size), dtype=bool)
    kernels[0, 20:26, 22:27] = True
    kernels[1, 22:25, 18:30] = True
    hits = feasible.shift_overlaps(~free, kernels, reach)
    shifts = np.array(
        [
            [k, dr, dc]
            for k in range(2)
            for dr in range(-reach, reach + 1, 3)
            for dc in range(-reach, reach + 1, 2)
        ]
    )
    labels, _ = ndimage.label(free, structure=np.ones((3, 3)))
    points = np.argwhere(labels == np.bincount(labels.ravel())[1:].argmax() + 1)
    start, goal = tuple(points[0]), tuple(points[-1])
    opens = feasible.opens_route(free, kernels, shifts, start, goal)
    for (k, dr, dc), got in zip(shifts, opens, strict=True):
        moved = np.zeros((size + 2 * reach,) * 2, dtype=bool)
        moved[reach + dr : reach + dr + size, reach + dc : reach + dc + size] = kernels[k]
        outside = np.pad(~free, reach, constant_values=True)
        assert hits[k, dr + reach, dc + reach] == (moved & outside).any()
        shifted = moved[reach : reach + size, reach : reach + size]
        lab, _ = ndimage.label(free & ~shifted, structure=np.ones((3, 3)))
        assert got == (lab[start] > 0 and lab[start] == lab[goal])


# ------------------------------------------------------------------ options, families, CLI
@pytest.mark.parametrize(
    ("options", "size", "message"),
    [
        (maze.MazeOptions(grid_size=2), 224, "grid size"),
        (maze.MazeOptions(deletion=(0.9, 0.5)), 224, "deletion"),
        (maze.MazeOptions(deletion=(0.5, 1.2)), 224, "deletion"),
        (maze.MazeOptions(boxes=(0, 5)), 224, "box counts"),
        (maze.MazeOptions(boxes=(9, 4)), 224, "box counts"),
        (maze.MazeOptions(), 128, "too small"),
        (arena.ArenaOptions(side=(0.5, 2.0)), 224, "arena sides"),
        (arena.ArenaOptions(robot_radius=(0.05, 0.2)), 224, "robot radii"),
        (arena.ArenaOptions(boxes=(0, 3)), 224, "box counts"),
        (arena.ArenaOptions(), 64, "too small"),
    ],
)
def test_bad_options_give_one_line_reasons(options, size, message):
    reason = options.problem(size)
    assert reason is not None and message in reason and "\n" not in reason
    module = arena if isinstance(options, arena.ArenaOptions) else maze
    with pytest.raises(ValueError, match=message):
        module.generate_scene(0, size, options)


def test_attempt_budget_names_the_failing_check(monkeypatch):
    monkeypatch.setattr(maze, "attempt", lambda rng, size, options, sizes=None: "not_blocked")
    with pytest.raises(RuntimeError, match=f"after {maze.MAX_ATTEMPTS} layouts.*'not_blocked'"):
        maze.generate_scene(0, SMALL_SIZE, SMALL)


def test_cli_rejects_bad_maze_options_in_one_line(tmp_path, capsys):
    base = ["--out", str(tmp_path), "--num-scenes", "2", "--family", "maze"]
    for extra in (
        ["--deletion-min", "0.95"],
        ["--deletion-max", "1.5"],
        ["--boxes-min", "0"],
        ["--boxes-min", "9", "--boxes-max", "4"],
        ["--grid-size", "1"],
        ["--size", "128"],
        ["--family", "cubes"],
        ["--family", "mixed", "--maze-share", "1.5"],
        ["--family", "mixed", "--maze-share", "0.6", "--arena-share", "0.6"],
        ["--family", "arena", "--size", "64"],
    ):
        with pytest.raises(SystemExit) as exit_info:
            synth.main(base + extra)
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and err.startswith("goalgen-synth: error:"), extra
        assert err.count("\n") == 1, extra


def test_mixed_sets_share_files_with_the_single_family_sets(tmp_path):
    opts = {"grid_size": 5}
    args = {"seed": 4, "size": SMALL_SIZE, "maze_opts": opts}
    mixed = synth.generate_dataset(tmp_path / "mixed", 6, family="mixed", **args)
    families = [
        synth.family_of(np.random.SeedSequence(4, spawn_key=(i,)), "mixed", 0.5) for i in range(6)
    ]
    assert set(families) == {"rooms", "maze"}
    for i, family in enumerate(families):
        one = synth.generate_dataset(tmp_path / f"one{i}", i + 1, family=family, **args)[-1]
        assert one.read_bytes() == mixed[i].read_bytes(), i
    stamp = json.loads((tmp_path / "mixed" / synth.STAMP_NAME).read_text())
    assert stamp["family"] == "mixed" and stamp["maze_share"] == 0.5
    assert stamp["maze"] == {"grid_size": 5, "deletion": [0.5, 0.9], "boxes": [3, 17]}
    assert "arena_share" not in stamp and "arena_version" not in stamp
    rooms_stamp = json.loads((tmp_path / "one0" / synth.STAMP_NAME).read_text())
    if families[0] == "rooms":
        assert set(rooms_stamp) == {"num_scenes", "seed", "size", "version"}
    with zipfile.ZipFile(mixed[0]) as archive:
        assert {info.date_time for info in archive.infolist()} == {(1980, 1, 1, 0, 0, 0)}


def test_mixed_sets_with_arenas_share_files_with_the_arena_sets(tmp_path):
    args = {"seed": 5, "size": ARENA_SIZE, "maze_opts": {"grid_size": 5}}
    shares = {"maze_share": 0.2, "arena_share": 0.6}
    mixed = synth.generate_dataset(tmp_path / "mixed", 6, family="mixed", **args, **shares)
    seqs = [np.random.SeedSequence(5, spawn_key=(i,)) for i in range(6)]
    families = [synth.family_of(s, "mixed", 0.2, 0.6) for s in seqs]
    assert "arena" in families
    # arena_share 0 leaves the families a mixed set had before arenas
    assert [synth.family_of(s, "mixed", 0.2) for s in seqs] == [
        "maze" if f == "maze" else "rooms" for f in families
    ]
    i = families.index("arena")
    one = synth.generate_dataset(tmp_path / "arena", i + 1, family="arena", **args)[-1]
    assert one.read_bytes() == mixed[i].read_bytes()
    stamp = json.loads((tmp_path / "mixed" / synth.STAMP_NAME).read_text())
    assert stamp["arena_share"] == 0.6 and stamp["arena_version"] == arena.VERSION
    assert json.loads((tmp_path / "arena" / synth.STAMP_NAME).read_text())["family"] == "arena"


def test_benchmark_reports_speed_rejections_and_modes():
    report = synth.benchmark(("maze",), num_scenes=2, seed=1, size=SMALL_SIZE, maze_opts=SMALL)
    row = report["maze"]
    assert row["scenes"] == 2 and row["scenes_per_s"] > 0 and row["layouts"] >= 2
    assert set(row["rejected"]) <= set(maze.REASONS)
    assert (
        0 <= row["rejected_share"] < 1
        and row["feasible_poses_mean"] >= 1
        and row["modes_mean"] >= 1
    )


def test_cli_writes_a_maze_set_then_reports_it_complete(tmp_path, capsys):
    argv = ["--out", str(tmp_path), "--num-scenes", "2", "--family", "maze"]
    argv += ["--grid-size", "5", "--size", str(SMALL_SIZE), "--boxes-max", "8"]
    assert synth.main(argv) == 0
    out = capsys.readouterr().out
    assert (
        out.startswith("goalgen-synth: wrote 2 scenes") and "maze" in out and out.count("\n") == 1
    )
    assert synth.main(argv) == 0 and "already complete" in capsys.readouterr().out
    with np.load(tmp_path / "scene_00001.npz") as data:
        assert int(data["grid_size"]) == 5 and len(data["movable_boxes"]) <= 8
