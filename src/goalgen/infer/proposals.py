"""Ranked, verified goal proposals for the selected box: samples -> rigid fits -> checks.

>>> result = propose(predictor, "scene.xml", 32, top=4, object_name="obstacle_1_movable")
>>> [(p.x, p.y, p.theta, p.verified, p.push_distance) for p in result]

Per sample (all K of a draw at once): the selected box's own footprint is fitted rigidly to the
sampled mask (:mod:`goalgen.infer.fit`: position and yaw, its size fixed), re-rendered at the
scene's resolution and checked (:class:`goalgen.infer.propose_scene.Checker`), all with a
``clearance`` (metres, default ``CLEARANCE`` = 2.5 cm, half of a planner's 5 cm reachability
cell): it collides with nothing (walls, other boxes, the robot; kept ``clearance`` from each,
exactly in world coordinates when the geometry is known, else on the masks), the robot grown
by the clearance then reaches its goal, and the robot can push the box there: a finite push
distance on the push field, which counts only moves the robot can push from where it can
stand (never a pull), and, with world geometry, a push plan whose every segment checks out
(:mod:`goalgen.infer.push_plan`: the swept box clear, the robot able to get behind it). A
sample whose fitted footprint overlaps it by less than ``min_fit_iou`` is no fit of the object
(``"poor fit"``); empty samples give no candidate.

Snap (world geometry only): a fitted pose that collides or blocks the robot's route is moved
to the nearest pose within ``snap`` model cells and ``SNAP_YAW`` (on the call's world-aligned
:class:`SnapLattice`; nearest by ``|dxy| + r |dyaw|``, ``r`` half the box's diagonal) that
is collision-free with a finite push and opens the route, else to the nearest collision-free
one with a finite push, before the checks, since a sample placed right but a pixel off at
the model's resolution (walls ~1 px thick at 64 px, gaps the robot passes with a few cm to
spare) is the planner's goal in all but that pixel. ``snapped`` says how far it moved (0: as
fitted); ``snap=0`` turns it off.

Verified = collision-free and route open with the clearance, and pushable (``pushable``, its
``segments``); ``room`` is what it leaves to spare (:meth:`Checker.room`, at least the
clearance). Ranking: verified first, by push distance plus ``ROOM_WEIGHT`` times the room
missing to ``clearance + max(room_levels(robot_radius))`` (5 cm for robots of 0.15 m or more,
a third of the radius for smaller ones; chosen on 50 dev rooms: the top proposal passes a 5 cm
judge in 72.5 % of them against 70 % by push distance alone, for 1 mm more push), then
the rest by push distance (inf last), then fit IoU. Push plans are made lazily in that order
(see :func:`rank`). Near-duplicates (centres within ``merge_distance``, default the box's
short side, yaws within ``merge_angle`` modulo the box's symmetry, same verdict) are merged
into the better one, which lists their sample indices, so the first few are different modes.
With ``top``, when fewer than ``top`` distinct proposals verify, more samples are drawn (``K``
per round) until ``max_samples`` (default ``DRAWS K``), or until a draw adds no distinct verified
proposal once one verifies (on 10 held-out rooms: 3.8 distinct verified of 8 from 96 samples
on average, against 4.0 from 125 without that rule), or until every mode of the verified
proposals has been drawn at least twice (Good-Turing: no mode drawn once, little chance of a
new one; on 50 held-out mazes and rooms the euler-8 weights drew 50 and 60 samples instead of
75 and 88, at the same scores). A mode is a chain of verified proposals each within twice the
merge distance of the next: a continuous stretch of good poses merges into several proposals
one merge distance apart, and its edges, drawn once, are no new mode (on 50 held-out rooms the
shipped weights' second draws 48 -> 36 % of calls, distinct verified 2.74 -> 2.70, same
scores). ``samples_drawn`` says how many.

Poses: ``theta`` is the box's world yaw, the representative nearest its current yaw (the
least turn), ``quaternion`` scalar-first ``(w, x, y, z)`` about z. Units are metres (or pixels
for masks without world bounds: ``units``).

``predictor`` is anything with ``image_size``, ``device`` and ``sample(context, num_samples,
steps, method, generator)`` (a :class:`goalgen.infer.GoalPredictor`, or a stub in tests).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from goalgen.data.pack import resize_masks
from goalgen.infer.fit import cell_centres, fit_boxes, wrap
from goalgen.infer.propose_scene import (
    CLEARANCE,
    MAX_PUSH,
    ROOM_LEVELS,
    Checker,
    ProposalScene,
    as_scene,
)
from goalgen.infer.push_plan import NO_PUSH, PushSegment

MIN_FIT_IOU = 0.3
# Draws of K samples a call with ``top`` makes at most (max_samples = DRAWS K): on 50 held-out
# mazes and 50 rooms the shipped one-step weights with K = 32 score the same success_near @1
# and @8 with 2 draws as with 4; draws 3 and 4 gave one scene per family its only verified
# proposal (pushed@1 mazes 0.90 -> 0.92, rooms 0.98 -> 1.00) at ~1 s per such call, and the
# planner's call p95 is 0.45 s against 0.73 s (mazes), 0.40 s against 0.63 s (rooms)
DRAWS = 2
MERGE_ANGLE = 30.0  # degrees
# Ranking among verified proposals: push distance plus ROOM_WEIGHT times the room missing to
# clearance + max(room levels): a pose that leaves the robot 5 cm less room must save 10 cm of
# push to rank first (weights 0 / 2 / 5 on 50 dev rooms: top proposal passing a 5 cm judge
# 70 / 72.5 / 72.5 %; on dev mazes no difference).
ROOM_WEIGHT = 2.0
# Model cells a fit that collides or blocks the route may move: on 50 dev mazes (seed 9103,
# flow euler 8, K = 32) proposals success_near@K 0.96 / 0.98 / 1.00 for 1 / 2 / 3 cells at
# 0.35 / 0.79 / 1.43 s per scene; 2 is the cheapest within 2 points of the best.
SNAP = 2.0
SNAP_YAW = 5.0  # degrees a colliding fit may turn (each side)
# The snap lattice (model cells, degrees), one per call, aligned to the world so that a
# draw's near-identical samples share their trial poses and each is checked once: an eighth
# of a cell, as a quarter-cell lattice aligned to each fit was (a quarter cell on the world's
# grid lost a 3 cm gap in 1 of 50 held-out mazes); snap time 2.4x less on held-out mazes,
# 4x on rooms, than with a lattice per fit.
SNAP_STEP, SNAP_YAW_STEP = 0.125, 2.5
# The route search's coarser lattice (cells, degrees): 39 poses instead of 441 within a
# cell; on 50 held-out mazes as many proposals open the route near-optimally, 3x faster.
ROUTE_SNAP_STEP, ROUTE_SNAP_YAW_STEP = 0.5, 5.0


@dataclass
class Proposal:
    """One candidate goal pose of the selected box (see the module docstring)."""

    index: int  # the raw sample's index, in draw order over all rounds
    x: float
    y: float
    theta: float
    footprint: np.ndarray = field(repr=False)  # (N, N) bool at the scene's resolution
    push_distance: float  # world units; inf: the box cannot be pushed there
    collision_free: bool
    opens_path: bool
    fit_iou: float
    reasons: list[str] = field(default_factory=list)  # failed checks
    merged: list[int] = field(default_factory=list)  # near-duplicate samples merged into it
    blobs: int = 1
    snapped: float = 0.0  # world units moved from the fit to the nearest collision-free pose
    pushable: bool | None = None  # None: not checked (checks are lazy past the top ones)
    segments: list[PushSegment] = field(default_factory=list)  # the push plan, when pushable
    room: float = float("nan")  # world units to spare (Checker.room), when verified

    @property
    def verified(self) -> bool:
        """Collision-free with the clearance, route open with it, and pushable."""
        return not self.reasons and self.pushable is True

    @property
    def passes_placement(self) -> bool:
        """Every check but pushability passes (fit, collisions, route, finite push)."""
        return not self.reasons

    @property
    def reachable(self) -> bool:
        return bool(np.isfinite(self.push_distance))

    @property
    def quaternion(self) -> tuple[float, float, float, float]:
        return (float(np.cos(self.theta / 2)), 0.0, 0.0, float(np.sin(self.theta / 2)))

    @property
    def reason(self) -> str | None:
        if not self.reasons and self.pushable is None:
            return "push not checked"
        return "; ".join(self.reasons) or None

    def rank_cost(self, want: float) -> float:
        """Push distance plus ``ROOM_WEIGHT`` times the room missing to ``want`` (the
        clearance plus the largest room level, :attr:`Checker.room_wanted`): the ranking's key
        among verified proposals."""
        room = self.room if np.isfinite(self.room) else want
        return self.push_distance + ROOM_WEIGHT * max(0.0, want - room)

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "x": round(self.x, 6),
            "y": round(self.y, 6),
            "theta": round(self.theta, 6),
            "quaternion": [round(v, 6) for v in self.quaternion],
            "push_distance": round(self.push_distance, 6) if self.reachable else None,
            "verified": self.verified,
            "collision_free": self.collision_free,
            "opens_path": self.opens_path,
            "reachable": self.reachable,
            "pushable": self.pushable,
            "clearance": round(self.room, 6) if np.isfinite(self.room) else None,
            "push_segments": [s.to_dict() for s in self.segments],
            "fit_iou": round(self.fit_iou, 4),
            "reason": self.reason,
            "merged": list(self.merged),
            "support": 1 + len(self.merged),
            "footprint_px": int(self.footprint.sum()),
            "snapped": round(self.snapped, 6),
        }


@dataclass
class ProposalSet:
    """Ranked proposals of one scene, with what it took to get them."""

    scene: ProposalScene = field(repr=False)
    proposals: list[Proposal]  # ranked, near-duplicates merged, at most ``top``
    candidates: list[Proposal] = field(repr=False)  # every fitted sample, in draw order
    samples: np.ndarray = field(repr=False)  # (drawn, S, S) float32 sample probabilities
    context: np.ndarray = field(repr=False)  # (5, S, S) float32 in [0, 1], the model's input
    rejected: dict[int, str] = field(default_factory=dict)  # sample index -> "empty"
    num_samples: int = 32  # per round
    top: int | None = None
    # setup, sampling, post = fit + snap + check (evaluate_samples) + rank (with push plans)
    seconds: dict[str, float] = field(default_factory=dict)
    checker: Checker | None = field(default=None, repr=False)

    def __iter__(self):
        return iter(self.proposals)

    def __len__(self) -> int:
        return len(self.proposals)

    def __getitem__(self, i):
        return self.proposals[i]

    @property
    def samples_drawn(self) -> int:
        return int(self.samples.shape[0])

    @property
    def verified(self) -> list[Proposal]:
        return [p for p in self.proposals if p.verified]

    @property
    def raw_verified_share(self) -> float:
        """Share of drawn samples whose own fitted footprint verifies (before ranking). With
        ``top``, a sample whose push was never planned (a near-duplicate of a verified one, or
        past the ranking's bound) counts by its other checks."""
        ok = sum(c.passes_placement and c.pushable is not False for c in self.candidates)
        return ok / max(self.samples_drawn, 1)

    @property
    def verified_share(self) -> float:
        """Share of returned proposals that verify."""
        return len(self.verified) / len(self.proposals) if self.proposals else float("nan")

    def to_json(self) -> dict[str, Any]:
        s = self.scene
        return {
            "scene": s.name,
            "object": s.object_name,
            "units": s.units,
            "image_size": s.size,
            "model_image_size": int(self.context.shape[-1]),
            "world_bounds": [round(float(v), 6) for v in s.frame.bounds],
            "world_geometry": s.world is not None,
            "route_exists_without_object": bool(self.checker.route_exists)
            if self.checker
            else None,
            "num_samples": self.num_samples,
            "top": self.top,
            "samples_drawn": self.samples_drawn,
            "oversampling": self.samples_drawn / max(self.num_samples, 1),
            "raw_verified_share": round(self.raw_verified_share, 4),
            "verified_share": None if not self.proposals else round(self.verified_share, 4),
            "num_verified": len(self.verified),
            "empty_samples": len(self.rejected),
            "seconds": {k: round(v, 4) for k, v in self.seconds.items()},
            "theta_convention": "world yaw (rad, counter-clockwise from x); the representative "
            "nearest the object's current yaw; quaternion scalar-first (w, x, y, z)",
            "proposals": [p.to_dict() for p in self.proposals],
        }


# ----------------------------------------------------------------------------- per draw
_KEY_BASE = np.array([1, 2**21, 2**42], dtype=np.int64)


class _Memo:
    """A pure check of lattice poses, each pose checked once: its keys sorted, and verdicts."""

    def __init__(self) -> None:
        self.keys = np.empty(0, dtype=np.int64)
        self.values = np.empty(0, dtype=bool)

    def __len__(self) -> int:
        return len(self.keys)

    def __call__(self, names: np.ndarray, poses: np.ndarray, check) -> np.ndarray:
        """``(L,)`` verdicts of poses ``(L, 5)`` named ``names`` ``(L,)`` int64; ``check``
        runs once on the unknown ones (each once)."""
        out = np.zeros(len(names), dtype=bool)
        at = np.searchsorted(self.keys, names)
        known = at < len(self.keys)
        known[known] = self.keys[at[known]] == names[known]
        out[known] = self.values[at[known]]
        todo = np.flatnonzero(~known)
        if len(todo):
            new, first, back = np.unique(names[todo], return_index=True, return_inverse=True)
            values = np.asarray(check(poses[todo[first]]), dtype=bool)
            out[todo] = values[back]
            keys = np.concatenate([self.keys, new])
            order = np.argsort(keys, kind="stable")
            self.keys, self.values = keys[order], np.concatenate([self.values, values])[order]
        return out


class SnapLattice:
    """The poses a stuck fit may snap to, and their checks, memoised over one call.

    One world-aligned lattice per call: positions every ``SNAP_STEP`` model cells, yaws every
    ``SNAP_YAW_STEP`` degrees from the object's current yaw ``yaw0``; a fit may move to any
    lattice pose within ``reach`` model cells and ``SNAP_YAW`` degrees of it, nearest first by
    ``|dxy| + diagonal / 2 * |dyaw|``. The route search uses the coarser sub-lattice
    (``ROUTE_SNAP_STEP`` cells, ``ROUTE_SNAP_YAW_STEP`` degrees). Near-identical samples (a
    draw's samples of one mode) then try the same poses, and each pose is checked once per
    call: ``usable`` (a finite push, collision-free) and ``opens`` (the route, on the grid).
    """

    def __init__(self, checker: Checker, cell: float, reach: float, diagonal: float, yaw0: float):
        self.checker, self.reach, self.diagonal, self.yaw0 = checker, reach * cell, diagonal, yaw0
        self.step = SNAP_STEP * cell
        self.yaw_step = np.radians(SNAP_YAW_STEP)
        # lattice steps from a fit's nearest lattice pose (at most half a step off each axis)
        # to every pose within reach of it, in a fixed (meshgrid) order: (L, 3)
        n = int(np.ceil(reach / SNAP_STEP)) + 1
        m = int(np.floor(SNAP_YAW / SNAP_YAW_STEP + 0.5))
        self.around = self._offsets((1, 1, 1), n, m, reach / SNAP_STEP + 1)
        self.coarse_every = np.array(
            [round(ROUTE_SNAP_STEP / SNAP_STEP)] * 2 + [round(ROUTE_SNAP_YAW_STEP / SNAP_YAW_STEP)]
        )
        # the same from the coarse lattice pose below the nearest pose, coarse steps only
        every = self.coarse_every
        self.around_coarse = self._offsets(every, n + every[0], m + every[2], n + 2 * every[0])
        self._usable, self._opens = _Memo(), _Memo()

    @staticmethod
    def _offsets(every, n: int, m: int, radius: float) -> np.ndarray:
        """``(L, 3)`` multiples of ``every`` within ``n`` steps each way and ``radius`` in
        position, ``m`` in yaw, in meshgrid order."""
        side = [np.arange(-(n // e) * e, n + 1, e) for e in every[:2]]
        grid = np.meshgrid(*side, np.arange(-(m // every[2]) * every[2], m + 1, every[2]))
        offsets = np.column_stack([g.ravel() for g in grid])
        return offsets[np.hypot(*offsets[:, :2].T) <= radius]

    @classmethod
    def of(cls, checker: Checker, size: int, snap: float) -> SnapLattice:
        """The lattice of ``checker``'s scene for samples at ``size`` px, ``snap`` model cells
        of reach, around the selected box's current yaw."""
        scene = checker.scene
        _, _, w, h, yaw = (float(v) for v in scene.target)
        _, _, cell = cell_centres(scene.frame, size)
        return cls(checker, cell, snap, float(np.hypot(w, h)), yaw)

    def poses(self, keys: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """``(..., 5)`` world boxes of lattice ``keys`` ``(..., 3)`` with the sizes of
        ``boxes`` ``(..., 5)`` (broadcast)."""
        out = np.empty((*keys.shape[:-1], 5))
        out[..., :2] = keys[..., :2] * self.step
        out[..., 2:4] = boxes[..., 2:4]
        out[..., 4] = self.yaw0 + keys[..., 2] * self.yaw_step
        return out

    def trials_of(
        self, boxes: np.ndarray, coarse: bool = False
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Lattice keys ``(K, L, 3)`` and boxes ``(K, L, 5)`` fits ``boxes`` ``(K, 5)`` may
        snap to, nearest first (ties in a fixed order), and ``(K, L)`` which are within reach
        (those come first in each row)."""
        steps = [boxes[:, 0] / self.step, boxes[:, 1] / self.step]
        anchor = np.round(np.stack([*steps, (boxes[:, 4] - self.yaw0) / self.yaw_step], -1))
        anchor = anchor.astype(np.int64)
        if coarse:
            anchor = anchor // self.coarse_every * self.coarse_every
        keys = anchor[:, None] + (self.around_coarse if coarse else self.around)[None]
        dxy = np.hypot(
            keys[..., 0] * self.step - boxes[:, 0, None],
            keys[..., 1] * self.step - boxes[:, 1, None],
        )
        dyaw = np.abs(self.yaw0 + keys[..., 2] * self.yaw_step - boxes[:, 4, None])
        valid = (dxy <= self.reach + 1e-12) & (dyaw <= np.radians(SNAP_YAW) + 1e-12)
        cost = np.where(valid, dxy + self.diagonal / 2 * dyaw, np.inf)
        order = np.argsort(cost, axis=1, kind="stable")[:, : valid.sum(1).max(initial=0)]
        rows = np.arange(len(boxes))[:, None]
        keys = keys[rows, order]
        return keys, self.poses(keys, boxes[:, None]), valid[rows, order]

    def check_usable(self, boxes: np.ndarray) -> np.ndarray:
        """``(K,)``: boxes ``(K, 5)`` with a finite push and no collision (the cheap check
        first); not memoised."""
        out = np.isfinite(self.checker.push_distance(boxes))
        out[out] = self.checker.collision_free(boxes[out])
        return out

    def usable(self, keys: np.ndarray, poses: np.ndarray) -> np.ndarray:
        """``(L,)``: :meth:`check_usable` of lattice poses, memoised."""
        return self._usable(keys @ _KEY_BASE, poses, self.check_usable)

    def opens(self, keys: np.ndarray, poses: np.ndarray) -> np.ndarray:
        """``(L,)``: the route is open on the grid (:meth:`Checker.opens`, ``exact=False``)."""
        return self._opens(
            keys @ _KEY_BASE, poses, lambda boxes: self.checker.opens(boxes, exact=False)
        )

    @staticmethod
    def first(
        check,
        keys: np.ndarray,
        poses: np.ndarray,
        valid: np.ndarray,
        chunk: int = 256,
        grow: int = 2,
    ) -> np.ndarray:
        """``(K,)`` the index of each row's first trial (of ``keys`` ``(K, L, 3)``, ``poses``
        ``(K, L, 5)``, ``valid`` ``(K, L)``, valid ones first in each row) that passes
        ``check`` (:meth:`usable` or :meth:`opens`), -1 if none: ``chunk`` columns at a time,
        ``grow`` times as many each time (a stuck fit's nearest usable pose is near or
        nowhere), every row's in one call."""
        found = np.full(len(keys), -1)
        start = 0
        while start < keys.shape[1]:
            rows = np.flatnonzero((found < 0) & valid[:, start : start + 1].any(1))
            if not len(rows):
                break
            part = np.zeros((len(rows), min(chunk, keys.shape[1] - start)), dtype=bool)
            live = valid[rows, start : start + part.shape[1]]
            part[live] = check(
                keys[rows, start : start + part.shape[1]][live],
                poses[rows, start : start + part.shape[1]][live],
            )
            hit = part.any(1)
            found[rows[hit]] = start + part[hit].argmax(1)
            start, chunk = start + part.shape[1], grow * chunk
        return found


def covered_core(boxes: np.ndarray, reach: float, yaw: float) -> np.ndarray:
    """``(K, 5)``: each box ``(K, 5)`` shrunk on each side by ``reach + diagonal / 2 * yaw``,
    a box that every box moved by at most ``reach`` and turned by at most ``yaw`` (radians)
    covers (a side of 0 or less: none)."""
    margin = reach + np.hypot(boxes[:, 2], boxes[:, 3]) / 2 * yaw
    core = np.array(boxes, dtype=np.float64)
    core[:, 2:4] -= 2 * margin[:, None]
    return core


def snap_free(
    lattice: SnapLattice, boxes: np.ndarray, batch: int = 32
) -> tuple[np.ndarray, np.ndarray]:
    """Each box ``(K, 5)``, one that does not work as fitted (it collides or blocks the
    route), moved to the nearest lattice pose (:class:`SnapLattice`) that is collision-free
    with a push and opens the route -> ``(boxes (K, 5), moved (K,))``, ``moved`` the world
    distance moved; boxes with no such pose stay as they are (``moved`` NaN).

    In order: the first pose of the fine lattice that is collision-free with a finite push
    (the box itself when it is: then it blocks the route), if it also opens the route (or no
    route exists); else the first pose of the coarse lattice that does all three (``batch``
    route trials at a time); else that first one. All boxes search together, so a draw's
    near-identical fits share their checks.
    Every trial covers :func:`covered_core`, so where that core already blocks the route
    (on the same grid) none opens it: no route search."""
    checker = lattice.checker
    boxes = np.array(boxes, dtype=np.float64).reshape(-1, 5)
    k = len(boxes)
    moved = np.full(k, np.nan)
    if k == 0:
        return boxes, moved
    searchable = np.zeros(k, dtype=bool)
    if checker.route_exists:
        core = covered_core(boxes, lattice.reach, np.radians(SNAP_YAW))
        searchable = (core[:, 2:4] <= 0).any(1)
        solid = np.flatnonzero(~searchable)
        searchable[solid] = checker.opens(core[solid], exact=False)
    chosen = np.full((k, 5), np.nan)
    opening = np.zeros(k, dtype=bool)
    as_fitted = lattice.check_usable(boxes)  # collision-free with a push: it blocks the route
    chosen[as_fitted] = boxes[as_fitted]
    stuck = np.flatnonzero(~as_fitted)
    if len(stuck):
        keys, poses, valid = lattice.trials_of(boxes[stuck])
        first = lattice.first(lattice.usable, keys, poses, valid)
        hit = np.flatnonzero(first >= 0)
        rows = stuck[hit]
        chosen[rows] = poses[hit, first[hit]]
        opening[rows] = lattice.opens(keys[hit, first[hit]], chosen[rows])
    search = np.flatnonzero(searchable & ~opening)
    if len(search):
        keys, poses, valid = lattice.trials_of(boxes[search], coarse=True)
        valid[valid] = lattice.usable(keys[valid], poses[valid])
        # each row's usable trials first, in order, then its route search batch by batch
        order = np.argsort(~valid, axis=1, kind="stable")
        keys = np.take_along_axis(keys, order[..., None], 1)
        poses = np.take_along_axis(poses, order[..., None], 1)
        valid = np.take_along_axis(valid, order, 1)
        first = lattice.first(lattice.opens, keys, poses, valid, chunk=batch, grow=1)
        hit = np.flatnonzero(first >= 0)
        chosen[search[hit]] = poses[hit, first[hit]]
    done = np.flatnonzero(np.isfinite(chosen[:, 0]))
    moved[done] = np.hypot(*(chosen[done, :2] - boxes[done, :2]).T)
    boxes[done] = chosen[done]
    return boxes, moved


def evaluate_samples(
    scene: ProposalScene,
    checker: Checker,
    probs: np.ndarray,
    first_index: int = 0,
    min_fit_iou: float = MIN_FIT_IOU,
    snap: float = SNAP,
    lattice: SnapLattice | None = None,
    seconds: dict[str, float] | None = None,
) -> tuple[list[Proposal], dict[int, str]]:
    """Fit, snap and check samples ``probs`` ``(K, S, S)`` in [0, 1] -> candidates (draw
    order) and the indices of empty samples. ``lattice``: the call's snap lattice (its
    checks are reused over draws), else a new one of ``snap`` cells. ``seconds``: adds the
    time of each part (``fit``, ``snap``, ``check``)."""
    seconds = {} if seconds is None else seconds
    start = time.perf_counter()
    xs, ys, cell = cell_centres(scene.frame, probs.shape[-1])
    _, _, w, h, yaw = (float(v) for v in scene.target)
    fit = fit_boxes(probs, xs, ys, cell, w, h, yaw)
    fitted = time.perf_counter()
    snapping = 0.0
    live = np.flatnonzero(~fit.empty)
    rejected = {first_index + int(i): "empty" for i in np.flatnonzero(fit.empty)}
    poses = fit.poses[live]
    boxes = np.column_stack(
        [poses[:, :2], np.full(len(live), w), np.full(len(live), h), poses[:, 2]]
    )
    moved = np.zeros(len(live))
    footprints = checker.footprints(boxes)
    if snap > 0 and scene.world is not None and len(live):
        # a good fit that collides snaps whatever its route: no polygon route check for it
        free = checker.collision_free(boxes)
        opens = checker.opens(boxes, footprints, exact=free | (fit.iou[live] < min_fit_iou))
        stuck = np.flatnonzero(~(opens & free) & (fit.iou[live] >= min_fit_iou))
        if len(stuck):
            if lattice is None:
                lattice = SnapLattice.of(checker, probs.shape[-1], snap)
            t0 = time.perf_counter()
            boxes[stuck], moved[stuck] = snap_free(lattice, boxes[stuck])
            snapping = time.perf_counter() - t0
            moved = np.nan_to_num(moved, nan=0.0)
            footprints[stuck] = checker.footprints(boxes[stuck])
            opens[stuck] = checker.opens(boxes[stuck], footprints[stuck])
    else:
        opens = checker.opens(boxes, footprints)
    collisions = checker.collisions(boxes, footprints)
    push = checker.push_distance(boxes)
    out = []
    for j, i in enumerate(live):
        reasons = []
        if fit.iou[i] < min_fit_iou:
            reasons.append(f"poor fit (IoU {fit.iou[i]:.2f} < {min_fit_iou:.2f})")
        if collisions[j] is not None:
            reasons.append(collisions[j])
        if not opens[j]:
            reasons.append(
                "robot cannot reach its goal"
                + ("" if checker.route_exists else " even without the object")
            )
        if not np.isfinite(push[j]):
            reasons.append(NO_PUSH)
        out.append(
            Proposal(
                index=first_index + int(i),
                x=float(boxes[j, 0]),
                y=float(boxes[j, 1]),
                theta=float(wrap(boxes[j, 4] - yaw, scene.period) + yaw),
                footprint=footprints[j],
                push_distance=float(push[j]),
                collision_free=collisions[j] is None,
                opens_path=bool(opens[j]),
                fit_iou=float(fit.iou[i]),
                reasons=reasons,
                blobs=int(fit.blobs[i]),
                snapped=float(moved[j]),
            )
        )
    done = time.perf_counter()
    for part, spent in (("fit", fitted - start), ("snap", snapping)):
        seconds[part] = seconds.get(part, 0.0) + spent
    seconds["check"] = seconds.get("check", 0.0) + done - fitted - snapping
    return out, rejected


def check_push(checker: Checker, p: Proposal) -> None:
    """Plan the push of a proposal that passes every other check (in place): its segments,
    ``pushable``, why not, and its room (:meth:`Checker.room`)."""
    box = np.array([p.x, p.y, *checker.scene.target[2:4], p.theta])
    p.segments, failure, distance = checker.plan_with_distance(box)
    p.pushable = failure is None
    if failure is not None:
        p.reasons.append(failure)
    else:
        p.push_distance = distance  # the field the plan follows (keeping off walls, if need be)
        p.room = float(checker.room(box[None])[0])


def rank(
    candidates: Sequence[Proposal],
    merge_distance: float,
    merge_angle: float = MERGE_ANGLE,
    period: float = np.pi,
    checker: Checker | None = None,
    top: int | None = None,
) -> list[Proposal]:
    """Candidates ranked with near-duplicates merged into the better one (see the module
    docstring). Returns copies; the candidates keep their push checks (done once each).

    Candidates that pass every other check get their push planned (:func:`check_push`, with
    ``checker``) in order of push distance; with ``top`` (the planner's call), lazily: a
    near-duplicate of a verified one joins it unplanned, and planning stops once ``top``
    verified ones are kept and no candidate left could rank above them (a rank cost is at
    least the push distance).
    Verified first, by :meth:`Proposal.rank_cost` (push distance, room missing), then the
    rest by push distance, fit IoU, index."""
    want = checker.room_wanted if checker is not None else max(ROOM_LEVELS)
    order = sorted(
        candidates, key=lambda p: (not p.passes_placement, p.push_distance, -p.fit_iou, p.index)
    )
    kept: list[Proposal] = []
    limit = np.radians(merge_angle)

    def twin(p: Proposal, verdict: bool) -> Proposal | None:
        for q in kept:
            close = np.hypot(p.x - q.x, p.y - q.y) < merge_distance
            if close and q.verified == verdict and abs(wrap(p.theta - q.theta, period)) < limit:
                return q
        return None

    for p in order:
        if p.passes_placement and p.pushable is None and checker is not None:
            if top is not None:
                q = twin(p, True)
                if q is not None:
                    q.merged.append(p.index)
                    continue
                costs = sorted(q.rank_cost(want) for q in kept if q.verified)
                if len(costs) >= top and p.push_distance >= costs[top - 1]:
                    continue
            check_push(checker, p)
        q = twin(p, p.verified)
        if q is not None:
            q.merged.append(p.index)
        else:
            kept.append(
                Proposal(
                    **{
                        **p.__dict__,
                        "merged": list(p.merged),
                        "reasons": list(p.reasons),
                        "segments": list(p.segments),
                    }
                )
            )
    return sorted(
        kept,
        key=lambda p: (
            not p.verified,
            p.rank_cost(want) if p.verified else p.push_distance,
            -p.fit_iou,
            p.index,
        ),
    )


# ----------------------------------------------------------------------------- the entry
def propose(
    predictor: Any,
    scene: Any,
    num_samples: int = 32,
    top: int | None = None,
    *,
    object_name: str | None = None,
    state: Any = None,
    robot_goal: Sequence[float] | None = None,
    geometry: Any = None,
    max_samples: int | None = None,
    steps: int | None = None,
    method: str | None = None,
    seed: int | None = 0,
    merge_distance: float | None = None,
    merge_angle: float = MERGE_ANGLE,
    min_fit_iou: float = MIN_FIT_IOU,
    clearance: float = CLEARANCE,
    snap: float = SNAP,
    max_push: float = MAX_PUSH,
) -> ProposalSet:
    """Ranked, verified goal proposals for one scene (see the module docstring).

    Args:
        predictor: a :class:`goalgen.infer.GoalPredictor` (or any sampler of that interface).
        scene: an ``.npz`` path, mask arrays ``(5|6, N, N)`` in [0, 1] (with ``geometry``), a
            MuJoCo ``.xml`` path (with ``object_name``, optional ``state``, ``robot_goal``), a
            :class:`goalgen.data.planner_scene.WorldScene` or a prepared ``ProposalScene``.
        num_samples: samples per draw (K).
        top: return at most this many; draw more while fewer verify (up to ``max_samples``).
        seed: noise seed (None: nondeterministic).
        snap: model cells a colliding fit may move to the nearest collision-free pose (0: off).
    Returns:
        A :class:`ProposalSet`: iterate it for the ranked proposals.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if top is not None and top < 1:
        raise ValueError(f"top must be >= 1, got {top}")
    start = time.perf_counter()
    prepared = as_scene(
        scene, object_name=object_name, state=state, robot_goal=robot_goal, geometry=geometry
    )
    budget = (
        max_samples if max_samples is not None else (DRAWS * num_samples if top else num_samples)
    )
    budget = max(budget, num_samples)
    checker = Checker(prepared, clearance, max_push=max_push)
    size = int(predictor.image_size)
    context = resize_masks(np.ascontiguousarray(prepared.masks, dtype=np.float32), size)
    model_input = torch.from_numpy(context)[None] * 2 - 1
    generator = torch.Generator(device=getattr(predictor, "device", "cpu"))
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(int(seed))
    merge = _merge_distance(prepared, merge_distance)
    lattice = SnapLattice.of(checker, size, snap)
    seconds = {"setup": time.perf_counter() - start, "sampling": 0.0, "post": 0.0, "rank": 0.0}
    candidates: list[Proposal] = []
    rejected: dict[int, str] = {}
    draws: list[np.ndarray] = []
    drawn = verified_before = 0
    while True:
        k = min(num_samples, budget - drawn)
        t0 = time.perf_counter()
        out = predictor.sample(model_input, k, steps, method, generator)
        probs = ((out[0, :, 0].float() + 1) / 2).clamp(0, 1).cpu().numpy()
        t1 = time.perf_counter()
        found, empty = evaluate_samples(
            prepared, checker, probs, drawn, min_fit_iou, snap, lattice, seconds
        )
        candidates += found
        rejected.update(empty)
        draws.append(probs)
        drawn += k
        t2 = time.perf_counter()
        ranked = rank(candidates, merge, merge_angle, prepared.period, checker, top)
        t3 = time.perf_counter()
        seconds["sampling"] += t1 - t0
        seconds["rank"] += t3 - t2
        seconds["post"] += t3 - t1
        verified = sum(p.verified for p in ranked)
        stalled = 0 < verified <= verified_before  # a draw that added nothing new
        # Good-Turing: the chance that the next sample is a mode not yet drawn is about the
        # share of samples whose mode was drawn once; none such: another draw adds little
        covered = verified > 0 and _modes_seen_twice(
            [p for p in ranked if p.verified], 2 * merge, np.radians(merge_angle), prepared.period
        )
        verified_before = verified
        if top is None or verified >= top or drawn >= budget or stalled or covered:
            break
    return ProposalSet(
        scene=prepared,
        proposals=ranked[:top] if top else ranked,
        candidates=candidates,
        samples=np.concatenate(draws).astype(np.float32),
        context=context,
        rejected=rejected,
        num_samples=num_samples,
        top=top,
        seconds=seconds,
        checker=checker,
    )


def _modes_seen_twice(
    proposals: Sequence[Proposal], link: float, angle: float, period: float
) -> bool:
    """Was every mode drawn at least twice? A mode: proposals chained by neighbours within
    ``link`` and ``angle`` (a continuous mode merges into several proposals)."""
    n = len(proposals)
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    for i in range(n):
        for j in range(i):
            p, q = proposals[i], proposals[j]
            if (
                np.hypot(p.x - q.x, p.y - q.y) < link
                and abs(wrap(p.theta - q.theta, period)) < angle
            ):
                parent[root(i)] = root(j)
    support: dict[int, int] = {}
    for i, p in enumerate(proposals):
        support[root(i)] = support.get(root(i), 0) + 1 + len(p.merged)
    return all(count >= 2 for count in support.values())


def _merge_distance(scene: ProposalScene, merge_distance: float | None) -> float:
    _, _, w, h, _ = scene.target
    return float(min(w, h)) if merge_distance is None else float(merge_distance)


def proposals_of_samples(
    scene: Any,
    probs: np.ndarray,
    *,
    geometry: Any = None,
    merge_distance: float | None = None,
    merge_angle: float = MERGE_ANGLE,
    min_fit_iou: float = MIN_FIT_IOU,
    clearance: float = CLEARANCE,
    snap: float = SNAP,
    max_push: float = MAX_PUSH,
) -> ProposalSet:
    """The ranked proposals of samples already drawn: ``probs`` ``(K, S, S)`` in [0, 1] at the
    model's resolution ``S`` for ``scene`` (any input :func:`as_scene` takes), fitted, checked
    and ranked exactly as :func:`propose` does with one draw (``seconds``: ``setup`` and
    ``post``; no sampling). ``goalgen-eval`` scores the proposals of its raw samples so."""
    start = time.perf_counter()
    prepared = as_scene(scene, geometry=geometry)
    checker = Checker(prepared, clearance, max_push=max_push)
    probs = np.asarray(probs, dtype=np.float32)
    size = probs.shape[-1]
    context = resize_masks(np.ascontiguousarray(prepared.masks, dtype=np.float32), size)
    t1 = time.perf_counter()
    candidates, rejected = evaluate_samples(prepared, checker, probs, 0, min_fit_iou, snap)
    ranked = rank(
        candidates,
        _merge_distance(prepared, merge_distance),
        merge_angle,
        prepared.period,
        checker,
    )
    seconds = {"setup": t1 - start, "sampling": 0.0, "post": time.perf_counter() - t1}
    return ProposalSet(
        scene=prepared,
        proposals=ranked,
        candidates=candidates,
        samples=probs,
        context=context,
        rejected=rejected,
        num_samples=len(probs),
        seconds=seconds,
        checker=checker,
    )
