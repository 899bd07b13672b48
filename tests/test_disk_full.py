"""A full disk at a checkpoint, frame or stats write is one paragraph naming the file; the .part
file is gone and the previous checkpoint stays intact, so the run resumes after space is freed."""

from __future__ import annotations

import csv
import errno
import types
from pathlib import Path

import pytest
import torch
from PIL import Image

import genart.callbacks.checkpoint
import genart.callbacks.stats
from genart.errors import UserError
from tests.conftest import run_tiny

COMMON = ["steps=4", "save_every=2", "log_every=1"]


def full(path=None):
    return OSError(errno.ENOSPC, "No space left on device", str(path) if path else None)


def fails_on_second_call(write):
    """Wrap a writer: the first call succeeds, the second writes a few bytes and hits a full disk."""
    calls = []

    def wrapped(obj, target, *args, **kwargs):
        calls.append(target)
        if len(calls) == 2:
            with open(target, "wb") as f:
                f.write(b"half")
            raise full(target)
        return write(obj, target, *args, **kwargs)

    return wrapped


def assert_disk_full_paragraph(err: UserError, name: str) -> None:
    message = str(err)
    assert name in message and "disk is full" in message and "resume=" in message
    assert "\n" not in message and "Traceback" not in message


def assert_checkpoint_of_step_2(run_dir) -> None:
    assert torch.load(run_dir / "checkpoint.pt", weights_only=True)["step"] == 2
    assert not list(run_dir.rglob("*.part"))


def test_a_full_disk_at_the_checkpoint(tmp_path, monkeypatch):
    save = fails_on_second_call(torch.save)
    monkeypatch.setattr(genart.callbacks.checkpoint.torch, "save", save)
    with pytest.raises(UserError) as caught:
        run_tiny(tmp_path, COMMON)
    assert_disk_full_paragraph(caught.value, str(tmp_path / "checkpoint.pt"))
    monkeypatch.undo()
    assert_checkpoint_of_step_2(tmp_path)
    run_tiny(tmp_path, COMMON, resume=True)  # space freed: the run goes on
    assert (tmp_path / "final.png").exists()


def test_a_full_disk_at_a_frame(tmp_path, monkeypatch):
    monkeypatch.setattr(Image.Image, "save", fails_on_second_call(Image.Image.save))
    with pytest.raises(UserError) as caught:
        run_tiny(tmp_path, COMMON)
    assert_disk_full_paragraph(caught.value, str(tmp_path / "frames/00004.png"))
    assert_checkpoint_of_step_2(tmp_path)
    assert sorted(p.name for p in (tmp_path / "frames").iterdir()) == ["00002.png"]


def test_a_full_disk_appending_a_stats_row(tmp_path, monkeypatch):
    class FullAtStep3(csv.DictWriter):
        def writerow(self, row):
            if row["step"] == 3 and "total" in row:  # losses.csv's row of step 3
                raise full()
            return super().writerow(row)

    shim = types.SimpleNamespace(**{**vars(csv), "DictWriter": FullAtStep3})
    monkeypatch.setattr(genart.callbacks.stats, "csv", shim)
    with pytest.raises(UserError) as caught:
        run_tiny(tmp_path, COMMON)
    assert_disk_full_paragraph(caught.value, str(tmp_path / "stats/losses.csv"))
    assert_checkpoint_of_step_2(tmp_path)


def test_a_full_disk_rewriting_positional_csv(tmp_path, monkeypatch):
    calls = []

    def writer(f, *args, **kwargs):
        calls.append(f.name)
        if len(calls) == 2:  # the first rewrite is step 2's, the second step 4's
            f.write("x_bin")
            raise full(f.name)
        return csv.writer(f, *args, **kwargs)

    shim = types.SimpleNamespace(**{**vars(csv), "writer": writer})
    monkeypatch.setattr(genart.callbacks.stats, "csv", shim)
    with pytest.raises(UserError) as caught:
        run_tiny(tmp_path, COMMON)
    assert_disk_full_paragraph(caught.value, str(tmp_path / "stats/positional.csv"))
    assert_checkpoint_of_step_2(tmp_path)
    assert (tmp_path / "stats/positional.csv").read_text().startswith("x_bin_centre,views")


def test_a_full_disk_at_final_png(tmp_path, monkeypatch):
    original = Image.Image.save

    def save(self, target, *args, **kwargs):
        if Path(target).name.startswith("final"):
            raise full(target)
        return original(self, target, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", save)
    with pytest.raises(UserError) as caught:
        run_tiny(tmp_path, COMMON)
    assert_disk_full_paragraph(caught.value, str(tmp_path / "final.png"))
    assert not list(tmp_path.rglob("*.part"))


def test_other_write_errors_are_not_called_a_full_disk(tmp_path, monkeypatch):
    def save(obj, target, *args, **kwargs):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(genart.callbacks.checkpoint.torch, "save", save)
    with pytest.raises(OSError, match="Input/output") as caught:
        run_tiny(tmp_path, COMMON)
    assert not isinstance(caught.value, UserError)
    assert not list(tmp_path.rglob("*.part"))


def test_a_full_disk_at_the_video(tmp_path, monkeypatch):
    import imageio.v2 as imageio

    from genart.callbacks.frames import write_video

    frames = []
    for i in range(2):
        frames.append(tmp_path / f"frames/{i:05d}.png")
        frames[-1].parent.mkdir(exist_ok=True)
        Image.new("RGB", (17, 9), (i * 99, 0, 0)).save(frames[-1])
    real = imageio.get_writer

    def get_writer(path, *args, **kwargs):
        writer = real(path, *args, **kwargs)

        def append_data(image):
            raise full(path)

        writer.append_data = append_data
        return writer

    monkeypatch.setattr(imageio, "get_writer", get_writer)
    with pytest.raises(UserError) as caught:
        write_video(frames, tmp_path / "trajectory.mp4", 10)
    assert_disk_full_paragraph(caught.value, str(tmp_path / "trajectory.mp4"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["frames"]
