"""Presets mean the same thing on SDXL (issue 14, must haves 5-6): a VQGAN preset runs the
sampler's own step count, every doorway preset runs on sdxl_tiny, result.json records the steps
the run ran and a score, and a preset saved from an SDXL run reproduces it pixel for pixel."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import cli, run_tiny
from tests.sdxl_helpers import spy_on_unet

SDXL = ["generator=sdxl_tiny", "cutouts.cutn=2"]
CATALOGUE = sorted(p.stem for p in Path("conf/preset/doorways").glob("*.yaml"))


def test_doorway_on_sdxl_runs_the_samplers_steps(tmp_path, monkeypatch):
    import genart.render

    spies, original = [], genart.render.build

    def build_and_spy(cfg, run):
        original(cfg, run)
        spies.append(spy_on_unet(run.generator))

    monkeypatch.setattr(genart.render, "build", build_and_spy)
    # doorway says steps: 600, optimizer.lr: 0.025, size: [512, 256]; size is typed smaller here
    run_tiny(tmp_path, ["+preset=doorway", *SDXL, "size=[64,32]", "save_every=1"])
    (calls,) = spies
    assert len({float(call["t"]) for call in calls}) == 4  # generator.sampler.steps=4 timesteps
    assert sorted(p.name for p in (tmp_path / "frames").iterdir()) == [
        f"{s:05d}.png" for s in (1, 2, 3, 4)
    ]
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["steps"] == 4 and result["status"] == "ok"  # the run's steps, not doorway's 600
    assert isinstance(result["score"], float)
    assert Image.open(tmp_path / "final.png").size == (64, 32)


def test_doorway_keeps_its_canvas_on_sdxl():
    from tests.conftest import compose

    cfg = compose(["+preset=doorway", "generator=sdxl_tiny"])
    assert list(cfg.generator.size) == [512, 256] and cfg.generator.sampler.steps == 4


@pytest.mark.slow
@pytest.mark.parametrize("name", CATALOGUE)
def test_the_doorway_catalogue_runs_on_sdxl_tiny(tmp_path, name):
    overrides = [f"+preset=doorways/{name}", *SDXL, "size=[64,32]", "generator.sampler.steps=2"]
    run_tiny(tmp_path, overrides)
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["status"] == "ok" and result["steps"] == 2


@pytest.mark.slow  # two subprocess runs, ~50 s
@pytest.mark.parametrize("steer", [[], ["clip_guidance.scale=1000"]], ids=["plain", "guided"])
def test_a_preset_saved_from_an_sdxl_run_reproduces_it(tmp_path, steer):
    presets = tmp_path / "my_presets"
    env = {"GENART_PRESETS_DIR": str(presets)}

    def genart(*args):
        out = cli("genart", *args, cwd=tmp_path, env=env, timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]

    genart(*SDXL, "guide=clip_tiny", "logger=none", "size=[32,32]", "prompts.text=sea", *steer)
    (first,) = (tmp_path / "outputs").glob("2*/*")
    save = cli("genart.presets", "save", str(first), "--name", "sea_sdxl", cwd=tmp_path, env=env)
    assert save.returncode == 0, save.stderr
    text = (presets / "preset/sea_sdxl.yaml").read_text()
    assert "\nprecision: auto\n" not in text, "the precision auto chose is frozen"
    assert ("scale: 1000" in text) == bool(steer)  # the guidance travels with the preset
    genart("+preset=sea_sdxl")
    second = next(p for p in (tmp_path / "outputs").glob("2*/*") if p != first)
    image = np.asarray(Image.open(first / "final.png"))
    assert np.array_equal(image, np.asarray(Image.open(second / "final.png")))


def test_an_init_image_that_sampling_cannot_use_is_said(tmp_path):
    overrides = ["+preset=doorways/mars_luna", *SDXL, "size=[32,32]", "generator.sampler.steps=1"]
    with pytest.warns(UserWarning, match="updater=sample starts from the sampler's own noise"):
        run_tiny(tmp_path, overrides)
