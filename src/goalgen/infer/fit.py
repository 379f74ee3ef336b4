"""Rigid SE(2) fits of a known box footprint to sampled goal masks, vectorised over samples.

Grid. A model mask of ``S`` pixels is the area-resize (adaptive average pooling, as in training)
of a native ``N``-pixel image drawn in a frame (:class:`goalgen.data.geometry.NamoFrame` or
:class:`goalgen.data.frames.GridFrame`). Its cell ``(r, c)`` averages the native pixels
``[floor(r N / S), ceil((r + 1) N / S))`` of each axis, so the cell stands for the mean of their
sample points: :func:`cell_centres` gives the world ``x`` of every column and ``y`` of every
row (both frames are separable). With ``S == N`` these are the sample points themselves.

Fit, per sample: the mask ``probs >= threshold`` and its largest 8-connected blob; the centre
is the centroid of the probabilities over the blob grown by one pixel (soft edges give
sub-pixel information); the yaw minimises the squared error ``sum (p - coverage)^2`` over a
window of image cells, where ``coverage`` is a soft footprint of the known size (``clip((w/2 - |u|)/cell + 1/2, 0, 1)`` times
the same along ``v``, ``(u, v)`` a cell centre in the box's frame): coarse over the box's
symmetry period (a half turn, a quarter for a square), then three finer rounds. A blob cut by
the image border biases its centroid, so for those the centre is refined by the same score.
The yaw is reported as the representative nearest to ``yaw_ref`` (the object's current yaw).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

SQUARE_TOLERANCE = 0.05  # |w - h| <= 5 % of the long side: symmetric under a quarter turn
COARSE_YAWS = 36
REFINE_YAWS = 9
REFINE_ROUNDS = 3
BORDER_STEP = 1.0  # cells: centre search for blobs cut by the image border, 7 x 7 shifts ...
BORDER_ROUNDS = 4  # ... per round, alternating with the yaw search, then two finer rounds

_PLANE8 = np.zeros((3, 3, 3), dtype=bool)
_PLANE8[1] = True


def cell_centres(frame, size: int) -> tuple[np.ndarray, np.ndarray, float]:
    """World ``x`` of each column ``(size,)``, ``y`` of each row ``(size,)`` and the cell side
    (m) of masks at ``size`` px area-resized from ``frame`` (native ``frame.size`` px)."""
    n = frame.size
    r = np.arange(size)
    lo = np.floor(r * n / size)
    hi = np.ceil((r + 1) * n / size)
    mid = (lo + hi - 1) / 2
    zero = np.zeros_like(mid)
    xs = frame.pixel_to_world(np.stack([zero, mid], -1))[:, 0]
    ys = frame.pixel_to_world(np.stack([mid, zero], -1))[:, 1]
    return xs, ys, frame.side / size


def period_of(w: float, h: float) -> float:
    """Yaw period of a ``w x h`` box: pi, or pi / 2 for a square."""
    return np.pi / 2 if abs(w - h) <= SQUARE_TOLERANCE * max(w, h) else np.pi


def wrap(angle: np.ndarray | float, period: float) -> np.ndarray:
    """``angle`` modulo ``period``, in ``(-period / 2, period / 2]``."""
    return period / 2 - np.mod(period / 2 - np.asarray(angle, dtype=np.float64), period)


@dataclass
class FitResult:
    """Fits of K samples; rows of empty samples are NaN."""

    poses: np.ndarray  # (K, 3) x, y, yaw (world units, radians)
    iou: np.ndarray  # (K,) IoU of the fitted footprint (coverage >= 0.5) with the mask
    empty: np.ndarray  # (K,) bool: no pixel reached the threshold
    blobs: np.ndarray  # (K,) int: 8-connected blobs in the mask
    border: np.ndarray  # (K,) bool: the largest blob touches the image border


def _extend(axis: np.ndarray, pad: int) -> np.ndarray:
    """``axis`` ``(S,)`` extended linearly by ``pad`` cells at both ends."""
    step_lo, step_hi = axis[1] - axis[0], axis[-1] - axis[-2]
    lo = axis[0] + step_lo * np.arange(-pad, 0)
    hi = axis[-1] + step_hi * np.arange(1, pad + 1)
    return np.concatenate([lo, axis, hi])


class _Windows:
    """Per-sample windows of ``2 * half + 1`` cells around a centre pixel."""

    def __init__(self, probs, xs, ys, rows, cols, half):
        k = probs.shape[0]
        padded = np.pad(probs.astype(np.float32), ((0, 0), (half, half), (half, half)))
        valid = np.pad(np.ones(probs.shape[1:], dtype=bool), half)
        offs = np.arange(2 * half + 1)
        ri = rows[:, None] + offs  # (K, n) indices into the padded arrays
        ci = cols[:, None] + offs
        self.p = padded[np.arange(k)[:, None, None], ri[:, :, None], ci[:, None, :]]
        self.valid = valid[ri[:, :, None], ci[:, None, :]]
        self.x = _extend(xs, half)[ci][:, None, None, :].astype(np.float32)  # (K, 1, 1, n)
        self.y = _extend(ys, half)[ri][:, None, :, None].astype(np.float32)  # (K, 1, n, 1)
        self.target = self.p * self.valid  # (K, n, n)

    def coverage(self, cx, cy, yaw, w, h, cell):
        """Soft footprints ``(K, T, n, n)`` for candidate poses ``(K, T)``."""
        f32 = np.float32
        dx = self.x - cx[..., None, None].astype(f32)
        dy = self.y - cy[..., None, None].astype(f32)
        c, s = np.cos(yaw)[..., None, None].astype(f32), np.sin(yaw)[..., None, None].astype(f32)
        u, v = np.abs(dx * c + dy * s), np.abs(dy * c - dx * s)
        cu = np.clip((f32(w / 2) - u) / f32(cell) + f32(0.5), 0, 1)
        return cu * np.clip((f32(h / 2) - v) / f32(cell) + f32(0.5), 0, 1)

    def scores(self, cx, cy, yaw, w, h, cell):
        """``(K, T)``: minus the squared error between the footprints and the probabilities
        over the image cells of the windows (up to a constant per sample)."""
        cov = self.coverage(cx, cy, yaw, w, h, cell)
        return (cov * (2 * self.target[:, None] - cov * self.valid[:, None])).sum((2, 3))


def _largest_blobs(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The largest 8-connected blob of each mask ``(K, S, S)`` and the number of blobs."""
    labels, count = ndimage.label(masks, structure=_PLANE8)
    k = masks.shape[0]
    if count == 0:
        return np.zeros_like(masks), np.zeros(k, dtype=np.int64)
    flat = labels.reshape(k, -1)
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    owner = np.zeros(count + 1, dtype=np.int64)
    owner[flat.ravel()] = np.repeat(np.arange(k), flat.shape[1])
    blobs = np.bincount(owner[1:], minlength=k)
    best = np.zeros(k, dtype=np.int64)
    order = np.lexsort((sizes[1:], owner[1:]))  # by sample, then size: last per sample wins
    best[owner[1:][order]] = np.arange(1, count + 1)[order]
    keep = (labels == best[:, None, None]) & (best[:, None, None] > 0)
    return keep, blobs


def fit_boxes(
    probs: np.ndarray,
    xs: np.ndarray,
    ys: np.ndarray,
    cell: float,
    w: float,
    h: float,
    yaw_ref: float,
    threshold: float = 0.5,
) -> FitResult:
    """Fit a ``w x h`` box rigidly to each of ``probs`` ``(K, S, S)`` in [0, 1] (see the
    module docstring); ``xs``, ``ys``, ``cell`` from :func:`cell_centres`."""
    probs = np.asarray(probs, dtype=np.float64)
    k = probs.shape[0]
    masks = probs >= threshold
    empty = ~masks.any((1, 2))
    keep, blobs = _largest_blobs(masks)
    grown = ndimage.binary_dilation(keep, structure=np.ones((1, 3, 3), dtype=bool))
    weight = probs * grown
    total = np.maximum(weight.sum((1, 2)), 1e-12)
    cx = (weight.sum(1) * xs).sum(1) / total
    cy = (weight.sum(2) * ys).sum(1) / total
    border = keep[:, [0, -1], :].any((1, 2)) | keep[:, :, [0, -1]].any((1, 2))
    poses = np.full((k, 3), np.nan)
    iou = np.zeros(k)
    live = np.flatnonzero(~empty)
    if len(live):
        poses[live], iou[live] = _fit_live(
            probs[live], masks[live], cx[live], cy[live], border[live], xs, ys, cell, w, h
        )
        poses[live, 2] = yaw_ref + wrap(poses[live, 2] - yaw_ref, period_of(w, h))
    return FitResult(poses, iou, empty, blobs, border & ~empty)


def _fit_live(probs, masks, cx, cy, border, xs, ys, cell, w, h):
    reach = int(np.ceil(np.hypot(w, h) / 2 / cell))  # cells from the centre to a corner
    half = reach + 2
    cols = np.abs(xs[None, :] - cx[:, None]).argmin(1)  # window starts, in padded indices
    rows = np.abs(ys[None, :] - cy[:, None]).argmin(1)
    win = _Windows(probs, xs, ys, rows, cols, half)
    period = period_of(w, h)

    def best_yaw(win: _Windows, cx, cy, center):
        yaws = center[:, None] + np.linspace(-period / 2, period / 2, COARSE_YAWS, endpoint=False)
        step = period / COARSE_YAWS
        for round_ in range(REFINE_ROUNDS + 1):
            if round_:
                yaws = center[:, None] + np.linspace(-step, step, REFINE_YAWS)
                step = 2 * step / (REFINE_YAWS - 1)
            scores = win.scores(cx[:, None], cy[:, None], yaws, w, h, cell)
            center = yaws[np.arange(len(yaws)), scores.argmax(1)]
        return center

    yaw = best_yaw(win, cx, cy, np.zeros(len(cx)))
    if border.any():  # a clipped blob: its centroid is biased; alternate centre and yaw
        b = np.flatnonzero(border)
        sub = _Windows(probs[b], xs, ys, rows[b], cols[b], 2 * reach + 2)
        x0, y0 = cx[b], cy[b]
        cx, cy = cx.copy(), cy.copy()
        for step in [*[BORDER_STEP] * BORDER_ROUNDS, BORDER_STEP / 4, BORDER_STEP / 16]:
            shifts = np.arange(-3, 4) * step * cell
            dx, dy = (g.ravel() for g in np.meshgrid(shifts, shifts))
            tx = np.clip(cx[b, None] + dx, x0[:, None] - reach * cell, x0[:, None] + reach * cell)
            ty = np.clip(cy[b, None] + dy, y0[:, None] - reach * cell, y0[:, None] + reach * cell)
            scores = sub.scores(tx, ty, np.repeat(yaw[b, None], tx.shape[1], 1), w, h, cell)
            pick = scores.argmax(1)
            cx[b], cy[b] = tx[np.arange(len(b)), pick], ty[np.arange(len(b)), pick]
            yaw[b] = best_yaw(sub, cx[b], cy[b], yaw[b])
    cov = win.coverage(cx[:, None], cy[:, None], yaw[:, None], w, h, cell)[:, 0]
    foot = (cov >= 0.5) & win.valid
    inter = (foot & (win.p >= 0.5)).sum((1, 2))
    union = masks.sum((1, 2)) + foot.sum((1, 2)) - inter
    return np.stack([cx, cy, yaw], 1), inter / np.maximum(union, 1)
