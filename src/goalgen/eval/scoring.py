"""Scoring one scene for ``goalgen-eval``: the model's samples and the rows beside them.

:func:`score_scene` scores a scene's K samples with :mod:`goalgen.eval.metrics`, next to
reference rows scored the same way, so every number has a floor and a ceiling:

- ``proposals``: the model's own K samples turned into ranked, verified proposals
  (:func:`goalgen.infer.proposals.proposals_of_samples`: the object's footprint fitted to each
  sample, checked, ranked, near-duplicates merged; no second draw), scored as masks (their
  footprints) by the same metrics, except that in scenes with world geometry validity,
  success and the near metrics judge each proposal at its exact world pose (where a planner
  puts the box) rather than by its footprint's pixels; ``@1`` is the top-ranked proposal.
  The row also holds the verification shares of :func:`goalgen.eval.propose.score_proposals`
  and, with world geometry, how many verified proposals the independent judge
  (:func:`proposal_row`) accepts.
- ``random_valid``: the selected object moved to a random collision-free pose (random
  translation and rotation of its mask, rejection-sampled with a seeded rng);
- ``random_local``: K random collision-free poses within the push search radius of the box
  (:func:`goalgen.eval.near.random_local`; scenes with world geometry only);
- ``random_local_proposals``: those K random poses through the same proposals pipeline as the
  model's samples (fitted, checked, ranked): what sample-and-verify achieves without a model;
- ``leave_in_place``: the object left where it is (its own mask, K times);
- ``ground_truth``: the recorded goal (one sample): what the checks make of a perfect answer
  at this resolution.

Scenes that store a feasible set (``maze`` files) also get the near metrics of
:mod:`goalgen.eval.near` in every row. Scenes without world geometry (older files) are scored
on their masks; their near and random_local columns stay empty.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from goalgen.data.pack import resize_masks
from goalgen.eval import near
from goalgen.eval.metrics import THRESHOLD, SceneMasks, aggregate, invalid_reason, score_samples
from goalgen.eval.propose import score_proposals
from goalgen.infer import SceneInput

METHODS = ("model", "random_valid", "leave_in_place", "ground_truth")  # always scored
OPTIONAL_METHODS = ("proposals", "random_local", "random_local_proposals")  # when available
PROPOSAL_KEYS = (  # score_proposals' shares, kept in the proposals row
    "raw_verified_share",
    "baseline_verified_share",
    "proposals_verified_share",
    "num_proposals",
)
JUDGE_KEYS = (  # the independent judge's verdict on verified proposals (world geometry)
    "proposals_judged_share",
    "proposals_unreachable_verified",
)
PUSHED_KEYS = (  # success that a pushing robot sees: the judge accepts the proposal's push plan
    "pushed_success_at_1",
    "pushed_success_at_k",
    "pushed_near_at_1",
    "pushed_near_at_k",
)
RANDOM_TRIES = 200  # rejection-sampling attempts per random placement


def read_arrays(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every array of a scene file (masks, world geometry, feasible set)."""
    with np.load(path, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


# ----------------------------------------------------------------------------- baselines
def random_valid_placements(
    scene: SceneMasks,
    soft_object: np.ndarray,
    k: int,
    rng: np.random.Generator,
    tries: int = RANDOM_TRIES,
) -> tuple[np.ndarray, int]:
    """``k`` random valid placements ``(k, S, S)`` of the selected object and how many fell
    back to an invalid one (no valid pose found in ``tries`` attempts).

    Each attempt rotates the object's soft mask ``soft_object`` ``(S, S)`` by a uniform angle
    about its centroid, moves it to a uniform free pixel of the map (bilinear resampling,
    threshold 0.5) and keeps it if :func:`goalgen.eval.metrics.invalid_reason` finds nothing.
    """
    size = soft_object.shape[-1]
    out = np.zeros((k, size, size), dtype=bool)
    c0 = np.array(ndimage.center_of_mass(soft_object))
    free = np.argwhere(scene.interior & ~scene.static & ~scene.others)
    if len(free) == 0:
        return np.repeat(scene.target_object[None], k, 0), k
    failed = 0
    for i in range(k):
        candidate = scene.target_object
        for _ in range(tries):
            phi = rng.uniform(0, np.pi)
            c1 = free[rng.integers(len(free))] + rng.uniform(-0.5, 0.5, 2)
            rot = np.array([[np.cos(phi), -np.sin(phi)], [np.sin(phi), np.cos(phi)]])
            moved = ndimage.affine_transform(
                soft_object, rot, offset=c0 - rot @ c1, order=1, mode="constant", cval=0.0
            )
            candidate = moved >= THRESHOLD
            if invalid_reason(candidate, scene) is None:
                break
        else:
            failed += 1
        out[i] = candidate
    return out, failed


# ----------------------------------------------------------------------------- proposals
def _plan_verdicts(
    world: Mapping[str, np.ndarray], proposals: Sequence[Any], poses: np.ndarray, clearance: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(has_plan, accepted, length)`` ``(P,)``: which proposals carry a push plan to judge
    (the pushable ones, and verified ones with ``segments``), whether the judge accepts it
    (:func:`goalgen.eval.near.push_plan_valid` at ``poses`` ``(P, 3)``), in one call, and the
    accepted plans' lengths (:func:`goalgen.eval.near.plan_length`; inf for the others)."""
    has_plan = np.array(
        [
            getattr(p, "segments", None) is not None
            and bool(getattr(p, "pushable", None) or p.verified)
            for p in proposals
        ],
        dtype=bool,
    )
    accepted = np.zeros(len(proposals), dtype=bool)
    length = np.full(len(proposals), np.inf)
    planned = np.flatnonzero(has_plan)
    if len(planned):
        plans = [[s.to_dict() for s in proposals[i].segments] for i in planned]
        accepted[planned] = near.push_plan_valid(world, poses[planned], plans, clearance)
        for i, plan in zip(planned, plans, strict=True):
            if accepted[i]:
                length[i] = near.plan_length(world, plan)
    return has_plan, accepted, length


def _judged(
    proposals: Sequence[Any], success: np.ndarray, has_plan: np.ndarray, accepted: np.ndarray
) -> dict[str, float]:
    """``JUDGE_KEYS`` of one scene's proposals: the share of verified ones that the judge
    passes (``success``: :func:`goalgen.eval.near.world_valid` and
    :func:`goalgen.eval.near.opens_route` at their poses, and their push plan ``accepted``
    where they carry one, :func:`_plan_verdicts`; NaN without a verified one) and how many
    verified ones have no finite push distance."""
    verified = np.array([p.verified for p in proposals], dtype=bool)
    unreachable = ~np.isfinite([float(p.push_distance) for p in proposals])
    judged = success & verified & (~has_plan | accepted)
    return {
        "proposals_judged_share": float(judged.sum() / verified.sum())
        if verified.any()
        else np.nan,
        "proposals_unreachable_verified": float(np.count_nonzero(verified & unreachable)),
    }


def proposal_row(
    result: Any,
    masks: SceneMasks,
    world: Mapping[str, np.ndarray] | None,
    slack: float = near.NEAR_SLACK,
    clearance: float = 0.0,
) -> dict[str, Any]:
    """The proposals of one scene scored like samples (a scene without any proposal scores as
    one empty mask: it fails every check).

    With the scene's world geometry (``world``, :func:`goalgen.eval.near.has_world_geometry`)
    ``validity`` and ``success_*`` judge each proposal at its exact pose, where a planner puts
    the box (:func:`goalgen.eval.near.world_valid` and :func:`goalgen.eval.near.opens_route`
    at ``clearance`` metres, independent of the proposals' own checks), not its footprint's
    pixels: at 64 px a box 1 cm from a wall touches the wall's pixel. ``invalid`` keeps the
    pixel judge's reasons. The same judge, with the proposals' push plans, gives
    ``JUDGE_KEYS`` (:func:`_judged`) and ``PUSHED_KEYS``: success (and success_near) that
    also needs a push plan the judge accepts, what a robot that only pushes sees. With a
    feasible set, the near metrics are judged at the same poses and clearance."""
    scored = score_proposals(result)
    size = masks.size
    row = scored.get("proposals") or score_samples(np.zeros((1, size, size), bool), masks)
    row = dict(row) | {k: scored[k] for k in PROPOSAL_KEYS}
    if world is None:
        return row
    feet, poses = np.zeros((1, size, size), bool), np.full((1, 3), np.nan)
    row |= {"proposals_judged_share": np.nan, "proposals_unreachable_verified": 0.0}
    row |= {"pushed_success_at_1": 0.0, "pushed_success_at_k": 0.0}
    planned = None
    if result.proposals:
        stack = np.stack([p.footprint for p in result.proposals]).astype(np.float32)
        feet = resize_masks(stack, size) >= THRESHOLD
        poses = np.array([(p.x, p.y, p.theta) for p in result.proposals])
        valid = near.world_valid(world, poses, clearance)
        success = valid & near.opens_route(world, poses, clearance)
        row |= {
            "validity": float(valid.mean()),
            "success_rate": float(success.mean()),
            "success_at_1": float(success[0]),
            "success_at_k": float(success.any()),
        }
        has_plan, accepted, planned = _plan_verdicts(world, result.proposals, poses, clearance)
        row |= _judged(result.proposals, success, has_plan, accepted)
        pushable = np.array([bool(getattr(p, "pushable", None)) for p in result.proposals])
        pushed = success & pushable & accepted
        row |= {"pushed_success_at_1": float(pushed[0]), "pushed_success_at_k": float(pushed.any())}
    if near.has_feasible_set(world):
        near_ok = near.success_near(world, feet, slack, masks, poses, clearance, planned)
        row |= near.score_near(
            world, feet, slack, masks=masks, poses=poses, clearance=clearance, near_success=near_ok
        )
        good = near_ok & pushed if result.proposals else np.zeros(1, dtype=bool)
        row |= {"pushed_near_at_1": float(good[0]), "pushed_near_at_k": float(good.any())}
    return row


# ----------------------------------------------------------------------------- scenes
def score_scene(
    scene: SceneInput,
    model_masks: np.ndarray,
    index: int,
    seed: int,
    arrays: Mapping[str, np.ndarray] | None = None,
    proposals: Any = None,
    propose_baseline: Callable[[np.ndarray], Any] | None = None,
    slack: float = near.NEAR_SLACK,
    clearance: float = 0.0,
) -> tuple[dict[str, dict[str, Any]], int]:
    """Metrics of the model's masks ``(K, S, S)`` and of the reference rows for one scene;
    returns ``({method: metrics}, random placements that found no valid pose)``.

    ``arrays``: the scene file's arrays (:func:`read_arrays`): with world geometry they add the
    ``random_local`` row, with a feasible set the near metrics of every row. ``proposals``: the
    :class:`goalgen.infer.proposals.ProposalSet` of the model's samples (adds ``proposals``);
    ``propose_baseline``: masks ``(K, S, S)`` -> their ProposalSet, applied to the
    ``random_local`` masks (adds ``random_local_proposals``). ``slack``: the near metrics'
    (:func:`goalgen.eval.near.success_near`); ``clearance``: metres the world judge demands
    (:func:`goalgen.eval.near.success_near`, :func:`proposal_row`; 0: touching suffices).
    """
    masks = SceneMasks.from_soft(scene.context, scene.truth, scene.geometry)
    k = len(model_masks)
    rng = np.random.default_rng([seed, index])
    random, failed = random_valid_placements(masks, scene.context[4], k, rng)
    sets = {
        "model": model_masks,
        "random_valid": random,
        "leave_in_place": np.repeat(masks.target_object[None], k, 0),
    }
    if masks.truth is not None:
        sets["ground_truth"] = masks.truth[None]
    if arrays is not None and near.has_world_boxes(arrays):
        local_rng = np.random.default_rng([seed, index, 1])
        sets["random_local"], _ = near.random_local(arrays, k, local_rng, size=masks.size)
    feasible = arrays if arrays is not None and near.has_feasible_set(arrays) else None
    world = arrays if arrays is not None and near.has_world_geometry(arrays) else None
    rows = {}
    for name, samples in sets.items():
        rows[name] = score_samples(samples, masks)
        if feasible is not None:
            rows[name] |= near.score_near(
                feasible, samples, slack, masks=masks, clearance=clearance
            )
    if proposals is not None:
        rows["proposals"] = proposal_row(proposals, masks, world, slack, clearance)
    if propose_baseline is not None and "random_local" in sets:
        baseline = propose_baseline(sets["random_local"].astype(np.float32))
        rows["random_local_proposals"] = proposal_row(baseline, masks, world, slack, clearance)
    return rows, failed


def aggregate_methods(records: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per method, :func:`goalgen.eval.metrics.aggregate` of the scenes' rows ``records``
    (``{method: metrics}`` each); ``METHODS`` always, ``OPTIONAL_METHODS`` where scored."""
    out = {}
    for m in METHODS + OPTIONAL_METHODS:
        rows = [r[m] for r in records if m in r]
        if rows or m in METHODS:
            out[m] = aggregate(rows)
    return out
