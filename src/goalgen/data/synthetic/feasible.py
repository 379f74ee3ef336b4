"""Ground truth shared by the scene families: every feasible goal pose of the selected box.

A *pose* of the selected box is its centre moved by a whole number of pixels ``(dr, dc)`` and
its yaw turned by ``k`` steps of ``180 / ROT_STEPS`` degrees (a box is symmetric under a half
turn, so ``k`` is cyclic). It is *reachable* if the box slides there from where it stands
through poses that overlap no wall and no other box: moves of one pixel (8 neighbours) or
one yaw step in place, the latter only if the footprint swept by the turn (approximated by
five intermediate footprints) is clear too. Its *push distance* is the length of the shortest
such path: metres travelled by the centre plus, per yaw step, the arc a corner travels
(half the diagonal times the step). Distances come from one Dijkstra run over the pose
lattice; collisions of every shifted footprint with the obstacles from one FFT correlation
per footprint (:func:`shift_overlaps`).

Given the robot's radius (``Problem.robot_radius``, as the maze family does), a move counts
only if the robot can *push* it (:class:`PushLattice`, :mod:`goalgen.data.pushing`): slides
from behind the box on the line through its centre, turns from near an end of a side, the
robot standing where it can get to (its own side of the box, where the box stood, and
anywhere once the box has left its footprint); a pose reached only by pulling is not
reachable. The ground truth's push is then checked step by step
(:meth:`PushLattice.pushes_along`): at each change of side the robot must get to its new
spot with the box where it stands.

A pose is *feasible* if it is reachable with a push of at most ``max_push``, on the candidate
lattice (centre shifts multiples of ``candidate_step``), clear of the ``keep_out`` mask (walls,
boxes, robot and goal grown by a margin), and the robot then reaches its goal: its free
configuration space (``robot_free``, the fattened robot's, without the selected box) minus the
moved box inflated by the robot radius still connects the robot and goal pixels. That test is
exact on the pixels and runs for all candidates at once: candidates are grouped into tiles
that hold their inflated footprints; per tile the free space outside the tile is labelled
once, the inside of every candidate's tile in one stacked labelling, and the components are
joined across the tile border in one graph (:func:`opens_route`).

The ground truth is the feasible pose with the smallest push distance, ties broken by the
smallest turn, then the smallest ``dr``, then ``dc`` (deterministic), whose push holds step by
step (:meth:`Result.pushed`; the callers skip those that do not). Feasible poses are split
into *modes*: connected sets on the candidate lattice (neighbouring shifts or yaw steps).
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from scipy import fft, ndimage, sparse
from scipy.sparse import csgraph

from goalgen.data import geometry as geo
from goalgen.data.pushing import (
    CONTACT_GAP,
    MOVES,
    TURN_LEVER,
    contact_distance,
    pushable_moves,
    pushing_distances,
    shifted,
    turn_spots,
)

ROT_STEPS = 12  # yaw steps over a half turn: 15 degrees
TURN_SAMPLES = 5  # footprints that approximate the area swept by one yaw step
TILE_STRIDE = 12  # px: candidates whose shifts differ by less share a tile
FIELD_UNIT = 0.01  # m per unit of the stored push field (uint16)
FIELD_NONE = np.iinfo(np.uint16).max  # unreachable in the stored push field

_PLANE8 = np.zeros((3, 3, 3), dtype=bool)
_PLANE8[1] = True  # 8-connected within a slice of a stack, never across slices
_EIGHT = np.ones((3, 3), dtype=bool)


class Frame(Protocol):
    """What the search needs of an image convention (e.g. :class:`geometry.NamoFrame`)."""

    size: int
    metres_per_pixel: float

    def box_mask(self, cx: float, cy: float, w: float, h: float, theta: float) -> np.ndarray: ...

    def shift_to_world(self, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, ...]: ...


@dataclass(frozen=True)
class Search:
    """Limits of the pose search, in metres."""

    max_push: float  # feasible poses: push distance at most this
    field_reach: float  # push distances are computed (and stored) up to this
    candidate_step: float  # lattice of candidate shifts
    max_candidates: int = 2500  # nearest candidates whose route is checked


@dataclass
class Problem:
    """One scene's search input; masks ``(S, S)`` bool in ``frame``'s convention."""

    frame: Frame
    box: np.ndarray  # (5,) the selected box
    obstacles: np.ndarray  # walls and the other boxes: what the box may not slide through
    keep_out: np.ndarray  # where the moved box may not be (obstacles, robot, goal + margin)
    robot_free: np.ndarray  # the fattened robot's free centres without the selected box
    robot_px: float  # the fattened robot's radius in pixels
    start: tuple[int, int]  # robot and goal pixels (row, col)
    goal: tuple[int, int]
    robot_radius: float | None = None  # m; given: only moves the robot can push count


@dataclass
class Result:
    """Feasible poses, nearest first; world poses ``(x, y, theta)``, ``theta`` in (-pi/2, pi/2]."""

    poses: np.ndarray  # (P, 3) float64
    push: np.ndarray  # (P,) float64, m
    modes: np.ndarray  # (P,) int64, 0 = the mode of the nearest pose
    shifts: np.ndarray  # (P, 3) int64 (k, dr, dc)
    field: np.ndarray  # (ROT_STEPS, F, F) float64 push distance, m (inf: not reachable)
    field_step: float  # m between field entries; entry [k, a, b] is the centre moved by
    # ((b - F // 2) * field_step, (a - F // 2) * field_step) in world x, y, yaw + k steps
    lattice_step: float  # m between neighbouring candidate centres
    candidates: int  # poses whose route was checked
    lattice: PushLattice | None = None  # pushes only: the search, for :meth:`pushed`
    reach: int = 0

    def pushed(self, i: int) -> bool:
        """Does pose ``i``'s push hold step by step (:meth:`PushLattice.pushes_along`)? True
        for a search that lets the box slide either way."""
        if self.lattice is None:
            return True
        k, dr, dc = (int(v) for v in self.shifts[i])
        return self.lattice.pushes_along((k, dr + self.reach, dc + self.reach))


def wrap_yaw(theta: np.ndarray | float) -> np.ndarray:
    """Yaw of a box modulo a half turn, in (-pi/2, pi/2]."""
    return np.pi / 2 - np.mod(np.pi / 2 - np.asarray(theta, dtype=np.float64), np.pi)


def shift_overlaps(obstacles: np.ndarray, kernels: np.ndarray, reach: int) -> np.ndarray:
    """``(n, 2*reach+1, 2*reach+1)`` bool: does kernel ``i`` ``(n, H, W)`` shifted by
    ``(dr, dc)`` overlap ``obstacles`` ``(H, W)`` (True beyond the image)? Entry
    ``[i, dr + reach, dc + reach]``; one FFT correlation per kernel."""
    rows, cols = np.nonzero(kernels.any((0, 2)))[0], np.nonzero(kernels.any((0, 1)))[0]
    r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    padded = np.pad(obstacles, reach, constant_values=True).astype(np.float32)
    window = padded[r0 : r1 + 2 * reach, c0 : c1 + 2 * reach]
    shape = tuple(fft.next_fast_len(n, real=True) for n in window.shape)  # zero-padded: the
    spectra = fft.rfft2(kernels[:, r0:r1, c0:c1].astype(np.float32), shape)  # part kept is
    overlap = fft.irfft2(fft.rfft2(window, shape)[None] * np.conj(spectra), shape)  # exact
    return overlap[:, : 2 * reach + 1, : 2 * reach + 1] > 0.5


def _footprints(frame: Frame, box: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Footprints ``(ROT_STEPS, S, S)`` of the box per yaw step, and the areas swept by the
    turns from step ``k`` to ``k + 1``."""
    cx, cy, w, h, theta = (float(v) for v in box)
    step = np.pi / ROT_STEPS
    fractions = np.linspace(0, 1, TURN_SAMPLES)
    samples = [
        [frame.box_mask(cx, cy, w, h, theta + (k + f) * step) for f in fractions]
        for k in range(ROT_STEPS)
    ]
    feet = np.array([s[0] for s in samples])
    swept = np.array([np.any(s, axis=0) for s in samples])
    return feet, swept


def push_distances(
    free: np.ndarray,
    turn_free: np.ndarray,
    step: float,
    turn_cost: float,
    limit: float = np.inf,
    source: tuple[int, int, int] | None = None,
    predecessors: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Dijkstra over the pose lattice ``free`` ``(R, H, W)`` (yaw steps, rows, cols) from
    ``source`` (default the unshifted pose: yaw 0 at the centre) -> distances ``(R, H, W)``
    in metres (inf beyond ``limit`` or unreachable). Moves: 8 neighbours within a yaw
    (``step`` m per row/col), or yaw ``k -> k + 1`` (cyclic) at ``turn_cost`` where both
    poses and ``turn_free[k]`` (the turn's swept area) are free. ``predecessors``: also
    return each pose's previous flat index on a shortest path ``(R, H, W)`` (-9999: none)."""
    shape = free.shape
    _, h, w = shape
    index = np.arange(free.size).reshape(shape)
    heads, tails, costs = [], [], []
    for dr, dc, cost in ((0, 1, 1.0), (1, 0, 1.0), (1, 1, np.sqrt(2)), (1, -1, np.sqrt(2))):
        a = (slice(None), slice(0, h - dr), slice(max(0, -dc), w - max(0, dc)))
        b = (slice(None), slice(dr, h), slice(max(0, dc), w - max(0, -dc)))
        ok = free[a] & free[b]
        heads.append(index[a][ok])
        tails.append(index[b][ok])
        costs.append(np.full(ok.sum(), cost * step))
    turn = free & np.roll(free, -1, axis=0) & turn_free  # step k -> k + 1 (cyclic)
    heads.append(index[turn])
    tails.append(np.roll(index, -1, axis=0)[turn])
    costs.append(np.full(turn.sum(), turn_cost))
    graph = sparse.csr_matrix(
        (np.concatenate(costs), (np.concatenate(heads), np.concatenate(tails))),
        shape=(free.size, free.size),
    )
    source = (0, h // 2, w // 2) if source is None else source
    out = csgraph.dijkstra(
        graph,
        directed=False,
        indices=int(index[source]),
        limit=limit,
        return_predecessors=predecessors,
    )
    if predecessors:
        return out[0].reshape(shape), out[1].reshape(shape)
    return out.reshape(shape)


def _border_offsets(h: int, w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """8-neighbour pairs across the border of an ``(h, w)`` region: flat indices inside it
    ``(E,)`` and the ``(row, col)`` offsets ``(E,)`` of their neighbours outside it."""
    rr, cc = np.mgrid[0:h, 0:w]
    edge = (rr == 0) | (rr == h - 1) | (cc == 0) | (cc == w - 1)
    rr, cc = rr[edge], cc[edge]
    inside, rows, cols = [], [], []
    for dr in (-1, 0, 1):
        for dc in (-1, 0, 1):
            r, c = rr + dr, cc + dc
            out = (r < 0) | (r >= h) | (c < 0) | (c >= w)
            inside.append(rr[out] * w + cc[out])
            rows.append(r[out])
            cols.append(c[out])
    return np.concatenate(inside), np.concatenate(rows), np.concatenate(cols)


def _tile_border_pairs(
    region: tuple[slice, slice], outside_labels: np.ndarray, cache: dict
) -> tuple[np.ndarray, np.ndarray]:
    """8-neighbour pairs across the border of ``region``: flat indices inside the region
    ``(E,)`` and the (non-zero) labels of their free neighbours outside it ``(E,)``."""
    rs, cs = region
    shape = (rs.stop - rs.start, cs.stop - cs.start)
    if shape not in cache:
        cache[shape] = _border_offsets(*shape)
    inside, rows, cols = cache[shape]
    rows, cols = rows + rs.start, cols + cs.start
    ok = (rows >= 0) & (rows < outside_labels.shape[0]) & (cols >= 0)
    ok &= cols < outside_labels.shape[1]
    labels = np.zeros(len(rows), dtype=outside_labels.dtype)
    labels[ok] = outside_labels[rows[ok], cols[ok]]
    return inside[labels > 0], labels[labels > 0]


def opens_route(
    robot_free: np.ndarray,
    inflated: np.ndarray,
    shifts: np.ndarray,
    start: tuple[int, int],
    goal: tuple[int, int],
) -> np.ndarray:
    """``(P,)`` bool: do ``start`` and ``goal`` stay 8-connected through ``robot_free``
    ``(S, S)`` once the inflated footprint ``inflated[k]`` ``(R, S, S)`` shifted by
    ``(dr, dc)`` is taken out, for each ``(k, dr, dc)`` of ``shifts`` ``(P, 3)``?"""
    size = robot_free.shape[0]
    rows, cols = np.nonzero(inflated.any((0, 2)))[0], np.nonzero(inflated.any((0, 1)))[0]
    lo_r, hi_r, lo_c, hi_c = rows[0] - 1, rows[-1] + 2, cols[0] - 1, cols[-1] + 2
    crops = inflated[:, lo_r + 1 : hi_r - 1, lo_c + 1 : hi_c - 1]
    keys = np.floor_divide(shifts[:, 1:], TILE_STRIDE)
    start_node, goal_node = np.full(len(shifts), -1), np.full(len(shifts), -1)
    edges, base, cache = [], 0, {}
    for key in np.unique(keys, axis=0):
        members = np.flatnonzero((keys == key).all(1))
        top, left = lo_r + key[0] * TILE_STRIDE, lo_c + key[1] * TILE_STRIDE
        bottom, right = top + hi_r - lo_r + TILE_STRIDE, left + hi_c - lo_c + TILE_STRIDE
        region = (slice(max(top, 0), min(bottom, size)), slice(max(left, 0), min(right, size)))
        outside = robot_free.copy()
        outside[region] = False
        out_labels, n_out = ndimage.label(outside, structure=_EIGHT)
        h, w = region[0].stop - region[0].start, region[1].stop - region[1].start
        stack = np.repeat(robot_free[region][None], len(members), axis=0)
        for j, (k, dr, dc) in enumerate(shifts[members]):
            r0, c0 = lo_r + 1 + dr - region[0].start, lo_c + 1 + dc - region[1].start
            piece = crops[k]
            pr0, pc0 = max(0, -r0), max(0, -c0)
            pr1, pc1 = min(piece.shape[0], h - r0), min(piece.shape[1], w - c0)
            if pr1 > pr0 and pc1 > pc0:
                stack[j, r0 + pr0 : r0 + pr1, c0 + pc0 : c0 + pc1] &= ~piece[pr0:pr1, pc0:pc1]
        in_labels, n_in = ndimage.label(stack, structure=_PLANE8)
        inside, labels = _tile_border_pairs(region, out_labels, cache)
        # nodes: the outside labels once per member (base + j * (n_out + 1) + label), then
        # the inside labels (unique across the stack)
        outer = base + np.arange(len(members))[:, None] * (n_out + 1)
        inner = base + len(members) * (n_out + 1)
        touching = in_labels.reshape(len(members), -1)[:, inside]  # (members, E)
        ok = touching > 0
        edges.append(np.stack([inner + touching[ok], (outer + labels[None])[ok]]))
        for point, nodes in ((start, start_node), (goal, goal_node)):
            r, c = point[0] - region[0].start, point[1] - region[1].start
            if 0 <= r < h and 0 <= c < w:
                lab = in_labels[:, r, c]
                nodes[members] = np.where(lab > 0, inner + lab, -1)
            elif out_labels[point] > 0:
                nodes[members] = outer[:, 0] + out_labels[point]
        base = inner + n_in + 1
    pairs = np.concatenate(edges, axis=1) if edges else np.zeros((2, 0), dtype=np.int64)
    graph = sparse.coo_matrix((np.ones(pairs.shape[1]), (pairs[0], pairs[1])), shape=(base, base))
    _, component = csgraph.connected_components(graph, directed=False)
    found = (start_node >= 0) & (goal_node >= 0)
    return found & (component[np.maximum(start_node, 0)] == component[np.maximum(goal_node, 0)])


def _modes(shifts: np.ndarray, step: int, reach: int) -> np.ndarray:
    """Labels ``(P,)`` of the connected sets of lattice poses ``shifts`` ``(P, 3)`` (neighbours:
    8 shifts by ``step`` in one yaw, or one yaw step, cyclic), numbered in order of first
    appearance."""
    n = 2 * (reach // step) + 1
    grid = np.zeros((ROT_STEPS, n, n), dtype=bool)
    k, a, b = shifts[:, 0], shifts[:, 1] // step + n // 2, shifts[:, 2] // step + n // 2
    grid[k, a, b] = True
    labels, count = ndimage.label(grid, structure=np.ones((3, 3, 3), dtype=bool))
    both = grid[0] & grid[-1]  # join the half turn: yaw step R - 1 neighbours step 0
    merge = sparse.coo_matrix(
        (np.ones(both.sum()), (labels[0][both], labels[-1][both])), shape=(count + 1, count + 1)
    )
    _, joined = csgraph.connected_components(merge, directed=False)
    raw = joined[labels[k, a, b]]
    _, first = np.unique(raw, return_index=True)
    order = np.argsort(np.argsort(first))
    return order[np.searchsorted(np.unique(raw), raw)].astype(np.int64)


class PushLattice:
    """The robot (``robot_radius`` m, its centre in ``robot_free`` ``(S, S)``, starting at pixel
    ``start``) pushing a box ``(5,)`` over a search's lattice of whole-pixel shifts, ``(R, n,
    n)`` with ``n = 2 * reach + 1``: entry ``[k, dr + reach, dc + reach]`` is the box turned
    by ``k`` yaw steps and shifted by ``(dr, dc)`` pixels. ``feet`` ``(R, S, S)``: its
    footprints per yaw step; ``fits`` / ``turns`` ``(R, n, n)``: where it fits, where its turn
    to ``k + 1`` is clear; ``basis`` ``(2, 2)``: the world vectors of a one-pixel shift along
    rows and columns.

    ``dist`` / ``pred`` ``(R, n, n)``: the shortest pushes (:func:`goalgen.data.pushing.
    pushing_distances`, up to ``limit`` m) where the robot stands on its own side of the box
    (the pixels it reaches from ``start`` around the box, coming as close to it as it likes)
    or where the box stood, and, once the box has left its footprint, anywhere it reaches
    without the box. That last rule ignores that a box just out of a doorway may still shut
    the robot in: :meth:`pushes_along` checks a path's changes of side step by step.
    """

    def __init__(
        self,
        box: np.ndarray,
        feet: np.ndarray,
        fits: np.ndarray,
        turns: np.ndarray,
        reach: int,
        basis: np.ndarray,
        robot_free: np.ndarray,
        start: tuple[int, int],
        robot_radius: float,
        turn_cost: float,
        limit: float,
    ) -> None:
        self.box, self.feet, self.reach = np.asarray(box, dtype=np.float64), feet, reach
        self.basis = np.asarray(basis, dtype=np.float64)
        self.inverse = np.linalg.inv(self.basis.T)  # world offset -> lattice (rows, cols)
        self.cell = float(np.min(np.hypot(*self.basis.T)))
        self.robot_free, self.start = robot_free, (int(start[0]), int(start[1]))
        self.contact = robot_radius + CONTACT_GAP
        self.body_px = max(robot_radius / self.cell - 1.0, 0.0)  # footprints overstate boxes
        footprint = feet[0]
        pusher = (self._reached(robot_free & ~footprint) | footprint) & robot_free
        row, col = np.rint(np.argwhere(footprint).mean(0)).astype(int)  # the lattice's centre
        self.origin = (int(row) - reach, int(col) - reach)  # image pixel of lattice [., 0, 0]
        padded = np.pad(
            np.stack([pusher, self._reached(robot_free)]), ((0, 0), (reach, reach), (reach, reach))
        )
        window = padded[:, row : row + 2 * reach + 1, col : col + 2 * reach + 1]
        self.yaws = self.box[4] + np.arange(len(feet)) * np.pi / ROT_STEPS
        slide_ok, turn_ok = pushable_moves(
            self.yaws,
            (self.box[2], self.box[3]),
            self.basis,
            self.contact,
            window[0],
            pusher_after=window[1],
            left=~shift_overlaps(footprint, feet, reach),
        )
        self.dist, self.pred = pushing_distances(
            fits, turns, slide_ok, turn_ok, self.cell, turn_cost, limit, (0, reach, reach)
        )

    def _reached(self, cells: np.ndarray) -> np.ndarray:
        labels, _ = ndimage.label(cells, structure=_EIGHT)
        mine = labels[self.start]
        return labels == mine if mine else np.zeros_like(cells)

    def path(self, node: tuple[int, int, int]) -> list[tuple[int, int, int]]:
        """The lattice nodes ``(k, row, col)`` of the shortest push to ``node``, from the start."""
        flat = int(np.ravel_multi_index(node, self.dist.shape))
        nodes = []
        while flat >= 0:
            nodes.append(tuple(int(v) for v in np.unravel_index(flat, self.dist.shape)))
            flat = int(self.pred.flat[flat])
        return nodes[::-1]

    def _spots(self, node: tuple[int, int, int], move: tuple) -> list[tuple[int, int]]:
        """Image pixels a lattice step behind where the robot pushes the box at ``node`` for
        ``move`` (``("slide", m)`` or ``("turn", sign)``)."""
        k, a, b = node
        shape = np.array([0.0, 0.0, self.box[2], self.box[3], self.yaws[k]])
        if move[0] == "slide":
            d = self.basis.T @ np.array(MOVES[move[1]], dtype=np.float64)
            d /= np.hypot(*d)
            pairs = [(-contact_distance(shape, d, self.contact) * d, d)]
        else:
            pairs = turn_spots(shape, move[1], self.contact, TURN_LEVER)
        out = []
        for spot, push in pairs:
            da, db = np.rint(self.inverse @ (spot - self.cell * push)).astype(int)
            out.append((self.origin[0] + a + int(da), self.origin[1] + b + int(db)))
        return out

    def pushes_along(self, node: tuple[int, int, int]) -> bool:
        """Can the robot push the box along :meth:`path` to ``node``, getting to the side it
        pushes from at every change of side (a turn, or a slide more than 45 degrees off the
        last) with the box where it stands then (a flood fill of ``robot_free`` less the box
        grown by the robot's radius)? Between changes it follows the box."""
        if not np.isfinite(self.dist[node]):
            return False
        nodes, size = self.path(node), self.robot_free.shape[0]
        position, last = self.start, None
        for here, there in itertools.pairwise(nodes):
            step = (there[1] - here[1], there[2] - here[2])
            if step == (0, 0):
                turn = (there[0] - here[0]) % len(self.yaws)
                move = ("turn", 1.0 if turn == 1 else -1.0)
            else:
                move = ("slide", MOVES.index(step))
            same = last == move or (
                last is not None and last[0] == move[0] == "slide" and _within_45(last[1], move[1])
            )
            if not same:
                k, a, b = here
                box = shifted(self.feet[k], -(a - self.reach), -(b - self.reach))
                labels, _ = ndimage.label(
                    self.robot_free & ~geo.inflate(box, self.body_px), structure=_EIGHT
                )
                r0, c0 = position
                around = labels[max(r0 - 2, 0) : r0 + 3, max(c0 - 2, 0) : c0 + 3]
                mine = set(around[around > 0].tolist())
                spots = [
                    (r, c) for r, c in self._spots(here, move) if 0 <= r < size and 0 <= c < size
                ]
                spots = [p for p in spots if labels[p] in mine]
                if not spots:
                    return False
                position = spots[0]
            elif move[0] == "slide":
                position = self._spots(there, move)[0]
            last = move
        return True


def _within_45(m: int, n: int) -> bool:
    """Are slides ``MOVES[m]`` and ``MOVES[n]`` at most 45 degrees apart?"""
    u, v = np.array(MOVES[m], dtype=float), np.array(MOVES[n], dtype=float)
    return float(u @ v) / (np.hypot(*u) * np.hypot(*v)) > np.cos(np.pi / 4) - 1e-9


def solve(problem: Problem, search: Search) -> Result | None:
    """All feasible poses of ``problem``'s box (see the module docstring), or None if none."""
    frame, box = problem.frame, np.asarray(problem.box, dtype=np.float64)
    mpp = frame.metres_per_pixel
    reach = int(np.ceil(search.field_reach / mpp))
    feet, swept = _footprints(frame, box)
    hits = shift_overlaps(problem.obstacles, np.concatenate([feet, swept]), reach)
    placed = shift_overlaps(problem.keep_out, feet, reach)
    dr, dc = np.mgrid[-reach : reach + 1, -reach : reach + 1]
    disk = dr**2 + dc**2 <= reach**2
    free = ~hits[:ROT_STEPS] & disk
    if not free[0, reach, reach]:
        return None  # the box stands in an obstacle: no search
    turn_cost = np.hypot(box[2], box[3]) / 2 * np.pi / ROT_STEPS
    pushes = None
    if problem.robot_radius is None:
        dist = push_distances(free, ~hits[ROT_STEPS:], mpp, turn_cost, search.field_reach)
    else:
        pushes = PushLattice(
            box,
            feet,
            free,
            ~hits[ROT_STEPS:],
            reach,
            np.array([frame.shift_to_world(1, 0), frame.shift_to_world(0, 1)]),
            problem.robot_free,
            problem.start,
            problem.robot_radius,
            turn_cost,
            search.field_reach,
        )
        dist = pushes.dist
    step = max(1, int(round(search.candidate_step / mpp)))
    lattice = (dr % step == 0) & (dc % step == 0)
    ok = (dist <= search.max_push) & ~placed & lattice
    ok[0, reach, reach] = False
    k, a, b = np.nonzero(ok)
    turns = np.minimum(k, ROT_STEPS - k)
    order = np.lexsort((b, a, turns, np.round(dist[k, a, b], 9)))[: search.max_candidates]
    shifts = np.stack([k[order], a[order] - reach, b[order] - reach], 1)
    if len(shifts) == 0:
        return None
    inflated = np.array([geo.inflate(f, problem.robot_px) for f in feet])
    opens = opens_route(problem.robot_free, inflated, shifts, problem.start, problem.goal)
    shifts = shifts[opens]
    if len(shifts) == 0:
        return None
    push = dist[shifts[:, 0], shifts[:, 1] + reach, shifts[:, 2] + reach]
    moves = np.stack(frame.shift_to_world(shifts[:, 1], shifts[:, 2]), axis=1)
    yaw = wrap_yaw(box[4] + shifts[:, 0] * np.pi / ROT_STEPS)
    poses = np.column_stack([box[:2] + moves, yaw])
    field = dist if frame.shift_to_world(1, 0)[1] > 0 else dist[:, ::-1]  # rows along +y
    return Result(
        poses=poses,
        push=push,
        modes=_modes(shifts, step, reach),
        shifts=shifts.astype(np.int64),
        field=field,
        field_step=mpp,
        lattice_step=step * mpp,
        candidates=len(order),
        lattice=pushes,
        reach=reach,
    )


def field_to_file(field: np.ndarray) -> np.ndarray:
    """Push distances in m -> uint16 centimetres (``FIELD_NONE``: not reachable)."""
    out = np.full(field.shape, FIELD_NONE, dtype=np.uint16)
    finite = np.isfinite(field)
    out[finite] = np.minimum(np.rint(field[finite] / FIELD_UNIT), FIELD_NONE - 1)
    return out


def rejection_sample(
    family: str,
    seq: np.random.SeedSequence,
    attempt: Callable[[np.random.Generator], dict[str, np.ndarray] | str],
    max_attempts: int,
) -> tuple[dict[str, np.ndarray], Counter]:
    """Layouts drawn with ``attempt(rng)`` until one is a scene (a dict; a str names the check
    that rejected it): that scene plus its ``seed``/``spawn_key``, and the rejections by
    reason. Raises ``RuntimeError`` naming the check most layouts failed when
    ``max_attempts`` give none."""
    rng = np.random.default_rng(seq)
    rejected: Counter = Counter()
    for _ in range(max_attempts):
        scene = attempt(rng)
        if isinstance(scene, str):
            rejected[scene] += 1
            continue
        return scene | {
            "seed": np.array(seq.entropy, dtype=np.int64),
            "spawn_key": np.array(seq.spawn_key, dtype=np.int64),
        }, rejected
    worst = rejected.most_common(1)[0][0] if rejected else "none"
    counts = ", ".join(f"{k} {v}" for k, v in rejected.most_common())
    raise RuntimeError(
        f"{family}: no valid scene for seed {seq.entropy} (spawn key {tuple(seq.spawn_key)}) "
        f"after {max_attempts} layouts; most failed the {worst!r} check ({counts})"
    )
