"""Sweeps on real launchers (slow tier: subprocesses). .ci/run runs them."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest

from tests.conftest import OFFLINE, REPO, cli

pytestmark = pytest.mark.slow
ENV = {**os.environ, **OFFLINE}
TINY = ["generator=vqgan_tiny", "guide=clip_tiny", "size=[64,64]"]


def sweep(*args, cwd, timeout=900):
    out = cli("genart", *args, "-m", cwd=cwd, timeout=timeout)
    dirs = sorted((cwd / "outputs" / "multirun").glob("*/*"))
    return out, dirs[-1] if dirs else None


def results(sweep_dir: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sweep_dir.glob("*/result.json")}


def test_design_card_sweep_one_wandb_group(tmp_path):
    out, sweep_dir = sweep(
        "+preset=doorway", *TINY, "steps=2", "prompts.left=forest", "seed=range(0,2)", cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert set(results(sweep_dir)) == {"0", "1"}
    group = "+preset=doorway,generator=vqgan_tiny,guide=clip_tiny,prompts.left=forest,size=[64,64],steps=2"
    for job in ("0", "1"):
        (wandb_file,) = (sweep_dir / job / "wandb").glob("offline-run-*/run-*.wandb")
        assert group.encode() in wandb_file.read_bytes(), (
            "the runs of one wording share a W&B group"
        )
    summary_runs = list((sweep_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(summary_runs) == 1, out.stderr[-3000:]  # "no W&B tables (…)" says why
    assert b"sweep" in summary_runs[0].read_bytes()


def test_a_failing_job_does_not_stop_the_others(tmp_path):
    out, sweep_dir = sweep(
        *TINY, "steps=1", "logger=none", "prompts.text=sea,sea:abc,ship", cwd=tmp_path
    )
    assert out.returncode != 0
    status = {job: r["status"] for job, r in results(sweep_dir).items()}
    assert status == {"0": "ok", "1": "failed", "2": "ok"}
    assert "sea:abc" in (sweep_dir / "1" / "error.txt").read_text()
    assert "1 of 3" not in out.stderr and "2 of 3 jobs succeeded" in out.stderr
    assert "FAILED" in out.stderr and "sea:abc" in out.stderr


def test_joblib_sweep(tmp_path):
    out, sweep_dir = sweep(
        *TINY, "steps=2", "logger=none", "seed=range(0,2)", "hydra/launcher=joblib", cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert [r["threads"] for r in results(sweep_dir).values()] == [1, 1]


@pytest.mark.skipif(
    importlib.util.find_spec("hydra_plugins.hydra_ray_launcher") is None,
    reason="needs the ray extra: pip install -e '.[ray]'",
)
def test_ray_sweep_on_a_local_cluster(tmp_path, local_ray):
    out, sweep_dir = sweep(
        *TINY, "steps=2", "logger=none", "seed=range(0,2)", *local_ray, cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert {r["status"] for r in results(sweep_dir).values()} == {"ok"} and len(
        results(sweep_dir)
    ) == 2


def test_slurm_launcher_composes():
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="conf", version_base="1.3"):
        cfg = compose(
            config_name="config", overrides=["hydra/launcher=slurm_gpu"], return_hydra_config=True
        )
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")
    assert cfg.hydra.launcher.gpus_per_node == 1


def test_every_preset_runs_two_steps_in_one_sweep(tmp_path):
    presets = sorted(
        str(p.relative_to(REPO / "conf/preset").with_suffix(""))
        for p in (REPO / "conf/preset").rglob("*.yaml")
    )
    out, sweep_dir = sweep(
        "+preset=" + ",".join(presets),
        "generator=vqgan_tiny",
        "guide=clip_tiny",
        "steps=2",
        "logger=none",
        "size=[64,32]",
        "cutouts.cutn=4",
        cwd=tmp_path,
        timeout=1500,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert len(results(sweep_dir)) == len(presets)


def test_a_killed_job_is_reported_and_the_others_finish(tmp_path):
    """kill -9 (as the OOM killer does) in job 2 of 4, after its first checkpoint: joblib's own
    pool aborted the sweep (TerminatedWorkerError, no summary)."""
    killer = [
        "+callbacks.killer._target_=tests.killer.KillAtStep",
        "+callbacks.killer.seed=${seed}",
        "+callbacks.killer.victim=2",
        "+callbacks.killer.step=1",
    ]
    args = [
        *TINY,
        "steps=3",
        "save_every=1",
        "logger=none",
        *killer,
        "seed=range(0,4)",
        "hydra/launcher=joblib",  # as users type it: genart runs it on joblib_safe's launcher
    ]
    out = cli("genart", *args, "-m", cwd=tmp_path, env={"PYTHONPATH": str(REPO)}, timeout=900)
    (sweep_dir,) = (tmp_path / "outputs" / "multirun").glob("*/*")
    assert out.returncode == 1, out.stderr[-3000:]
    status = {job: (r["status"], r.get("threads")) for job, r in results(sweep_dir).items()}
    assert status == {"0": ("ok", 1), "1": ("ok", 1), "2": ("failed", None), "3": ("ok", 1)}
    assert "3 of 4 jobs succeeded" in out.stderr and "Traceback" not in out.stderr
    (lost,) = [line for line in out.stderr.splitlines() if line.startswith("  FAILED")]
    assert f"{sweep_dir.name}/2:" in lost and "killed by signal 9 (SIGKILL" in lost
    assert lost.endswith(
        f"continue it: python -m genart resume=outputs/multirun/{sweep_dir.parent.name}/{sweep_dir.name}/2"
    )
    assert "killed by signal 9" in (sweep_dir / "2" / "error.txt").read_text()
    assert "leaked" not in out.stderr
