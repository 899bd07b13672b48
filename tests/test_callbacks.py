"""The callbacks and logger groups: which callbacks a config builds, in which order, and what they
hand each other (through the report, never through each other's files)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hydra.utils import instantiate

from genart.callbacks import Callback, callback_nodes
from genart.callbacks.checkpoint import CheckpointCallback
from genart.callbacks.frames import FramesCallback
from genart.callbacks.stats import StatsCallback, append_csv
from genart.callbacks.wandb import WandbCallback
from genart.errors import UserError
from tests.conftest import TINY, compose


def built(overrides: list[str]) -> list[type]:
    return [type(instantiate(node)) for node in callback_nodes(compose(overrides))]


def test_callbacks_then_loggers_frames_before_the_checkpoint():
    """A kill right after checkpoint.pt must find that step's frame already written."""
    assert built(["logger=wandb"]) == [
        FramesCallback,
        CheckpointCallback,
        StatsCallback,
        WandbCallback,
    ]
    assert built(["logger=none"]) == [FramesCallback, CheckpointCallback, StatsCallback]


@pytest.mark.parametrize("name", ["frames", "checkpoint", "stats"])
def test_a_null_entry_switches_that_callback_off(name):
    classes = built([*TINY, f"callbacks.{name}=null"])
    assert len(classes) == 2 and all(c.__module__.rsplit(".", 1)[1] != name for c in classes)
    assert built(["logger.wandb=null"])[-1] is StatsCallback


@pytest.mark.parametrize(
    "override, key", [("callbacks.stats=false", "callbacks.stats"), ("logger=none", None)]
)
def test_an_entry_that_is_not_a_callback_is_one_paragraph(override, key):
    cfg = compose([*TINY, override])
    if key is None:
        cfg.logger = "wandb"  # a group set to a string, not a dict of entries
        key = "logger"
    with pytest.raises(UserError, match=rf"{key}.*null|{key}.*dict") as caught:
        callback_nodes(cfg)
    assert "\n" not in str(caught.value)


class Fails(Callback):
    """Raises at its first step; notes whether the run told it that it stopped."""

    aborted = False

    def on_step(self, report: dict) -> None:
        raise RuntimeError("a callback failed")

    def on_abort(self) -> None:
        self.aborted = True


def test_a_failed_run_calls_on_abort_of_every_callback(tmp_path, monkeypatch):
    import genart.render
    from tests.conftest import run_tiny

    original, seen = genart.render.build, []

    def build(cfg, run) -> None:
        original(cfg, run)
        run.callbacks.append(Fails())
        seen.append(run)

    monkeypatch.setattr(genart.render, "build", build)
    with pytest.raises(RuntimeError, match="a callback failed"):
        run_tiny(tmp_path, ["steps=2"])
    assert seen[0].callbacks[-1].aborted
    assert "on_abort" in vars(Callback)  # every callback has it: the loop calls it unasked


def fake_run(run_dir: Path, start_step: int) -> SimpleNamespace:
    return SimpleNamespace(run_dir=run_dir, start_step=start_step)


def save_step(callback: FramesCallback, step: int) -> None:
    image = torch.full((1, 3, 16, 24), step / 10)  # (B, 3, H, W) in [0, 1]
    callback.on_step({"step": step, "save": True, "image": lambda: image})


def video_frames(path: Path) -> int:
    import imageio.v2 as imageio

    with imageio.get_reader(path) as reader:
        return reader.count_frames()


def test_the_video_of_a_resumed_run_holds_the_frames_saved_before_the_kill(tmp_path):
    first = FramesCallback(fps=5)
    first.on_start(fake_run(tmp_path, 0))
    for step in (2, 4):  # killed after the frame of step 4, before its checkpoint
        save_step(first, step)
    resumed = FramesCallback(fps=5)
    resumed.on_start(fake_run(tmp_path, 2))  # the checkpoint of step 2
    for step in (4, 6):
        save_step(resumed, step)
    report = {"step": 6}
    resumed.on_end(report)
    assert report["video"] == tmp_path / "trajectory.mp4"
    assert video_frames(report["video"]) == 3  # steps 2, 4, 6: each once


def test_a_run_without_frames_writes_no_video(tmp_path):
    callback = FramesCallback()
    callback.on_start(fake_run(tmp_path, 0))
    report = {"step": 0}
    callback.on_end(report)
    assert "video" not in report and not (tmp_path / "trajectory.mp4").exists()


def test_stats_hands_its_best_match_totals_to_the_callbacks_after_it(tmp_path):
    schedule = SimpleNamespace(texts=["a", "b"], grouped=[0, 1], select="max")
    run = SimpleNamespace(run_dir=tmp_path, schedule=schedule, start_step=0, env={"device": "cpu"})
    stats = StatsCallback()
    stats.on_start(run)
    for step, prompt, won in ((1, "a", 3), (1, "b", 1), (2, "a", 2)):
        append_csv(stats.dir / "best_match.csv", {"step": step, "prompt": prompt, "views_won": won})
    report = {"step": 2}
    stats.on_end(report)
    assert report["best_match_totals"] == [
        ["prompt", "views_won", "share"],
        ["a", 5, "0.8333"],
        ["b", 1, "0.1667"],
    ]


class FakeWandb:
    """Records what the W&B callback logs; `Video`, `Table`, `Image` keep their arguments."""

    def __init__(self):
        self.logged, self.summary, self.finished = {}, {}, False
        self.Video = lambda path, format: ("video", path)
        self.Table = lambda columns, data: ("table", columns, data)
        self.Image = lambda image, caption=None: ("image", image.size)

    def log(self, row: dict, step: int) -> None:
        self.logged.update(row)

    def finish(self, exit_code: int = 0) -> None:
        self.finished = exit_code or True


def test_wandb_logs_what_the_state_hands_it_and_reads_no_other_callbacks_files(tmp_path):
    callback, fake = WandbCallback(), FakeWandb()
    callback.wandb, callback.run, callback.run_dir = fake, fake, tmp_path
    (tmp_path / "trajectory.mp4").write_text("not this one")  # a file it must not look for
    image = torch.zeros(1, 3, 8, 12)
    video = tmp_path / "elsewhere.mp4"
    totals = [["prompt", "views_won", "share"], ["a", 1, "1.0000"]]
    callback.on_end(
        {
            "step": 3,
            "score": 0.5,
            "image": lambda: image,
            "video": video,
            "best_match_totals": totals,
        }
    )
    assert fake.logged["trajectory"] == ("video", str(video))
    assert fake.logged["best_match"] == ("table", totals[0], totals[1:])
    assert fake.summary == {"score": 0.5, "final_image": ("image", (12, 8))}
    assert fake.finished is True


def test_wandb_without_video_or_totals_logs_neither(tmp_path):
    callback, fake = WandbCallback(), FakeWandb()
    callback.wandb, callback.run, callback.run_dir = fake, fake, tmp_path
    callback.on_end({"step": 1, "score": None, "image": lambda: torch.zeros(1, 3, 4, 4)})
    assert fake.logged == {}
    callback.on_abort()
    assert fake.finished == 1


class LastWord(Callback):
    """Keeps the end report it was handed, as a logger after the others sees it."""

    reports: list = []

    def on_end(self, report: dict) -> None:
        LastWord.reports.append(dict(report))


def test_a_whole_run_hands_the_video_and_totals_to_the_loggers_after_them(tmp_path):
    from tests.conftest import run_tiny

    LastWord.reports.clear()
    run_tiny(tmp_path, ["steps=2", "save_every=1", f"+logger.last._target_={__name__}.LastWord"])
    (report,) = LastWord.reports
    assert report["video"] == tmp_path / "trajectory.mp4" and report["video"].exists()
    assert report["best_match_totals"][0] == ["prompt", "views_won", "share"]
    assert report["step"] == 2 and report["score"] == report["score"]  # a number, not NaN
