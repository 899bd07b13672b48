"""Shared test helpers: compose the real configs in-process, run tiny models, never touch the net."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GENART_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

REPO = Path(__file__).resolve().parents[1]
OFFLINE = {"HF_HUB_OFFLINE": "1", "GENART_OFFLINE": "1", "WANDB_MODE": "offline"}
TINY = ["generator=vqgan_tiny", "guide=clip_tiny", "logger=none"]


def user_environment() -> dict:
    """os.environ without what an in-process W&B run of an earlier test put there: its service
    address (WANDB_SERVICE), which a subprocess would otherwise join, as no user's shell does."""
    return {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}


def cli(module: str, *args: str, cwd: Path, env: dict | None = None, timeout: float = 600):
    """`python -m <module> <args>` as a user runs it: a subprocess, offline, output captured."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env={**user_environment(), **OFFLINE, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


RAY_SWEEP = [  # overrides that send a sweep's jobs to the cluster `local_ray` started
    "hydra/launcher=ray",
    "+hydra.launcher.ray.init.address=auto",
    "+hydra.launcher.ray.init.object_store_memory=null",
]


@pytest.fixture
def local_ray(tmp_path):
    """A local Ray head with 2 CPUs for the test, stopped afterwards (`ray start`, as a user)."""
    import tempfile

    ray_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Unix socket paths max ~107 chars
    ray = str(Path(sys.executable).parent / "ray")
    env = {**user_environment(), **OFFLINE}
    start = subprocess.run(
        [ray, "start", "--head", "--num-cpus=2", "--include-dashboard=false",
         f"--temp-dir={ray_dir}", "--disable-usage-stats"],
        env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert start.returncode == 0, start.stderr[-2000:]
    try:
        yield RAY_SWEEP
    finally:
        subprocess.run([ray, "stop", "--force"], env=env, capture_output=True, timeout=120)


def compose(overrides: list[str]):
    """The job config exactly as `python -m genart <overrides>` composes it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="conf", version_base="1.3"):
        return hydra_compose(config_name="config", overrides=overrides)


def run_tiny(run_dir: Path, overrides: list[str] = (), resume: bool = False) -> float:
    """Render in-process with the tiny models into run_dir; returns the score."""
    from genart.render import render

    cfg = compose([*TINY, "size=[64,64]", *overrides])
    return render(cfg, run_dir, {"overrides": list(overrides)}, resume=resume)


@pytest.fixture(autouse=True)
def _no_wandb_service_left_behind():
    """An in-process W&B run puts its service address in os.environ (WANDB_SERVICE); a later
    test's subprocess that copies os.environ would join that service and lose its own records.
    Each test leaves the variable as it found it."""
    before = os.environ.get("WANDB_SERVICE")
    yield
    if before is None:
        os.environ.pop("WANDB_SERVICE", None)


@pytest.fixture(autouse=True)
def _same_random_numbers_every_run():
    """Each test draws the same random numbers on every run, so a tolerance that passes once
    passes in CI too (an unseeded test once failed there on one unlucky image)."""
    import torch

    torch.manual_seed(0)


@pytest.fixture
def tiny_run(tmp_path):
    def _run(overrides=(), name="run", resume=False):
        return run_tiny(tmp_path / name, list(overrides), resume)

    return _run


def killed_at_step_3(monkeypatch):
    """Interrupt the next run at its third step (checkpoint.pt of step 2 is saved); returns undo."""
    import genart.render

    real_step = genart.render.guided_step

    def step(run, i):
        if i == 2:
            raise KeyboardInterrupt
        return real_step(run, i)

    monkeypatch.setattr(genart.render, "guided_step", step)
    return lambda: monkeypatch.setattr(genart.render, "guided_step", real_step)
