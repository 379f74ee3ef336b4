"""The checkpoint contract (goalgen.checkpoint): atomic writes, verified reads, best-k
retention, best/last selection, completeness, the resume source, loading weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from goalgen import checkpoint as ckpt
from goalgen.checkpoint import rank_checkpoints, select_checkpoint


def test_topk_keeps_the_best_k_and_names_them(tmp_path):
    top = ckpt.TopK(tmp_path, k=2)
    state = {"x": torch.zeros(1)}
    for epoch, loss in enumerate([0.5, 0.4, 0.6, 0.3, float("nan")]):
        top.update(loss, epoch, state)
    names = sorted(p.name for p in tmp_path.glob("*.ckpt"))
    assert names == ["epoch001-val_loss0.4000.ckpt", "epoch003-val_loss0.3000.ckpt"]
    assert top.best == pytest.approx(0.3)
    assert torch.load(tmp_path / names[1], weights_only=True)["top_k"][0][0] == pytest.approx(0.3)


def test_atomic_save_keeps_the_old_file_when_a_write_dies(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    ckpt.save_atomic({"v": torch.tensor([1.0])}, path)

    def dying_save(obj, f):
        f.write(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_atomic({"v": torch.tensor([2.0])}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["v"].item() == 1.0
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"], "no temp file left behind"


def test_load_checkpoint_reports_bad_files(tmp_path):
    truncated = tmp_path / "t.ckpt"
    ckpt.save_atomic({"v": torch.zeros(1000)}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:100])
    with pytest.raises(ckpt.CheckpointError, match="t.ckpt cannot be read"):
        ckpt.load_checkpoint(truncated)
    foreign = tmp_path / "f.ckpt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(ckpt.CheckpointError, match=r"lacks keys .*'model'.*found \['state_dict'\]"):
        ckpt.load_checkpoint(foreign)


def test_topk_minus_one_keeps_every_checkpoint_and_zero_keeps_none(tmp_path):
    state = {"x": torch.zeros(1)}
    keep_all = ckpt.TopK(tmp_path / "all", k=-1)
    for epoch, loss in enumerate([0.5, 0.4, 0.6, 0.3]):
        keep_all.update(loss, epoch, state)
    assert len(list((tmp_path / "all").glob("epoch*.ckpt"))) == 4
    none = ckpt.TopK(tmp_path / "none", k=0)
    assert none.update(0.1, 0, state) is None and not (tmp_path / "none").exists()


def test_corrupt_last_checkpoint_falls_back_to_the_previous_good_one(tmp_path, caplog):
    ckpt.save_atomic({k: 0 for k in ckpt.REQUIRED_KEYS}, tmp_path / "epoch000-val_loss1.0000.ckpt")
    (tmp_path / "last.ckpt").write_bytes(b"PK\x03\x04 truncated")
    (tmp_path / ".last.ckpt.abc.tmp").write_bytes(b"half")
    path, state = ckpt.latest_good_checkpoint(tmp_path)
    assert path.name == "epoch000-val_loss1.0000.ckpt" and state["step"] == 0
    assert "last.ckpt cannot be read" in caplog.text
    assert not list(tmp_path.glob(".*.tmp"))


def fake(path: Path, **state) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)


def test_best_checkpoint_follows_recorded_val_loss_not_file_order(tmp_path):
    ckpts = tmp_path / "checkpoints"
    # written best-first (oldest mtime) and named so that neither listing nor name order helps
    fake(ckpts / "epoch009-val_loss0.9000.ckpt", val_loss=0.25)  # the name lies; the file rules
    fake(ckpts / "epoch002-val_loss0.7000.ckpt", val_loss=0.7)
    fake(ckpts / "epoch010-val_loss0.3000.ckpt", val_loss=0.3)
    fake(ckpts / "last.ckpt", val_loss=0.9, top_k=[])
    assert select_checkpoint(tmp_path).name == "epoch009-val_loss0.9000.ckpt"
    assert [e[0] for e in rank_checkpoints(ckpts)] == [0.25, 0.3, 0.7]
    assert select_checkpoint(tmp_path, "last").name == "last.ckpt"
    assert select_checkpoint(tmp_path, "epoch002-val_loss0.7000.ckpt").name.startswith("epoch002")


def test_best_checkpoint_falls_back_to_top_k_table_then_name(tmp_path):
    ckpts = tmp_path / "checkpoints"
    fake(ckpts / "epoch001-val_loss0.1000.ckpt", step=1)  # no val_loss: the table says 0.8
    fake(ckpts / "epoch004-val_loss0.4000.ckpt", step=4)  # not in the table: its name, 0.4
    fake(ckpts / "last.ckpt", top_k=[[0.8, 1, "epoch001-val_loss0.1000.ckpt"]])
    ranked = rank_checkpoints(ckpts)
    assert [(e[0], e[1]) for e in ranked] == [(0.4, "name"), (0.8, "top_k")]
    (ckpts / "broken-val_loss0.0100.ckpt").write_bytes(b"PK\x03\x04 not a zip")
    with pytest.warns(UserWarning, match="unreadable"):
        assert select_checkpoint(tmp_path).name == "epoch004-val_loss0.4000.ckpt"


def test_best_without_best_files_uses_last_with_a_warning(tmp_path):
    fake(tmp_path / "checkpoints" / "last.ckpt", val_loss=1.0)
    with pytest.warns(UserWarning, match="no best checkpoint"):
        assert select_checkpoint(tmp_path).name == "last.ckpt"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        select_checkpoint(tmp_path / "nowhere")
    (tmp_path / "empty" / "checkpoints").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        select_checkpoint(tmp_path / "empty")


def good(path: Path, step: int, **config) -> None:
    """A file that passes ``load_checkpoint``: the required keys, ``step`` and ``config``."""
    ckpt.save_atomic({**{k: 0 for k in ckpt.REQUIRED_KEYS}, "step": step, "config": config}, path)


def test_is_complete_by_epochs_or_step_cap():
    assert ckpt.is_complete(3, 10, max_epochs=3, max_steps=-1)
    assert not ckpt.is_complete(2, 10, max_epochs=3, max_steps=-1)
    assert ckpt.is_complete(0, 7, max_epochs=3, max_steps=7)
    assert not ckpt.is_complete(0, 6, max_epochs=3, max_steps=7)


def test_run_is_complete_reads_last_ckpt(tmp_path):
    assert ckpt.run_is_complete(tmp_path, 3, -1) is None  # no checkpoint yet
    folder = ckpt.run_checkpoint_dir(tmp_path)
    folder.mkdir()
    torch.save({"epoch": 1, "step": 5}, folder / ckpt.LAST)
    assert ckpt.run_is_complete(tmp_path, 3, -1) is False
    assert ckpt.run_is_complete(tmp_path, 3, 5) is True
    (folder / ckpt.LAST).write_bytes(b"not a checkpoint")
    assert ckpt.run_is_complete(tmp_path, 3, -1) is None


def test_resume_source_rules(tmp_path, caplog):
    own_dir = tmp_path / "run" / "checkpoints"
    assert ckpt.resume_source(own_dir, None) is None  # a fresh run
    good(own_dir / ckpt.LAST, step=4)
    path, state = ckpt.resume_source(own_dir, None)
    assert path == str(own_dir / ckpt.LAST) and state["step"] == 4
    assert ckpt.resume_source(own_dir, None, resume=False) is None
    # a ckpt_path this run did not start from wins over the run's own last.ckpt
    other = tmp_path / "other.ckpt"
    good(other, step=2)
    assert ckpt.resume_source(own_dir, str(other))[0] == str(other)
    # ... but once the run continued from it (its config says so), its own newer file wins
    good(own_dir / ckpt.LAST, step=6, ckpt_path=str(other))
    with caplog.at_level("INFO", logger="goalgen"):
        assert ckpt.resume_source(own_dir, str(other))[0] == str(own_dir / ckpt.LAST)
    assert "was this run's starting point" in caplog.text
    assert ckpt.resume_source(own_dir, str(other), resume=False)[0] == str(other)
    with pytest.raises(ckpt.CheckpointError, match="missing.ckpt does not exist"):
        ckpt.resume_source(own_dir, str(tmp_path / "missing.ckpt"))


def test_load_network_names_the_keys_that_differ(tmp_path):
    small, big = torch.nn.Linear(2, 3), torch.nn.Linear(4, 3)
    state = {"ema": ckpt.network_state(small), "model": ckpt.network_state(small)}
    other = torch.nn.Linear(2, 3)
    ckpt.load_network(other, state, "ema", "x.ckpt")
    assert torch.equal(other.weight, small.weight)
    with pytest.raises(
        ckpt.CheckpointError, match=r"x.ckpt.*ema.*shape weight \(3, 2\) vs \(3, 4\)"
    ):
        ckpt.load_network(big, state, "ema", "x.ckpt")
    with pytest.raises(ckpt.CheckpointError, match="missing bias"):
        ckpt.load_network(
            torch.nn.Linear(2, 3), {"model": {"network.weight": small.weight}}, "model", "y"
        )


def test_an_exported_weights_file_samples_like_its_checkpoint(tmp_path, synth_dir, capsys):
    from goalgen.eval.export import main as export_main
    from goalgen.infer.predictor import GoalPredictor
    from run_helpers import train_tiny_run

    run_dir = train_tiny_run(tmp_path, synth_dir)
    source = select_checkpoint(run_dir, "best")
    half, full = tmp_path / "w_bf16.pt", tmp_path / "w_fp32.pt"
    assert export_main([str(run_dir), str(half)]) == 0
    assert export_main([str(run_dir), str(full), "--dtype", "fp32"]) == 0
    assert "bf16" in capsys.readouterr().out
    state = torch.load(half, weights_only=True)
    assert state["format"] == ckpt.WEIGHTS_FORMAT and "optimizer" not in state
    assert all(v.dtype == torch.bfloat16 for v in state["ema"].values() if v.is_floating_point())
    assert half.stat().st_size < 0.6 * full.stat().st_size
    original = GoalPredictor.from_checkpoint(source, "cpu")
    x = torch.randn(1, 5, original.image_size, original.image_size)

    def draw(predictor):
        return predictor.sample(x, 4, None, None, torch.Generator().manual_seed(3))

    reference = draw(original)
    assert torch.equal(draw(GoalPredictor.from_checkpoint(full, "cpu")), reference)
    rounded = GoalPredictor.from_checkpoint(half, "cpu")
    assert next(rounded.model.parameters()).dtype == torch.float32
    assert rounded.checkpoint_info["step"] == original.checkpoint_info["step"]
    assert 0 < (draw(rounded) - reference).abs().max() < 0.5  # bf16 rounding, not garbage
    with pytest.raises(ckpt.CheckpointError, match=f"{half}.*weights file"):
        ckpt.load_checkpoint(half)
    assert export_main([str(tmp_path / "nope"), str(tmp_path / "x.pt")]) == 1
    assert "goalgen-export: error" in capsys.readouterr().err

    # the file may carry a planner's sampler: its users get it by default, the run keeps its own
    fast = tmp_path / "w_euler.pt"
    assert export_main([str(run_dir), str(fast), "--method", "euler", "--steps", "3"]) == 0
    predictor = GoalPredictor.from_checkpoint(fast, "cpu")
    assert predictor.method == "euler" and predictor.sampling_steps == 3
    assert original.method == "midpoint" and original.sampling_steps == 2
    assert export_main([str(run_dir), str(fast), "--method", "ddim"]) == 1
    assert "'ddim': this model takes euler" in capsys.readouterr().err
