"""Every run gets a run dir of its own, also when runs start in the same second (issue 11)."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timedelta

import pytest
import yaml

from genart.run_dirs import claim_run_dir
from tests.conftest import OFFLINE, TINY

NOON = datetime(2026, 11, 22, 12, 0, 0)


@pytest.mark.parametrize(
    "argv, first",
    [([], "outputs/2026-11-22/12-00-00"), (["-m"], "outputs/multirun/2026-11-22/12-00-00")],
)
def test_runs_in_the_same_second_get_their_own_dirs(tmp_path, monkeypatch, argv, first):
    monkeypatch.chdir(tmp_path)
    claimed = [claim_run_dir(argv, now=NOON) for _ in range(3)]
    names = [str(p) for p in claimed]
    assert names == [first, f"{first}-02", f"{first}-03"]
    assert sorted(names) == names, "date and time first: the names sort as the runs started"
    later = claim_run_dir(argv, now=NOON + timedelta(seconds=1))
    assert sorted([*names, str(later)])[-1] == str(later)


def test_a_dir_the_user_names_is_left_to_hydra(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert claim_run_dir(["hydra.run.dir=mine"], now=NOON) is None
    assert claim_run_dir(["-m", "hydra.sweep.dir=mine"], now=NOON) is None
    assert claim_run_dir(["--cfg", "job"], now=NOON) is None
    assert not (tmp_path / "outputs").exists()


def test_two_runs_started_together_keep_their_own_records(tmp_path):
    """Both runs find <time> taken (an earlier run's dir, for every second they could start in),
    so each must claim a dir of its own; one fails, one succeeds, and neither record mixes."""
    start = datetime.now()
    earlier = [start + timedelta(seconds=s) for s in range(-2, 240)]
    for t in earlier:
        d = tmp_path / "outputs" / t.strftime("%Y-%m-%d/%H-%M-%S")
        d.mkdir(parents=True, exist_ok=True)
        (d / "earlier.txt").write_text("another run's")
    common = [sys.executable, "-m", "genart", *TINY, "steps=1", "size=[64,64]"]
    env = {**__import__("os").environ, **OFFLINE}
    procs = [
        subprocess.Popen([*common, *extra], cwd=tmp_path, env=env, stderr=subprocess.PIPE)
        for extra in (["prompts.text=sea"], ["prompts.text=sea:abc"])
    ]
    codes = [p.wait(timeout=300) for p in procs]
    assert codes == [0, 2], [p.stderr.read()[-2000:] for p in procs]
    runs = {}
    for result in (tmp_path / "outputs").glob("*/*/result.json"):
        run_dir = result.parent
        overrides = yaml.safe_load((run_dir / ".hydra/overrides.yaml").read_text())
        runs[run_dir.name] = (json.loads(result.read_text()), overrides, run_dir)
    assert len(runs) == 2 and all("-" in name[8:] for name in runs), sorted(runs)
    for result, overrides, run_dir in runs.values():
        assert result["overrides"] == overrides, "result.json and .hydra/ are one run's"
        failed = "prompts.text=sea:abc" in overrides
        assert result["status"] == ("failed" if failed else "ok")
        assert (run_dir / "error.txt").exists() == failed
        assert (run_dir / "final.png").exists() != failed
    for t in earlier:
        d = tmp_path / "outputs" / t.strftime("%Y-%m-%d/%H-%M-%S")
        assert [p.name for p in d.iterdir()] == ["earlier.txt"], "an earlier run's dir untouched"


def test_a_command_hydra_refuses_leaves_no_empty_run_dir(tmp_path, monkeypatch, capsys):
    from hydra.core.global_hydra import GlobalHydra

    from genart.__main__ import cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["genart", *TINY, "no_such_option=1"])
    with pytest.raises(SystemExit) as exit_:
        cli()
    GlobalHydra.instance().clear()
    assert exit_.value.code != 0 and "no_such_option" in capsys.readouterr().err
    assert list((tmp_path / "outputs").glob("*/*")) == [], "the claimed dir is given back"
