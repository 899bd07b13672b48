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
    [
        (3, False),  # just after a save
        (4, False),  # before step 4's rows: step 3's wins are pending in the checkpoint
        (5, False),  # after step 4's rows: step 3's rows are written after the checkpoint
        (6, True),  # at a save step, before its checkpoint
        *(
            pytest.param(s, b, marks=pytest.mark.slow)
            for s, b in [(6, False), (7, False), (8, True)]
        ),
    ],
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


@pytest.mark.slow
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


def kill_9_when(args: list[str], run_dir, ready, cwd) -> str:
    """Start `python -m genart args`, SIGKILL it as soon as ready(run_dir) holds (or let it end)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.conftest import OFFLINE

    env = {**os.environ, **OFFLINE}
    proc = subprocess.Popen(
        [sys.executable, "-m", "genart", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    killed = "ended"
    while proc.poll() is None:
        if ready(run_dir):
            os.kill(proc.pid, signal.SIGKILL)
            killed = "killed during a save" if saving(run_dir) else "killed"
            break
        time.sleep(0.001)
    proc.wait()
    return killed


def rows(run_dir, name: str) -> int:
    try:
        return (run_dir / "stats" / name).read_bytes().count(b"\n") - 1
    except FileNotFoundError:
        return 0


def saving(run_dir) -> bool:
    return any(run_dir.rglob("*.part")) or any(run_dir.rglob("*.part.*"))


@pytest.mark.slow
@pytest.mark.parametrize("logger", ["none", "wandb"])
def test_kill_9_at_several_steps_then_resume_writes_the_same_files(tmp_path, logger):
    from tests.conftest import TINY, cli

    args = [*(a for a in TINY if not a.startswith("logger=")), f"logger={logger}", *COMMON]
    whole = tmp_path / "whole"
    done = cli("genart", *args, f"hydra.run.dir={whole}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    cut = tmp_path / "cut"
    kills = [
        lambda d: rows(d, "losses.csv") >= 1,  # between saves
        lambda d: saving(d),  # during a save (a .part file exists)
        lambda d: rows(d, "losses.csv") >= 3,  # after step 6's save
        lambda d: saving(d),
        lambda d: (d / "frames/00008.png").exists(),  # during the last step's writes
    ]
    outcomes = [kill_9_when([*args, f"hydra.run.dir={cut}"], cut, kills[0], tmp_path)]
    for ready in kills[1:]:
        resume = [f"resume={cut}"] if (cut / "checkpoint.pt").exists() else None
        run = resume or [*args, f"hydra.run.dir={cut}"]
        outcomes.append(kill_9_when(run, cut, ready, tmp_path))
    assert outcomes.count("ended") <= 1, outcomes  # the kills happened
    result = cli("genart", f"resume={cut}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert_same_files(cut, whole)  # final.png's config chunk too: it records no `resume:` dir
