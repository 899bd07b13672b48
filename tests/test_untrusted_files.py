"""A corrupt, foreign or malicious checkpoint.pt or stats/positional_state.pt given by resume= is
one paragraph naming the file (never torch's "weights_only=False" advice), and runs no code."""

from __future__ import annotations

import io
import os
import pickle
import shutil
import zipfile
from pathlib import Path

import pytest
import torch

from genart.errors import UserError
from tests.conftest import TINY, cli, run_tiny

BASE = ["steps=2", "save_every=1", "log_every=1"]
MARKER = Path(os.environ.get("TMPDIR", "/tmp")) / "genart-untrusted-pickle-ran"


class RunsCode:
    """Unpickling this (without weights_only) would create MARKER."""

    def __reduce__(self):
        return (Path.touch, (MARKER,))


def torch_bytes(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def zip_bytes() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("notes/readme.txt", "not a checkpoint")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("base")
    run_tiny(run_dir, BASE)
    return run_dir


def hostile_checkpoints(good: dict, whole: bytes) -> dict:
    theta = good["theta"]
    return {
        "empty": b"",
        "text": b"step=2\n",
        "zip": zip_bytes(),
        "truncated": whole[: len(whole) // 2],
        "raw pickle that runs code": pickle.dumps(RunsCode()),
        "torch file that runs code": torch_bytes({**good, "step": RunsCode()}),
        "a list": torch_bytes([1, 2, 3]),
        "dict missing keys": torch_bytes({"step": 2}),
        "wrong θ shape": torch_bytes({**good, "theta": [t[..., :3] for t in theta]}),
        "no θ": torch_bytes({**good, "theta": []}),
        "NaN θ": torch_bytes({**good, "theta": [t * float("nan") for t in theta]}),
        "step a string": torch_bytes({**good, "step": "2"}),
        "step beyond the run": torch_bytes({**good, "step": 10**6}),
        "optimizer foreign": torch_bytes({**good, "optimizer": {"a": 1}}),
        "optimizer state shape": torch_bytes(
            {**good, "optimizer": wrong_adam_state(good["optimizer"])}
        ),
        "optimizer lr a string": torch_bytes({**good, "optimizer": lr_a_string(good["optimizer"])}),
        "rng foreign": torch_bytes({**good, "rng": {"torch": torch.zeros(3)}}),
        "stats state foreign": torch_bytes({**good, "callbacks": {"StatsCallback": [1]}}),
        "stats sums shape": torch_bytes(
            {**good, "callbacks": {"StatsCallback": {**stats_of(good), "sum": torch.zeros(2, 2)}}}
        ),
        "stats wins from later steps": torch_bytes(
            {
                **good,
                "callbacks": {
                    "StatsCallback": {**stats_of(good), "wins": [(9, torch.zeros(1).long())]}
                },
            }
        ),
    }


def stats_of(good: dict) -> dict:
    return good["callbacks"]["StatsCallback"]


def wrong_adam_state(optimizer: dict) -> dict:
    state = {k: {**v, "exp_avg": v["exp_avg"][..., :1]} for k, v in optimizer["state"].items()}
    return {**optimizer, "state": state}


def lr_a_string(optimizer: dict) -> dict:
    return {**optimizer, "param_groups": [{**g, "lr": "0.1"} for g in optimizer["param_groups"]]}


def assert_one_paragraph(err: UserError, path: Path) -> None:
    message = str(err)
    assert str(path) in message and "start a new run" in message and "Restore" in message
    assert "weights_only" not in message and "\n" not in message
    assert not MARKER.exists()


def test_every_hostile_checkpoint_is_one_paragraph(base, tmp_path):
    whole = (base / "checkpoint.pt").read_bytes()
    good = torch.load(base / "checkpoint.pt", weights_only=True)

    def plant(run_dir, data):
        (run_dir / "checkpoint.pt").write_bytes(data)

    failures = resume_each(base, tmp_path, hostile_checkpoints(good, whole), plant, "checkpoint.pt")
    assert not failures


def test_every_hostile_positional_state_is_one_paragraph(base, tmp_path):
    """Checkpoints without their stats state (older ones) read stats/positional_state.pt."""
    good = torch.load(base / "checkpoint.pt", weights_only=True)
    legacy = {k: v for k, v in good.items() if k != "callbacks"}
    stats = stats_of(good)
    state = {"step": 2, "sum": stats["sum"], "count": stats["count"]}
    whole = torch_bytes(state)
    cases = {
        "truncated": whole[: len(whole) // 2],
        "text": b"hello",
        "zip": zip_bytes(),
        "runs code": pickle.dumps(RunsCode()),
        "torch file that runs code": torch_bytes({**state, "sum": RunsCode()}),
        "a list": torch_bytes([1]),
        "dict missing keys": torch_bytes({"step": 2}),
        "wrong shapes": torch_bytes({**state, "sum": torch.zeros(3, 1)}),
        "counts not a tensor": torch_bytes({**state, "count": "many"}),
    }

    def plant(run_dir, data):
        torch.save(legacy, run_dir / "checkpoint.pt")
        (run_dir / "stats/positional_state.pt").write_bytes(data)

    failures = resume_each(base, tmp_path, cases, plant, "stats/positional_state.pt")
    assert not failures


def resume_each(base, tmp_path, cases: dict, plant, planted: str) -> list[str]:
    """Resume a copy of `base` with each case's bytes planted; the cases not refused in one
    paragraph naming the planted file (all of them are tried, so every miss is reported)."""
    MARKER.unlink(missing_ok=True)
    failures = []
    for name, data in cases.items():
        run_dir = tmp_path / name.replace(" ", "_")
        shutil.copytree(base, run_dir)
        plant(run_dir, data)
        try:
            run_tiny(run_dir, BASE, resume=True)
            failures.append(f"{name}: resumed")
        except UserError as err:
            assert_one_paragraph(err, run_dir / planted)
        except Exception as err:  # noqa: BLE001 - collected, so every case is reported
            failures.append(f"{name}: {type(err).__name__}: {err}"[:200])
    return failures


@pytest.mark.slow
def test_a_malicious_checkpoint_exits_2_without_running_code(tmp_path):
    run_dir = tmp_path / "run"
    made = cli("genart", *TINY, "steps=1", "size=[32,32]", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    good = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    (run_dir / "checkpoint.pt").write_bytes(torch_bytes({**good, "theta": [RunsCode()]}))
    MARKER.unlink(missing_ok=True)
    result = cli("genart", f"resume={run_dir}", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "weights_only" not in result.stderr
    assert str(run_dir / "checkpoint.pt") in result.stderr
    assert not MARKER.exists()
