"""A run killed at any step and resumed writes every stats file, frame and final.png byte for byte
as the uninterrupted run does (issue 11: stats a step behind the checkpoint, lost best-match rows)."""

from __future__ import annotations

import pytest
import torch

from genart.callbacks.checkpoint import CheckpointCallback
from genart.callbacks.stats import truncate_csv
from tests.conftest import run_tiny
from tests.recorder import changed_fraction, record

# save_every is not a multiple of log_every, so best-match wins wait unwritten across save steps;
# at 96×32 the crops land in different x-bins (at 64×64 clip_tiny sees the whole image every time);
# lr 0.5 makes the tiny VQGAN's image move every step (see tests/test_run.py MOVING)
COMMON = [
    "steps=8",
    "save_every=3",
    "log_every=2",
    "+preset=composition_details",
    "size=[96,32]",
    "optimizer.lr=0.5",
]
STATS = ["losses.csv", "best_match.csv", "best_match_totals.csv", "positional.csv"]


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("whole")
    with pytest.MonkeyPatch.context() as mp:
        seen = record(mp)
        run_tiny(run_dir, COMMON)
    return run_dir, seen[-1]


def kill_at(monkeypatch, step: int, before_save: bool) -> None:
    """KeyboardInterrupt at `step`: before its checkpoint is written, or just after it."""
    original = CheckpointCallback.on_step

    def on_step(self, state):
        if before_save and state["step"] == step:
            raise KeyboardInterrupt
        original(self, state)
        if state["step"] == step:
            raise KeyboardInterrupt

    monkeypatch.setattr(CheckpointCallback, "on_step", on_step)


def assert_same_files(a, b) -> None:
    for name in [*(f"stats/{n}" for n in STATS), "final.png"]:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    frames = sorted(p.name for p in (a / "frames").iterdir())
    assert frames == sorted(p.name for p in (b / "frames").iterdir())
    for name in frames:
        assert (a / "frames" / name).read_bytes() == (b / "frames" / name).read_bytes(), name


def test_the_uninterrupted_run_moves_and_logs_what_the_kills_could_lose(whole):
    run_dir, seen = whole
    assert changed_fraction(seen.start, seen.frames[3]) > 0.5
    assert changed_fraction(seen.frames[3], seen.final) > 0.5
    rows = (run_dir / "stats/best_match.csv").read_text().splitlines()[1:]
    assert sorted({int(r.split(",")[0]) for r in rows}) == list(range(1, 9))
    views = [
        int(r.split(",")[1])
        for r in (run_dir / "stats/positional.csv").read_text().splitlines()[1:]
    ]
    assert sum(v > 0 for v in views) > 2, "crops fall in several x-bins"


@pytest.mark.parametrize(
    ("step", "before_save"),
    [(3, False), (4, False), (5, False), (6, True), (6, False), (7, False), (8, True)],
)
def test_a_killed_run_resumed_writes_the_same_files(
    tmp_path, monkeypatch, whole, step, before_save
):
    kill_at(monkeypatch, step, before_save)
    with pytest.raises(KeyboardInterrupt):
        run_tiny(tmp_path, COMMON)
    monkeypatch.undo()
    assert not (tmp_path / "final.png").exists()
    run_tiny(tmp_path, COMMON, resume=True)
    assert_same_files(tmp_path, whole[0])
    assert not list(tmp_path.rglob("*.part"))


def test_killed_twice_then_resumed_writes_the_same_files(tmp_path, monkeypatch, whole):
    kill_at(monkeypatch, 4, before_save=False)
    with pytest.raises(KeyboardInterrupt):
        run_tiny(tmp_path, COMMON)
    monkeypatch.undo()
    kill_at(monkeypatch, 7, before_save=False)
    with pytest.raises(KeyboardInterrupt):
        run_tiny(tmp_path, COMMON, resume=True)
    monkeypatch.undo()
    run_tiny(tmp_path, COMMON, resume=True)
    assert_same_files(tmp_path, whole[0])


def test_a_row_torn_by_a_kill_mid_append_is_dropped(tmp_path):
    path = tmp_path / "losses.csv"
    path.write_bytes(b"step,total\r\n2,1.5\r\n4,1.25\r\n6,1.")
    truncate_csv(path, 6)
    assert path.read_bytes() == b"step,total\r\n2,1.5\r\n4,1.25\r\n"
    truncate_csv(path, 3)
    assert path.read_bytes() == b"step,total\r\n2,1.5\r\n"


def test_a_prompt_with_a_comma_or_quote_survives_truncation(tmp_path):
    path = tmp_path / "best_match.csv"
    data = b'step,prompt,views_won\r\n1,"a storm, ""oil""",3\r\n2,"a storm, ""oil""",4\r\n'
    path.write_bytes(data)
    truncate_csv(path, 1)
    assert path.read_bytes() == data[: data.index(b"2,")]


def test_a_resume_of_a_checkpoint_without_stats_state_keeps_its_positional_state(tmp_path):
    """Checkpoints from before the stats state moved into them came with stats/positional_state.pt."""
    run_tiny(tmp_path, [*COMMON, "steps=3"])
    payload = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    stats = payload.pop("callbacks")["StatsCallback"]
    torch.save(payload, tmp_path / "checkpoint.pt")
    state = {"step": 3, "sum": stats["sum"], "count": stats["count"]}
    torch.save(state, tmp_path / "stats/positional_state.pt")
    before = (tmp_path / "stats/positional.csv").read_bytes()
    run_tiny(tmp_path, [*COMMON, "steps=3"], resume=True)
    assert (tmp_path / "stats/positional.csv").read_bytes() == before
