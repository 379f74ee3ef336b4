"""Pushing, not pulling: the contact geometry against brute force, and the ground truth's search
on a hand-built corridor whose only economical goal pose is reached by pulling."""

import heapq

import numpy as np
import pytest

from goalgen.data import geometry as geo
from goalgen.data.pushing import MOVES, contact_distance, pushing_distances, turn_spots
from goalgen.data.synthetic import feasible
from goalgen.infer.verify import point_box_distance


def test_contact_distance_touches_the_box_behind_its_centre():
    rng = np.random.default_rng(0)
    for _ in range(300):
        box = np.array([0.0, 0.0, *rng.uniform(0.1, 1.0, 2), rng.uniform(-np.pi, np.pi)])
        angle = rng.uniform(-np.pi, np.pi)
        d = np.array([np.cos(angle), np.sin(angle)])
        gap = rng.uniform(0.01, 0.3)
        s = contact_distance(box, d, gap)
        lo, hi = 0.0, 10.0  # bisection on the distance from the box along -d (it grows)
        for _ in range(60):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if point_box_distance(-mid * d, box[None])[0] < gap else (lo, mid)
        assert s == pytest.approx(lo, abs=1e-6)


def test_turn_spots_touch_the_box_and_turn_it_the_asked_way():
    box = np.array([1.0, 2.0, 0.8, 0.4, 0.3])
    for sign in (1.0, -1.0):
        spots = turn_spots(box, sign, 0.15, 0.75)
        assert len(spots) == 4
        for centre, push in spots:
            assert point_box_distance(centre, box[None])[0] == pytest.approx(0.15)
            lever = centre - box[:2]
            assert np.sign(lever[0] * push[1] - lever[1] * push[0]) == sign


# A corridor along y = 1 (0.8 m wide) from the robot (x = 0.5) east to a dead end at x = 5.6;
# the way to the goal turns north at x in [3.6, 4.4]; a pocket opens north at x in [2.0, 2.8].
# The box (0.3 x 0.7 m, 5 cm from both walls) stands at x = 2.9. Into the pocket is the shorter
# move but only a pull gets it there: the robot cannot get past the box. Pushed east (into the
# junction, or turned to lie along the corridor), the box opens the way.
WALLS = np.array(
    [
        [2.8, 0.55, 5.8, 0.1, 0.0],  # south wall
        [1.0, 1.45, 2.0, 0.1, 0.0],  # north wall, west of the pocket
        [1.95, 1.85, 0.1, 0.9, 0.0],  # pocket
        [2.85, 1.85, 0.1, 0.9, 0.0],
        [2.4, 2.25, 1.0, 0.1, 0.0],
        [3.2, 1.45, 0.8, 0.1, 0.0],  # north wall, pocket to junction
        [3.55, 2.15, 0.1, 1.5, 0.0],  # the way north
        [4.45, 2.15, 0.1, 1.5, 0.0],
        [4.0, 2.9, 1.0, 0.1, 0.0],
        [5.05, 1.45, 1.3, 0.1, 0.0],  # north wall, east of the junction
        [5.65, 1.0, 0.1, 1.0, 0.0],  # dead end
        [-0.05, 1.0, 0.1, 1.0, 0.0],
    ]
)
BOX = np.array([2.9, 1.0, 0.3, 0.7, 0.0])
ROBOT, GOAL, RADIUS = np.array([0.5, 1.0]), np.array([4.0, 2.5]), 0.15


def _solve(robot_radius: float | None) -> feasible.Result | None:
    frame = geo.NamoFrame.from_geometry(np.concatenate([WALLS, BOX[None]]), 144)
    mpp = frame.metres_per_pixel
    walls = np.any([frame.box_mask(*w) for w in WALLS], axis=0)
    fat = (RADIUS + 0.05) / mpp
    keep_out = geo.inflate(walls, 1.0) | frame.disk_mask(ROBOT, RADIUS + 0.05)
    keep_out |= frame.disk_mask(GOAL, RADIUS + 0.05)
    start, goal = (tuple(int(v) for v in frame.world_to_pixel(p)) for p in (ROBOT, GOAL))
    problem = feasible.Problem(
        frame, BOX, walls, keep_out, geo.distance_to(walls) > fat, fat, start, goal, robot_radius
    )
    return feasible.solve(problem, feasible.Search(2.5, 2.6, 0.1))


def test_ground_truth_pushes_the_box_on_rather_than_pulling_it_into_the_pocket():
    pulled = _solve(None)  # the box slides either way: the pocket wins
    assert pulled is not None and pulled.poses[0, 0] < 2.8 and pulled.poses[0, 1] > 1.2
    assert pulled.push[0] < 1.6
    pushed = _solve(RADIUS)
    assert pushed is not None
    assert np.all(pushed.poses[:, 0] > BOX[0] - 0.05)  # nothing west: not in the pocket
    assert pushed.push[0] > pulled.push[0]
    assert pushed.poses[0, 1] == pytest.approx(1.0) and pushed.poses[0, 2] == 0  # pushed east
    assert pushed.push[0] == pytest.approx(pushed.poses[0, 0] - BOX[0], abs=0.03)
    # the pushing field reaches nothing west of the box, the sliding field does
    n = pushed.field.shape[-1]
    assert np.isfinite(pulled.field[0, n // 2, : n // 2 - 2]).any()
    assert not np.isfinite(pushed.field[:, :, : n // 2 - 1]).any()


# A wall along x = 2 with a door at y in [1.6, 2.4]; the box (0.3 x 0.7 m) stands in the door,
# the robot west of it, its goal east. Pushed east 0.45 m the box has left its footprint but
# leaves 0.25 m between itself and the wall, too little for the robot to come round: no push
# gets it north from there, though the search's shortcut (anywhere once the box has left its
# footprint) finds one.
DOOR_WALLS = np.array(
    [
        [2.0, 0.8, 0.1, 1.6, 0.0],
        [2.0, 3.2, 0.1, 1.6, 0.0],
        [2.0, -0.05, 4.2, 0.1, 0.0],
        [2.0, 4.05, 4.2, 0.1, 0.0],
        [-0.05, 2.0, 0.1, 4.2, 0.0],
        [4.05, 2.0, 0.1, 4.2, 0.0],
    ]
)
DOOR_BOX = np.array([2.0, 2.0, 0.3, 0.7, 0.0])


def test_a_push_that_needs_the_robot_to_pass_the_box_holds_only_where_it_can():
    frame = geo.NamoFrame.from_geometry(np.concatenate([DOOR_WALLS, DOOR_BOX[None]]), 160)
    mpp = frame.metres_per_pixel
    walls = np.any([frame.box_mask(*w) for w in DOOR_WALLS], axis=0)
    fat = (RADIUS + 0.05) / mpp
    start, goal = (
        tuple(int(v) for v in frame.world_to_pixel(p))
        for p in (np.array([1.0, 2.0]), np.array([3.0, 3.5]))
    )
    problem = feasible.Problem(
        frame,
        DOOR_BOX,
        walls,
        geo.inflate(walls, 1.0),
        geo.distance_to(walls) > fat,
        fat,
        start,
        goal,
        RADIUS,
    )
    result = feasible.solve(problem, feasible.Search(2.0, 2.0, 0.1))
    lattice, reach = result.lattice, result.reach

    def node(dx: float, dy: float) -> tuple[int, int, int]:
        return (0, reach + int(round(dy / mpp)), reach + int(round(dx / mpp)))

    near = node(0.45, 0.6)
    assert np.isfinite(lattice.dist[near])
    assert not lattice.pushes_along(near)  # the robot is shut in behind the box
    assert lattice.pushes_along(node(0.45, 0.0))  # straight through the door
    assert lattice.pushes_along(node(1.2, 0.3))  # on, then a little aside
    assert not np.isfinite(lattice.dist[node(-0.5, 0.0)])  # never pulled back


def _reference_pushing_distances(fits, turns, slide_ok, turn_ok, step, turn_cost, limit, source):
    """The docstring's graph searched by a plain heap Dijkstra, node by node."""
    r, h, w = fits.shape
    dist = np.full(fits.shape, np.inf)
    dist[source] = 0.0
    heap, done = [(0.0, source)], set()
    while heap:
        d, (k, i, j) = heapq.heappop(heap)
        if (k, i, j) in done:
            continue
        done.add((k, i, j))
        moves = [
            ((k, i + dr, j + dc), np.hypot(dr, dc) * step, slide_ok[k, m, i, j])
            for m, (dr, dc) in enumerate(MOVES)
        ]
        up, down = (k + 1) % r, (k - 1) % r
        moves.append(((up, i, j), turn_cost, turn_ok[k, 0, i, j] and turns[k, i, j]))
        moves.append(((down, i, j), turn_cost, turn_ok[k, 1, i, j] and turns[down, i, j]))
        for (kk, ii, jj), cost, allowed in moves:
            if not (allowed and 0 <= ii < h and 0 <= jj < w and fits[k, i, j]):
                continue
            if fits[kk, ii, jj] and d + cost <= limit and d + cost < dist[kk, ii, jj]:
                dist[kk, ii, jj] = d + cost
                heapq.heappush(heap, (d + cost, (kk, ii, jj)))
    return dist


@pytest.mark.parametrize("limit", [np.inf, 0.25])
def test_pushing_distances_match_a_plain_dijkstra_and_their_predecessors_chain(limit):
    """The lattice search (CSR rows built directly, the lattice cropped to what ``limit``
    reaches) against a heap Dijkstra on the docstring's graph, on random lattices; each
    predecessor is one allowed move back."""
    rng = np.random.default_rng(3)
    for _ in range(6):
        r, h, w = 6, *rng.integers(6, 16, 2)
        fits, turns = rng.random((r, h, w)) < 0.8, rng.random((r, h, w)) < 0.7
        slide_ok, turn_ok = rng.random((r, 8, h, w)) < 0.6, rng.random((r, 2, h, w)) < 0.5
        source = (0, int(rng.integers(h)), int(rng.integers(w)))
        fits[source] = True
        args = (fits, turns, slide_ok, turn_ok, 0.02, 0.03, limit, source)
        dist, pred = pushing_distances(*args)
        reference = _reference_pushing_distances(*args)
        assert np.isfinite(dist).sum() > 10
        np.testing.assert_allclose(dist, reference, atol=1e-9)
        for node in zip(*np.nonzero(np.isfinite(dist) & (pred >= 0)), strict=True):
            back = np.unravel_index(pred[node], fits.shape)
            step = dist[node] - dist[back]
            assert step == pytest.approx(0.03) or step == pytest.approx(
                0.02 * np.hypot(node[1] - back[1], node[2] - back[2])
            )
