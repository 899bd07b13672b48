"""The rest of genart holds for CLIP-guided SDXL runs: a guided doorway writes its stats
(best-match included) and its W&B run, composition windows stop at their configured end, and a
sweep guides every job. Resume: tests/test_sdxl_resume.py (*_guided); presets:
tests/test_sdxl_presets.py (guided)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from tests.conftest import compose

GUIDED = [
    "generator=sdxl_tiny",
    "guide=clip_tiny",
    "cutouts.cutn=4",
    "precision=fp32",
    "clip_guidance.scale=1000",
]


def render_into(run_dir, overrides):
    from genart.render import render

    return render(compose([*GUIDED, *overrides]), run_dir, {"overrides": list(overrides)})


def rows(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_a_guided_doorway_writes_its_stats_best_match_and_wandb(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    run = [
        "+preset=doorway",
        "size=[64,32]",
        "save_every=1",
        "log_every=1",
        "logger=wandb",
        "prompts.best_match.prompts='a door|a gate'",
    ]
    render_into(tmp_path, run)
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["status"] == "ok" and result["steps"] == 4
    losses = rows(tmp_path / "stats/losses.csv")
    assert [int(r["step"]) for r in losses] == [1, 2, 3, 4]
    assert {"prompt", "semantic_symmetry", "tone_symmetry", "edge_symmetry"} <= set(losses[0])
    wins = rows(tmp_path / "stats/best_match.csv")
    assert {r["prompt"] for r in wins} == {"a door by James Gurney", "a gate by James Gurney"}
    assert sum(int(r["views_won"]) for r in wins) > 0
    assert rows(tmp_path / "stats/positional.csv")
    (media,) = (tmp_path / "wandb").glob("offline-run-*/files/media/images")
    assert len(list(media.glob("image_*.png"))) == 4  # one W&B image per logged step
    assert (tmp_path / "trajectory.mp4").stat().st_size > 0


def test_composition_windows_stop_at_their_end_on_guided_runs(tmp_path, monkeypatch):
    from genart import guidance
    from genart.objective import Objective

    seen, call = [], Objective.__call__

    def spy(self, image, step):
        out = call(self, image, step)
        seen.append((step, bool(out[2]["views"].composition.any()), image.requires_grad))
        return out

    monkeypatch.setattr(Objective, "__call__", spy)
    real, guided = guidance.gradient, []
    monkeypatch.setattr(guidance, "gradient", lambda t, x: guided.append(1) or real(t, x))
    render_into(
        tmp_path,
        ["cutouts=composition", "cutouts.composition.end=2", "size=[32,32]", "logger=none"],
    )
    steps = [(step, composition) for step, composition, grad in seen if grad]
    assert steps == [(0, True), (1, True), (2, False), (3, False)]
    assert len(guided) == 4


@pytest.mark.slow  # a 2-job sweep in a subprocess, ~40 s
def test_a_guided_sweep_guides_every_job(tmp_path):
    from tests.conftest import cli

    sweep = [*GUIDED, "logger=none", "size=[32,32]", "seed=0,1", "-m"]
    out = cli("genart", *sweep, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    (sweep_dir,) = (tmp_path / "outputs/multirun").glob("*/*")
    jobs = sorted(p for p in sweep_dir.iterdir() if p.name.isdigit())
    results = [json.loads((job / "result.json").read_text()) for job in jobs]
    assert len(jobs) == 2 and all(r["status"] == "ok" for r in results)
    saved = [(job / ".hydra/config.yaml").read_text() for job in jobs]  # what presets save reads
    assert all("scale: 1000" in text for text in saved)
    images = {np.asarray(Image.open(job / "final.png")).tobytes() for job in jobs}
    assert len(images) == 2
