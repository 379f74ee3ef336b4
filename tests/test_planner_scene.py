"""Planner scenes from MuJoCo XML (goalgen.data.planner_scene, goalgen-render).

The first part holds what the proposal and compat tests share: a small scene in namo_cpp's XML
format written from plain Python geometry (nothing of namo_cpp's own files), and independent
world-coordinate checks (exact box/box SAT, disk/box distance, a connected-components walk on
a fine grid) that share no code with goalgen."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from scipy import ndimage

# A 4 m x 3 m room split at x = 0 by a wall with a 0.7 m door (y 0.2 .. 0.9) that the box
# obstacle_1_movable closes; another box and a pillar (a cylinder) elsewhere.
# Boxes: name -> (cx, cy, half_x, half_y, yaw in degrees); the pillar: (cx, cy, radius).
WALLS = {
    "wall_0": (0.0, 1.5, 2.05, 0.05, 0.0),
    "wall_1": (0.0, -1.5, 2.05, 0.05, 0.0),
    "wall_2": (2.0, 0.0, 0.05, 1.5, 0.0),
    "wall_3": (-2.0, 0.0, 0.05, 1.5, 0.0),
    "wall_4": (0.0, -0.65, 0.05, 0.85, 0.0),
    "wall_5": (0.0, 1.2, 0.05, 0.3, 0.0),
}
PILLAR = ("static_pillar", (-1.0, 0.9, 0.15))
MOVABLE = {
    "obstacle_1_movable": (0.0, 0.55, 0.15, 0.32, 0.0),
    "obstacle_2_movable": (1.2, -0.9, 0.2, 0.2, 20.0),
}
ROBOT = (-1.2, -0.8, 0.15)  # x, y, radius
GOAL = (1.3, 0.8)
OBJECT = "obstacle_1_movable"


def scene_xml(
    walls: dict = WALLS,
    movable: dict = MOVABLE,
    robot: tuple | None = ROBOT,
    goal: tuple | None = GOAL,
    pillar: tuple | None = PILLAR,
) -> str:
    """The scene as namo_cpp lays it out: pos/euler on the geoms, bodies at the origin, the
    robot on slide joints, each movable box on a free joint, a floor plane."""
    lines = [
        '<mujoco model="room">',
        '  <compiler angle="degree"/>',
        "  <worldbody>",
        '    <geom name="floor" type="plane" size="3 3 0.1" rgba="0.9 0.9 0.9 1"/>',
        '    <light name="top" pos="0 0 4"/>',
        '    <body name="walls">',
    ]
    for name, (x, y, hx, hy, yaw) in walls.items():
        lines.append(
            f'      <geom name="{name}" type="box" pos="{x} {y} 0.3" euler="0 0 {yaw}" '
            f'size="{hx} {hy} 0.3"/>'
        )
    if pillar is not None:
        name, (x, y, r) = pillar
        lines.append(
            f'      <geom name="{name}" type="cylinder" pos="{x} {y} 0.3" size="{r} 0.3"/>'
        )
    lines.append("    </body>")
    if robot is not None:
        x, y, r = robot
        lines += [
            '    <body name="robot_body">',
            '      <joint name="robot_x" type="slide" axis="1 0 0"/>',
            '      <joint name="robot_y" type="slide" axis="0 1 0"/>',
            f'      <geom name="robot" type="sphere" pos="{x} {y} {r}" size="{r}"/>',
            "    </body>",
        ]
    for name, (x, y, hx, hy, yaw) in movable.items():
        lines += [
            f'    <body name="{name}">',
            "      <freejoint/>",
            f'      <geom name="{name}" type="box" pos="{x} {y} 0.3" euler="0 0 {yaw}" '
            f'size="{hx} {hy} 0.3" mass="1"/>',
            "    </body>",
        ]
    if goal is not None:
        lines.append(f'    <site name="goal" pos="{goal[0]} {goal[1]} 0.05" size="0.1"/>')
    lines += ["  </worldbody>", "</mujoco>"]
    return "\n".join(lines) + "\n"


def write_scene(folder: Path, **kw) -> Path:
    path = folder / "room.xml"
    path.write_text(scene_xml(**kw))
    return path


def state_message(xml_path: Path, moved: dict | None = None, robot=(-1.4, -0.2, 0.3)) -> dict:
    """A planner state like namo_cpp's: movable poses, walls from object info, robot, goal."""
    objects = {}
    for name, (x, y, _, _, yaw) in {**MOVABLE, **(moved or {})}.items():
        t = np.radians(yaw)
        objects[name] = {
            "position": [x, y, t],
            "quaternion": [float(np.cos(t / 2)), 0.0, 0.0, float(np.sin(t / 2))],
        }
    for name, (x, y, _, _, yaw) in WALLS.items():
        objects[name] = {"position": [x, y, np.radians(yaw)], "quaternion": [1.0, 0.0, 0.0, 0.0]}
    return {
        "xml_path": str(xml_path),
        "robot_goal": list(GOAL),
        "reachable_objects": list(MOVABLE),
        "robot": {"position": list(robot)},
        "objects": objects,
    }


def write_state(folder: Path, xml_path: Path, **kw) -> Path:
    path = folder / "state.json"
    path.write_text(json.dumps(state_message(xml_path, **kw)))
    return path


def world_boxes(movable: dict = MOVABLE, skip: str | None = OBJECT) -> np.ndarray:
    """``(B, 5)`` ``(cx, cy, w, h, yaw)`` of the walls and the movable boxes but ``skip``."""
    out = [(x, y, 2 * hx, 2 * hy, np.radians(t)) for x, y, hx, hy, t in WALLS.values()]
    out += [
        (x, y, 2 * hx, 2 * hy, np.radians(t))
        for n, (x, y, hx, hy, t) in movable.items()
        if n != skip
    ]
    return np.array(out, dtype=np.float64)


# ----------------------------------------------------------------------------- independent checks
def corners(box) -> np.ndarray:
    cx, cy, w, h, t = box
    c, s = np.cos(t), np.sin(t)
    local = np.array([[-w / 2, -h / 2], [w / 2, -h / 2], [w / 2, h / 2], [-w / 2, h / 2]])
    return local @ np.array([[c, s], [-s, c]]) + [cx, cy]


def sat_overlap(a, b) -> bool:
    """Exact: do two rotated boxes share any point (touching counts)?"""
    pa, pb = corners(a), corners(b)
    for poly in (pa, pb):
        for i in range(4):
            edge = poly[(i + 1) % 4] - poly[i]
            axis = np.array([-edge[1], edge[0]])
            ra, rb = pa @ axis, pb @ axis
            if ra.max() < rb.min() or rb.max() < ra.min():
                return False
    return True


def disk_box_distance(x: float, y: float, box) -> float:
    cx, cy, w, h, t = box
    dx, dy = x - cx, y - cy
    u = abs(dx * np.cos(t) + dy * np.sin(t)) - w / 2
    v = abs(-dx * np.sin(t) + dy * np.cos(t)) - h / 2
    return float(np.hypot(max(u, 0.0), max(v, 0.0)))


def clearance_grid(xs: np.ndarray, ys: np.ndarray, boxes, disks=()) -> np.ndarray:
    """``(len(ys), len(xs))`` exact distance from grid points to the boxes and disks."""
    px, py = np.meshgrid(xs, ys)
    out = np.full(px.shape, np.inf)
    for cx, cy, w, h, t in boxes:
        dx, dy = px - cx, py - cy
        u = np.abs(dx * np.cos(t) + dy * np.sin(t)) - w / 2
        v = np.abs(-dx * np.sin(t) + dy * np.cos(t)) - h / 2
        out = np.minimum(out, np.hypot(np.maximum(u, 0), np.maximum(v, 0)))
    for cx, cy, r in disks:
        out = np.minimum(out, np.maximum(np.hypot(px - cx, py - cy) - r, 0))
    return out


class FineWorld:
    """A fine grid of ``step`` over ``bounds`` with the exact clearance to fixed obstacles;
    :meth:`route_possible` adds one more box."""

    def __init__(self, bounds, boxes, disks=(), step: float = 0.01) -> None:
        self.bounds, self.step = bounds, step
        self.xs = np.arange(bounds[0] + step / 2, bounds[2], step)
        self.ys = np.arange(bounds[1] + step / 2, bounds[3], step)
        self.clear = clearance_grid(self.xs, self.ys, boxes, disks)

    def route_possible(self, box, start, goal, radius: float) -> bool:
        """A necessary condition for a collision-free route of a disk of ``radius``: grid
        points at least ``radius - step / sqrt(2)`` from every obstacle, 8-connected (any
        continuous route keeping ``radius`` passes through such cells), join the cells of
        ``start`` and ``goal``."""
        clear = np.minimum(self.clear, clearance_grid(self.xs, self.ys, [box]))
        free = clear >= radius - self.step / np.sqrt(2)
        labels, _ = ndimage.label(free, structure=np.ones((3, 3), dtype=bool))

        def cell(p):
            return int((p[1] - self.bounds[1]) / self.step), int(
                (p[0] - self.bounds[0]) / self.step
            )

        s, g = labels[cell(start)], labels[cell(goal)]
        return bool(s and s == g)


# ============================================================================= the tests
import pytest  # noqa: E402

from goalgen.data import geometry as geo  # noqa: E402
from goalgen.data.planner_scene import (  # noqa: E402
    GOAL_DRAWN,
    ROBOT_DRAWN,
    GridFrame,
    PlannerSceneError,
    WorldScene,
    load_mujoco_scene,
    read_state,
)
from goalgen.data.render import main as render_main  # noqa: E402
from goalgen.data.scenes import SCENE_KEYS, load_scene_file  # noqa: E402

mujoco = pytest.importorskip("mujoco")

BOUNDS = (-2.25, -1.75, 2.25, 1.75)  # walls' extents + min(0.1 * range, 0.2) per axis


def _box(entry) -> np.ndarray:
    x, y, hx, hy, yaw = entry
    return np.array([x, y, 2 * hx, 2 * hy, np.radians(yaw)])


def _yaw_close(a: float, b: float, period: float = np.pi) -> bool:
    d = (a - b) % period
    return min(d, period - d) < 1e-6


@pytest.fixture
def room(tmp_path) -> Path:
    return write_scene(tmp_path)


def test_classes_sizes_poses_and_bounds_follow_the_planner(room):
    scene = load_mujoco_scene(room, OBJECT)
    assert scene.movable_names == tuple(MOVABLE)
    assert scene.static_names == (*WALLS, PILLAR[0])  # floor plane not drawn, pillar static
    assert scene.target_name == OBJECT and scene.target_index == 0
    for got, entry in zip(scene.movable, MOVABLE.values(), strict=True):
        want = _box(entry)
        assert np.allclose(got[:4], want[:4]) and _yaw_close(got[4], want[4])
    assert np.allclose(scene.static[: len(WALLS), :4], [_box(e)[:4] for e in WALLS.values()])
    assert np.allclose(scene.static[-1], [-1.0, 0.9, 0.3, 0.3, 0.0])  # cylinder: its box
    assert np.allclose(scene.robot_xy, ROBOT[:2]) and scene.robot_radius == pytest.approx(0.15)
    assert np.allclose(scene.goal_xy, GOAL)
    assert np.allclose(scene.extra["geometry_bounds"], BOUNDS)
    side = 4.5  # max(w, h) of the padded bounds, centred on them
    assert scene.frame.side == pytest.approx(side) and scene.frame.size == 224
    assert np.allclose(scene.frame.bounds, (-side / 2, -side / 2, side / 2, side / 2))


def test_masks_follow_the_planners_pixel_convention(room):
    scene = load_mujoco_scene(room, OBJECT)
    masks = scene.context_masks()
    assert masks.shape == (5, 224, 224) and masks.dtype == bool
    scale = 224 / 4.5
    for channel, (x, y), radius in ((0, ROBOT[:2], ROBOT_DRAWN), (1, GOAL, GOAL_DRAWN)):
        px, py = int((x - 0.0) * scale + 112), int((y - 0.0) * scale + 112)
        rows, cols = np.nonzero(masks[channel])
        assert masks[channel][py, px]  # row = py: no flip
        back = scene.frame.pixel_to_world(np.array([rows.mean(), cols.mean()]))  # x = (px-112)/s
        assert np.allclose(back, (x, y), atol=0.5 / scale)
        assert rows.size == pytest.approx(np.pi * (radius * scale) ** 2, rel=0.08)
    # row 0 is y_min: the pillar (y = +0.9) lies in the high rows, nothing at its mirror image
    col, row = int(-1.0 * scale + 112), int(0.9 * scale + 112)
    assert masks[3][row, col] and not masks[3][224 - row, col]
    assert (masks[4] <= masks[2]).all() and masks[4].any()
    assert not masks[3][int((0.55 + 2.25) * scale), 112]  # the door is open in the walls
    # the drawn robot disk is the convention; the geometry keeps the real radius
    assert scene.robot_radius == pytest.approx(ROBOT[2])


def test_state_moves_free_bodies_through_their_geom_frame(room, tmp_path):
    """namo_cpp's geoms sit off their body's origin: the state's pose is the geom's."""
    moved = {"obstacle_2_movable": (-1.0, -1.0, 0.2, 0.2, 65.0)}
    state = state_message(room, moved, robot=(-1.4, -0.2, 0.3))
    scene = load_mujoco_scene(room, OBJECT, state)
    got = scene.movable[1]
    assert np.allclose(got[:2], (-1.0, -1.0), atol=1e-9) and _yaw_close(got[4], np.radians(65))
    assert np.allclose(scene.robot_xy, (-1.4, -0.2)) and scene.robot_yaw == pytest.approx(0.3)
    # naive qpos = state (the trap) would have put the geom at state + its local offset
    m = mujoco.MjModel.from_xml_path(str(room))
    d = mujoco.MjData(m)
    body = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_BODY, "obstacle_2_movable")
    adr = m.jnt_qposadr[m.body_jntadr[body]]
    d.qpos[adr : adr + 2] = (-1.0, -1.0)
    mujoco.mj_forward(m, d)
    geom = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_GEOM, "obstacle_2_movable")
    assert np.allclose(d.geom_xpos[geom][:2], (-1.0 + 1.2, -1.0 - 0.9))
    # a state file and JSON text read the same; robot_goal overrides the site
    path = write_state(tmp_path, room, moved=moved)
    assert read_state(path) == read_state(path.read_text())
    other = load_mujoco_scene(room, OBJECT, path, robot_goal=(1.5, -0.5))
    assert np.allclose(other.goal_xy, (1.5, -0.5)) and np.allclose(other.movable, scene.movable)


@pytest.mark.parametrize(
    "kwargs,needle",
    [
        ({"robot": None}, "no geom named 'robot'; geoms: floor, wall_0"),
        ({"goal": None}, "no site named 'goal' and no robot_goal given"),
    ],
)
def test_missing_robot_or_goal_is_a_one_line_error(tmp_path, kwargs, needle):
    path = write_scene(tmp_path, **kwargs)
    with pytest.raises(PlannerSceneError, match=needle) as info:
        load_mujoco_scene(path, OBJECT)
    assert isinstance(info.value, ValueError) and "\n" not in str(info.value)


def test_bad_names_and_poses_are_one_line_errors(room):
    cases = [
        (
            {"object_name": "box_9"},
            "no object named 'box_9'; movable objects: obstacle_1_movable, obstacle_2_movable",
        ),
        (
            {"object_name": "wall_4"},
            "'wall_4' is not movable .* movable objects: obstacle_1_movable",
        ),
        (
            {"state": {"objects": {"ghost": {"position": [0, 0, 0]}}}},
            "state names unknown objects ghost; the scene has movable obstacle_1_movable, "
            "obstacle_2_movable and static wall_0",
        ),
        (
            {"state": {"robot": {"position": [9.0, 0.0, 0.0]}}},
            "robot at \\(9.000, 0.000\\) is outside the scene bounds",
        ),
        ({"state": {"robot": {"position": "here"}}}, "robot needs a finite 'position'"),
        ({"robot_goal": (0.0, -3.0)}, "goal at \\(0.000, -3.000\\) is outside"),
    ]
    for extra, needle in cases:
        kwargs = {"object_name": OBJECT} | extra
        with pytest.raises(PlannerSceneError, match=needle) as info:
            load_mujoco_scene(room, **kwargs)
        assert "\n" not in str(info.value)
    with pytest.raises(PlannerSceneError, match="does not exist"):
        load_mujoco_scene(room.with_name("nope.xml"), OBJECT)
    bad = room.with_name("bad.xml")
    bad.write_text("<mujoco><worldbody><geom type='box'/></mujoco>")
    with pytest.raises(PlannerSceneError, match="cannot load as MuJoCo XML"):
        load_mujoco_scene(bad, OBJECT)


def test_an_object_outside_the_bounds_is_an_error():
    scene = WorldScene(
        static=np.array([[0.0, 0.0, 4.0, 0.1, 0.0]]),
        movable=np.array([[0.0, 0.5, 0.4, 0.4, 0.0], [9.0, 0.0, 0.4, 0.4, 0.0]]),
        target_index=0,
        robot_xy=np.array([0.0, -0.5]),
        robot_radius=0.15,
        goal_xy=np.array([1.0, 0.5]),
        frame=geo.NamoFrame((0.0, 0.0), 4.4, 64),
        movable_names=("a_movable", "far_movable"),
        source="s",
    )
    with pytest.raises(
        PlannerSceneError, match="object 'far_movable' at \\(9.000, 0.000\\) is outside"
    ):
        scene.check_inside()


def test_render_cli_writes_a_training_scene_with_its_geometry(room, tmp_path, capsys):
    out = tmp_path / "scene.npz"
    assert render_main([str(room), "--object", OBJECT, "--out", str(out)]) == 0
    masks, geometry = load_scene_file(out)
    assert masks.shape == (5, 224, 224)  # an inference input: no target_goal
    scene = load_mujoco_scene(room, OBJECT)
    assert np.array_equal(masks > 0.5, scene.context_masks())
    assert geometry["world_bounds"] == pytest.approx(scene.frame.bounds)
    assert geometry["robot_radius"] == pytest.approx(0.15)
    with np.load(out) as npz:
        back = WorldScene.from_arrays(dict(npz), str(out))
    assert np.allclose(back.movable, scene.movable) and np.allclose(back.static, scene.static)
    assert back.movable_names == scene.movable_names and back.target_index == 0
    assert np.array_equal(back.context_masks(), scene.context_masks())  # same frame back
    # with the object's goal pose it is a training example
    state = write_state(tmp_path, room)
    goal = ["0.0", "-1.0", "0.5"]
    assert (
        render_main(
            [
                str(room),
                "--state",
                str(state),
                "--object",
                OBJECT,
                "--out",
                str(out),
                "--goal-pose",
                *goal,
            ]
        )
        == 0
    )
    masks, _ = load_scene_file(out)
    assert masks.shape == (6, 224, 224)
    expected = scene.frame.box_mask(0.0, -1.0, 0.3, 0.64, 0.5)
    assert np.array_equal(masks[5] > 0.5, expected)
    assert "training example" in capsys.readouterr().out
    # errors: one line, exit 1
    assert render_main([str(room), "--object", "wall_0", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert (
        err.startswith("goalgen-render: error: ") and err.count("\n") == 1 and "not movable" in err
    )


def test_scene_files_of_both_conventions_give_back_their_masks(tmp_path):
    from goalgen.data.synthetic import generate_scene

    for family in ("maze", "rooms"):
        arrays = generate_scene(np.random.SeedSequence(3, spawn_key=(1,)), 224, family=family)
        scene = WorldScene.from_arrays(arrays, family)
        assert isinstance(scene.frame, geo.NamoFrame if family == "maze" else GridFrame)
        masks = scene.context_masks()
        for i, key in enumerate(SCENE_KEYS[:5]):
            if family == "rooms" and i < 2:
                continue  # rooms draw robot and goal with their own radii
            assert (masks[i] == (arrays[key] > 0)).mean() > 0.999, (family, key)


def test_grid_frame_matches_geometry_functions():
    frame = GridFrame((0.0, 0.0, 5.0, 5.0), 64)
    xy = np.array([[1.3, 4.2], [0.01, 0.02]])
    rc = frame.world_to_pixel(xy)
    assert np.array_equal(rc, np.rint(geo.world_to_pixel(xy, frame.bounds, 64)).astype(int))
    assert np.allclose(frame.pixel_to_world(rc), geo.pixel_to_world(rc, frame.bounds, 64))
    assert np.array_equal(
        frame.box_mask(2, 2, 1, 0.5, 0.3), geo.box_mask(2, 2, 1, 0.5, 0.3, frame.bounds, 64)
    )
    assert frame.resized(32).metres_per_pixel == pytest.approx(5 / 32)
