"""Which moves of a box on a pose lattice a disk-shaped robot can *push*, and the shortest
pushes: shared by the ground truth's search (:mod:`goalgen.data.synthetic.feasible`) and the
proposals' push field (:class:`goalgen.infer.verify.PushField`).

Boxes are ``(cx, cy, w, h, theta)`` in world units. The lattice is ``(R, H, W)``: ``R`` yaw
steps, then rows and columns of the box's centre; one step along rows or columns moves the
centre by the world vectors ``basis[0]`` and ``basis[1]``. A slide by one of :data:`MOVES` is
pushed from the contact spot behind the box on the line through its centre
(:func:`contact_distance`); a turn by one yaw step from a spot near an end of a side whose push
turns the box that way (:func:`turn_spots`). A move counts if the robot can stand at the spot
and one lattice step behind it (where it closes in from). Pulling never counts.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage, sparse
from scipy.sparse import csgraph

CONTACT_GAP = 0.003  # m between the robot's disk and the box it is about to push
TURN_LEVER = 0.75  # where along a side the robot pushes to turn the box (share of half its length)
MOVES = ((0, 1), (1, 0), (0, -1), (-1, 0), (1, 1), (1, -1), (-1, 1), (-1, -1))  # (rows, cols)


def contact_distance(box: np.ndarray, direction: np.ndarray, gap: float) -> float:
    """How far behind the centre of ``box`` ``(5,)``, against unit ``direction`` ``(2,)``, a
    point lies at distance ``gap`` from the box: where a disk of radius ``gap`` touches the
    box to push it along ``direction`` through its centre. In the box's frame the point is
    ``-s (a, b)`` with ``a, b >= 0`` (the direction's components, by symmetry), at distance
    ``hypot(max(s a - hw, 0), max(s b - hh, 0))``, which grows with ``s``: the least root."""
    c, s = np.cos(box[4]), np.sin(box[4])
    a = abs(direction[0] * c + direction[1] * s)
    b = abs(direction[1] * c - direction[0] * s)
    hw, hh = box[2] / 2, box[3] / 2
    best = np.inf
    for along, across, half, other in ((a, b, hw, hh), (b, a, hh, hw)):
        if along > 1e-12:  # one face: the other coordinate stays inside the box
            t = (half + gap) / along
            if t * across <= other + 1e-12:
                best = min(best, t)
    if best < np.inf:
        return float(best)
    # past a corner: (s a - hw)^2 + (s b - hh)^2 = gap^2, a^2 + b^2 = 1
    p = a * hw + b * hh
    return float(p + np.sqrt(max(p * p - hw * hw - hh * hh + gap * gap, 0.0)))


def turn_spots(
    box: np.ndarray, sign: float, gap: float, lever: float
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Where a disk of radius ``gap`` touching ``box`` ``(5,)`` pushes it to turn it
    counter-clockwise (``sign`` > 0) or clockwise: ``(centre (2,), push direction (2,))``
    pairs, near each end of each side (``lever`` of the half side from its middle) whose
    push has a torque of that sign."""
    c, s = np.cos(box[4]), np.sin(box[4])
    u, v = np.array([c, s]), np.array([-s, c])
    hw, hh = box[2] / 2, box[3] / 2
    spots = []
    for n, depth, along, half in ((u, hw, v, hh), (-u, hw, v, hh), (v, hh, u, hw), (-v, hh, u, hw)):
        for arm in (lever * half, -lever * half):
            offset = (depth + gap) * n + arm * along
            torque = offset[0] * -n[1] - offset[1] * -n[0]  # offset x push (the push is -n)
            if torque * sign > 0:
                spots.append((box[:2] + offset, -n))
    return spots


def shifted(mask: np.ndarray, dr: int, dc: int) -> np.ndarray:
    """``out[r, c] = mask[r + dr, c + dc]`` (False beyond the edge)."""
    h, w = mask.shape
    out = np.zeros_like(mask)
    out[max(0, -dr) : h - max(0, dr), max(0, -dc) : w - max(0, dc)] = mask[
        max(0, dr) : h - max(0, -dr), max(0, dc) : w - max(0, -dc)
    ]
    return out


def pushable_moves(
    yaws: np.ndarray,
    size: tuple[float, float],
    basis: np.ndarray,
    contact: float,
    pusher: np.ndarray,
    lever: float = TURN_LEVER,
    pusher_after: np.ndarray | None = None,
    left: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The moves the robot can push from each lattice pose: ``slide_ok`` ``(R, 8, H, W)``
    (``MOVES[m]`` from pose ``[k, r, c]``) and ``turn_ok`` ``(R, 2, H, W)`` (``[k, 0]``: to
    ``k + 1``, ``[k, 1]``: to ``k - 1``).

    ``yaws`` ``(R,)`` the box's yaw per step, ``size`` its ``(w, h)``; ``basis`` ``(2, 2)``
    the world vectors of one lattice step along rows and columns; ``contact``: the distance
    from the box at which the robot's centre pushes (its radius plus a gap). ``pusher``
    ``(H, W)``: lattice cells where the robot's centre can stand to push; ``pusher_after``
    ``(H, W)``: where it can stand too from poses where ``left`` ``(R, H, W)`` holds (the box
    has opened the way to them)."""
    basis = np.asarray(basis, dtype=np.float64)
    inverse = np.linalg.inv(basis.T)
    cell = float(np.min(np.hypot(*basis.T)))
    shape = pusher.shape

    def stands(k: int, spot: np.ndarray) -> np.ndarray:
        a, b = (int(v) for v in np.rint(inverse @ spot))
        ok = shifted(pusher, a, b)
        if pusher_after is not None:
            ok |= left[k] & shifted(pusher_after, a, b)
        return ok

    slide_ok = np.zeros((len(yaws), len(MOVES), *shape), dtype=bool)
    turn_ok = np.zeros((len(yaws), 2, *shape), dtype=bool)
    for k, yaw in enumerate(yaws):
        box = np.array([0.0, 0.0, size[0], size[1], yaw])
        for m, move in enumerate(MOVES):  # the contact spot and a cell behind it
            d = basis.T @ np.array(move, dtype=np.float64)
            d /= np.hypot(*d)
            spot = -contact_distance(box, d, contact) * d
            slide_ok[k, m] = stands(k, spot) & stands(k, spot - cell * d)
        for j, sign in enumerate((1.0, -1.0)):
            for spot, push in turn_spots(box, sign, contact, lever):
                turn_ok[k, j] |= stands(k, spot) & stands(k, spot - cell * push)
    return slide_ok, turn_ok


def pushing_distances(
    fits: np.ndarray,
    turns: np.ndarray,
    slide_ok: np.ndarray,
    turn_ok: np.ndarray,
    step: float,
    turn_cost: float,
    limit: float,
    source: tuple[int, int, int],
) -> tuple[np.ndarray, np.ndarray]:
    """Dijkstra from ``source`` over the lattice poses where the box fits (``fits`` ``(R, H,
    W)``), each move allowed only in the direction the robot can push it (see
    :func:`pushable_moves`): a slide ``MOVES[m]`` from a pose where ``slide_ok[k, m]``, at
    ``step`` m per row or column; a turn ``k -> k + 1`` (cyclic) where ``turn_ok[k, 0]``,
    ``k + 1 -> k`` where ``turn_ok[k + 1, 1]``, both only where ``turns[k]`` (the area swept
    from ``k`` to ``k + 1`` is clear), at ``turn_cost``. Returns distances in m (inf beyond
    ``limit`` or unreachable) and predecessors (flat indices, negative: none) ``(R, H, W)``."""
    rows, cols = _window(fits, step, limit, source)
    part = (slice(None), rows, cols)
    shape = fits[part].shape
    graph = _push_graph(
        fits[part],
        turns[part],
        slide_ok[..., rows, cols],
        turn_ok[..., rows, cols],
        step,
        turn_cost,
    )
    start = np.ravel_multi_index((source[0], source[1] - rows.start, source[2] - cols.start), shape)
    dist_in, pred_in = csgraph.dijkstra(
        graph, directed=True, indices=int(start), limit=limit, return_predecessors=True
    )
    dist = np.full(fits.shape, np.inf)
    dist[part] = dist_in.reshape(shape)
    pred = np.full(fits.shape, -9999, dtype=pred_in.dtype)  # scipy's "none"
    pred_in = pred_in.reshape(shape)
    has = pred_in >= 0
    k, r, c = np.unravel_index(pred_in[has], shape)
    pred[part][has] = np.ravel_multi_index((k, r + rows.start, c + cols.start), fits.shape)
    return dist, pred


def _window(
    fits: np.ndarray, step: float, limit: float, source: tuple[int, int, int]
) -> tuple[slice, slice]:
    """The rows and columns a push from ``source`` can reach within ``limit``: a slide moves
    the centre by its cost and a turn not at all, so only cells within ``limit`` of the
    source's, in its 8-connected piece of the cells where the box fits at some yaw."""
    _, h, w = fits.shape
    labels, _ = ndimage.label(fits.any(0), structure=np.ones((3, 3), dtype=bool))
    mine = labels[source[1:]]
    keep = labels == mine if mine else np.zeros((h, w), dtype=bool)
    keep[source[1:]] = True
    if np.isfinite(limit):
        r, c = np.ogrid[:h, :w]
        keep &= np.hypot(r - source[1], c - source[2]) * step <= limit + step
    rows, cols = np.flatnonzero(keep.any(1)), np.flatnonzero(keep.any(0))
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


def _push_graph(
    fits: np.ndarray,
    turns: np.ndarray,
    slide_ok: np.ndarray,
    turn_ok: np.ndarray,
    step: float,
    turn_cost: float,
) -> sparse.csr_matrix:
    """The directed graph :func:`pushing_distances` searches, over the flat lattice poses."""
    r, h, w = fits.shape
    plane = h * w
    # The CSR rows directly (no COO sort over millions of edges). Each row lists its targets in
    # ascending order, as a sorted COO conversion leaves them (Dijkstra's ties fall the same
    # way): the edge slots of a pose at yaw k, by target, are the turn to k - 1, the slides by
    # row then column, the turn to k + 1, but for the wrap-around at the first and last yaw.
    shift = np.array(
        [
            [dr * w + dc for dr, dc in MOVES]
            + [((k + 1) % r - k) * plane, ((k - 1) % r - k) * plane]
            for k in range(r)
        ]
    )
    order = np.argsort(shift, axis=1, kind="stable")  # (R, slots): move of each slot
    usual = order[r // 2]
    slot = np.argsort(usual)  # slot of each move in the usual order
    ok = np.zeros((*fits.shape, len(usual)), dtype=bool)
    for m, (dr, dc) in enumerate(MOVES):
        a = (slice(None), slice(max(0, -dr), h - max(0, dr)), slice(max(0, -dc), w - max(0, dc)))
        b = (slice(None), slice(max(0, dr), h - max(0, -dr)), slice(max(0, dc), w - max(0, -dc)))
        ok[(*a, slot[m])] = fits[a] & fits[b] & slide_ok[:, m][a]
    turnable = fits & np.roll(fits, -1, axis=0) & turns  # k <-> k + 1 (cyclic)
    ok[..., slot[-2]] = turnable & turn_ok[:, 0]
    ok[..., slot[-1]] = np.roll(turnable & np.roll(turn_ok[:, 1], -1, axis=0), 1, axis=0)
    for k in np.flatnonzero((order != usual).any(1)):
        ok[k] = ok[k][..., slot[order[k]]]
    rows, slots = np.nonzero(ok.reshape(-1, len(usual)))
    at = rows // plane * len(usual) + slots
    costs = np.array([np.hypot(dr, dc) * step for dr, dc in MOVES] + [turn_cost] * 2)
    return sparse.csr_matrix(
        (
            costs[order].ravel()[at],
            (rows + np.take_along_axis(shift, order, axis=1).ravel()[at]).astype(np.int32),
            np.concatenate([[0], np.cumsum(ok.sum(-1).ravel())]),
        ),
        shape=(fits.size, fits.size),
    )
