"""The command line as a user meets it (subprocesses: each pays ~15 s of imports, so few)."""

from __future__ import annotations

import os
import subprocess
import sys

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
    assert "generator.weights.path" in out.stderr and "vqgan" in out.stderr.lower()


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
    code = "import sys, genart.__main__, genart.cli, genart.app; print(sorted(m for m in ('torch', 'open_clip', 'kornia', 'wandb') if m in sys.modules))"
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
