"""Packed cache: content, area resize, reuse/rebuild, bad files, atomicity, locking, ranks, CLI."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import goalgen.data.pack as pack
from data_helpers import write_scene, write_scenes
from goalgen.data.pack import (
    PackedScenes,
    main,
    pack_scenes,
    prepare_scenes,
    quantize,
    resize_masks,
)
from goalgen.data.scenes import CACHE_DIRNAME, SceneError, load_scene

S = 16  # packed side in most tests (scenes are 32x32)


def expected_masks(files, size=S):
    return np.stack([quantize(resize_masks(load_scene(f), size)) for f in files])


def count_loads(monkeypatch):
    """Wrap pack.load_scene; return the list of paths it was called with."""
    calls = []

    def counting(path):
        calls.append(path)
        return load_scene(path)

    monkeypatch.setattr(pack, "load_scene", counting)
    return calls


def forbid_loads(monkeypatch):
    def fail(path):
        raise AssertionError(f"cache reuse read {path}")

    monkeypatch.setattr(pack, "load_scene", fail)


def cache_names(folder):
    return sorted(p.name for p in folder.iterdir())


def test_pack_builds_memmap_and_manifest(tmp_path, caplog):
    files = write_scenes(tmp_path / "d", 5)
    caplog.set_level(logging.INFO, logger=pack.__name__)
    packed = pack_scenes(tmp_path / "d", S, workers=1)
    assert isinstance(packed.masks, np.memmap) and not packed.masks.flags.writeable
    assert packed.masks.shape == (5, 6, S, S) and packed.masks.dtype == np.uint8
    assert packed.files == [str(f) for f in files] and packed.image_size == S
    assert not packed.reused and not packed.skipped
    np.testing.assert_array_equal(packed.masks, expected_masks(files))
    assert "packed 5/5" in caplog.text  # non-TTY progress: plain log lines

    folder = tmp_path / "d" / CACHE_DIRNAME
    m = json.loads(packed.manifest_path.read_text())
    assert packed.manifest_path.parent == folder and f"{S}px" in packed.manifest_path.name
    assert m["format_version"] == pack.FORMAT_VERSION and m["image_size"] == S
    assert m["array_file"] == packed.array_path.name and packed.array_path.parent == folder
    assert m["content_sha1"] == hashlib.sha1(np.ascontiguousarray(packed.masks)).hexdigest()
    assert m["sources"][0] == {
        "path": str(files[0]),
        "size": files[0].stat().st_size,
        "mtime_ns": files[0].stat().st_mtime_ns,
    }
    assert m["files"] == packed.files and m["skipped"] == [] and m["created"]
    stem = packed.manifest_path.stem
    assert cache_names(folder) == sorted([f"{stem}.json", f"{stem}.lock", m["array_file"]])


def test_area_resize_keeps_one_pixel_wall(tmp_path):
    wall = np.zeros((224, 224), bool)
    wall[:, 101] = True
    write_scene(tmp_path / "wall.npz", 224, static_objects_image=wall)
    static = pack_scenes(tmp_path, 64, workers=1, progress=False).masks[0, 3]
    assert (static[:, 101 * 64 // 224] > 0).all()  # visible on every row
    assert 0 < static.max() < 255  # as grey, not dropped and not thickened to a full wall
    assert (static.sum(axis=0) > 0).sum() <= 2


def test_reuse_reads_no_npz(tmp_path, monkeypatch):
    write_scenes(tmp_path, 4)
    first = pack_scenes(tmp_path, S, workers=1, progress=False)
    forbid_loads(monkeypatch)
    again = pack_scenes(tmp_path, S, workers=1, progress=False)
    assert again.reused and again.array_path == first.array_path
    np.testing.assert_array_equal(again.masks, first.masks)


@pytest.mark.parametrize("change", ["modified", "added", "removed"])
def test_rebuild_on_source_change(tmp_path, monkeypatch, change):
    files = write_scenes(tmp_path, 4)
    old = pack_scenes(tmp_path, S, workers=1, progress=False)
    if change == "modified":
        write_scene(files[1], seed=99)
        st = files[1].stat()
        os.utime(files[1], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    elif change == "added":
        files.append(write_scene(tmp_path / "sub" / "new.npz", seed=50))
    else:
        files.pop(2).unlink()
    calls = count_loads(monkeypatch)
    new = pack_scenes(tmp_path, S, workers=1, progress=False)
    assert not new.reused and len(calls) == len(files)
    np.testing.assert_array_equal(new.masks, expected_masks(sorted(files)))
    assert new.files == [str(f) for f in sorted(files)]
    if change != "modified":  # another file list is another dataset: its own cache files
        assert new.manifest_path != old.manifest_path
    else:  # same dataset: the old array is replaced
        assert new.manifest_path == old.manifest_path and not old.array_path.exists()


def test_other_image_size_has_its_own_cache(tmp_path, monkeypatch):
    write_scenes(tmp_path, 3)
    small = pack_scenes(tmp_path, 8, workers=1, progress=False)
    big = pack_scenes(tmp_path, S, workers=1, progress=False)
    assert small.masks.shape[-1] == 8 and big.masks.shape[-1] == S
    assert small.manifest_path != big.manifest_path and not big.reused
    forbid_loads(monkeypatch)
    assert pack_scenes(tmp_path, 8, workers=1, progress=False).reused


def test_cache_locations(tmp_path, monkeypatch):
    a = write_scenes(tmp_path / "a", 2)
    b = write_scenes(tmp_path / "b", 2)
    one = pack_scenes(a[0], S, workers=1, progress=False)
    assert one.manifest_path.parent == tmp_path / "a" / CACHE_DIRNAME and one.files == [str(a[0])]
    both = pack_scenes([tmp_path / "b", a[1]], S, workers=1, progress=False)
    assert both.manifest_path.parent == tmp_path / "b" / CACHE_DIRNAME
    assert both.files == [str(a[1]), *map(str, b)]
    own = pack_scenes(tmp_path / "b", S, cache_dir=tmp_path / "mine", workers=1, progress=False)
    assert own.manifest_path.parent == tmp_path / "mine"


def test_unwritable_data_dir_falls_back_to_xdg(tmp_path, monkeypatch):
    write_scenes(tmp_path / "d", 2)
    (tmp_path / "d" / CACHE_DIRNAME).write_text("a file where the cache folder would go")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    packed = pack_scenes(tmp_path / "d", S, workers=1, progress=False)
    assert packed.manifest_path.parent == tmp_path / "xdg" / "goalgen"
    forbid_loads(monkeypatch)
    assert pack_scenes(tmp_path / "d", S, workers=1, progress=False).reused


@pytest.mark.parametrize("workers", [1, 2])
def test_fail_mode_names_the_file_and_commits_nothing(tmp_path, workers):
    write_scenes(tmp_path, 4)
    bad = write_scene(tmp_path / "scene_001b.npz", target_goal=None)
    with pytest.raises(SceneError, match=f"{bad}: missing key 'target_goal'"):
        pack_scenes(tmp_path, S, workers=workers, progress=False)
    assert [p.suffix for p in (tmp_path / CACHE_DIRNAME).iterdir()] == [".lock"]


def test_skip_mode_logs_records_and_leaves_bad_files_out(tmp_path, monkeypatch, caplog):
    good = write_scenes(tmp_path, 5)
    empty = write_scene(tmp_path / "scene_002b.npz", target_object=np.zeros((32, 32), bool))
    text = tmp_path / "scene_003b.npz"
    text.write_text("hello")
    caplog.set_level(logging.INFO, logger=pack.__name__)
    packed = pack_scenes(tmp_path, S, on_bad_file="skip", workers=2, progress=False)
    assert packed.files == [str(f) for f in good]
    np.testing.assert_array_equal(packed.masks, expected_masks(good))
    assert f"skipping {empty}: 'target_object' is empty" in caplog.text
    assert f"skipping {text}: is not an .npz" in caplog.text
    assert "skipped 2 of 7 files" in caplog.text
    skipped = json.loads(packed.manifest_path.read_text())["skipped"]
    assert [s["path"] for s in skipped] == [str(empty), str(text)]
    assert packed.skipped[str(text)].startswith("is not an .npz")

    forbid_loads(monkeypatch)  # both modes reuse the cache; "fail" reports the skipped file
    caplog.clear()
    assert pack_scenes(tmp_path, S, on_bad_file="skip", progress=False).reused
    assert f"skipped {empty}: 'target_object' is empty" in caplog.text  # every file, every run
    assert f"skipped {text}: is not an .npz" in caplog.text and "skips 2 bad files" in caplog.text
    with pytest.raises(SceneError, match=f"{empty}: 'target_object' is empty.*on_bad_file='skip'"):
        pack_scenes(tmp_path, S, progress=False)


def test_skip_mode_with_nothing_left(tmp_path):
    write_scene(tmp_path / "a.npz", target_goal=None)
    (tmp_path / "b.npz").write_text("x")
    with pytest.raises(ValueError, match="all 2 scene files were invalid and skipped"):
        pack_scenes(tmp_path, S, on_bad_file="skip", workers=1, progress=False)
    assert not list((tmp_path / CACHE_DIRNAME).glob("*.json"))


def test_process_pool_matches_serial(tmp_path):
    write_scenes(tmp_path / "d", 9)
    one = pack_scenes(tmp_path / "d", S, cache_dir=tmp_path / "c1", workers=1, progress=False)
    two = pack_scenes(tmp_path / "d", S, cache_dir=tmp_path / "c2", workers=2, progress=False)
    np.testing.assert_array_equal(one.masks, two.masks)
    assert one.array_path.name == two.array_path.name  # names carry the content hash


KILLED_PACK = """
import sys, time
from pathlib import Path
import goalgen.data.pack as pack
real, calls, marker = pack.load_scene, [], Path(sys.argv[2])
def slow(path):
    calls.append(path)
    if len(calls) == 3:
        marker.write_text("mid-pack")
        time.sleep(60)
    return real(path)
pack.load_scene = slow
pack.pack_scenes(sys.argv[1], 16, workers=1, progress=False)
"""


def test_sigkill_mid_pack_leaves_nothing_trusted(tmp_path, monkeypatch):
    files = write_scenes(tmp_path / "d", 6)
    pack_scenes(tmp_path / "d", S, workers=1, progress=False)  # a valid cache of old content
    write_scene(files[0], seed=77)  # then a change, and a rebuild that gets killed
    os.utime(files[0], ns=(0, files[0].stat().st_mtime_ns + 10**9))
    marker = tmp_path / "marker"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_PACK, str(tmp_path / "d"), str(marker)])
    try:
        deadline = time.monotonic() + 60
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists(), "the packing subprocess never got mid-pack"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    folder = tmp_path / "d" / CACHE_DIRNAME
    assert any(".tmp-" in n for n in cache_names(folder))  # killed with its temp array
    assert not list(folder.glob("*.json"))  # and with no manifest to trust

    calls = count_loads(monkeypatch)
    packed = pack_scenes(tmp_path / "d", S, workers=1, progress=False)
    assert not packed.reused and len(calls) == 6
    np.testing.assert_array_equal(packed.masks, expected_masks(files))
    assert not any(".tmp-" in n for n in cache_names(folder))


def test_worker_error_midway_leaves_no_cache(tmp_path, monkeypatch):
    write_scenes(tmp_path, 5)
    calls = []

    def flaky(path):
        calls.append(path)
        if len(calls) == 3:
            raise RuntimeError("disk went away")
        return load_scene(path)

    monkeypatch.setattr(pack, "load_scene", flaky)
    with pytest.raises(RuntimeError, match="disk went away"):
        pack_scenes(tmp_path, S, workers=1, progress=False)
    assert [p.suffix for p in (tmp_path / CACHE_DIRNAME).iterdir()] == [".lock"]
    monkeypatch.setattr(pack, "load_scene", load_scene)
    assert pack_scenes(tmp_path, S, workers=1, progress=False).masks.shape[0] == 5


def _garble_manifest(p: PackedScenes) -> None:
    p.manifest_path.write_text('{"format_version": 1, "image_')


def _bump_version(p: PackedScenes) -> None:
    m = json.loads(p.manifest_path.read_text())
    p.manifest_path.write_text(json.dumps({**m, "format_version": 0}))


def _truncate_array(p: PackedScenes) -> None:
    os.truncate(p.array_path, p.array_path.stat().st_size - 100)


@pytest.mark.parametrize(
    "tamper",
    [_garble_manifest, _bump_version, _truncate_array, lambda p: p.array_path.unlink()],
    ids=["garbled-manifest", "other-version", "truncated-array", "missing-array"],
)
def test_untrusted_cache_is_rebuilt(tmp_path, monkeypatch, tamper):
    files = write_scenes(tmp_path, 3)
    tamper(pack_scenes(tmp_path, S, workers=1, progress=False))
    calls = count_loads(monkeypatch)
    packed = pack_scenes(tmp_path, S, workers=1, progress=False)
    assert not packed.reused and len(calls) == 3
    np.testing.assert_array_equal(packed.masks, expected_masks(files))


def test_lock_waits_then_rechecks_the_manifest(tmp_path, monkeypatch):
    write_scenes(tmp_path, 3)
    plan = pack._plan(tmp_path, S, None)
    folder = plan.folders[0]
    folder.mkdir()
    calls = count_loads(monkeypatch)
    result = {}
    with pack._locked(folder / f"{plan.stem}.lock"):  # "another process" is packing
        waiter = threading.Thread(
            target=lambda: result.update(p=pack_scenes(tmp_path, S, workers=1, progress=False))
        )
        waiter.start()
        time.sleep(0.3)
        assert waiter.is_alive()  # blocked on the lock
        pack._build(folder, plan, "fail", workers=1, progress=False)
    waiter.join(10)
    assert result["p"].reused and len(calls) == 3  # only the lock holder read the files


def test_prepare_scenes_rank0_packs_others_wait(tmp_path, monkeypatch):
    write_scenes(tmp_path, 3)
    log = []

    def rank0_barrier():  # while rank 1 waits, rank 0 packs
        log.append("barrier")
        pack_scenes(tmp_path, S, workers=1, progress=False)

    calls = count_loads(monkeypatch)
    p1 = prepare_scenes(tmp_path, S, workers=1, local_rank=1, barrier=rank0_barrier)
    assert log == ["barrier"] and p1.reused and p1.masks.shape[0] == 3 and len(calls) == 3
    p0 = prepare_scenes(tmp_path, S, local_rank=0, barrier=lambda: log.append("barrier"))
    assert log == ["barrier"] * 2 and p0.reused
    assert prepare_scenes(tmp_path, S, workers=1).reused  # no barrier: plain pack_scenes


def test_prepare_scenes_when_rank0_fails(tmp_path):
    write_scene(tmp_path / "bad.npz", target_goal=None)
    log = []
    with pytest.raises(SceneError, match="bad.npz"):  # rank 0 still reaches the barrier
        prepare_scenes(tmp_path, S, workers=1, local_rank=0, barrier=lambda: log.append(0))
    with pytest.raises(RuntimeError, match="local rank 1: no valid packed cache"):
        prepare_scenes(tmp_path, S, local_rank=1, barrier=lambda: log.append(1))
    assert log == [0, 1]


def test_cli(tmp_path, capsys):
    write_scenes(tmp_path / "d", 3)
    (tmp_path / "d" / "broken.npz").write_text("x")
    args = [str(tmp_path / "d"), "--image-size", "8", "--workers", "1"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.startswith("goalgen-pack: error: ") and "broken.npz" in err
    assert "Traceback" not in err and err.count("\n") == 1
    assert main([*args, "--on-bad-file", "skip"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("packed 3 scenes at 8px, skipped 1: ") and CACHE_DIRNAME in out
    assert main([*args, "--on-bad-file", "skip"]) == 0
    assert capsys.readouterr().out.startswith("reused 3 scenes")
    assert main([str(tmp_path / "nope")]) == 1
    assert "data path does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0 and "--image-size" in capsys.readouterr().out
