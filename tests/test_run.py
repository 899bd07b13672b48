"""The loop end to end on tiny models: run dir, determinism, resume, NaN guard, learning."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from genart.errors import UserError
from tests.conftest import compose, run_tiny
from tests.recorder import changed_fraction, record

# At the presets' lr (0.025; 0.1 by default) the tiny VQGAN's straight-through codes never flip in
# a few steps, so its image does not move and any "same image again" holds even if nothing was
# restored. At lr 0.5 its codes flip from the second step on and the image moves every step.
MOVING = "optimizer.lr=0.5"


def pixels(path):
    return np.asarray(Image.open(path))


def same_theta(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.theta, b.theta, strict=True))


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


def test_same_seed_same_pixels_other_seed_other_pixels(tmp_path, monkeypatch):
    seen = record(monkeypatch)
    run_tiny(tmp_path / "a", ["steps=3", "seed=5", MOVING])
    run_tiny(tmp_path / "b", ["steps=3", "seed=5", MOVING])
    run_tiny(tmp_path / "c", ["steps=3", "seed=6", MOVING])
    a, b, _ = seen
    assert changed_fraction(a.start, a.final) > 0.5, "the image must move, or equality means little"
    assert np.array_equal(pixels(tmp_path / "a/final.png"), pixels(tmp_path / "b/final.png"))
    assert torch.equal(a.final, b.final) and same_theta(a, b)
    assert not np.array_equal(pixels(tmp_path / "a/final.png"), pixels(tmp_path / "c/final.png"))


class Interrupt(Exception):
    pass


def test_resume_reaches_the_uninterrupted_image(tmp_path, monkeypatch):
    common = ["steps=6", "save_every=3", "log_every=1", "+preset=doorway", "size=[64,64]", MOVING]
    seen = record(monkeypatch)
    run_tiny(tmp_path / "whole", common)
    whole = seen[-1]
    # the image moves before the checkpoint (step 3) and after it: a resume that restored no θ,
    # no optimiser state or no RNG state would end elsewhere
    assert changed_fraction(whole.start, whole.frames[3]) > 0.5
    assert changed_fraction(whole.frames[3], whole.final) > 0.5

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
    resumed = seen[-1]
    assert torch.equal(resumed.start, whole.frames[3]), "the resumed run starts from step 3's θ"
    assert np.array_equal(pixels(tmp_path / "whole/final.png"), pixels(tmp_path / "cut/final.png"))
    assert torch.equal(resumed.final, whole.final) and same_theta(resumed, whole)
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


@pytest.mark.parametrize("sigma", [0.0, 1.0, 2.0])
def test_init_blur_is_a_gaussian_of_that_sigma(tmp_path, monkeypatch, sigma):
    import kornia.filters

    noise = np.random.default_rng(0).integers(30, 226, (64, 64, 3), np.uint8)
    Image.fromarray(noise).save(tmp_path / "init.png")
    seen = record(monkeypatch)
    run_tiny(
        tmp_path / "run",
        [
            "generator=pixels",
            "steps=1",
            f"init.image={tmp_path / 'init.png'}",
            f"init.blur={sigma}",
        ],
    )
    expected = torch.from_numpy(noise / np.float32(255)).permute(2, 0, 1)[None]  # (1, 3, H, W)
    if sigma:  # 3σ is whole here, so a radius of int(3σ) and of ceil(3σ) agree
        k = 2 * math.ceil(3 * sigma) + 1
        blurred = kornia.filters.gaussian_blur2d(expected, (k, k), (sigma, sigma), "reflect")
        assert (blurred - expected).abs().max() > 0.2  # noise: any real blur shows
        expected = blurred
    # the pixel generator shows its init as sigmoid(logit(image)): the image itself
    assert torch.allclose(seen[0].start, expected, atol=1e-5)


@pytest.mark.parametrize("space", ["latent", "image"])
def test_init_pull_measures_the_distance_to_the_init(tmp_path, space):
    noise = np.random.default_rng(0).integers(30, 226, (64, 64, 3), np.uint8)
    Image.fromarray(noise).save(tmp_path / "init.png")
    run_tiny(
        tmp_path / "pull",
        [
            "generator=pixels",  # its image moves every step, so an image-space pull is measurable
            "steps=3",
            "log_every=1",
            f"init.image={tmp_path / 'init.png'}",
            "+losses.init_image._target_=genart.losses.InitImageLoss",
            f"+losses.init_image.space={space}",
        ],
    )
    rows = list(csv.DictReader((tmp_path / "pull/stats/losses.csv").open()))
    pull = [float(row["init_image"]) for row in rows]
    assert pull[0] == 0  # the first step starts at the init
    assert all(value > 1e-6 for value in pull[1:]), pull  # later steps have left it


def test_init_pull_keeps_the_run_near_the_init(tmp_path, monkeypatch):
    noise = np.random.default_rng(0).integers(30, 226, (64, 64, 3), np.uint8)
    Image.fromarray(noise).save(tmp_path / "init.png")
    seen = record(monkeypatch)
    for weight in (0, 10):  # Adam only sees directions: the pull must outweigh the prompt
        run_tiny(
            tmp_path / f"w{weight}",
            [
                "generator=pixels",
                "steps=4",
                f"init.image={tmp_path / 'init.png'}",
                "+losses.init_image._target_=genart.losses.InitImageLoss",
                f"+losses.init_image.weight={weight}",
            ],
        )
    free, pulled = ((s.final - s.start).abs().mean() for s in seen)
    assert pulled < 0.5 * free


def test_image_prompts_enter_with_their_weight(tmp_path):
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 48, 3), np.uint8)).save(
        tmp_path / "p.png"
    )
    prompt = {}
    for weight in (0.5, 1.0):
        run_dir = tmp_path / f"w{weight}"
        overrides = [
            "steps=1",
            "prompts.text=null",
            f"prompts.images=[{tmp_path / 'p.png'}:{weight}]",
        ]
        run_tiny(run_dir, overrides)
        (row,) = csv.DictReader((run_dir / "stats/losses.csv").open())
        prompt[weight] = float(row["prompt"])
    assert prompt[1.0] > 0
    assert prompt[0.5] == pytest.approx(0.5 * prompt[1.0], rel=1e-5)  # same views, half the weight


def test_an_image_prompt_is_the_guide_embedding_of_that_image(tmp_path):
    from types import SimpleNamespace

    from hydra.utils import instantiate

    from genart.prompts import PromptSchedule
    from genart.render import embed_targets

    guide = instantiate(compose(["guide=clip_tiny"]).guide)
    size = guide.input_size  # the file has the guide's size: no resampling choice matters
    array = np.random.default_rng(1).integers(0, 255, (size, size, 3), np.uint8)
    Image.fromarray(array).save(tmp_path / "p.png")
    schedule = PromptSchedule(text="sea", images=[f"{tmp_path / 'p.png'}:0.5"])
    generator = SimpleNamespace(theta=lambda: [torch.zeros(1)])
    (targets,) = embed_targets(SimpleNamespace(schedule=schedule, guide=guide, generator=generator))
    image = torch.from_numpy(array / np.float32(255)).permute(2, 0, 1)[None]
    with torch.no_grad():
        (expected,) = guide.encode_image(image)
        (text,) = guide.encode_text(["sea"])
    assert targets.shape == (2, expected.shape[1])
    assert torch.allclose(targets[0], text[0]) and torch.allclose(
        targets[1], expected[0], atol=1e-6
    )


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


def test_mars_luna_seed_image_has_two_darker_blotches():
    from genart.seed_images import two_blotches

    image = two_blotches(width=128, height=64)[0, 0]  # (H, W)
    centre_left, centre_right, middle = image[32, 32], image[32, 96], image[32, 64]
    assert centre_left < middle and centre_right < middle
    assert torch.allclose(image, image.flip(-1), atol=1e-6)


def test_score_ignores_negative_prompts():
    from types import SimpleNamespace

    from genart.prompts import PromptSchedule
    from genart.render import score_image

    torch.manual_seed(0)
    targets_pos = torch.nn.functional.normalize(torch.randn(1, 8), dim=-1)
    targets_neg = torch.nn.functional.normalize(torch.randn(1, 8), dim=-1)

    class Guide:
        model_weights = [1.0]

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
