"""Data sets of synthetic scenes: the families mixed by seed, reproducible files, the CLI and
the generator's speed.

Scene ``i`` of a data set with seed ``s`` is generated from
``np.random.SeedSequence(s, spawn_key=(i,))`` by its family's ``generate_scene``, whatever the
number of scenes or workers; in a ``mixed`` set scene ``i`` is a maze with probability
``maze_share``, an arena with probability ``arena_share`` (default 0) and otherwise rooms,
drawn from one uniform of ``SeedSequence(s, spawn_key=(i, MIX_KEY))``, so its file is the one
a ``rooms``, ``maze`` or ``arena`` set of the same seed has at ``i``.
"""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import re
import sys
import time
import zipfile
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from numpy.lib import format as npy_format
from rich.progress import track

from goalgen.cli import OneLineParser, one_line
from goalgen.data.synthetic import arena, maze, rooms
from goalgen.data.synthetic.maze import MazeOptions
from goalgen.io import atomic_write, atomic_write_text

FAMILIES = ("rooms", "maze", "arena", "mixed")
STAMP_NAME = ".goalgen_synth.json"
MIX_KEY = 1  # spawn_key (i, MIX_KEY) draws scene i's family in a mixed set
_SCENE_NAME = re.compile(r"\.?scene_\d+\.npz(\.tmp)?")  # with the temporary names


def maze_options(maze_opts: MazeOptions | Mapping[str, Any] | None) -> MazeOptions:
    """``MazeOptions`` from options, a mapping of its fields (lists for ranges) or None."""
    if maze_opts is None or isinstance(maze_opts, MazeOptions):
        return maze_opts or MazeOptions()
    fields = dict(maze_opts)
    for key in ("deletion", "boxes"):
        if key in fields:
            fields[key] = tuple(fields[key])
    return MazeOptions(**fields)


def family_of(
    seq: np.random.SeedSequence, family: str, maze_share: float, arena_share: float = 0.0
) -> str:
    """``rooms``, ``maze`` or ``arena``: the family of the scene ``seq`` in a set of ``family``."""
    if family != "mixed":
        return family
    draw = np.random.SeedSequence(seq.entropy, spawn_key=(*seq.spawn_key, MIX_KEY))
    u = np.random.default_rng(draw).random()
    return "maze" if u < maze_share else "arena" if u < maze_share + arena_share else "rooms"


def check_options(
    family: str,
    size: int,
    maze_share: float = 0.5,
    maze_opts: MazeOptions | None = None,
    arena_share: float = 0.0,
) -> str | None:
    """A one-line reason why these options cannot work, or None."""
    if family not in FAMILIES:
        return f"family must be one of {', '.join(FAMILIES)}, got {family!r}"
    mixed = family == "mixed"
    if mixed and not (min(maze_share, arena_share) >= 0 and maze_share + arena_share <= 1):
        return (
            f"maze and arena shares must be >= 0 and sum to <= 1, got {maze_share}, {arena_share}"
        )
    if family in ("rooms", "mixed") and size < rooms.MIN_SIZE:
        return f"size must be >= {rooms.MIN_SIZE}, got {size}"
    if family == "arena" or (mixed and arena_share > 0):
        problem = arena.ArenaOptions().problem(size)
        if problem is not None:
            return problem
    if family in ("maze", "mixed"):
        return maze_options(maze_opts).problem(size)
    return None


def generate_scene(
    seed: int | np.random.SeedSequence,
    size: int = 224,
    family: str = "rooms",
    maze_share: float = 0.5,
    maze_opts: MazeOptions | Mapping[str, Any] | None = None,
    arena_share: float = 0.0,
) -> dict[str, np.ndarray]:
    """One scene of ``family`` as ``{key: array}`` (keys in :mod:`.rooms`, :mod:`.maze`,
    :mod:`.arena`)."""
    seq = maze.seed_sequence(seed)
    kind = family_of(seq, family, maze_share, arena_share)
    if kind == "rooms":
        return rooms.generate_scene(seq, size)
    if kind == "arena":
        return arena.generate_scene(seq, size)
    return maze.generate_scene(seq, size, maze_options(maze_opts))


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` like ``np.savez_compressed``, byte-reproducibly and atomically.

    Members get a fixed timestamp (numpy stamps the current time); the file appears under its
    name only once complete.
    """

    def write(f: BinaryIO) -> None:
        with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for key, value in arrays.items():
                buffer = io.BytesIO()
                npy_format.write_array(buffer, np.asanyarray(value), allow_pickle=False)
                info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                archive.writestr(info, buffer.getvalue(), compress_type=zipfile.ZIP_DEFLATED)

    atomic_write(path, write)


def _write_scene(task: tuple) -> str:
    path, seed, index, size, family, shares, opts = task
    seq = np.random.SeedSequence(seed, spawn_key=(index,))
    save_npz(Path(path), generate_scene(seq, size, family, shares[0], opts, shares[1]))
    return path


def _stamp(
    num_scenes: int,
    seed: int,
    size: int,
    family: str,
    shares: tuple[float, float],
    opts: MazeOptions,
) -> dict[str, Any]:
    """What a completed data set records; a rooms, maze or mixed set without arenas records
    what earlier versions did."""
    stamp: dict[str, Any] = {"num_scenes": num_scenes, "seed": seed, "size": size}
    stamp["version"] = rooms.VERSION
    if family != "rooms":
        fields = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(opts).items()}
        stamp |= {"family": family, "maze_version": maze.VERSION, "maze": fields}
    if family == "mixed":
        stamp["maze_share"] = shares[0]
    if family == "arena" or (family == "mixed" and shares[1] > 0):
        stamp["arena_version"] = arena.VERSION
        if family == "mixed":
            stamp["arena_share"] = shares[1]
    return stamp


def _scene_files(out: Path) -> set[str]:
    """Names of the scene files (and leftover temporary ones) in ``out``."""
    return (
        {p.name for p in out.iterdir() if _SCENE_NAME.fullmatch(p.name)} if out.is_dir() else set()
    )


def _is_complete(out: Path, stamp: dict[str, Any], names: list[str]) -> bool:
    try:
        recorded = json.loads((out / STAMP_NAME).read_text())
    except (OSError, ValueError):
        return False
    return recorded == stamp and _scene_files(out) == set(names)


def _generate(
    out: Path,
    num_scenes: int,
    seed: int,
    workers: int,
    size: int,
    progress: bool,
    family: str = "rooms",
    maze_share: float = 0.5,
    maze_opts: MazeOptions | Mapping[str, Any] | None = None,
    arena_share: float = 0.0,
) -> tuple[list[Path], bool]:
    """Write the data set unless complete; returns its paths and whether it wrote them now."""
    if num_scenes < 1 or workers < 1 or not 0 <= seed < 2**63:
        raise ValueError(
            f"need num_scenes >= 1, workers >= 1, 0 <= seed < 2**63; got "
            f"{num_scenes}, {workers}, {seed}"
        )
    opts = maze_options(maze_opts)
    problem = check_options(family, size, maze_share, opts, arena_share)
    if problem is not None:
        raise ValueError(problem)
    names = [f"scene_{i:05d}.npz" for i in range(num_scenes)]
    paths = [out / name for name in names]
    shares = (maze_share, arena_share)
    stamp = _stamp(num_scenes, seed, size, family, shares, opts)
    if _is_complete(out, stamp, names):
        return paths, False
    out.mkdir(parents=True, exist_ok=True)
    (out / STAMP_NAME).unlink(missing_ok=True)
    tasks = [(str(p), seed, i, size, family, shares, opts) for i, p in enumerate(paths)]
    show = {"total": num_scenes, "description": "scenes", "disable": not progress}
    if workers == 1:
        for _ in track(map(_write_scene, tasks), **show):
            pass
    else:
        with multiprocessing.get_context("forkserver").Pool(min(workers, num_scenes)) as pool:
            chunk = max(1, min(16, num_scenes // (4 * workers)))
            for _ in track(pool.imap_unordered(_write_scene, tasks, chunk), **show):
                pass
    for stale in _scene_files(out) - set(names):  # from an earlier, larger or interrupted run
        (out / stale).unlink()
    atomic_write_text(out / STAMP_NAME, json.dumps(stamp))
    return paths, True


def generate_dataset(
    out_dir: str | os.PathLike,
    num_scenes: int,
    seed: int = 0,
    workers: int = 1,
    size: int = 224,
    progress: bool = False,
    family: str = "rooms",
    maze_share: float = 0.5,
    maze_opts: MazeOptions | Mapping[str, Any] | None = None,
    arena_share: float = 0.0,
) -> list[Path]:
    """Write ``out_dir/scene_00000.npz`` ... and return their paths, in order.

    ``family`` is ``rooms``, ``maze``, ``arena`` or ``mixed`` (a share ``maze_share`` of
    mazes, ``arena_share`` of arenas, the rest rooms); ``maze_opts`` a :class:`MazeOptions` or
    a mapping of its fields. Returns at once if ``out_dir`` holds a completed run with the
    same arguments and generator versions (recorded in ``out_dir/.goalgen_synth.json``,
    written last). Otherwise writes every scene and removes ``scene_*.npz`` files beyond
    ``num_scenes``. ``progress`` shows a progress bar on stderr.
    Raises ``ValueError`` for bad options.
    """
    mix = (family, maze_share, maze_opts, arena_share)
    return _generate(Path(out_dir), num_scenes, seed, workers, size, progress, *mix)[0]


def benchmark(
    families: Sequence[str] = ("rooms", "maze"),
    num_scenes: int = 20,
    seed: int = 0,
    size: int = 224,
    maze_opts: MazeOptions | Mapping[str, Any] | None = None,
) -> dict[str, dict[str, Any]]:
    """Generator speed per family in this process (one core), for ``goalgen-bench``.

    Returns ``{family: {"scenes", "seconds", "scenes_per_s", "layouts", "rejected":
    {reason: count}, "rejected_share", "feasible_poses_mean", "modes_mean"}}`` (the last two
    for mazes and arenas); scenes are those of a data set of ``seed`` (no files written).
    """
    opts, out = maze_options(maze_opts), {}
    for family in families:
        rejected: Counter = Counter()
        poses, modes = [], []
        start = time.perf_counter()
        for i in range(num_scenes):
            seq = np.random.SeedSequence(seed, spawn_key=(i,))
            if family == "rooms":
                _, counts = rooms.generate_with_stats(seq, size)
            elif family == "arena":
                scene, counts = arena.generate_with_stats(seq, size)
                poses.append(len(scene["feasible_push"]))
                modes.append(int(scene["num_modes"]))
            else:
                scene, counts = maze.generate_with_stats(seq, size, opts)
                poses.append(len(scene["feasible_push"]))
                modes.append(int(scene["num_modes"]))
            rejected += counts
        seconds = time.perf_counter() - start
        layouts = num_scenes + sum(rejected.values())
        out[family] = {
            "scenes": num_scenes,
            "seconds": seconds,
            "scenes_per_s": num_scenes / seconds,
            "layouts": layouts,
            "rejected": dict(rejected),
            "rejected_share": 1 - num_scenes / layouts,
        }
        if poses:
            out[family] |= {
                "feasible_poses_mean": float(np.mean(poses)),
                "modes_mean": float(np.mean(modes)),
            }
    return out


def _parser() -> OneLineParser:
    parser = OneLineParser(
        prog="goalgen-synth",
        description="Write synthetic NAMO scenes (.npz in the training guide's format).",
    )
    add = parser.add_argument
    add("--out", required=True, type=Path, help="output directory")
    add("--num-scenes", required=True, type=int, help="number of scenes")
    add("--seed", type=int, default=0, help="data set seed (default 0)")
    add("--workers", type=int, default=1, help="processes (default 1)")
    add("--size", type=int, default=224, help="mask side in pixels (default 224)")
    add("--family", default="rooms", choices=FAMILIES, help="scene family (default rooms)")
    add("--maze-share", type=float, default=0.5, help="share of mazes in a mixed set (0.5)")
    add("--arena-share", type=float, default=0.0, help="share of arenas in a mixed set (0)")
    default = MazeOptions()
    add("--grid-size", type=int, default=default.grid_size, help="maze cells per side (11)")
    add("--deletion-min", type=float, default=default.deletion[0], help="least wall deletion (0.5)")
    add("--deletion-max", type=float, default=default.deletion[1], help="most wall deletion (0.9)")
    add("--boxes-min", type=int, default=default.boxes[0], help="fewest boxes per maze (3)")
    add("--boxes-max", type=int, default=default.boxes[1], help="most boxes per maze (17)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """``goalgen-synth``: write a synthetic NAMO data set (see ``--help``)."""
    parser = _parser()
    args = parser.parse_args(argv)
    for name, low in (("num_scenes", 1), ("workers", 1), ("seed", 0)):
        if getattr(args, name) < low:
            parser.error(f"--{name.replace('_', '-')} must be >= {low}")
    if args.seed >= 2**63:
        parser.error("--seed must be < 2**63")
    opts = MazeOptions(
        args.grid_size, (args.deletion_min, args.deletion_max), (args.boxes_min, args.boxes_max)
    )
    problem = check_options(args.family, args.size, args.maze_share, opts, args.arena_share)
    if problem is not None:
        parser.error(problem)
    start = time.perf_counter()
    try:
        _, written = _generate(
            args.out,
            args.num_scenes,
            args.seed,
            args.workers,
            args.size,
            sys.stderr.isatty(),
            args.family,
            args.maze_share,
            opts,
            args.arena_share,
        )
    except (OSError, RuntimeError) as error:
        print(f"goalgen-synth: error: {one_line(error)}", file=sys.stderr)
        return 1
    seconds = time.perf_counter() - start
    what = f"{args.num_scenes} scenes ({args.size}x{args.size}, seed {args.seed}"
    what += f", {args.family}) in {args.out}" if args.family != "rooms" else f") in {args.out}"
    if not written:
        print(f"goalgen-synth: {what} already complete, nothing to do")
    else:
        rate = args.num_scenes / seconds
        print(
            f"goalgen-synth: wrote {what} in {seconds:.1f} s ({rate:.1f} scenes/s, "
            f"{args.workers} workers)"
        )
    return 0
