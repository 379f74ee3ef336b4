"""goalgen-eval on mixed data: near metrics on maze files, random_local, proposals beside raw
samples, per-family tables, and older files without world geometry."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest

from goalgen.data.pack import resize_masks
from goalgen.data.synthetic import generate_scene, save_npz
from goalgen.eval import near
from goalgen.eval.evaluate import evaluate_run, main
from goalgen.eval.metrics import SceneMasks, score_samples
from goalgen.eval.report import format_table
from goalgen.eval.scoring import proposal_row, read_arrays, score_scene
from goalgen.infer import prepare_scene
from goalgen.infer.proposals import CLEARANCE, Proposal, proposals_of_samples, propose
from goalgen.infer.propose_scene import as_scene
from run_helpers import train_tiny_run
from test_proposals import Oracle

NEAR_KEYS = ("success_near_at_1", "success_near_at_k", "in_feasible_at_k", "modes_covered")


@pytest.fixture(scope="module")
def mixed_dir(tmp_path_factory, synth_dir) -> Path:
    out = tmp_path_factory.mktemp("mixed")
    for i in range(2):
        seq = np.random.SeedSequence(5, spawn_key=(i,))
        save_npz(
            out / f"maze_{i}.npz", generate_scene(seq, 224, "maze", maze_opts={"grid_size": 5})
        )
    rooms = sorted(synth_dir.glob("*.npz"))[:2]
    for p in rooms:
        shutil.copy(p, out / f"rooms_{p.name}")
    with np.load(rooms[0]) as npz:  # an older file: the six masks only
        np.savez_compressed(
            out / "old.npz",
            **{k: npz[k] for k in npz.files if "image" in k or k.startswith("target_")},
        )
    return out


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, synth_dir) -> Path:
    return train_tiny_run(tmp_path_factory.mktemp("evaluate_near"), synth_dir)


@pytest.fixture(scope="module")
def report(run_dir, mixed_dir) -> dict:
    return evaluate_run(run_dir, mixed_dir, num_samples=3, seed=0, device="cpu")


def test_families_and_rows(report):
    fams = report["families"]
    assert {f: v["num_scenes"] for f, v in fams.items()} == {
        "maze": 2,
        "rooms": 2,
        "no_geometry": 1,
    }
    maze = fams["maze"]["methods"]
    for method in (
        "model",
        "proposals",
        "random_valid",
        "random_local",
        "random_local_proposals",
        "leave_in_place",
        "ground_truth",
    ):
        assert all(maze[method][k] is not None for k in NEAR_KEYS), method
        assert maze[method]["scenes"] == 2
    assert maze["leave_in_place"]["success_near_at_k"] == 0
    assert maze["ground_truth"]["modes"] >= 1
    rooms = fams["rooms"]["methods"]
    assert "random_local" in rooms and "success_near_at_1" not in rooms["model"]
    old = fams["no_geometry"]["methods"]
    assert "random_local" not in old and "success_near_at_1" not in old["model"]
    assert "random_local_proposals" in rooms and "random_local_proposals" not in old
    assert old["proposals"]["scenes"] == 1  # masks-only checks
    assert report["scenes_with_feasible_set"] == 2
    assert report["methods"]["random_local"]["scenes"] == 4
    for share in ("raw_verified_share", "proposals_verified_share"):
        value = report["methods"]["proposals"][share]
        assert value is None or 0 <= value <= 1
    assert report["cost"]["proposal_seconds_per_scene"] > 0
    assert {r["family"] for r in report["per_scene"]} == set(fams)
    json.dumps(report, allow_nan=False)


def test_tables_per_family_with_blanks(report):
    table = format_table([report])
    for title in ("[all scenes]", "[family maze]", "[family rooms]", "[family no_geometry]"):
        assert title in table

    def section(title: str) -> str:
        return table.split(f"[family {title}]")[1].split("[family")[0]

    maze = section("maze")
    assert "success_near@1" in maze and "random_local" in maze and "tiny proposals" in maze
    old = section("no_geometry")
    assert "success_near@1" not in old and "random_local" not in old
    rooms = section("rooms")
    assert "success_near@1" not in rooms  # no feasible set in rooms files
    md = format_table([report, report], ["a", "b"], markdown=True)
    assert "**family maze**" in md and "| metric | a | a proposals | b | b proposals |" in md


def test_no_proposals_and_old_reports(run_dir, mixed_dir, tmp_path, capsys):
    out = tmp_path / "r.json"
    args = [str(run_dir), "--data", str(mixed_dir), "--samples", "2", "--max-scenes", "3"]
    assert main([*args, "--device", "cpu", "--out", str(out), "--no-proposals"]) == 0
    saved = json.loads(out.read_text())
    assert "proposals" not in saved["methods"] and saved["settings"]["proposals"] is False
    assert "random_local_proposals" not in saved["methods"]
    assert "proposals" not in capsys.readouterr().out.split("[all scenes]")[1].splitlines()[1]
    v1 = {k: v for k, v in saved.items() if k != "families"} | {"goalgen_eval": 1}
    (tmp_path / "v1.json").write_text(json.dumps(v1))
    assert main(["--compare", str(tmp_path / "v1.json"), str(out)]) == 0
    assert "[family maze]" in capsys.readouterr().out


def test_a_tighter_near_slack_credits_fewer_samples(run_dir, mixed_dir, report):
    """The same samples (same seed) judged with slack 0: no row gains a near-optimal sample,
    random ones lose some, and the ground truth (the nearest feasible pose) keeps its score."""
    tight = evaluate_run(run_dir, mixed_dir, num_samples=3, seed=0, device="cpu", near_slack=0)
    assert tight["settings"]["near_slack"] == 0 and report["settings"]["near_slack"] == 0.05
    maze, strict = report["families"]["maze"]["methods"], tight["families"]["maze"]["methods"]
    for method in maze:
        for key in ("success_near_at_1", "success_near_at_k", "success_near_rate"):
            assert strict[method][key] <= maze[method][key], (method, key)
        assert strict[method]["validity"] == maze[method]["validity"]
    assert maze["random_local"]["success_near_rate"] > strict["random_local"]["success_near_rate"]
    assert strict["ground_truth"]["success_near_at_1"] == 1


def test_proposals_of_samples_match_a_single_draw(mixed_dir):
    path = mixed_dir / "maze_0.npz"
    scene = as_scene(path)
    arrays = dict(np.load(path))
    w, h = scene.target[2:4]
    poses = [tuple(p) for p in arrays["feasible_poses"][:6]] + [None, (0.0, 0.0, 0.3)]
    oracle = Oracle(scene.frame, poses, (w, h), image_size=32)
    drawn = propose(oracle, path, num_samples=len(poses))
    again = proposals_of_samples(path, drawn.samples)
    assert [p.to_dict() for p in again] == [p.to_dict() for p in drawn]
    assert again.rejected == drawn.rejected and again.seconds["sampling"] == 0


def _slid_to_a_wall(path):
    """The scene's goal box slid along an axis until 5 mm short of the first wall or box it
    meets (``touching``) and 2 cm past that (``into``), where the route stays open with the
    box at ``touching``; judged by infer.verify (separating axes, circumscribed polygons)."""
    from goalgen.infer import verify

    arrays = read_arrays(path)
    fixed = np.concatenate(
        [
            arrays["static_walls"],
            np.delete(arrays["movable_boxes"], int(arrays["target_index"]), axis=0),
        ]
    )
    x0, y0, x1, y1 = arrays["world_bounds"]
    reach = verify.ExactReach(
        arrays["world_bounds"],
        fixed,
        arrays["robot_pose"],
        arrays["goal_pose"],
        float(arrays["robot_radius"]),
    )

    def clear(box):
        corners = verify.box_corners(box[None])[0]
        inside = ((corners >= [x0, y0]) & (corners <= [x1, y1])).all()
        return inside and not verify.boxes_overlap(box[None], fixed).any()

    goal = np.asarray(arrays["target_goal_box"], dtype=np.float64)
    for direction in ((1, 0), (-1, 0), (0, 1), (0, -1)):
        step = np.array([*direction, 0, 0, 0], dtype=np.float64)
        hits = [d for d in np.arange(0.0, 1.0, 0.005) if not clear(goal + d * step)]
        if clear(goal) and hits:
            touching, into = goal + (hits[0] - 0.005) * step, goal + (hits[0] + 0.02) * step
            if not clear(into) and reach.opens(touching[None])[0]:
                yield arrays, touching, into


def test_rooms_proposals_are_judged_at_their_exact_pose(mixed_dir):
    """In a rooms scene, a proposal 5 mm short of a wall succeeds and one 2 cm into it fails,
    as the proposals' own checks say, where their 32 px footprints judged as masks disagree
    (in these rooms the pixel judge credits the one in the wall)."""
    size = 32
    for path in sorted(mixed_dir.glob("rooms_*.npz")):
        scene, frame = prepare_scene(path, size), as_scene(path).frame
        masks = SceneMasks.from_soft(scene.context, None, scene.geometry)
        for arrays, touching, into in _slid_to_a_wall(path):
            boxes = (touching, into)
            feet = np.stack([frame.box_mask(b[0], b[1], b[2], b[3], b[4]) for b in boxes])
            small = resize_masks(feet.astype(np.float32), size)
            by_pixels = score_samples(small >= 0.5, masks)["success_rate"]
            if by_pixels == 0.5:
                continue  # the pixel judge agrees with the world's: nothing to tell apart
            chosen = [
                Proposal(i, b[0], b[1], b[4], f, 0.0, True, True, 1.0)
                for i, (b, f) in enumerate(zip(boxes, feet, strict=True))
            ]
            result = replace(proposals_of_samples(path, small), proposals=chosen)
            rows, _ = score_scene(scene, small >= 0.5, 0, 0, arrays, result)
            got = rows["proposals"]
            assert (got["validity"], got["success_at_1"], got["success_rate"]) == (0.5, 1, 0.5)
            assert rows["model"]["success_rate"] == by_pixels  # the footprints as masks
            return
    pytest.fail("no rooms scene whose goal box slides up to a wall with its route open")


def test_judge_clearance_is_recorded_and_never_credits_more(run_dir, mixed_dir, report):
    """The same proposals (proposals' clearance the default) judged touching-allowed: the
    settings say so, no success count drops, and the reference rows are shown per setting."""
    loose = evaluate_run(
        run_dir, mixed_dir, num_samples=3, seed=0, device="cpu", judge_clearance=0.0
    )
    assert report["settings"]["clearance"] == report["settings"]["judge_clearance"] == CLEARANCE
    assert (loose["settings"]["clearance"], loose["settings"]["judge_clearance"]) == (CLEARANCE, 0)
    keys = ("validity", "success_rate", "success_at_k", "success_near_at_k", "success_near_rate")
    strict, lax = report["families"]["maze"]["methods"], loose["families"]["maze"]["methods"]
    for method in ("model", "proposals", "random_local", "ground_truth"):
        for key in keys:
            assert strict[method][key] <= lax[method][key], (method, key)
    table = format_table([report, loose], ["a", "b"])
    assert "random_valid [a]" in table and "random_valid [b]" in table
    assert "(judged at 0.0 m)" in table.splitlines()[1]


@dataclass
class _Proposal:
    """What the proposals row reads of a proposal; ``segments`` set only where given."""

    x: float
    y: float
    theta: float
    footprint: np.ndarray
    push_distance: float = 1.0
    verified: bool = True


class _Segment(dict):
    def to_dict(self) -> dict:
        return dict(self)


def test_the_proposals_row_counts_verified_proposals_the_judge_passes(mixed_dir):
    """Four proposals at stored feasible poses (clear, route open): verified without a plan
    (passes), verified with a plan that starts elsewhere than the box (fails), verified but
    unreachable (passes the judge, counted unreachable), unverified (counts nowhere)."""
    path = mixed_dir / "maze_0.npz"
    arrays, frame = read_arrays(path), as_scene(path).frame
    w, h = arrays["movable_boxes"][int(arrays["target_index"])][2:4]
    poses = arrays["feasible_poses"][:4]
    assert near.world_valid(arrays, poses).all() and near.opens_route(arrays, poses).all()
    feet = [frame.box_mask(x, y, w, h, t) for x, y, t in poses]
    chosen = [_Proposal(*pose, foot) for pose, foot in zip(poses, feet, strict=True)]
    x, y, t = poses[1]
    chosen[1].segments = [
        _Segment(
            kind="slide",
            box_start=[x - 1.0, y, t],
            box_end=[x, y, t],
            robot_start=[x - 1.5, y],
            robot_end=[x - 0.5, y],
        )
    ]
    chosen[2].push_distance = float("inf")
    chosen[3].push_distance, chosen[3].verified = float("inf"), False
    size = 32
    small = resize_masks(np.stack(feet).astype(np.float32), size)
    result = replace(proposals_of_samples(path, small), proposals=chosen)
    scene = prepare_scene(path, size)
    masks = SceneMasks.from_soft(scene.context, scene.truth, scene.geometry)
    row = proposal_row(result, masks, arrays)
    assert row["proposals_judged_share"] == pytest.approx(2 / 3)
    assert row["proposals_unreachable_verified"] == 1
    none_verified = replace(result, proposals=[chosen[3]])
    assert np.isnan(proposal_row(none_verified, masks, arrays)["proposals_judged_share"])
    assert "proposals_judged_share" not in proposal_row(result, masks, None)
