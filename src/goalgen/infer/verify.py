"""Checks of candidate goal poses of the selected box, vectorised over K candidates.

Boxes are ``(cx, cy, w, h, theta)`` in world units (:mod:`goalgen.data.geometry`).

World geometry (exact boxes known):

- Collisions: separating-axis test of each candidate against every wall and other box (a gap
  below ``margin`` on every axis counts as contact: conservative) and the distance from the
  robot's centre against its real radius.
- Route (:class:`ReachGrid`): square cells of side ``cell``; a cell is free when its centre
  lies at least ``radius + cell / 2`` from every obstacle (exact point-box distances), and
  free cells connect 4-wise. Consecutive centres are ``cell`` apart, so every point of the
  segment between them lies within ``cell / 2`` of one of them: a 4-connected chain of free
  cells is a path of the robot's disk that touches nothing. Start and goal join the cells of
  their 3 x 3 neighbourhood whose centre is at least ``radius + |point - centre|`` from every
  obstacle (the segment to it is clear too). The check is therefore sound (it never reports a
  route that does not exist) and may miss a route that squeezes through with less than
  ``cell / 2`` to spare.
- Route (:class:`ExactReach`): the same question on polygons (shapely), for the boxes the grid
  finds blocked: the robot's centre moves in the world square less every obstacle grown by
  its radius, arcs as polygons whose edges lie outside the circle (``ARC_SEGMENTS`` per
  quarter: at most 0.25 mm too thick for a 0.2 m robot). Sound as the grid is, and it misses
  no route with more than that to spare: maze corridors a robot passes with millimetres left.
- Push distance (:class:`PushField`): Dijkstra from the box where it stands over the (yaw,
  cell) lattice where the box fits (``yaw_steps`` yaws over its symmetry period; fits of the
  cells inside each footprint from one FFT correlation per footprint), as the ground truth's
  search does (:func:`goalgen.data.synthetic.feasible.push_distances`): 8-connected slides
  within a yaw, and turns by one yaw step in place where the swept footprint is clear too, at
  the arc a corner travels. The box turns only where it fits while turning: a long box in a
  corridor does not turn for free. Given where the robot can stand (``pusher``), only moves
  the robot can push count (:mod:`goalgen.data.pushing`, a directed graph): a slide from
  behind the box on the line through its centre (``contact_distance``), a turn from near an
  end of a side (``turn_spots``); a pose reached only by pulling has no push distance.

Masks only: the same push field on the mask pixels, and :class:`MaskReach`, the evaluation's
rule (:func:`goalgen.data.geometry.path_open_after_move`): obstacles inflated by the robot's
radius in pixels, 8-connected, between the centroid pixels of the robot and goal masks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import shapely
from scipy import fft, ndimage

from goalgen.data import geometry as geo
from goalgen.data.pushing import TURN_LEVER, pushable_moves, pushing_distances
from goalgen.data.synthetic.feasible import TURN_SAMPLES, push_distances

ARC_SEGMENTS = 16  # polygon edges per quarter circle of a grown obstacle (ExactReach)
DETOUR_MARGIN = 3  # cells around those a placed box blocks where ReachGrid.detours looks
YAW_STEPS = 12  # yaws over the box's symmetry period in the push field
FFT_WORKERS = 2  # threads of the push field's FFTs (a planner's 2 cores)
_TURN_FRACTIONS = np.linspace(0.0, 1.0, TURN_SAMPLES)  # footprints swept by one yaw step
_PLANE4 = np.zeros((3, 3, 3), dtype=bool)
_PLANE4[1] = ndimage.generate_binary_structure(2, 1)
_PLANE8 = np.zeros((3, 3, 3), dtype=bool)
_PLANE8[1] = True


# ----------------------------------------------------------------------------- exact geometry
def box_corners(boxes: np.ndarray) -> np.ndarray:
    """``(..., 4, 2)`` corners of boxes ``(..., 5)``, counter-clockwise."""
    boxes = np.asarray(boxes, dtype=np.float64)
    c, s = np.cos(boxes[..., 4]), np.sin(boxes[..., 4])
    sx = np.array([-1.0, 1.0, 1.0, -1.0]) * boxes[..., 2:3] / 2
    sy = np.array([-1.0, -1.0, 1.0, 1.0]) * boxes[..., 3:4] / 2
    x = boxes[..., 0:1] + sx * c[..., None] - sy * s[..., None]
    y = boxes[..., 1:2] + sx * s[..., None] + sy * c[..., None]
    return np.stack([x, y], -1)


def boxes_overlap(a: np.ndarray, b: np.ndarray, margin: float = 0.0) -> np.ndarray:
    """``(K, B)`` bool: do boxes ``a (K, 5)`` and ``b (B, 5)`` come closer than ``margin`` on
    every separating axis (their edge normals)? ``margin = 0``: exact overlap (touching
    counts).

    On a unit axis ``n`` a box of centre ``c``, half sizes ``(hw, hh)`` and edge normals
    ``(u, v)`` spans ``c.n +- (hw |u.n| + hh |v.n|)``, so the gap between two boxes on ``n`` is
    ``|(c_b - c_a).n|`` less both spans' half lengths: no corners needed. Only pairs whose
    centres are close enough for both of ``a``'s axes to overlap are tested."""
    a, b = np.asarray(a, float).reshape(-1, 5), np.asarray(b, float).reshape(-1, 5)
    out = np.zeros((len(a), len(b)), dtype=bool)
    if len(a) == 0 or len(b) == 0:
        return out
    # on a's axes the gaps are below max(margin, 0) only if |d.u| < hw_a + r_b + m and
    # |d.v| < hh_a + r_b + m (r_b: b's half diagonal bounds its span on any axis)
    m = max(margin, 0.0)
    r_b = np.hypot(b[:, 2], b[:, 3])[None] / 2
    bound = (a[:, 2:3] / 2 + r_b + m) ** 2 + (a[:, 3:4] / 2 + r_b + m) ** 2
    d2 = ((b[None, :, :2] - a[:, None, :2]) ** 2).sum(-1)
    i, j = np.nonzero(d2 <= bound * (1 + 1e-9) + 1e-12)
    if len(i) == 0:
        return out
    a, b = a[i], b[j]
    na, nb = _normals(a), _normals(b)  # (P, 2, 2): rows are the axes
    ha, hb = a[:, 2:4] / 2, b[:, 2:4] / 2  # half sizes along each box's own axes
    cos = np.abs(np.einsum("pic,pjc->pij", na, nb))  # (P, 2, 2): |a axis i . b axis j|
    d = b[:, :2] - a[:, :2]  # (P, 2)
    on_a = np.abs(np.einsum("pc,pic->pi", d, na)) - ha - (cos * hb[:, None, :]).sum(-1)
    on_b = np.abs(np.einsum("pc,pjc->pj", d, nb)) - hb - (cos * ha[:, :, None]).sum(-2)
    gap = np.concatenate([on_a, on_b], -1)  # (P, 4)
    out[i, j] = (gap < margin).all(-1) if margin > 0 else (gap <= 0).all(-1)
    return out


def _normals(boxes: np.ndarray) -> np.ndarray:
    c, s = np.cos(boxes[:, 4]), np.sin(boxes[:, 4])
    return np.stack([np.stack([c, s], -1), np.stack([-s, c], -1)], 1)  # (K, 2, 2)


def point_box_distance(points: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """``(..., B)``: distance from points ``(..., 2)`` to boxes ``(B, 5)`` (0 inside)."""
    p = np.asarray(points, dtype=np.float64)[..., None, :]
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 5)
    return _box_distance(p - boxes[:, :2], boxes)


def _box_distance(d: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Distance to boxes ``(..., 5)`` of points at offsets ``d`` ``(..., 2)`` from their
    centres (broadcast)."""
    c, s = np.cos(boxes[..., 4]), np.sin(boxes[..., 4])
    u = np.abs(d[..., 0] * c + d[..., 1] * s) - boxes[..., 2] / 2
    v = np.abs(d[..., 1] * c - d[..., 0] * s) - boxes[..., 3] / 2
    return np.hypot(np.maximum(u, 0), np.maximum(v, 0))


def near_disk(boxes: np.ndarray, centre: np.ndarray, reach: float) -> np.ndarray:
    """The boxes ``(B, 5)`` whose bounding disk comes within ``reach`` of ``centre`` ``(2,)``
    (the others cannot touch anything within ``reach`` of it)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 5)
    gap = np.hypot(*(boxes[:, :2] - centre).T) - np.hypot(boxes[:, 2], boxes[:, 3]) / 2
    return boxes[gap <= reach]


# ----------------------------------------------------------------------------- route, exact
class ReachGrid:
    """Sound route check for a disk robot among exact boxes (see the module docstring)."""

    def __init__(
        self,
        bounds: Sequence[float],
        cell: float,
        obstacles: np.ndarray,
        start: Sequence[float],
        goal: Sequence[float],
        radius: float,
        end_radius: float | None = None,
        headroom: float = 0.0,
    ) -> None:
        self.x0, self.y0 = float(bounds[0]), float(bounds[1])
        self.cell, self.radius = float(cell), float(radius)
        self.end_radius = self.radius if end_radius is None else float(end_radius)
        self.shape = (
            int(np.ceil((bounds[3] - bounds[1]) / cell)),
            int(np.ceil((bounds[2] - bounds[0]) / cell)),
        )
        self.cap = radius + headroom + 2 * cell  # clearances are exact up to here
        self.clear = np.full(self.shape, self.cap)
        for box in np.asarray(obstacles, float).reshape(-1, 5):
            rows, cols, xy = self._window(box)
            if xy.size:
                d = point_box_distance(xy, box[None])[..., 0]
                self.clear[rows, cols] = np.minimum(self.clear[rows, cols], d)
        self._points = (np.asarray(start, float)[:2], np.asarray(goal, float)[:2])
        self._connect()

    def grown(self, extra: float) -> ReachGrid:
        """The same grid for a robot ``extra`` wider (``extra`` within the ``headroom`` it was
        built with), sharing the clearances."""
        if self.radius + extra + 2 * self.cell > self.cap + 1e-12:
            raise ValueError(f"extra {extra} m exceeds the grid's headroom")
        out = object.__new__(ReachGrid)
        out.__dict__ = dict(self.__dict__, radius=self.radius + extra)
        out._connect()
        return out

    def _connect(self) -> None:
        self.free = self.clear >= self.radius + self.cell / 2
        self.start, self.goal = self._ends(self._points[0]), self._ends(self._points[1])
        labels, _ = ndimage.label(self.free, structure=_PLANE4[1])
        self.base_connected = bool(
            len(np.intersect1d(self._labels(labels, self.start), self._labels(labels, self.goal)))
        )
        seed = np.unique(self._labels(labels, self.start))
        region = np.isin(labels, seed[seed > 0])
        rows, cols = np.nonzero(region.any(1))[0], np.nonzero(region.any(0))[0]
        self.crop = (
            (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
            if len(rows)
            else (slice(0, 0), slice(0, 0))
        )
        self.region = region[self.crop]

    def centres(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """World ``(..., 2)`` centres of cells ``(rows, cols)`` (row ``i`` at ``y0 + (i + .5) c``)."""
        return np.stack(
            np.broadcast_arrays(
                self.x0 + (cols + 0.5) * self.cell, self.y0 + (rows + 0.5) * self.cell
            ),
            -1,
        )

    def _window(self, box: np.ndarray, pad: float | None = None):
        lo, hi = geo.box_extents(box[None])[0].reshape(2, 2)
        pad = self.cap if pad is None else pad
        c0 = max(int(np.floor((lo[0] - pad - self.x0) / self.cell)), 0)
        c1 = min(int(np.ceil((hi[0] + pad - self.x0) / self.cell)) + 1, self.shape[1])
        r0 = max(int(np.floor((lo[1] - pad - self.y0) / self.cell)), 0)
        r1 = min(int(np.ceil((hi[1] + pad - self.y0) / self.cell)) + 1, self.shape[0])
        rows, cols = np.arange(r0, max(r1, r0)), np.arange(c0, max(c1, c0))
        return (
            slice(r0, r0 + len(rows)),
            slice(c0, c0 + len(cols)),
            self.centres(rows[:, None], cols[None, :]),
        )

    def _ends(self, point: Sequence[float], radius: float | None = None) -> np.ndarray:
        """``(n, 3)`` cells ``(row, col, distance)`` a point joins: free cells of its
        neighbourhood (3 x 3, wider by the cells between ``radius`` and the grid's) whose
        centre is at least ``radius`` (default ``end_radius``, the robot's own: it may stand
        closer than the clearance) + the distance from every obstacle."""
        p = np.asarray(point, dtype=np.float64)
        radius = self.end_radius if radius is None else radius
        r = int(np.floor((p[1] - self.y0) / self.cell))
        c = int(np.floor((p[0] - self.x0) / self.cell))
        n = int(np.ceil(max(self.radius - radius, 0.0) / self.cell)) + 1
        rows, cols = (v.ravel() for v in np.mgrid[r - n : r + n + 1, c - n : c + n + 1])
        inside = (rows >= 0) & (rows < self.shape[0]) & (cols >= 0) & (cols < self.shape[1])
        rows, cols = rows[inside], cols[inside]
        free = self.free[rows, cols]
        rows, cols = rows[free], cols[free]
        x, y = self.x0 + (cols + 0.5) * self.cell, self.y0 + (rows + 0.5) * self.cell
        d = np.hypot(x - p[0], y - p[1])
        ok = self.clear[rows, cols] >= radius + d
        return np.column_stack([rows[ok], cols[ok], d[ok]]).astype(np.float64)

    @staticmethod
    def _labels(labels: np.ndarray, ends: np.ndarray) -> np.ndarray:
        return labels[ends[:, 0].astype(int), ends[:, 1].astype(int)]

    def _clear_of(
        self, box: np.ndarray, box_radius: float
    ) -> tuple[tuple[slice, slice], np.ndarray] | None:
        """The window of the cropped region around ``box`` ``(5,)`` and ``(h, w)`` bool: its
        cells whose centre lies at least ``box_radius`` + half a cell from the box (None:
        the box's window misses the region)."""
        (rs, cs), (h, w) = self.crop, self.region.shape
        rows, cols, xy = self._window(box, box_radius + self.cell)
        r0, r1 = max(rows.start - rs.start, 0), min(rows.stop - rs.start, h)
        c0, c1 = max(cols.start - cs.start, 0), min(cols.stop - cs.start, w)
        if r1 <= r0 or c1 <= c0:
            return None
        sub = xy[
            r0 + rs.start - rows.start : r1 + rs.start - rows.start,
            c0 + cs.start - cols.start : c1 + cs.start - cols.start,
        ]
        clear = point_box_distance(sub, box[None])[..., 0] >= box_radius + self.cell / 2
        return (slice(r0, r1), slice(c0, c1)), clear

    def _labels_with(self, box: np.ndarray, box_radius: float) -> np.ndarray:
        """Labels of the start's region (cropped) with ``box`` placed too, kept
        ``box_radius`` + half a cell from."""
        free = self.region.copy()
        window = self._clear_of(box, box_radius)
        if window is not None:
            free[window[0]] &= window[1]
        return ndimage.label(free, structure=_PLANE4[1])[0]

    def _joined(
        self, labels: np.ndarray, point: np.ndarray, box: np.ndarray, box_radius: float
    ) -> set[int]:
        """Labels a point joins (its neighbourhood's cells, clear of ``box`` too)."""
        (rs, cs), (h, w) = self.crop, self.region.shape
        cells = self._ends(point)
        if not len(cells):
            return set()
        centres = self.centres(cells[:, 0], cells[:, 1])
        clear = point_box_distance(centres, box[None])[:, 0] >= box_radius + cells[:, 2]
        rr, cc = cells[:, 0].astype(int) - rs.start, cells[:, 1].astype(int) - cs.start
        inside = clear & (rr >= 0) & (rr < h) & (cc >= 0) & (cc < w)
        found = labels[rr[inside], cc[inside]]
        return set(found[found > 0].tolist())

    def reach_from(
        self, box: np.ndarray, box_radius: float, start: np.ndarray
    ) -> Callable[[np.ndarray], np.ndarray]:
        """With ``box`` ``(5,)`` placed as well, which points can the robot, standing at
        ``start`` ``(2,)``, get to, coming no closer than ``box_radius`` to the box (it may
        touch the box it is about to push)? Returns a test of points ``(G, 2)`` -> ``(G,)``
        bool. Same cells as :meth:`opens`; points join their neighbourhood with the robot's
        own radius, and must lie ``box_radius`` + the distance from the box too."""
        labels = self._labels_with(box, box_radius)
        here = self._joined(labels, np.asarray(start, dtype=np.float64), box, box_radius)

        def test(points: np.ndarray) -> np.ndarray:
            points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
            return np.array([bool(here & self._joined(labels, p, box, box_radius)) for p in points])

        return test

    def opens(self, boxes: np.ndarray) -> np.ndarray:
        """``(K,)`` bool: is there a route with the selected box placed at each of ``boxes``?
        Boxes with a detour around them (:meth:`detours`) do; the rest are labelled over the
        whole region."""
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 5)
        if not self.base_connected or len(boxes) == 0:
            return np.zeros(len(boxes), dtype=bool)
        out = self.detours(boxes)
        out[~out] = self._opens_globally(boxes[~out])
        return out

    def detours(self, boxes: np.ndarray) -> np.ndarray:
        """``(K,)`` bool, a sufficient test of :meth:`opens` that looks only near each box: in
        the region's cells of a window around it (``DETOUR_MARGIN`` cells beyond those it
        blocks), less those it blocks, every cell on the window's edge connects to every other
        one, and no cell the start or goal joins lies in the window. A route then crosses the
        window from edge to edge and has a detour inside it. False: not known."""
        (rs, cs), (h, w) = self.crop, self.region.shape
        k = len(boxes)
        diagonal = np.hypot(boxes[:, 2], boxes[:, 3]) / 2
        half = int(np.ceil((diagonal.max() + self.radius) / self.cell)) + 1 + DETOUR_MARGIN
        size = 2 * half + 1
        centre = np.floor((boxes[:, [1, 0]] - (self.y0, self.x0)) / self.cell).astype(int)
        rows = centre[:, 0, None] + np.arange(-half, half + 1)  # (K, size) grid rows
        cols = centre[:, 1, None] + np.arange(-half, half + 1)
        inside_r = (rows >= rs.start) & (rows < rs.start + h)
        inside_c = (cols >= cs.start) & (cols < cs.start + w)
        rr = np.clip(rows - rs.start, 0, max(h - 1, 0))
        cc = np.clip(cols - cs.start, 0, max(w - 1, 0))
        free = (
            self.region[rr[:, :, None], cc[:, None, :]]
            if h and w
            else np.zeros((k, size, size), bool)
        )
        free &= inside_r[:, :, None] & inside_c[:, None, :]
        # the cells the box blocks: centres within radius + half a cell of it (as _clear_of)
        xy = self.centres(rows[:, :, None], cols[:, None, :])  # (K, size, size, 2)
        mine = boxes[:, None, None, :]
        free &= _box_distance(xy - mine[..., :2], mine) >= self.radius + self.cell / 2
        labels, _ = ndimage.label(free, structure=_PLANE4)
        edge = np.concatenate(
            [labels[:, 0], labels[:, -1], labels[:, 1:-1, 0], labels[:, 1:-1, -1]], axis=1
        )
        on = edge > 0
        low = np.where(on, edge, np.iinfo(edge.dtype).max).min(1)
        one = on.any(1) & (low == np.where(on, edge, 0).max(1))
        for ends in (self.start, self.goal):  # outside the window, none blocked (as globally)
            er, ec = ends[:, 0].astype(int), ends[:, 1].astype(int)
            near_r = np.abs(er[None, :] - centre[:, 0, None]) <= half
            near_c = np.abs(ec[None, :] - centre[:, 1, None]) <= half
            clear = point_box_distance(self.centres(er, ec), boxes).T - ends[:, 2][None, :]
            one &= ~(near_r & near_c).any(1) & (clear >= self.end_radius).all(1)
        return one

    def _opens_globally(self, boxes: np.ndarray) -> np.ndarray:
        k = len(boxes)
        if k == 0:
            return np.zeros(0, dtype=bool)
        (rs, cs), (h, w) = self.crop, self.region.shape
        stack = np.repeat(self.region[None], k, axis=0)
        for i, box in enumerate(boxes):  # windows of ~(box + 2 radius)^2 cells each
            window = self._clear_of(box, self.radius)
            if window is not None:
                stack[(i, *window[0])] &= window[1]
        labels, _ = ndimage.label(stack, structure=_PLANE4)
        ends = []
        for cells in (self.start, self.goal):
            rr, cc = cells[:, 0].astype(int) - rs.start, cells[:, 1].astype(int) - cs.start
            inside = (rr >= 0) & (rr < h) & (cc >= 0) & (cc < w)
            lab = np.zeros((k, len(cells)), dtype=np.int64)
            lab[:, inside] = labels[:, rr[inside], cc[inside]]
            centres = self.centres(cells[:, 0], cells[:, 1])
            clear = point_box_distance(centres, boxes)  # (n, K)
            blocked = clear.T - cells[:, 2][None, :] < self.end_radius
            lab[blocked] = 0
            ends.append(lab)
        s, g = ends
        same = (s[:, :, None] == g[:, None, :]) & (s[:, :, None] > 0)
        return same.any((1, 2))


class ExactReach:
    """Route check for a disk robot among exact boxes on polygons (see the module docstring).

    ``bounds`` ``(x0, y0, x1, y1)``; ``obstacles`` ``(B, 5)`` fixed boxes; ``start``/``goal``
    ``(2,)`` the robot's centre and its goal; ``radius`` the robot's, grown by the clearance;
    ``end_slack``: the start and goal join the free space anywhere within this distance (the
    robot may stand closer than the clearance where it starts and ends)."""

    def __init__(
        self,
        bounds: Sequence[float],
        obstacles: np.ndarray,
        start: Sequence[float],
        goal: Sequence[float],
        radius: float,
        end_slack: float = 0.0,
    ) -> None:
        # vertices at grow from the centre put every chord at >= radius: outside the circle
        self.grow = float(radius) / np.cos(np.pi / 4 / ARC_SEGMENTS)
        self.start, self.goal = (
            shapely.Point(*p[:2]).buffer(end_slack, 8) if end_slack > 0 else shapely.Point(*p[:2])
            for p in (start, goal)
        )
        grown = [self._grown(box) for box in np.asarray(obstacles, float).reshape(-1, 5)]
        free = shapely.box(*(float(v) for v in bounds)).difference(shapely.union_all(grown))
        self.region = next((p for p in _pieces(free) if p.intersects(self.start)), None)
        self.base_connected = self.region is not None and self.region.intersects(self.goal)
        if self.region is not None:
            shapely.prepare(self.region)

    def _grown(self, box: np.ndarray):
        return shapely.Polygon(box_corners(box)).buffer(self.grow, quad_segs=ARC_SEGMENTS)

    def opens(self, boxes: np.ndarray) -> np.ndarray:
        """``(K,)`` bool: is there a route with the selected box placed at each of ``boxes``?"""
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 5)
        out = np.zeros(len(boxes), dtype=bool)
        if not self.base_connected:
            return out
        for i, box in enumerate(boxes):
            grown = self._grown(box)
            if not self.region.intersects(grown):
                out[i] = True
                continue
            rest = self.region.difference(grown)
            out[i] = any(
                p.intersects(self.start) and p.intersects(self.goal) for p in _pieces(rest)
            )
        return out


def _pieces(geometry) -> list:
    """The polygons of a (multi)polygon."""
    return list(getattr(geometry, "geoms", [geometry]))


# ----------------------------------------------------------------------------- route, masks
class MaskReach:
    """The evaluation's route rule on masks ``(N, N)`` (see the module docstring)."""

    def __init__(
        self, obstacles: np.ndarray, robot: np.ndarray, goal: np.ndarray, radius_px: float
    ):
        self.radius_px = float(radius_px)
        blocked = geo.inflate(obstacles, self.radius_px)
        self.start, self.goal = geo.mask_centroid(robot), geo.mask_centroid(goal)
        labels, _ = ndimage.label(~blocked, structure=_PLANE8[1])
        self.base_connected = bool(labels[self.start] and labels[self.start] == labels[self.goal])
        self.free = labels == labels[self.start] if labels[self.start] else np.zeros_like(blocked)

    def opens(self, footprints: np.ndarray) -> np.ndarray:
        """``(K,)`` bool for footprint masks ``(K, N, N)`` of the placed box."""
        k = len(footprints)
        if not self.base_connected or k == 0:
            return np.zeros(k, dtype=bool)
        stack = np.repeat(self.free[None], k, axis=0)
        for i, foot in enumerate(footprints):
            stack[i] &= ~geo.inflate(foot, self.radius_px)
        labels, _ = ndimage.label(stack, structure=_PLANE8)
        s, g = labels[:, self.start[0], self.start[1]], labels[:, self.goal[0], self.goal[1]]
        return (s > 0) & (s == g)


# ----------------------------------------------------------------------------- push distance
class PushField:
    """Push distances of the selected box over (yaw, position) (see the module docstring).

    With ``pusher`` ``(H, W)`` (cells where the robot's centre can stand to push), a move
    counts only where the robot can push it: a slide from the cell behind the box on the line
    through its centre (``contact``: the robot's radius, plus a gap), a turn from a spot near
    an end of a side (``lever``) whose torque turns it that way, each spot and the cell
    behind it where the robot closes in from in ``pusher``
    (:func:`goalgen.data.pushing.pushable_moves`). Where
    the box no longer covers any of the cells ``vacated`` ``(H, W)`` (those it covered where
    it stood), the robot may stand in ``pusher_after`` ``(H, W)`` too (the way it opened).

    ``occupied`` ``(H, W)``: cells taken by obstacles (walls, other boxes);
    ``to_cell(xy)`` maps world points ``(..., 2)`` to continuous ``(row, col)``;
    ``offset(rows, cols)`` gives the world displacement of a cell offset; ``cell`` in m;
    ``box`` ``(5,)`` where the box stands; ``period``: its symmetry period (rad).
    """

    def __init__(
        self,
        occupied: np.ndarray,
        to_cell: Callable[[np.ndarray], np.ndarray],
        offset: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]],
        cell: float,
        box: np.ndarray,
        period: float,
        yaw_steps: int = YAW_STEPS,
        limit: float = np.inf,
        pusher: np.ndarray | None = None,
        contact: float = 0.0,
        lever: float = TURN_LEVER,
        pusher_after: np.ndarray | None = None,
        vacated: np.ndarray | None = None,
    ) -> None:
        self.to_cell, self.shape, self.cell = to_cell, occupied.shape, float(cell)
        self.yaw0, self.yaw_step, self.yaw_steps = float(box[4]), period / yaw_steps, yaw_steps
        w, h = float(box[2]), float(box[3])
        reach = int(np.ceil(np.hypot(w, h) / 2 / cell)) + 1
        dx, dy = offset(*np.mgrid[-reach : reach + 1, -reach : reach + 1])
        padded = np.pad(occupied.astype(np.float32), reach, constant_values=1.0)
        # the FFT's size: at least the padded grid (the entries kept never wrap), a fast one
        size = tuple(fft.next_fast_len(n, real=True) for n in padded.shape)

        def kernel(yaw: float) -> np.ndarray:
            c, s = np.cos(yaw), np.sin(yaw)
            return (np.abs(dx * c + dy * s) <= w / 2) & (np.abs(dy * c - dx * s) <= h / 2)

        def clear(grid: np.ndarray, kernels: np.ndarray) -> np.ndarray:
            """``(n, H, W)`` bool: ``kernels[i]`` centred on each cell touches no cell set in
            ``grid`` (padded), for all kernels in one batched FFT."""
            grid = fft.rfft2(grid, size, workers=FFT_WORKERS)
            hits = fft.irfft2(grid * kernels, size, workers=FFT_WORKERS)
            # full correlation: entry [i + 2 reach, j + 2 reach] is the kernel centred on (i, j)
            window = (slice(2 * reach, 2 * reach + self.shape[0]), slice(2 * reach, None))
            return hits[(slice(None), *window)][..., : self.shape[1]] < 0.5

        yaws = self.yaw0 + np.arange(yaw_steps) * self.yaw_step
        swept = [
            np.any([kernel(yaw + f * self.yaw_step) for f in _TURN_FRACTIONS], 0) for yaw in yaws
        ]
        footprints = np.array([kernel(yaw) for yaw in yaws] + swept, dtype=np.float32)
        spectra = fft.rfft2(footprints[:, ::-1, ::-1], size, workers=FFT_WORKERS)
        fits, turns = np.split(clear(padded, spectra), 2)
        start = np.clip(
            np.rint(to_cell(np.asarray(box[:2]))).astype(int), 0, np.array(self.shape) - 1
        )
        fits[(0, *start)] = True
        turn_cost = np.hypot(w, h) / 2 * self.yaw_step  # the arc a corner travels
        self.start, self.fits = tuple(int(v) for v in start), fits
        if pusher is None:
            self.dist, self.pred = push_distances(
                fits, turns, cell, turn_cost, limit, (0, *start), predecessors=True
            )
            return
        basis = np.array(
            [offset(np.array(1.0), np.array(0.0)), offset(np.array(0.0), np.array(1.0))],
            dtype=np.float64,
        )
        left = None
        if pusher_after is not None:  # poses where the box has left the cells it covered
            left = clear(np.pad(vacated.astype(np.float32), reach), spectra[:yaw_steps])
        slide_ok, turn_ok = pushable_moves(
            yaws, (w, h), basis, contact, pusher, lever, pusher_after, left
        )
        self.dist, self.pred = pushing_distances(
            fits, turns, slide_ok, turn_ok, cell, turn_cost, limit, (0, *start)
        )

    def distance(self, poses: np.ndarray) -> np.ndarray:
        """``(K,)`` push distance (m; inf: not reachable) to poses ``(K, 3)`` ``(x, y, yaw)``:
        the least over the cells next to the centre's and the two yaw steps around its yaw."""
        return self._nearest(poses)[0]

    def _nearest(self, poses: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(K,)`` least distances of :meth:`distance` and ``(K, 3)`` their lattice poses
        ``(k, row, col)``."""
        poses = np.asarray(poses, dtype=np.float64).reshape(-1, 3)
        rc = np.rint(self.to_cell(poses[:, :2])).astype(int)
        turns = np.mod((poses[:, 2] - self.yaw0) / self.yaw_step, self.yaw_steps)
        yaws = (
            np.floor(turns).astype(int) % self.yaw_steps,
            np.ceil(turns).astype(int) % self.yaw_steps,
        )
        # the 2 yaws x 3 x 3 cells, yaw outermost: argmin keeps the first of equal distances
        dr, dc = (v.ravel() for v in np.mgrid[-1:2, -1:2])
        k = np.repeat(np.stack(yaws), 9, axis=0)  # (18, K)
        r = rc[None, :, 0] + np.tile(dr, 2)[:, None]
        c = rc[None, :, 1] + np.tile(dc, 2)[:, None]
        ok = (r >= 0) & (r < self.shape[0]) & (c >= 0) & (c < self.shape[1])
        vals = np.full(k.shape, np.inf)
        vals[ok] = self.dist[k[ok], r[ok], c[ok]]
        pick = np.argmin(vals, axis=0)
        cols = np.arange(len(poses))
        out = vals[pick, cols]
        best = np.stack([k[pick, cols], r[pick, cols], c[pick, cols]], 1)
        best[~np.isfinite(out)] = 0
        return out, best

    def path(self, pose: np.ndarray) -> np.ndarray | None:
        """The shortest lattice path to ``pose`` ``(x, y, yaw)``: ``(n, 3)`` int ``(turns,
        row, col)`` from where the box stands, ``turns`` counted in yaw steps from its yaw
        (unwrapped: a path may turn past the symmetry period); None if unreachable."""
        dist, best = self._nearest(np.asarray(pose, dtype=np.float64)[None])
        if not np.isfinite(dist[0]):
            return None
        flat = int(np.ravel_multi_index(tuple(best[0]), self.dist.shape))
        nodes = []
        while flat >= 0:
            nodes.append(np.unravel_index(flat, self.dist.shape))
            flat = int(self.pred.flat[flat])
        nodes = np.array(nodes[::-1], dtype=int).reshape(-1, 3)
        steps = np.diff(nodes[:, 0])
        steps = np.where(steps > 1, steps - self.yaw_steps, steps)
        steps = np.where(steps < -1, steps + self.yaw_steps, steps)
        nodes[:, 0] = np.concatenate([[0], np.cumsum(steps)])
        return nodes
