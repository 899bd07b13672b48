"""A resumed run continues its own W&B run: same id, name, group and tags."""

from __future__ import annotations

import json
import re

import pytest

from tests.conftest import killed_at_step_3
from tests.test_failed_resume import FAST, job

# a sweep job's command line: the seed is left out of the W&B group (one group per wording)
SWEEP_JOB = [
    *(o for o in FAST if not o.startswith("log")),
    "log_every=1",
    "prompts.text=sea",
    "seed=3",
]
GROUP = "generator=vqgan_tiny,guide=clip_tiny,log_every=1,prompts.text=sea,save_every=2,size=[64,64],steps=4"


def kill_then_resume(tmp_path, monkeypatch):
    run_dir = tmp_path / "multirun" / "0"
    undo = killed_at_step_3(monkeypatch)
    with pytest.raises(SystemExit) as exit_:
        job(SWEEP_JOB, run_dir)
    assert exit_.value.code == 130
    undo()
    job([f"resume={run_dir}"], tmp_path / "resume_cmd")
    assert json.loads((run_dir / "result.json").read_text())["status"] == "ok"
    return run_dir


def test_a_resumed_run_keeps_its_wandb_id_name_and_group(tmp_path, monkeypatch):
    import wandb

    inits = []

    class FakeRun:
        summary: dict = {}

        def log(self, *args, **kwargs):
            pass

        def finish(self, *args, **kwargs):
            pass

    monkeypatch.setattr(wandb, "init", lambda **kw: inits.append(kw) or FakeRun())
    run_dir = kill_then_resume(tmp_path, monkeypatch)
    first, resumed = inits
    identity = {k: first[k] for k in ("id", "name", "group", "tags")}
    assert identity["group"] == GROUP and "seed=3" in identity["name"]
    assert {k: resumed[k] for k in identity} == identity, "not a new run named resume=…"
    assert resumed["resume"] == "allow"
    assert json.loads((run_dir / "wandb_run.json").read_text()) == identity


def test_a_resumed_offline_run_writes_to_the_same_wandb_run(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    import wandb

    run_dir = kill_then_resume(tmp_path, monkeypatch)
    wandb.teardown()  # the W&B service writes the offline records after finish() returns
    run_id = json.loads((run_dir / "wandb_run.json").read_text())["id"]
    offline = sorted((run_dir / "wandb").glob("offline-run-*"))
    # offline-run-<time>-<id>, and -1 after it when the resume starts in the kill's second
    named = [re.fullmatch(rf"offline-run-\d{{8}}_\d{{6}}-{run_id}(-\d+)?", d.name) for d in offline]
    assert len(offline) == 2 and all(named), offline
    for d in offline:
        (record,) = d.glob("run-*.wandb")
        data = record.read_bytes()
        assert GROUP.encode() in data and b"prompts.text=sea,seed=3" in data  # group and name


@pytest.mark.parametrize(
    "stored", ['{"id": "../../x", "name": "n", "group": "g", "tags": []}', "{not json", "[]"]
)
def test_a_damaged_wandb_identity_is_one_paragraph(tmp_path, stored):
    from genart.callbacks.wandb import run_identity
    from genart.errors import UserError

    (tmp_path / "wandb_run.json").write_text(stored)
    with pytest.raises(UserError, match="wandb_run.json is not a W&B identity"):
        run_identity(tmp_path, {})


@pytest.mark.slow
def test_a_killed_sweep_job_resumes_into_its_wandb_run(tmp_path):
    """As a user meets it: a sweep job is killed (-9) mid-run, then `resume=` on its dir."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.conftest import OFFLINE, cli

    args = ["generator=vqgan_tiny", "guide=clip_tiny", "size=[64,64]", "steps=40", "save_every=1"]
    args += ["log_every=5", "prompts.text=sea", "seed=3", "-m"]
    env = {**os.environ, **OFFLINE}
    sweep = subprocess.Popen([sys.executable, "-m", "genart", *args], cwd=tmp_path, env=env)
    deadline = time.monotonic() + 300
    while not list((tmp_path / "outputs/multirun").glob("*/*/0/checkpoint.pt")):
        assert sweep.poll() is None and time.monotonic() < deadline, "the job never saved"
        time.sleep(0.2)
    sweep.send_signal(signal.SIGKILL)
    sweep.wait()
    (job_dir,) = (tmp_path / "outputs/multirun").glob("*/*/0")
    assert not (job_dir / "result.json").exists(), "killed before it finished"
    out = cli("genart", f"resume={job_dir}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    identity = json.loads((job_dir / "wandb_run.json").read_text())
    group = "generator=vqgan_tiny,guide=clip_tiny,log_every=5,prompts.text=sea,save_every=1,size=[64,64],steps=40"
    assert identity["group"] == group and "seed=3" in identity["name"]
    offline = sorted((job_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 2 and all(d.name.endswith("-" + identity["id"]) for d in offline)
    (resumed,) = offline[1].glob("run-*.wandb")
    data = resumed.read_bytes()  # the killed run's record is cut short by the kill
    assert group.encode() in data and identity["name"].encode() in data
