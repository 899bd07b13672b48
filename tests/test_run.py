"""The loop end to end on tiny models: run dir, determinism, resume, NaN guard, learning."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from genart.errors import UserError
from tests.conftest import compose, run_tiny


def pixels(path):
    return np.asarray(Image.open(path))


def test_run_writes_the_run_dir(tmp_path):
    score = run_tiny(tmp_path / "a", ["steps=4", "save_every=2", "log_every=2"])
    run_dir = tmp_path / "a"
    assert {p.name for p in (run_dir / "frames").iterdir()} == {"00002.png", "00004.png"}
    for name in ("final.png", "trajectory.mp4", "checkpoint.pt", "result.json", "stats/losses.csv"):
        assert (run_dir / name).exists(), name
    result = json.loads((run_dir / "result.json").read_text())
    assert result["status"] == "ok" and result["score"] == pytest.approx(score)
    text = Image.open(run_dir / "final.png").text
    assert "a lighthouse in a storm" in text["prompts"] and text["seed"] == "0"
    assert "generator:" in text["config"]


def test_same_seed_same_pixels_other_seed_other_pixels(tmp_path):
    run_tiny(tmp_path / "a", ["steps=3", "seed=5"])
    run_tiny(tmp_path / "b", ["steps=3", "seed=5"])
    run_tiny(tmp_path / "c", ["steps=3", "seed=6"])
    assert np.array_equal(pixels(tmp_path / "a/final.png"), pixels(tmp_path / "b/final.png"))
    assert not np.array_equal(pixels(tmp_path / "a/final.png"), pixels(tmp_path / "c/final.png"))


class Interrupt(Exception):
    pass


def test_resume_reaches_the_uninterrupted_image(tmp_path, monkeypatch):
    common = ["steps=6", "save_every=3", "log_every=1", "+preset=doorway", "size=[64,64]"]
    run_tiny(tmp_path / "whole", common)

    from genart.callbacks.checkpoint import CheckpointCallback

    original = CheckpointCallback.on_step

    def kill_at_step_5(self, state):
        original(self, state)
        if state["step"] == 5:
            raise KeyboardInterrupt

    monkeypatch.setattr(CheckpointCallback, "on_step", kill_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        run_tiny(tmp_path / "cut", common)
    assert torch.load(tmp_path / "cut/checkpoint.pt", weights_only=True)["step"] == 3
    assert not (tmp_path / "cut/final.png").exists()
    monkeypatch.setattr(CheckpointCallback, "on_step", original)
    run_tiny(tmp_path / "cut", common, resume=True)
    assert np.array_equal(pixels(tmp_path / "whole/final.png"), pixels(tmp_path / "cut/final.png"))
    steps = [int(line.split(",")[0]) for line in (tmp_path / "cut/stats/losses.csv").read_text().splitlines()[1:]]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_nan_loss_stops_before_saving_and_names_the_term(tmp_path, monkeypatch):
    from genart import losses

    def nan_tv(self, ctx):
        return ctx.image.sum() * float("nan")

    monkeypatch.setattr(losses.TVLoss, "forward", nan_tv)
    overrides = ["steps=6", "save_every=2", "log_every=2", "+losses.tv._target_=genart.losses.TVLoss",
                 "+losses.tv.weight=1.0", "+losses.tv.start=3"]
    with pytest.raises(UserError, match="tv"):
        run_tiny(tmp_path / "nan", overrides)
    frames = sorted(p.name for p in (tmp_path / "nan/frames").iterdir())
    assert frames == ["00002.png"]  # the good frame stays; nothing from the NaN step
    assert torch.load(tmp_path / "nan/checkpoint.pt", weights_only=True)["step"] == 2


def test_prompt_loss_falls_with_a_tiny_clip(tmp_path):
    run_tiny(tmp_path / "learn", ["steps=30", "log_every=1", "optimizer.lr=0.2", "cutouts.noise=0"])
    rows = (tmp_path / "learn/stats/losses.csv").read_text().splitlines()[1:]
    prompt = [float(r.split(",")[2]) for r in rows]
    assert np.mean(prompt[-5:]) < np.mean(prompt[:5])


def test_pixels_generator_runs_without_any_weights(tmp_path):
    run_tiny(tmp_path / "px", ["generator=pixels", "steps=2"])
    assert pixels(tmp_path / "px/final.png").shape == (64, 64, 3)


def test_missing_init_image_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="init.image"):
        run_tiny(tmp_path / "init", ["steps=1", "init.image=does/not/exist.png"])


def test_init_image_is_encoded(tmp_path):
    Image.fromarray(np.full((64, 64, 3), 200, np.uint8)).save(tmp_path / "grey.png")
    run_tiny(tmp_path / "init", ["steps=1", f"init.image={tmp_path / 'grey.png'}", "generator=pixels"])
    assert abs(pixels(tmp_path / "init/final.png").mean() - 200) < 10


def test_gradient_reaches_theta_from_every_loss():
    from hydra.utils import instantiate

    from genart.losses import LossContext
    from genart.prompts import PromptSchedule

    cfg = compose(["generator=vqgan_tiny", "guide=clip_tiny", "+preset=doorway", "size=[64,64]",
                   "+losses.tv._target_=genart.losses.TVLoss", "losses.edge_symmetry.weight=1",
                   "losses.tone_symmetry.weight=1", "+losses.init_image._target_=genart.losses.InitImageLoss"])
    generator, guide = instantiate(cfg.generator), instantiate(cfg.guide)
    cutouts = instantiate(cfg.cutouts, cut_size=guide.input_size)
    schedule = PromptSchedule(left="a", right="b")
    targets = guide.encode_text(schedule.texts)
    for name, node in cfg.losses.items():
        loss = instantiate(node)
        image = generator()
        views = cutouts(image, 0)
        W, _ = schedule.weights(0, views)
        ctx = LossContext(0, image, views, guide.encode_image(views.pixels), targets, [1.0], W,
                          schedule.stops(), schedule.anchor_mix(views), latent=generator.latent(),
                          init_latent=torch.zeros_like(generator.latent()))
        generator.theta()[0].grad = None
        loss(ctx).backward()
        assert generator.theta()[0].grad.abs().sum() > 0, name
