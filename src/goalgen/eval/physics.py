"""Pushing a box in MuJoCo physics: the planners' scene physics, a robot that walks round
obstacles and pushes by short strokes, and where the box really ends.

**The model** (:func:`physics_xml`), namo_cpp's physics: walls are static boxes under a body
named ``walls``; every movable box is a free body of mass 0.1 with friction ``0.0 0.005 0.001``
and ``condim`` 4; the robot is a sphere of mass 5 and friction 1 on the slide joints
``joint_x`` / ``joint_y``, driven by joint-velocity actuators (nothing is teleported);
``timestep`` 0.01, RK4. MuJoCo combines two geoms' friction by their maximum, so a box slides
on the floor (friction 1) and sticks to the robot: it stops within millimetres when the robot
stops, i.e. it is pushed quasi-statically.

**Resting boxes are held** (:meth:`Simulation.wake`): before each move of the robot (a leg of
a walk, a stroke) every box it cannot touch, nor a box it touches shove, loses its contacts
and is held where it rests until a later move comes near it. Most of a step's cost is the
floor contacts of resting boxes (in a maze of 17 boxes 380 us a step, 24 us without any
contact). Held or simulated, the pushed boxes of the benchmark's episodes end within 1e-7 m of
each other. A box shoved into another ends within the spread of MuJoCo's own solver (about
2 cm: a far box removed from the scene moves that end by as much).

**Walking** (:class:`Walker`): a shortest path on a grid of cells ``min(PATH_CELL, r / 3)``
wide whose centres keep the robot's radius ``r`` plus ``PATH_MARGIN`` from walls and boxes
where they are now, shortened by string pulling (a way point is kept only where the straight
way past it is blocked).

**Pushing** (:class:`Pusher`), a model-predictive stroke controller: a stroke walks the robot
to a point behind one side of the box and drives it straight at ``PUSH_SPEED`` for one of
``STROKES`` metres. Each stroke is chosen among every side x ``OFFSETS`` along it x
``ANGLES`` off its normal x length by predicting the box's motion with a quasi-static point
pushing model (:func:`predict_strokes`: an ellipsoidal limit surface, sticking or sliding
contact), dropping strokes whose box would hit a wall or box and strokes starting where the
robot cannot stand or get to, and taking the one that brings the box nearest the goal pose
(:func:`pose_cost`, plus the walk to it); where no single stroke helps, two strokes ahead.
The prediction is off by about a centimetre per 15 cm stroke in open space (against MuJoCo);
the closed loop (predict, push, look again) absorbs it. A push plan's segments are followed as
way points (the box's corners brought within ``WAYPOINT_TOLERANCE`` of each, one skipped once
the box is nearer the next) and its last pose to ``FINAL_TOLERANCE``. A way point is given up
("no progress") after ``STALL`` strokes in a row that leave the box no nearer than it has
been: against walls and boxes the model can promise what physics does not give (on 60 dev
scenes, the same successes with 15 % less time than spending all ``MAX_STROKES``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage, sparse
from scipy.sparse import csgraph

from goalgen.data.mujoco_scene import _mujoco
from goalgen.data.world_scene import WorldScene
from goalgen.infer.verify import boxes_overlap, point_box_distance

TIMESTEP = 0.01  # s, namo_cpp's
BOX_MASS, BOX_FRICTION, BOX_CONDIM = 0.1, "0.0 0.005 0.001", 4
ROBOT_MASS, ROBOT_FRICTION = 5.0, 1.0
CONTACT_FRICTION = 1.0  # robot-box and box-floor: MuJoCo takes the larger geom's
HALF_HEIGHT = 0.15  # m: boxes' half height (at least the robot's radius: it pushes their sides)
VELOCITY_GAIN = 200.0  # N s / m of the joint-velocity actuators
WALK_SPEED, PUSH_SPEED = 1.0, 0.15  # m/s: the actuators' limit; 0.25 m/s strokes ended further off
REACHED = 0.01  # m: a way point counts as reached this close
PATH_CELL, PATH_MARGIN = 0.05, 0.01  # m: the walking grid (namo_cpp's reachability cell)
STROKES = (0.01, 0.03, 0.08, 0.15)  # m of contact travel a stroke may push
OFFSETS = (-0.9, -0.6, -0.3, 0.0, 0.3, 0.6, 0.9)  # along a side, shares of its half length
ANGLES = (0.0, -0.4, 0.4)  # rad off the side's normal a stroke drives
APPROACH = 0.025  # m before contact a stroke starts (it closes in at pushing speed)
BACK_OFF = 0.02  # m the robot backs away after a stroke, so walking does not drag the box
POSE_UNIT = 0.05  # m: one unit of pose error (the box's corners moved 5 cm)
WALK_COST = 0.05  # pose-error units per metre walked to a stroke's start
WAYPOINT_TOLERANCE = 0.08  # m the box's corners may be off a way point
FINAL_TOLERANCE = 0.02  # m they may be off the goal (4.5 cm in yaw would close tight routes)
MAX_STROKES = 30  # per way point
STALL = 10  # strokes a way point may go without bringing the box nearer than it has been
LOOKAHEAD = 6  # best first strokes tried two ahead when no single stroke helps
PREDICT_STEP = 0.002  # m of robot travel per step of the quasi-static prediction
WAKE_MARGIN = 0.05  # m: boxes this near what may move are simulated, the rest held at rest


def physics_xml(world: WorldScene) -> str:
    """The MJCF model of ``world`` (see the module docstring): the movable boxes are bodies
    ``box_<i>`` in ``world.movable``'s order."""

    def box_geom(box: np.ndarray, name: str) -> str:
        x, y, w, h, yaw = (float(v) for v in box)
        return (
            f'<geom name="{name}" type="box" pos="{x} {y} {HALF_HEIGHT}" '
            f'size="{w / 2} {h / 2} {HALF_HEIGHT}" euler="0 0 {yaw}"/>'
        )

    def free_box(box: np.ndarray, name: str) -> str:
        x, y, w, h, yaw = (float(v) for v in box)
        return (
            f'<body name="{name}" pos="{x} {y} {HALF_HEIGHT}" euler="0 0 {yaw}"><freejoint/>'
            f'<geom type="box" size="{w / 2} {h / 2} {HALF_HEIGHT}" mass="{BOX_MASS}" '
            f'friction="{BOX_FRICTION}" condim="{BOX_CONDIM}"/></body>'
        )

    x0, y0, x1, y1 = (float(v) for v in world.frame.bounds)
    walls = "".join(box_geom(b, f"wall_{i}") for i, b in enumerate(world.static.reshape(-1, 5)))
    boxes = "".join(free_box(b, f"box_{i}") for i, b in enumerate(world.movable.reshape(-1, 5)))
    r = float(world.robot_radius)
    rx, ry = (float(v) for v in world.robot_xy)
    # the sphere floats a millimetre above the floor: it slides on its joints, not on friction
    return f"""<mujoco model="goalgen-physics">
  <compiler angle="radian"/>
  <option timestep="{TIMESTEP}" integrator="RK4"/>
  <worldbody>
    <geom name="floor" type="plane" pos="{(x0 + x1) / 2} {(y0 + y1) / 2} 0"
          size="{(x1 - x0) / 2 + 1} {(y1 - y0) / 2 + 1} 0.1"/>
    <body name="walls">{walls}</body>
    {boxes}
    <body name="robot" pos="{rx} {ry} {r + 0.001}">
      <joint name="joint_x" type="slide" axis="1 0 0"/>
      <joint name="joint_y" type="slide" axis="0 1 0"/>
      <geom name="robot" type="sphere" size="{r}" mass="{ROBOT_MASS}" friction="{ROBOT_FRICTION}"/>
    </body>
  </worldbody>
  <actuator>
    <velocity name="vx" joint="joint_x" kv="{VELOCITY_GAIN}" ctrlrange="-1 1"/>
    <velocity name="vy" joint="joint_y" kv="{VELOCITY_GAIN}" ctrlrange="-1 1"/>
  </actuator>
</mujoco>"""


def pose_error(pose: np.ndarray, goal: np.ndarray, period: float) -> tuple[float, float]:
    """Position (m) and yaw (rad, modulo the box's symmetry ``period``) error of ``(x, y,
    yaw)`` poses."""
    d = float(np.hypot(pose[0] - goal[0], pose[1] - goal[1]))
    turn = (pose[2] - goal[2] + period / 2) % period - period / 2
    return d, float(abs(turn))


def pose_cost(
    poses: np.ndarray, goal: np.ndarray, period: float, arm: float, bound: bool = False
) -> np.ndarray:
    """``(...)`` error of a box's poses ``(..., 3)`` to ``goal``, in :data:`POSE_UNIT`: the
    centre's offset and the turn times ``arm`` (the box's half diagonal: how far its corners
    swing) as ``hypot`` (smooth, for choosing strokes) or, with ``bound``, summed (in metres:
    a bound on how far any corner is off)."""
    d = np.hypot(poses[..., 0] - goal[0], poses[..., 1] - goal[1])
    swing = arm * np.abs((poses[..., 2] - goal[2] + period / 2) % period - period / 2)
    return d + swing if bound else np.hypot(d, swing) / POSE_UNIT


def grid_graph(free: np.ndarray) -> tuple[sparse.csr_matrix, np.ndarray]:
    """The 8-connected graph of ``free`` cells ``(H, W)`` bool (a diagonal only where both
    cells beside it are free; weights in cells) and the node index of each cell ``(H, W)``."""
    rows, cols = free.shape
    index = np.arange(rows * cols).reshape(rows, cols)
    heads, tails, costs = [], [], []
    for dr, dc in ((0, 1), (1, 0), (1, 1), (1, -1)):
        a = (slice(0, rows - dr), slice(max(0, -dc), cols - max(0, dc)))
        b = (slice(dr, rows), slice(max(0, dc), cols - max(0, -dc)))
        ok = free[a] & free[b]
        if dr and dc:  # no corner cutting
            ok &= free[(slice(0, rows - dr), b[1])] & free[(slice(dr, rows), a[1])]
        heads.append(index[a][ok])
        tails.append(index[b][ok])
        costs.append(np.full(int(ok.sum()), np.hypot(dr, dc)))
    graph = sparse.csr_matrix(
        (np.concatenate(costs), (np.concatenate(heads), np.concatenate(tails))),
        shape=(rows * cols, rows * cols),
    )
    return graph, index


class Simulation:
    """One scene in MuJoCo (see the module docstring); it lives for a whole episode."""

    def __init__(self, world: WorldScene):
        mujoco = _mujoco()
        self.mujoco, self.world = mujoco, world
        self.model = mujoco.MjModel.from_xml_string(physics_xml(world))
        self.data = mujoco.MjData(self.model)
        mujoco.mj_forward(self.model, self.data)
        model = self.model
        self._robot = [int(model.jnt_qposadr[model.joint(n).id]) for n in ("joint_x", "joint_y")]
        bodies = [model.body(f"box_{i}") for i in range(len(world.movable))]
        self._boxes = [int(model.jnt_qposadr[b.jntadr[0]]) for b in bodies]
        self._dofs = [int(model.jnt_dofadr[b.jntadr[0]]) for b in bodies]
        self._geoms = [int(b.geomadr[0]) for b in bodies]
        self._contacts = [
            (int(model.geom_contype[g]), int(model.geom_conaffinity[g])) for g in self._geoms
        ]
        self.held: dict[int, np.ndarray] = {}  # box index -> its qpos while held at rest
        # the same as flat indices and values, set by hold(): step() restores them each step
        self._pinned = (np.zeros(0, dtype=int), np.zeros(0), np.zeros(0, dtype=int))
        self.path = 0.0  # m the robot travelled

    @property
    def robot(self) -> np.ndarray:
        """The robot's centre ``(2,)`` (its slide joints measure from where it started)."""
        return self.world.robot_xy + self.data.qpos[self._robot]

    def box_poses(self) -> np.ndarray:
        """``(M, 3)`` every movable box's ``(x, y, yaw)``."""
        out = np.empty((len(self._boxes), 3))
        for i, adr in enumerate(self._boxes):
            w, _, _, z = self.data.qpos[adr + 3 : adr + 7]
            out[i] = (*self.data.qpos[adr : adr + 2], 2 * np.arctan2(z, w))
        return out

    def boxes(self) -> np.ndarray:
        """``(M, 5)`` every movable box where it is now."""
        poses = self.box_poses()
        return np.column_stack([poses[:, :2], self.world.movable[:, 2:4], poses[:, 2]])

    def wake(self, start: np.ndarray, end: np.ndarray, travel: float) -> None:
        """Before the robot moves from ``start`` to ``end`` ``(2,)``: wake the boxes it may
        touch (within its radius and ``WAKE_MARGIN`` of the segment) and, in turn, those
        within ``travel`` (m the woken boxes may be pushed) and ``WAKE_MARGIN`` of a woken
        box; hold the rest where they rest (see the module docstring)."""
        boxes = self.boxes()
        n = int(np.ceil(np.hypot(*(end - start)) / 0.02)) + 1
        points = start + np.linspace(0.0, 1.0, n)[:, None] * (end - start)
        reach = float(self.world.robot_radius) + WAKE_MARGIN
        awake = (point_box_distance(points, boxes) <= reach).any(0)
        grow = travel + WAKE_MARGIN
        while True:
            more = ~awake & boxes_overlap(boxes, boxes[awake], grow).any(1)
            if not more.any():
                break
            awake |= more
        self.hold(np.flatnonzero(~awake))

    def hold(self, indices: Sequence[int]) -> None:
        """Hold boxes ``indices`` still where they are, without contacts; wake the others."""
        model, data = self.model, self.data
        indices = {int(i) for i in indices}
        for i in range(len(self._boxes)):
            adr, dof, geom = self._boxes[i], self._dofs[i], self._geoms[i]
            if i in indices and i not in self.held:
                self.held[i] = data.qpos[adr : adr + 7].copy()
                model.geom_contype[geom] = model.geom_conaffinity[geom] = 0
            elif i not in indices and i in self.held:
                del self.held[i]
                model.geom_contype[geom], model.geom_conaffinity[geom] = self._contacts[i]
            if i in self.held:
                data.qvel[dof : dof + 6] = 0.0
        order = sorted(self.held)
        self._pinned = (
            np.array([self._boxes[i] + k for i in order for k in range(7)], dtype=int),
            np.concatenate([self.held[i] for i in order]) if order else np.zeros(0),
            np.array([self._dofs[i] + k for i in order for k in range(6)], dtype=int),
        )

    def step(self, velocity: np.ndarray | None = None) -> None:
        """One physics step with the robot's joint velocity command (m/s; None: stand)."""
        here = self.robot
        self.data.ctrl[:] = 0.0 if velocity is None else velocity
        self.mujoco.mj_step(self.model, self.data)
        positions, values, velocities = self._pinned
        self.data.qpos[positions] = values
        self.data.qvel[velocities] = 0.0
        self.path += float(np.hypot(*(self.robot - here)))

    def settle(self, seconds: float = 0.5) -> None:
        """Stand still for ``seconds`` of simulated time (the boxes come to rest)."""
        for _ in range(int(round(seconds / TIMESTEP))):
            self.step()

    def drive_to(self, point: np.ndarray, speed: float, timeout: float) -> bool:
        """Drive the robot's centre straight to ``point`` at ``speed``, slowing over the last
        5 cm; False if it is not within ``REACHED`` by ``timeout`` simulated seconds."""
        point = np.asarray(point, dtype=np.float64)
        self.wake(self.robot, point, 0.0)
        for _ in range(int(np.ceil(timeout / TIMESTEP))):
            gap = point - self.robot
            dist = float(np.hypot(*gap))
            if dist <= REACHED:
                self.data.ctrl[:] = 0.0
                return True
            self.step(gap / dist * min(speed, max(dist, REACHED) * speed / 0.05))
        self.data.ctrl[:] = 0.0
        return False


class Walker:
    """The robot's walking grid (see the module docstring): wall clearances once, the boxes
    where they are at each :meth:`update`."""

    def __init__(self, sim: Simulation):
        self.sim = sim
        self.radius = float(sim.world.robot_radius) + PATH_MARGIN
        x0, y0, x1, y1 = (float(v) for v in sim.world.frame.bounds)
        self.cell = min(PATH_CELL, float(sim.world.robot_radius) / 3)
        self.x0, self.y0 = x0, y0
        self.shape = (int(np.ceil((y1 - y0) / self.cell)), int(np.ceil((x1 - x0) / self.cell)))
        rows, cols = np.mgrid[0 : self.shape[0], 0 : self.shape[1]]
        self.centres = np.stack([x0 + (cols + 0.5) * self.cell, y0 + (rows + 0.5) * self.cell], -1)
        walls = sim.world.static.reshape(-1, 5)
        self.wall_free = np.ones(self.shape, dtype=bool)
        for wall in walls:
            window = self._window(wall)
            self.wall_free[window] &= (
                point_box_distance(self.centres[window], wall[None])[..., 0] >= self.radius
            )
        self.update()

    def _window(self, box: np.ndarray, pad: float | None = None) -> tuple[slice, slice]:
        """The cells within ``pad`` (default: the walking radius and a cell) of ``box``."""
        pad = self.radius + self.cell if pad is None else pad + self.cell
        reach = float(np.hypot(box[2], box[3])) / 2 + pad
        lo = np.floor((box[[1, 0]] - reach - (self.y0, self.x0)) / self.cell).astype(int)
        hi = np.ceil((box[[1, 0]] + reach - (self.y0, self.x0)) / self.cell).astype(int) + 1
        lo = np.clip(lo, 0, self.shape)
        hi = np.clip(hi, 0, self.shape)
        return slice(lo[0], hi[0]), slice(lo[1], hi[1])

    def update(self) -> None:
        """Free cells with the boxes where they are now, and the robot's component (it may
        stand closer to a box than its walking radius, having just pushed it: it joins the
        nearest free cell within 3 cells)."""
        boxes = self.sim.boxes()
        free = self.wall_free.copy()
        for box in boxes:
            window = self._window(box)
            free[window] &= point_box_distance(self.centres[window], box[None])[..., 0] >= (
                self.radius
            )
        self.free = free
        self.labels, _ = ndimage.label(free)
        self.obstacles = np.concatenate([self.sim.world.static.reshape(-1, 5), boxes])
        r, c = here = self.cell_of(self.sim.robot)
        near = self.labels[max(r - 3, 0) : r + 4, max(c - 3, 0) : c + 4]
        ii, jj = np.nonzero(near)
        if len(ii):
            k = int(np.argmin((ii + max(r - 3, 0) - r) ** 2 + (jj + max(c - 3, 0) - c) ** 2))
            here = (int(ii[k] + max(r - 3, 0)), int(jj[k] + max(c - 3, 0)))
        self.entry = here
        self.mine = int(self.labels[here])
        # cells within one cell of the robot's component (where :meth:`reachable` says yes)
        mine = self.labels == self.mine if self.mine else np.zeros_like(free)
        self.near_mine = ndimage.binary_dilation(mine, structure=np.ones((3, 3), dtype=bool))

    def cells_of(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Rows and columns ``(K,)`` of the cells of ``points`` ``(K, 2)``, clipped to the grid."""
        points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        rows = np.clip((points[:, 1] - self.y0) // self.cell, 0, self.shape[0] - 1)
        cols = np.clip((points[:, 0] - self.x0) // self.cell, 0, self.shape[1] - 1)
        return rows.astype(int), cols.astype(int)

    def cell_of(self, point: np.ndarray) -> tuple[int, int]:
        rows, cols = self.cells_of(point)
        return int(rows[0]), int(cols[0])

    def reachable(self, points: np.ndarray) -> np.ndarray:
        """``(K,)`` bool: can the robot walk to within a cell of ``points`` ``(K, 2)``?"""
        return self.near_mine[self.cells_of(points)]

    def straight_clear(self, a: np.ndarray, b: np.ndarray) -> bool:
        n = int(np.ceil(np.hypot(*(b - a)) / 0.01)) + 1
        points = a + np.linspace(0.0, 1.0, n)[:, None] * (b - a)
        return bool((point_box_distance(points, self.obstacles) >= self.radius - 1e-3).all())

    def path(self, goal: np.ndarray) -> np.ndarray | None:
        """Way points ``(n, 2)`` from the robot to ``goal``, or None where there is no way."""
        here = self.sim.robot
        if self.straight_clear(here, goal):
            return np.array([here, goal])
        rows, cols = self.shape
        end = self.cell_of(goal)
        if self.labels[end] != self.mine:
            r, c = end
            near = np.argwhere(
                self.labels[max(r - 1, 0) : r + 2, max(c - 1, 0) : c + 2] == self.mine
            )
            if self.mine == 0 or not len(near):
                return None
            end = (int(near[0][0] + max(r - 1, 0)), int(near[0][1] + max(c - 1, 0)))
        free = self.labels == self.mine
        graph, index = grid_graph(free)
        start = int(index[self.entry])
        _, pred = csgraph.dijkstra(graph, directed=False, indices=start, return_predecessors=True)
        node = int(index[end])
        if node != start and pred[node] < 0:
            return None
        chain = []
        while node >= 0:
            chain.append(node)
            node = int(pred[node])
        points = self.centres.reshape(-1, 2)[np.array(chain[::-1])]
        points = np.concatenate([here[None], points, np.asarray(goal, float)[None]])
        keep = [0]
        for i in range(2, len(points)):
            if not self.straight_clear(points[keep[-1]], points[i]):
                keep.append(i - 1)
        keep.append(len(points) - 1)
        return points[keep]

    def step_back(self, box: np.ndarray, distance: float) -> str | None:
        """Walk to the nearest spot the robot can reach whose centre is ``distance`` from
        ``box`` ``(5,)`` (none to do where it already is); why not, or None."""
        if point_box_distance(self.sim.robot, box[None])[0] >= distance:
            return None
        self.update()
        spots = (self.labels == self.mine) & (self.mine > 0)
        window = self._window(box, distance)
        near = np.zeros_like(spots)
        near[window] = point_box_distance(self.centres[window], box[None])[..., 0] < distance
        rows, cols = np.nonzero(spots & ~near)
        if not len(rows):
            return "robot cannot step back"
        points = self.centres[rows, cols]
        return self.walk(points[np.argmin(np.hypot(*(points - self.sim.robot).T))])

    def walk(self, goal: np.ndarray) -> str | None:
        """Walk the robot to ``goal``; why not, or None."""
        points = self.path(goal)
        if points is None:
            return "no way to the contact side"
        for point in points[1:]:
            leg = float(np.hypot(*(point - self.sim.robot)))
            if not self.sim.drive_to(point, WALK_SPEED, 2.0 + 3.0 * leg / WALK_SPEED):
                return "robot stuck"
        return None


def predict_strokes(
    box: np.ndarray,
    starts: np.ndarray,
    directions: np.ndarray,
    marks: Sequence[float],
    radius: float,
    friction: float = CONTACT_FRICTION,
    step: float = PREDICT_STEP,
) -> np.ndarray:
    """Quasi-static prediction of strokes on ``box`` ``(5,)``: a disk of ``radius`` starting at
    ``starts`` ``(K, 2)`` drives along unit ``directions`` ``(K, 2)``; returns the box's
    ``(x, y, yaw)`` after each of ``marks`` (increasing metres of the disk's travel)
    ``(K, len(marks), 3)``.

    Each ``step`` of travel the disk's overlap with the box is removed by moving the box: the
    contact point's displacement is the overlap along the contact normal plus, while the
    contact sticks, the disk's tangential motion. The box's twist follows the force at the
    contact through an ellipsoidal limit surface, ``(v, omega) ~ (f, m / c^2)`` with ``c``
    the half diagonal (a box resting on its four corners, as MuJoCo's box-plane contact
    does); where the sticking force leaves the friction cone the contact slides and the
    force lies on the cone's edge."""
    starts = np.asarray(starts, dtype=np.float64)
    directions = np.asarray(directions, dtype=np.float64)
    k = len(starts)
    pose = np.repeat(np.asarray(box, dtype=np.float64)[[0, 1, 4]][None], k, 0)
    hw, hh = float(box[2]) / 2, float(box[3]) / 2
    c2 = hw * hw + hh * hh
    out = np.empty((k, len(marks), 3))
    robot = starts.copy()
    travelled, mark = 0.0, 0
    total = float(marks[-1])
    while mark < len(marks):
        move = min(step, total - travelled)
        robot += directions * move
        travelled += move
        cos, sin = np.cos(pose[:, 2]), np.sin(pose[:, 2])
        rel = robot - pose[:, :2]
        lx, ly = rel[:, 0] * cos + rel[:, 1] * sin, rel[:, 1] * cos - rel[:, 0] * sin
        px, py = np.clip(lx, -hw, hw), np.clip(ly, -hh, hh)  # contact point, box frame
        gx, gy = lx - px, ly - py
        dist = np.hypot(gx, gy)
        depth = radius - dist
        touch = (depth > 0) & (dist > 1e-9)
        if touch.any():
            nx, ny = -gx / np.maximum(dist, 1e-12), -gy / np.maximum(dist, 1e-12)  # into the box
            tx, ty = -ny, nx
            ux, uy = (
                directions[:, 0] * cos + directions[:, 1] * sin,
                (directions[:, 1] * cos - directions[:, 0] * sin),
            )
            un = np.maximum(ux * nx + uy * ny, 1e-6)
            slip_along = (ux * tx + uy * ty) / un * depth  # sticking: the disk's tangential part
            wanted = np.stack([depth * nx + slip_along * tx, depth * ny + slip_along * ty], -1)
            # contact displacement per unit force: A f (the limit surface's twist at the point)
            a = np.empty((k, 2, 2))
            a[:, 0, 0], a[:, 0, 1] = 1 + py * py / c2, -px * py / c2
            a[:, 1, 0], a[:, 1, 1] = -px * py / c2, 1 + px * px / c2
            force = np.linalg.solve(a, wanted[..., None])[..., 0]
            fn = force[:, 0] * nx + force[:, 1] * ny
            ft = force[:, 0] * tx + force[:, 1] * ty
            slides = np.abs(ft) > friction * np.maximum(fn, 0.0)
            if slides.any():
                side = np.sign(ft)
                edge = np.stack([nx + side * friction * tx, ny + side * friction * ty], -1)
                normal_part = (a @ edge[..., None])[..., 0]
                scale = depth / np.maximum(normal_part[:, 0] * nx + normal_part[:, 1] * ny, 1e-9)
                force = np.where(slides[:, None], edge * scale[:, None], force)
            force *= touch[:, None]
            turn = (px * force[:, 1] - py * force[:, 0]) / c2
            pose[:, 0] += force[:, 0] * cos - force[:, 1] * sin
            pose[:, 1] += force[:, 0] * sin + force[:, 1] * cos
            pose[:, 2] += turn
        while mark < len(marks) and travelled >= marks[mark] - 1e-12:
            out[:, mark] = pose
            mark += 1
    return out


class Pusher:
    """The stroke controller of one simulation (see the module docstring)."""

    def __init__(self, sim: Simulation, walker: Walker | None = None):
        self.sim = sim
        self.walker = walker or Walker(sim)
        self.radius = float(sim.world.robot_radius)
        self.strokes = 0

    def _candidates(
        self, box: np.ndarray, obstacles: np.ndarray, reach: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        """Stroke starts ``(K, 2)`` and directions ``(K, 2)`` on ``box`` ``(5,)`` whose start
        keeps the robot off ``obstacles`` (and, with ``reach``, that the robot can walk to)."""
        cos, sin = np.cos(box[4]), np.sin(box[4])
        u, v = np.array([cos, sin]), np.array([-sin, cos])
        starts, directions = [], []
        for normal, along, depth, half in (
            (u, v, box[2] / 2, box[3] / 2),
            (-u, v, box[2] / 2, box[3] / 2),
            (v, u, box[3] / 2, box[2] / 2),
            (-v, u, box[3] / 2, box[2] / 2),
        ):
            for offset in OFFSETS:
                contact = box[:2] + normal * depth + along * offset * half
                for angle in ANGLES:
                    c, s = np.cos(angle), np.sin(angle)
                    d = -np.array([c * normal[0] - s * normal[1], s * normal[0] + c * normal[1]])
                    starts.append(contact - d * (self.radius + APPROACH))
                    directions.append(d)
        starts, directions = np.array(starts), np.array(directions)
        ok = (point_box_distance(starts, obstacles) >= self.radius + 0.005).all(-1)
        if reach:
            ok &= self.walker.reachable(starts)
        return starts[ok], directions[ok]

    def _predicted(
        self, box: np.ndarray, starts: np.ndarray, directions: np.ndarray, obstacles: np.ndarray
    ) -> np.ndarray:
        """``(K, len(STROKES), 3)`` predicted poses, NaN where the box would hit ``obstacles``
        at that length or a shorter one."""
        poses = predict_strokes(box, starts, directions, APPROACH + np.array(STROKES), self.radius)
        full = np.concatenate(
            [poses[..., :2], np.broadcast_to(box[2:4], poses.shape[:2] + (2,)), poses[..., 2:]],
            -1,
        )
        hit = boxes_overlap(full.reshape(-1, 5), obstacles).any(-1).reshape(poses.shape[:2])
        poses[np.maximum.accumulate(hit, axis=1)] = np.nan
        return poses

    def push_to(self, index: int, goal: np.ndarray, period: float, tolerance: float) -> str | None:
        """Push movable box ``index`` to ``goal`` ``(x, y, yaw)`` until no corner is more than
        ``tolerance`` (m) off; why it stopped short, or None."""
        sim = self.sim
        goal = np.asarray(goal, dtype=np.float64)
        arm = float(np.hypot(*sim.world.movable[index, 2:4])) / 2
        best, since = np.inf, 0
        for _ in range(MAX_STROKES):
            boxes = sim.boxes()
            box = boxes[index]
            if pose_cost(box[[0, 1, 4]], goal, period, arm, bound=True) <= tolerance:
                return None
            now = float(pose_cost(box[[0, 1, 4]], goal, period, arm))
            best, since = (now, 0) if now < best - 0.01 else (best, since + 1)
            if since > STALL:
                return "no progress"
            self.walker.update()
            obstacles = np.concatenate(
                [sim.world.static.reshape(-1, 5), np.delete(boxes, index, 0)]
            )
            starts, directions = self._candidates(box, obstacles, reach=True)
            if not len(starts):
                return "robot cannot get to the box"
            poses = self._predicted(box, starts, directions, obstacles)
            cost = pose_cost(poses, goal, period, arm)
            cost += WALK_COST * np.hypot(*(starts - sim.robot).T)[:, None]
            cost = np.where(np.isnan(cost), np.inf, cost)
            first, length = np.unravel_index(int(np.argmin(cost)), cost.shape)
            if not cost[first, length] < now - 0.01:
                first = length = None
                best = now - 0.01
                for flat in np.argsort(cost, axis=None)[:LOOKAHEAD]:
                    i, j = np.unravel_index(int(flat), cost.shape)
                    if not np.isfinite(cost[i, j]):
                        break
                    mid = np.array([*poses[i, j, :2], *box[2:4], poses[i, j, 2]])
                    s2, d2 = self._candidates(mid, obstacles, reach=False)
                    if not len(s2):
                        continue
                    predicted = self._predicted(mid, s2, d2, obstacles)
                    after = pose_cost(predicted, goal, period, arm)
                    after = np.where(np.isnan(after), np.inf, after)
                    if after.min() < best:
                        best, first, length = float(after.min()), i, j
                if first is None:
                    return "no stroke helps"
            why = self._stroke(starts[first], directions[first], STROKES[length])
            if why is not None:
                return why
        return "strokes ran out"

    def _stroke(self, start: np.ndarray, direction: np.ndarray, length: float) -> str | None:
        why = self.walker.walk(start)
        if why is not None:
            return why
        self.strokes += 1
        travel = APPROACH + length
        self.sim.wake(self.sim.robot, self.sim.robot + direction * travel, travel)
        for _ in range(int(np.ceil(travel / PUSH_SPEED / TIMESTEP))):
            self.sim.step(direction * PUSH_SPEED)
        self.sim.drive_to(self.sim.robot - direction * BACK_OFF, PUSH_SPEED, 1.0)
        return None


@dataclass
class PushOutcome:
    """What one push (a goal pose, through its plan's way points) did in physics."""

    goal: np.ndarray  # (3,) the goal pose (x, y, yaw)
    box: np.ndarray  # (3,) where the box ended
    failure: str | None
    strokes: int
    sim_seconds: float
    wall_seconds: float
    position_error: float  # m
    yaw_error: float  # rad, modulo the box's symmetry

    def to_dict(self) -> dict[str, Any]:
        return {
            "goal": [round(float(v), 5) for v in self.goal],
            "end": [round(float(v), 5) for v in self.box],
            "failure": self.failure,
            "strokes": self.strokes,
            "sim_seconds": round(self.sim_seconds, 3),
            "wall_seconds": round(self.wall_seconds, 4),
            "position_error": round(self.position_error, 4),
            "yaw_error_deg": round(float(np.degrees(self.yaw_error)), 2),
        }


def push(
    pusher: Pusher,
    index: int,
    waypoints: Sequence[np.ndarray],
    period: float,
) -> PushOutcome:
    """Push movable box ``index`` through ``waypoints`` (``(x, y, yaw)`` poses, the goal
    last; e.g. a push plan's segment ends) with ``pusher`` (see the module docstring)."""
    sim = pusher.sim
    started, sim_started, strokes = time.perf_counter(), float(sim.data.time), pusher.strokes
    ends = [np.asarray(w, dtype=np.float64) for w in waypoints]
    arm = float(np.hypot(*sim.world.movable[index, 2:4])) / 2
    failure, i = None, 0
    while i < len(ends) and failure is None:
        here = sim.box_poses()[index]
        while i + 1 < len(ends) and pose_cost(here, ends[i + 1], period, arm) <= pose_cost(
            ends[i], ends[i + 1], period, arm
        ):
            i += 1  # the box is already past this way point
        last = i == len(ends) - 1
        tolerance = FINAL_TOLERANCE if last else WAYPOINT_TOLERANCE
        failure = pusher.push_to(index, ends[i], period, tolerance)
        i += 1
    sim.settle()
    box = sim.box_poses()[index]
    position, yaw = pose_error(box, ends[-1], period)
    return PushOutcome(
        goal=ends[-1],
        box=box,
        failure=failure,
        strokes=pusher.strokes - strokes,
        sim_seconds=float(sim.data.time) - sim_started,
        wall_seconds=time.perf_counter() - started,
        position_error=position,
        yaw_error=yaw,
    )
