"""The command line as a user meets it (subprocesses: each pays ~15 s of imports, so few)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import OFFLINE, REPO, cli

NO_CACHE = {"GENART_CACHE": "/nonexistent-genart-cache"}
ENV = {**os.environ, **OFFLINE, **NO_CACHE}


def genart(*args, cwd):
    return cli("genart", *args, cwd=cwd, env=NO_CACHE)


def test_smoke_run_writes_the_full_run_dir(tmp_path):
    out = genart(
        "generator=vqgan_tiny",
        "guide=clip_tiny",
        "steps=4",
        "save_every=2",
        "size=[64,64]",
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    (run_dir,) = (tmp_path / "outputs").glob("*/*")
    for name in (
        "final.png",
        "frames/00002.png",
        "frames/00004.png",
        "trajectory.mp4",
        "checkpoint.pt",
        ".hydra/config.yaml",
        "result.json",
    ):
        assert (run_dir / name).exists(), name
    assert list((run_dir / "wandb").glob("offline-run-*/run-*.wandb")), "an offline W&B run"


def test_real_defaults_without_weights_fail_fast_and_clearly(tmp_path):
    out = genart(cwd=tmp_path)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert "generator.pretrained.path" in out.stderr and "vqgan" in out.stderr.lower()


def test_user_mistakes_are_one_paragraph(tmp_path):
    out = genart(
        "generator=vqgan_tiny",
        "guide=clip_tiny",
        "steps=1",
        "size=[64,64]",
        "logger=none",
        "prompts.text=sea:abc",
        cwd=tmp_path,
    )
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert '"sea:abc"' in out.stderr
    unknown = genart("no_such_option=1", cwd=tmp_path)
    assert unknown.returncode != 0 and "no_such_option" in unknown.stderr


def test_cfg_job_answers_without_heavy_imports(tmp_path):
    out = genart("+preset=doorway", "--cfg", "job", cwd=tmp_path)
    assert out.returncode == 0 and "semantic_symmetry" in out.stdout
    heavy = ["torch", "open_clip", "kornia", "wandb"]
    heavy += ["diffusers", "transformers", "peft", "accelerate"]  # SDXL: its generator imports them
    code = f"import sys, genart.__main__, genart.cli, genart.app; print(sorted(m for m in {heavy} if m in sys.modules))"
    imported = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, env=ENV
    )
    assert imported.stdout.strip() == "[]", imported.stdout + imported.stderr


def test_an_unsafe_shared_preset_is_refused_before_anything_runs(tmp_path):
    marker = tmp_path / "pwned"
    (tmp_path / "shared/preset").mkdir(parents=True)
    (tmp_path / "shared/preset/evil.yaml").write_text(
        "# @package _global_\n"
        "losses:\n  evil:\n    _target_: os.system\n    _args_: ['touch " + str(marker) + "']\n"
    )
    out = cli(
        "genart",
        "+preset=evil",
        "generator=vqgan_tiny",
        "guide=clip_tiny",
        cwd=tmp_path,
        env={**NO_CACHE, "GENART_PRESETS_DIR": str(tmp_path / "shared")},
        timeout=300,
    )
    assert out.returncode == 2 and "os.system" in out.stderr and "Traceback" not in out.stderr
    assert not marker.exists() and not (tmp_path / "outputs").exists()


SWEEP_CONFIG = """\
status: ok
hydra:
  callbacks:
    sweep_summary:
      _target_: genart.tools.sweep_summary.SweepCallback
  sweep:
    dir: {sweep_dir}
"""


@pytest.mark.parametrize("statuses, code", [("ok,ok", None), ("ok,failed", 1)])
def test_a_sweep_with_a_failed_job_exits_1_through_hydra(tmp_path, monkeypatch, statuses, code):
    """The summary's SystemExit passes Hydra's callback and error handlers (they catch Exception)."""
    import hydra

    (tmp_path / "config.yaml").write_text(SWEEP_CONFIG.format(sweep_dir=tmp_path / "sweep"))

    def task(cfg) -> None:
        from hydra.core.hydra_config import HydraConfig

        job_dir = Path(HydraConfig.get().runtime.output_dir)
        (job_dir / "result.json").write_text(json.dumps({"status": cfg.status, "error": "bad"}))

    main = hydra.main(config_path=str(tmp_path), config_name="config", version_base="1.3")(task)
    monkeypatch.setattr(sys, "argv", ["genart", f"status={statuses}", "-m"])
    if code is None:
        main()
    else:
        with pytest.raises(SystemExit) as caught:
            main()
        assert caught.value.code == code
    summary = json.loads((tmp_path / "sweep" / "summary.json").read_text())
    assert [job["status"] for job in summary] == statuses.split(",")


def test_wandb_tables_cover_the_groups_whose_jobs_logged_to_wandb(tmp_path):
    """Decided from what the jobs recorded (wandb_run.json), not from the logger's config."""
    from genart.tools.sweep_dirs import job_dirs, read_job
    from genart.tools.sweep_summary import wandb_groups

    for n, group in enumerate(["g", "g", None, "h"]):
        job = tmp_path / str(n)
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "hydra.yaml").write_text("hydra: {job: {override_dirname: g}}\n")
        (job / "result.json").write_text(json.dumps({"status": "ok" if group else "failed"}))
        if group is not None:
            identity = {"id": f"run{n}", "name": str(n), "group": group, "tags": []}
            (job / "wandb_run.json").write_text(json.dumps(identity))
    groups = wandb_groups([read_job(d) for d in job_dirs(tmp_path)])
    assert {g: [j["dir"].name for j in jobs] for g, jobs in groups.items()} == {
        "g": ["0", "1", "2"],  # job 2 failed before W&B started: still in its group's table
        "h": ["3"],
    }
    for job in tmp_path.glob("*/wandb_run.json"):
        job.unlink()
    assert wandb_groups([read_job(d) for d in job_dirs(tmp_path)]) == {}


OLD_WANDB_PRESET = """\
# @package _global_
# description: saved when the logger group was a single node
defaults:
  - override /logger: wandb
  - _self_
logger:
  _target_: genart.callbacks.wandb.WandbCallback
  mode: disabled
  project: old_project
"""


def test_a_preset_with_the_old_single_logger_node_still_runs(tmp_path):
    (tmp_path / "shared/preset").mkdir(parents=True)
    (tmp_path / "shared/preset/old_wandb.yaml").write_text(OLD_WANDB_PRESET)
    out = cli(
        "genart",
        "+preset=old_wandb",
        "generator=vqgan_tiny",
        "guide=clip_tiny",
        "steps=1",
        "size=[32,32]",
        cwd=tmp_path,
        env={**NO_CACHE, "GENART_PRESETS_DIR": str(tmp_path / "shared")},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    (note,) = [line for line in out.stderr.splitlines() if "logger.wandb" in line]
    assert "WandbCallback" in note
    (run_dir,) = (tmp_path / "outputs").glob("*/*")
    assert (run_dir / "wandb_run.json").exists() and (run_dir / "final.png").exists()
    assert not list(run_dir.glob("wandb/offline-run-*")), "the preset's mode: disabled was kept"
