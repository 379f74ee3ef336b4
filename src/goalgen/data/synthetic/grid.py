"""Grid mazes for the ``maze`` family (:mod:`.maze`): carving, the cell graph, cuts, and the
boxes that close a passage.

Cells ``(i, j)`` of ``cell`` metres have their lower-left corner at ``(i, j) * cell`` (cell id
``i * n + j``); walls lie on the grid lines, ``t`` thick, and run ``t / 2`` past their ends.
A family's lengths are a :class:`Lengths` (``MAZE``: the ``maze`` family's 1 m cells; the
``arena`` family scales them to its cells and robot).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import sparse
from scipy.sparse import csgraph

from goalgen.data.synthetic.feasible import wrap_yaw

CELL = 1.0  # m
WALL = (0.06, 0.10)  # wall thickness, m
BOX_EXTENT = (0.5, 0.94)  # box sides, m
END_GAP = (0.03, 0.08)  # passage box end to its anchor, m
DEPTH = (0.5, 0.7)  # passage box side across the passage, m
MAX_OFFSET = 0.1  # passage box centre off the edge line, m


@dataclass(frozen=True)
class Lengths:
    """A grid family's lengths in metres (ranges are ``(low, high)``)."""

    cell: float = CELL
    wall: tuple[float, float] = WALL  # wall thickness
    box_extent: tuple[float, float] = BOX_EXTENT  # box sides
    end_gap: tuple[float, float] = END_GAP  # passage box end to its anchor
    depth: tuple[float, float] = DEPTH  # passage box side across the passage
    max_offset: float = MAX_OFFSET  # passage box centre off the edge line


MAZE = Lengths()
MAX_TILT = np.deg2rad(3.0)
MAX_CUT = 10
FAR = 0.6  # the goal's cell is at least this share of the way to the farthest cell


@dataclass
class Maze:
    n: int
    t: float
    v: np.ndarray  # (n + 1, n) bool: wall on the line x = i, y in [j, j + 1]
    h: np.ndarray  # (n, n + 1) bool: wall on the line y = j, x in [i, i + 1]
    cell: float = CELL

    def walls(self) -> np.ndarray:
        """Wall boxes ``(K, 5)``: one per run of walls on a grid line."""
        out = []
        for lines, vertical in ((self.v, True), (self.h.T, False)):
            for i, line in enumerate(lines):
                edges = np.diff(np.concatenate([[0], line.astype(np.int8), [0]]))
                for j0, j1 in zip(
                    np.flatnonzero(edges == 1), np.flatnonzero(edges == -1), strict=True
                ):
                    mid, length = (j0 + j1) / 2 * self.cell, (j1 - j0) * self.cell + self.t
                    box = (
                        (i * self.cell, mid, self.t, length)
                        if vertical
                        else (mid, i * self.cell, length, self.t)
                    )
                    out.append((*box, 0.0))
        return np.array(out, dtype=np.float64)

    def anchored(self, i: int, j: int) -> bool:
        """Does a wall meet the grid corner ``(i, j)``?"""
        n = self.n
        return bool(
            (j > 0 and self.v[i, j - 1])
            or (j < n and self.v[i, j])
            or (i > 0 and self.h[i - 1, j])
            or (i < n and self.h[i, j])
        )

    def passages(self) -> np.ndarray:
        """Open interior edges ``(E, 5)`` int: ``(cell_a, cell_b, kind, i, j)``; kind 0 is the
        segment of line x = i at row j, kind 1 of line y = j at column i; cell id = i * n + j."""
        n, out = self.n, []
        for i, j in np.argwhere(~self.v[1:n]):
            out.append(((i) * n + j, (i + 1) * n + j, 0, i + 1, j))
        for i, j in np.argwhere(~self.h[:, 1:n]):
            out.append((i * n + j, i * n + j + 1, 1, i, j + 1))
        return np.array(out, dtype=np.int64).reshape(-1, 5)


def carve(rng: np.random.Generator, n: int, deletion: float, lengths: Lengths = MAZE) -> Maze:
    """A maze with a share ``deletion`` of its ``2 n (n - 1)`` interior edges open: a perfect
    maze (randomised depth-first search) with more of its walls removed at random (none if
    ``deletion`` is below the perfect maze's own share of open edges)."""
    t = rng.uniform(*lengths.wall)
    maze = Maze(n, t, np.ones((n + 1, n), bool), np.ones((n, n + 1), bool), lengths.cell)
    seen = np.zeros((n, n), dtype=bool)
    stack = [(int(rng.integers(n)), int(rng.integers(n)))]
    seen[stack[0]] = True
    while stack:
        i, j = stack[-1]
        options = [
            (a, b)
            for a, b in ((i - 1, j), (i + 1, j), (i, j - 1), (i, j + 1))
            if 0 <= a < n and 0 <= b < n and not seen[a, b]
        ]
        if not options:
            stack.pop()
            continue
        a, b = options[int(rng.integers(len(options)))]
        if a != i:
            maze.v[max(a, i), j] = False
        else:
            maze.h[i, max(b, j)] = False
        seen[a, b] = True
        stack.append((a, b))
    inner = [("v", i, j) for i, j in np.argwhere(maze.v[1:n]) + [1, 0]]
    inner += [("h", i, j) for i, j in np.argwhere(maze.h[:, 1:n]) + [0, 1]]
    keep = min(len(inner), int(round((1 - deletion) * 2 * n * (n - 1))))
    for index in rng.choice(len(inner), len(inner) - keep, replace=False):
        kind, i, j = inner[index]
        getattr(maze, kind)[i, j] = False
    return maze


def graph(n: int, passages: np.ndarray, weights: np.ndarray) -> sparse.csr_matrix:
    """The cell graph ``(n * n, n * n)`` with ``weights`` ``(E,)`` on ``passages``."""
    a, b = passages[:, 0], passages[:, 1]
    return sparse.csr_matrix(
        (np.concatenate([weights, weights]), (np.concatenate([a, b]), np.concatenate([b, a]))),
        shape=(n * n, n * n),
    )


def min_cut(
    rng: np.random.Generator, n: int, passages: np.ndarray, source: np.ndarray, sink: np.ndarray
) -> np.ndarray:
    """Indices into ``passages`` of a minimum cut between the cell sets (jittered capacities)."""
    m, big = n * n, 10**6
    caps = 100 + rng.integers(0, 50, len(passages))
    a, b = passages[:, 0], passages[:, 1]
    rows = np.concatenate([a, b, np.full(len(source), m), sink])
    cols = np.concatenate([b, a, source, np.full(len(sink), m + 1)])
    vals = np.concatenate([caps, caps, np.full(len(source) + len(sink), big)]).astype(np.int32)
    network = sparse.csr_matrix((vals, (rows, cols)), shape=(m + 2, m + 2))
    flow = csgraph.maximum_flow(network, m, m + 1)
    if flow.flow_value >= big:
        return np.zeros(0, dtype=np.int64)
    residual = network - flow.flow
    residual.data = np.maximum(residual.data, 0)
    residual.eliminate_zeros()
    side = np.zeros(m + 2, dtype=bool)
    side[csgraph.breadth_first_order(residual, m, directed=True, return_predecessors=False)] = True
    return np.flatnonzero(side[a] != side[b])


def shortest_path(cells: sparse.csr_matrix, start: int, end: int) -> list[int] | None:
    """Cells of a shortest path (fewest passages) from ``start`` to ``end``, or None."""
    _, pred = csgraph.shortest_path(cells, unweighted=True, indices=start, return_predecessors=True)
    if end != start and pred[end] < 0:
        return None
    path = [end]
    while path[-1] != start:
        path.append(int(pred[path[-1]]))
    return path[::-1]


def passage_box(
    rng: np.random.Generator, maze: Maze, passage: np.ndarray, lengths: Lengths = MAZE
) -> np.ndarray:
    """A box ``(5,)`` across ``passage``, leaving gaps narrower than the robot at both ends."""
    _, _, kind, i, j = (int(v) for v in passage)
    corners = ((i, j), (i, j + 1)) if kind == 0 else ((i, j), (i + 1, j))
    ends = [maze.t / 2 * maze.anchored(*c) + rng.uniform(*lengths.end_gap) for c in corners]
    longest = lengths.box_extent[1]
    length = maze.cell - sum(ends)
    if length > longest:
        ends = [e + (length - longest) / 2 for e in ends]
        length = longest
    depth = rng.uniform(*lengths.depth)
    offset = rng.uniform(-lengths.max_offset, lengths.max_offset)
    along = (j if kind == 0 else i) * maze.cell + ends[0] + length / 2
    across = (i if kind == 0 else j) * maze.cell + offset
    box = [across, along, depth, length] if kind == 0 else [along, across, length, depth]
    theta = rng.uniform(-MAX_TILT, MAX_TILT)
    if rng.random() < 0.5:  # the same box, described turned by a quarter
        box[2:4], theta = box[3:1:-1], theta + np.pi / 2
    return np.array([*box, float(wrap_yaw(theta))])


@dataclass
class Plan:
    """A maze with its robot and goal cells, the cut passages and the route to keep open."""

    maze: Maze
    deletion: float
    passages: np.ndarray  # (E, 5), see Maze.passages
    cut: np.ndarray  # indices into passages, the selected box's first
    route: list[int]  # cells
    robot_cell: int
    goal_cell: int


def plan(
    rng: np.random.Generator,
    n: int,
    deletion: tuple[float, float],
    max_boxes: int,
    lengths: Lengths = MAZE,
) -> Plan | None:
    """Carve a maze and cut its robot -> goal routes (None: no usable cut)."""
    rate = rng.uniform(*deletion)
    maze = carve(rng, n, rate, lengths)
    passages = maze.passages()
    cells = graph(n, passages, np.ones(len(passages)))
    robot_cell = int(rng.integers(n * n))
    hops = csgraph.shortest_path(cells, unweighted=True, indices=robot_cell)
    far = np.flatnonzero(hops >= max(3, np.ceil(FAR * hops[np.isfinite(hops)].max())))
    if len(far) == 0:
        return None
    goal_cell = int(far[rng.integers(len(far))])
    dist = int(hops[goal_cell])
    ra = int(rng.integers(0, dist // 2 + 1))
    rb = int(rng.integers(1, dist - ra))
    from_goal = csgraph.shortest_path(cells, unweighted=True, indices=goal_cell)
    cut = min_cut(rng, n, passages, np.flatnonzero(hops <= ra), np.flatnonzero(from_goal <= rb))
    if not 1 <= len(cut) <= min(MAX_CUT, max_boxes):
        return None
    chosen = int(cut[rng.integers(len(cut))])
    kept = np.ones(len(passages), dtype=bool)
    kept[cut] = False
    open_graph = graph(n, passages[kept], np.ones(kept.sum()))
    a, b = passages[chosen, :2]
    if hops[a] > hops[b]:
        a, b = b, a
    first, second = (
        shortest_path(open_graph, robot_cell, int(a)),
        shortest_path(open_graph, int(b), goal_cell),
    )
    if first is None or second is None:
        return None
    cut = np.array([chosen, *[c for c in cut if c != chosen]])
    return Plan(maze, rate, passages, cut, first + second, robot_cell, goal_cell)
