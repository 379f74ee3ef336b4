"""Packed scene cache: every scene resized once to ``image_size``, kept as one uint8 memmap.

Files in the cache folder (``cache_dir``, else ``<data dir>/.goalgen_cache/``, else
``$XDG_CACHE_HOME/goalgen`` when the data folder is not writable):

- ``<stem>.<sha>.npy``: ``(N, 6, S, S)`` uint8, ``round(mask * 255)``, channels in
  ``SCENE_KEYS`` order, area-downsampled (adaptive average pooling: thin walls stay grey).
  ``<sha>`` = first 12 hex digits of ``content_sha1``, so a manifest names exactly its array.
- ``<stem>.json``: the manifest, written last (the commit marker). ``content_sha1`` is the SHA-1
  of the array's data bytes (C order, .npy header excluded); reuse is decided by ``sources``
  (absolute path, size, mtime_ns of every scene file found, skipped ones included) and
  ``image_size``, so reusing never reads an npz.
- ``<stem>.lock``: ``fcntl.flock`` held while packing (ranks, nodes, sweep points).

``<stem>`` = ``scenes-<S>px-<first 12 hex of sha1 over the sorted absolute source paths>``.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import logging
import math
import multiprocessing as mp
import os
import socket
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from goalgen.data.scenes import (
    CACHE_DIRNAME,
    SCENE_KEYS,
    SceneError,
    Sources,
    as_path_list,
    find_scene_files,
    load_scene,
)
from goalgen.io import atomic_write_text, fsync_path

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
BAD_FILE_MODES = ("fail", "skip")


@dataclass
class PackedScenes:
    """A packed dataset: ``masks[i]`` is scene ``files[i]`` as uint8 ``(6, S, S)``."""

    masks: np.ndarray  # (N, 6, S, S) uint8, read-only memmap
    files: list[str]
    image_size: int
    manifest_path: Path
    array_path: Path
    skipped: dict[str, str] = field(default_factory=dict)  # path -> reason
    reused: bool = False  # True when an existing cache was opened, not built

    def __getstate__(self) -> dict:
        # Pickle (spawned DataLoader workers) by path: never copy the whole array.
        return {**self.__dict__, "masks": None}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.masks = np.load(self.array_path, mmap_mode="r")


@dataclass(frozen=True)
class _Plan:
    sources: list[dict]  # [{"path", "size", "mtime_ns"}], sorted by path
    stem: str
    folders: list[Path]  # candidate cache folders, preferred first
    image_size: int


def resize_masks(masks: np.ndarray, image_size: int) -> np.ndarray:
    """Area-resize float ``(C, H, W)`` masks to ``(C, S, S)`` (any factor, e.g. 224 -> 64)."""
    if masks.shape[-2:] == (image_size, image_size):
        return masks
    return F.adaptive_avg_pool2d(torch.from_numpy(masks), image_size).numpy()


def quantize(masks: np.ndarray) -> np.ndarray:
    """Float masks in [0, 1] -> uint8 ``round(x * 255)``."""
    return np.rint(np.clip(masks, 0.0, 1.0) * 255.0).astype(np.uint8)


def default_workers() -> int:
    """``min(8, CPUs this process may use)``."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(8, cpus or 1))


def _xdg_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "goalgen"


def _plan(sources: Sources, image_size: int, cache_dir: str | os.PathLike | None) -> _Plan:
    files = find_scene_files(sources)
    stats = [f.stat() for f in files]
    fingerprint = [
        {"path": str(f), "size": s.st_size, "mtime_ns": s.st_mtime_ns}
        for f, s in zip(files, stats, strict=True)
    ]
    digest = hashlib.sha1("\n".join(map(str, files)).encode()).hexdigest()[:12]
    if cache_dir is not None:
        folders = [Path(cache_dir).expanduser().absolute()]
    else:
        first = Path(os.fsdecode(as_path_list(sources)[0])).expanduser().absolute()
        data_dir = first if first.is_dir() else first.parent
        folders = [data_dir / CACHE_DIRNAME, _xdg_cache()]
    return _Plan(fingerprint, f"scenes-{image_size}px-{digest}", folders, image_size)


def _open(folder: Path, plan: _Plan) -> PackedScenes | None:
    """The committed cache in ``folder`` if its manifest matches ``plan`` and its array."""
    manifest_path = folder / f"{plan.stem}.json"
    try:
        m = json.loads(manifest_path.read_text())
        array_path = folder / Path(m["array_file"]).name
        if (
            m["format_version"] != FORMAT_VERSION
            or m["image_size"] != plan.image_size
            or m["sources"] != plan.sources
            or array_path.stat().st_size != m["array_bytes"]
        ):
            return None
        masks = np.load(array_path, mmap_mode="r")
        s = plan.image_size
        if masks.dtype != np.uint8 or masks.shape != (len(m["files"]), len(SCENE_KEYS), s, s):
            return None
        skipped = {e["path"]: e["reason"] for e in m["skipped"]}
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return PackedScenes(masks, list(m["files"]), s, manifest_path, array_path, skipped, True)


def _open_any(plan: _Plan) -> PackedScenes | None:
    return next(filter(None, (_open(d, plan) for d in plan.folders)), None)


def _writable_folder(plan: _Plan) -> Path:
    for folder in plan.folders:
        with contextlib.suppress(OSError):
            folder.mkdir(parents=True, exist_ok=True)
        if folder.is_dir() and os.access(folder, os.W_OK | os.X_OK):
            return folder
    raise PermissionError("no writable cache folder among " + ", ".join(map(str, plan.folders)))


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    with open(lock_path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for %s (another process is packing this dataset)", lock_path)
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class _Progress:
    """rich progress bar on a TTY stderr, else a few plain log lines."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.enabled, self.done = total, enabled, 0
        self.step = max(1, math.ceil(total / 4))
        self.bar = None
        if enabled and sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import Progress

            self.bar = Progress(console=Console(stderr=True))
            self.task = self.bar.add_task("packing scenes", total=total)

    def __enter__(self) -> _Progress:
        if self.bar is not None:
            self.bar.start()
        elif self.enabled:
            log.info("packing %d scene files", self.total)
        return self

    def advance(self) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.advance(self.task)
        elif self.enabled and (self.done % self.step == 0 or self.done == self.total):
            log.info("packed %d/%d", self.done, self.total)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()


def _init_worker() -> None:
    torch.set_num_threads(1)


def _pack_one(path: str, image_size: int) -> tuple[np.ndarray | None, str]:
    """``(uint8 (6, S, S), "")`` for a good scene, ``(None, problem)`` for a bad one."""
    try:
        return quantize(resize_masks(load_scene(path), image_size)), ""
    except SceneError as e:
        return None, e.problem


def _rows(paths: list[str], image_size: int, workers: int, progress: bool) -> Iterator:
    """``_pack_one`` over ``paths`` in order, in a process pool when ``workers > 1``."""
    fn = partial(_pack_one, image_size=image_size)
    with _Progress(len(paths), progress) as bar:
        if workers <= 1 or len(paths) < 2:
            for p in paths:
                yield fn(p)
                bar.advance()
            return
        method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
        ex = ProcessPoolExecutor(workers, mp.get_context(method), initializer=_init_worker)
        try:
            chunk = max(1, min(32, len(paths) // (4 * workers)))
            for row in ex.map(fn, paths, chunksize=chunk):
                yield row
                bar.advance()
        finally:
            ex.shutdown(wait=True, cancel_futures=True)


def _remove_stale(folder: Path, stem: str, keep: set[str]) -> None:
    """Delete this stem's files except ``keep`` (call under the lock: no writer is alive)."""
    for p in [*folder.glob(f"{stem}.*"), *folder.glob(f".{stem}.*.tmp")]:
        if p.name not in keep and p.name != f"{stem}.lock":
            p.unlink(missing_ok=True)


def _shrink(tmp: Path, rows: int) -> None:
    """Rewrite the .npy at ``tmp`` keeping its first ``rows`` rows."""
    src = np.load(tmp, mmap_mode="r")
    small_path = tmp.with_name(tmp.name + ".small")
    small = np.lib.format.open_memmap(small_path, "w+", np.uint8, (rows, *src.shape[1:]))
    for i in range(0, rows, 1024):
        j = min(i + 1024, rows)
        small[i:j] = src[i:j]
    small.flush()
    del small, src
    os.replace(small_path, tmp)


def _build(
    folder: Path, plan: _Plan, on_bad_file: str, workers: int, progress: bool
) -> PackedScenes:
    """Pack ``plan`` into ``folder`` atomically; the caller holds the lock."""
    _remove_stale(folder, plan.stem, keep=set())  # stale manifest, old arrays, killed packs
    paths = [s["path"] for s in plan.sources]
    n, s = len(paths), plan.image_size
    tag = f"tmp-{socket.gethostname()}-{os.getpid()}"
    tmp_array = folder / f"{plan.stem}.npy.{tag}"
    packed: list[str] = []
    skipped: dict[str, str] = {}
    sha = hashlib.sha1()
    try:
        mm = np.lib.format.open_memmap(tmp_array, "w+", np.uint8, (n, len(SCENE_KEYS), s, s))
        with contextlib.closing(_rows(paths, s, workers, progress)) as rows:
            for path, (row, problem) in zip(paths, rows, strict=True):
                if row is None:
                    if on_bad_file == "fail":
                        raise SceneError(path, problem)
                    log.warning("skipping %s: %s", path, problem)
                    skipped[path] = problem
                    continue
                mm[len(packed)] = row
                sha.update(row.tobytes())
                packed.append(path)
        mm.flush()
        del mm
        if skipped:
            log.warning("skipped %d of %d files", len(skipped), n)
        if not packed:
            raise ValueError(f"all {n} scene files were invalid and skipped; nothing to pack")
        if len(packed) < n:
            _shrink(tmp_array, len(packed))
        fsync_path(tmp_array)
        array_path = folder / f"{plan.stem}.{sha.hexdigest()[:12]}.npy"
        os.replace(tmp_array, array_path)
        manifest = {
            "format_version": FORMAT_VERSION,
            "image_size": s,
            "channels": list(SCENE_KEYS),
            "array_file": array_path.name,
            "array_bytes": array_path.stat().st_size,
            "content_sha1": sha.hexdigest(),
            "content_sha1_covers": "packed uint8 array data bytes, C order, no .npy header",
            "sources": plan.sources,
            "files": packed,
            "skipped": [{"path": p, "reason": r} for p, r in skipped.items()],
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "created_by": tag.removeprefix("tmp-"),
        }
        atomic_write_text(folder / f"{plan.stem}.json", json.dumps(manifest, indent=1))  # commit
    finally:
        for p in (tmp_array, tmp_array.with_name(tmp_array.name + ".small")):
            p.unlink(missing_ok=True)
    _remove_stale(folder, plan.stem, keep={array_path.name, f"{plan.stem}.json"})
    built = _open(folder, plan)
    if built is None:  # only if something removed or changed the files just written
        raise RuntimeError(f"freshly packed cache {array_path} does not validate; pack again")
    built.reused = False
    return built


def _checked(packed: PackedScenes, on_bad_file: str) -> PackedScenes:
    if packed.skipped and on_bad_file == "fail":
        path, problem = next(iter(packed.skipped.items()))
        raise SceneError(
            path,
            f"{problem} (skipped when this cache was packed with on_bad_file='skip'; "
            "fix or remove the file, or use on_bad_file='skip')",
        )
    if packed.skipped and packed.reused:
        for path, problem in packed.skipped.items():
            log.warning("skipped %s: %s", path, problem)
        log.warning(
            "cache %s skips %d bad files (listed above)", packed.manifest_path, len(packed.skipped)
        )
    return packed


def _check_args(image_size: int, on_bad_file: str) -> None:
    if on_bad_file not in BAD_FILE_MODES:
        raise ValueError(f"on_bad_file must be one of {BAD_FILE_MODES}, got {on_bad_file!r}")
    if not isinstance(image_size, (int, np.integer)) or image_size < 1:
        raise ValueError(f"image_size must be a positive integer, got {image_size!r}")


def pack_scenes(
    sources: Sources,
    image_size: int,
    cache_dir: str | os.PathLike | None = None,
    on_bad_file: str = "fail",
    workers: int | None = None,
    progress: bool = True,
) -> PackedScenes:
    """Open the packed cache of ``sources`` at ``image_size``, building it first if needed.

    ``sources``: folder (recursive), file, or a sequence of those (see ``find_scene_files``).
    ``on_bad_file``: ``"fail"`` raises ``SceneError`` at the first bad file; ``"skip"`` logs,
    records and leaves out bad files (``ValueError`` when none is left).
    """
    _check_args(image_size, on_bad_file)
    plan = _plan(sources, image_size, cache_dir)
    found = _open_any(plan)
    if found is None:
        folder = _writable_folder(plan)
        with _locked(folder / f"{plan.stem}.lock"):
            found = _open(folder, plan)  # another process may have packed while we waited
            if found is None:
                found = _build(folder, plan, on_bad_file, workers or default_workers(), progress)
    return _checked(found, on_bad_file)


def prepare_scenes(
    sources: Sources,
    image_size: int,
    *,
    cache_dir: str | os.PathLike | None = None,
    on_bad_file: str = "fail",
    workers: int | None = None,
    local_rank: int = 0,
    barrier: Callable[[], object] | None = None,
    progress: bool = True,
) -> PackedScenes:
    """``pack_scenes`` for distributed jobs: local rank 0 packs, the others wait and open.

    Every rank calls ``barrier`` exactly once (local rank 0 after packing, even when packing
    fails, so the others never hang); with ``barrier=None`` this is ``pack_scenes``.
    """
    kwargs = dict(cache_dir=cache_dir, on_bad_file=on_bad_file, workers=workers)
    if barrier is None:
        return pack_scenes(sources, image_size, progress=progress, **kwargs)
    if local_rank == 0:
        try:
            return pack_scenes(sources, image_size, progress=progress, **kwargs)
        finally:
            barrier()
    _check_args(image_size, on_bad_file)
    barrier()
    found = _open_any(_plan(sources, image_size, cache_dir))
    if found is None:
        raise RuntimeError(
            f"local rank {local_rank}: no valid packed cache of {sources} at {image_size}px "
            "after local rank 0 packed; see local rank 0's error"
        )
    return _checked(found, on_bad_file)


def main(argv: list[str] | None = None) -> int:
    """``goalgen-pack``: build (or verify) the packed cache of one or more data folders."""
    parser = argparse.ArgumentParser(
        prog="goalgen-pack",
        description="Pack .npz scenes into the memory-mapped cache that training reads.",
    )
    parser.add_argument("data_dir", nargs="+", help="scene folders (recursive) or .npz files")
    parser.add_argument("--image-size", type=int, default=64, help="side in pixels (64)")
    parser.add_argument("--cache-dir", help="cache folder (default: <data_dir>/.goalgen_cache)")
    parser.add_argument("--workers", type=int, help="processes (default: min(8, CPUs))")
    parser.add_argument("--on-bad-file", choices=BAD_FILE_MODES, default="fail")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        packed = pack_scenes(
            args.data_dir, args.image_size, args.cache_dir, args.on_bad_file, args.workers
        )
    except (ValueError, OSError) as e:  # SceneError is a ValueError
        print(f"goalgen-pack: error: {e}".replace("\n", " "), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    print(
        f"{'reused' if packed.reused else 'packed'} {len(packed.files)} scenes at "
        f"{packed.image_size}px, skipped {len(packed.skipped)}: {packed.array_path} "
        f"(manifest {packed.manifest_path})"
    )
    return 0
