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
    steps = [
        int(line.split(",")[0])
        for line in (tmp_path / "cut/stats/losses.csv").read_text().splitlines()[1:]
    ]
    assert steps == [1, 2, 3, 4, 5, 6]
    for name in ("positional.csv", "losses.csv"):  # the statistics continue, not restart
        assert (tmp_path / "cut/stats" / name).read_text() == (
            tmp_path / "whole/stats" / name
        ).read_text()


def test_nan_loss_stops_before_saving_and_names_the_term(tmp_path, monkeypatch):
    from genart import losses

    def nan_tv(self, ctx):
        return ctx.image.sum() * float("nan")

    monkeypatch.setattr(losses.TVLoss, "forward", nan_tv)
    overrides = [
        "steps=6",
        "save_every=2",
        "log_every=2",
        "+losses.tv._target_=genart.losses.TVLoss",
        "+losses.tv.weight=1.0",
        "+losses.tv.start=3",
    ]
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
    run_tiny(
        tmp_path / "init", ["steps=1", f"init.image={tmp_path / 'grey.png'}", "generator=pixels"]
    )
    assert abs(pixels(tmp_path / "init/final.png").mean() - 200) < 10


def test_gradient_reaches_theta_from_every_loss():
    from hydra.utils import instantiate

    from genart.losses import LossContext
    from genart.prompts import PromptSchedule

    cfg = compose(
        [
            "generator=vqgan_tiny",
            "guide=clip_tiny",
            "+preset=doorway",
            "size=[64,64]",
            "+losses.tv._target_=genart.losses.TVLoss",
            "losses.edge_symmetry.weight=1",
            "losses.tone_symmetry.weight=1",
            "+losses.init_image._target_=genart.losses.InitImageLoss",
        ]
    )
    generator, guide = instantiate(cfg.generator), instantiate(cfg.guide)
    cutouts = instantiate(cfg.cutouts, cut_size=guide.input_size)
    schedule = PromptSchedule(left="a", right="b")
    targets = guide.encode_text(schedule.texts)
    for name, node in cfg.losses.items():
        loss = instantiate(node)
        image = generator()
        views = cutouts(image, 0)
        W, _ = schedule.weights(0, views)
        ctx = LossContext(
            0,
            image,
            views,
            guide.encode_image(views.pixels),
            targets,
            [1.0],
            W,
            schedule.stops(),
            schedule.anchor_mix(views),
            latent=generator.latent(),
            init_latent=torch.zeros_like(generator.latent()),
        )
        generator.theta()[0].grad = None
        loss(ctx).backward()
        assert generator.theta()[0].grad.abs().sum() > 0, name


def test_a_preset_switches_a_loss_off_with_null(tmp_path):
    run_tiny(
        tmp_path / "off",
        [
            "+preset=doorway",
            "size=[64,64]",
            "steps=2",
            "log_every=1",
            "losses.tone_symmetry=null",
            "+losses.tv._target_=genart.losses.TVLoss",
        ],
    )
    header = (tmp_path / "off/stats/losses.csv").read_text().splitlines()[0].split(",")
    assert "tone_symmetry" not in header and {
        "prompt",
        "semantic_symmetry",
        "edge_symmetry",
        "tv",
    } <= set(header)


def test_image_prompts(tmp_path):
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 48, 3), np.uint8)).save(
        tmp_path / "p.png"
    )
    run_tiny(tmp_path / "img", ["steps=2", f"prompts.images=[{tmp_path / 'p.png'}:0.5]"])
    assert (tmp_path / "img/final.png").exists()


def test_best_match_counts_cover_the_detail_views_only(tmp_path):
    run_tiny(
        tmp_path / "bm",
        [
            "+preset=composition_details",
            "size=[64,64]",
            "steps=3",
            "log_every=1",
            "cutouts.cutn=8",
            "cutouts.composition.count=2",
            "cutouts.composition.end=2",
        ],
    )
    import csv

    rows = list(csv.DictReader((tmp_path / "bm/stats/best_match.csv").open()))
    per_step = {}
    for row in rows:
        per_step[int(row["step"])] = per_step.get(int(row["step"]), 0) + int(row["views_won"])
    assert per_step == {1: 8, 2: 8, 3: 8}  # composition windows never count
    assert len({row["prompt"] for row in rows}) == 7
    totals = list(csv.DictReader((tmp_path / "bm/stats/best_match_totals.csv").open()))
    assert sum(int(r["views_won"]) for r in totals) == 24
    positional = (tmp_path / "bm/stats/positional.csv").read_text().splitlines()
    assert positional[0].startswith("x_bin_centre,views")


def test_refine_preset_from_an_edited_image(tmp_path):
    Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(tmp_path / "edited.png")
    run_tiny(
        tmp_path / "refine",
        [
            "+preset=refine",
            "size=[64,64]",
            "steps=2",
            "log_every=1",
            f"init.image={tmp_path / 'edited.png'}",
            "prompts.text=a forest",
        ],
    )
    header = (tmp_path / "refine/stats/losses.csv").read_text().splitlines()[0]
    assert "init_image" in header


def test_mars_luna_seed_image_has_two_darker_blotches():
    from genart.seed_images import two_blotches

    image = two_blotches(width=128, height=64)[0, 0]  # (H, W)
    centre_left, centre_right, middle = image[32, 32], image[32, 96], image[32, 64]
    assert centre_left < middle and centre_right < middle
    assert torch.allclose(image, image.flip(-1), atol=1e-6)


def test_score_ignores_negative_prompts():
    from types import SimpleNamespace

    from genart.prompts import PromptSchedule
    from genart.run import score_image

    torch.manual_seed(0)
    targets_pos = torch.nn.functional.normalize(torch.randn(1, 8), dim=-1)
    targets_neg = torch.nn.functional.normalize(torch.randn(1, 8), dim=-1)

    class Guide:
        weights = [1.0]

        def encode_image(self, pixels):
            return [torch.nn.functional.normalize(pixels.flatten(1)[:, :8], dim=-1)]

    def cutouts(image, step):
        n = 4
        return SimpleNamespace(
            pixels=torch.rand(n, 3, 4, 4),
            centres=torch.zeros(n, 2),
            sizes=torch.ones(n),
            pair=torch.full((n,), -1),
            composition=torch.zeros(n, dtype=torch.bool),
        )

    def score(schedule, targets):
        run = SimpleNamespace(cutouts=cutouts, guide=Guide(), schedule=schedule)
        return score_image(run, None, [targets], step=0, n_views=8, seed=3)

    alone = score(PromptSchedule(text="sea"), targets_pos)
    with_negative = score(
        PromptSchedule(text="sea|storm:-1"), torch.cat([targets_pos, targets_neg])
    )
    assert alone == pytest.approx(with_negative)


def test_resume_refuses_overrides_that_change_the_run(tmp_path):
    from omegaconf import OmegaConf

    from genart.app import prepare_resume

    run_dir = tmp_path / "r"
    (run_dir / ".hydra").mkdir(parents=True)
    OmegaConf.save(compose(["steps=5"]), run_dir / ".hydra/config.yaml")
    with pytest.raises(UserError, match="steps=9"):
        prepare_resume(compose(["steps=9", f"resume={run_dir}"]), ["steps=9", f"resume={run_dir}"])
    saved, where = prepare_resume(
        compose(["steps=5", f"resume={run_dir}"]), ["steps=5", f"resume={run_dir}"]
    )
    assert saved.steps == 5 and where == run_dir and saved.resume == str(run_dir)
    with pytest.raises(UserError, match="not a genart run"):
        prepare_resume(compose([f"resume={tmp_path}"]), [f"resume={tmp_path}"])


def test_refine_without_an_init_image_says_so(tmp_path):
    with pytest.raises(UserError, match="init.image"):
        run_tiny(tmp_path / "refine", ["+preset=refine", "steps=1"])
