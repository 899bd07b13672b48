"""Whole runs on sdxl_tiny through render's loop: plain sampling (its own step count, the
pipeline's image), and latent optimisation with genart's losses (every loss reaches θ, the CLIP
loss falls), from noise or from a sampled image."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import TINY, compose, run_tiny
from tests.sdxl_helpers import sample

SDXL = [
    "generator=sdxl_tiny",
    "precision=fp32",
    "cutouts.cutn=4",
]  # fp32: compared with the pipeline


def test_plain_sampling_runs_the_samplers_steps_and_makes_its_image(tmp_path):
    from hydra.utils import instantiate

    run_tiny(tmp_path / "s", [*SDXL, "updater=sample", "steps=300", "save_every=2"])
    frames = sorted(p.name for p in (tmp_path / "s/frames").iterdir())
    assert frames == ["00002.png", "00004.png"]  # generator.sampler.steps=4, not steps=300
    assert torch.load(tmp_path / "s/checkpoint.pt", weights_only=True)["step"] == 4
    node = compose([*TINY, "size=[64,64]", *SDXL]).generator
    torch.manual_seed(0)
    expected = sample(instantiate(node))[0].permute(1, 2, 0).numpy() * 255  # (H, W, 3)
    final = np.asarray(Image.open(tmp_path / "s/final.png"), dtype=np.float32)
    assert np.abs(final - expected).max() <= 1  # 8-bit rounding: the objective did not steer


def test_latent_optimisation_from_a_sample_lowers_the_clip_loss(tmp_path):
    overrides = ["updater=gradient", "generator.init=sample", "steps=8", "log_every=1"]
    run_tiny(tmp_path / "g", [*SDXL, *overrides, "cutouts.noise=0", "optimizer.lr=0.2"])
    rows = (tmp_path / "g/stats/losses.csv").read_text().splitlines()[1:]
    prompt = [float(r.split(",")[2]) for r in rows]
    assert len(prompt) == 8 and np.mean(prompt[-3:]) < np.mean(prompt[:3])


EVERY_LOSS = [
    "+preset=doorway",  # prompt, semantic, tone and edge symmetry
    "losses.tone_symmetry.weight=1",
    "losses.edge_symmetry.weight=1",
    "+losses.tv._target_=genart.losses.TVLoss",
    "+losses.tv.weight=1",
    "+losses.init_latent._target_=genart.losses.InitImageLoss",
    "+losses.init_latent.space=latent",
    "+losses.init_pixels._target_=genart.losses.InitImageLoss",
    "+losses.init_pixels.space=image",
    "init.make={_target_: genart.seed_images.two_blotches, _partial_: true}",
]


def test_every_loss_reaches_theta():
    from pathlib import Path

    from genart.render import Run, apply_init, build, build_objective, embed_targets

    cfg = compose([*TINY, *SDXL, "size=[64,64]", "updater=gradient", *EVERY_LOSS])
    run = Run(run_dir=Path("unused"), config={}, meta={})
    build(cfg, run)
    init = apply_init(cfg, run)
    run.objective = build_objective(run, embed_targets(run), init)
    with torch.no_grad():  # θ = the init exactly: the init pulls' gradients would be 0
        run.generator.z.add_(0.1 * torch.randn_like(run.generator.z))
    _, terms, _ = run.objective(run.generator(), 0)
    expected = {"prompt", "semantic_symmetry", "tone_symmetry", "edge_symmetry", "tv"}
    assert set(terms) == expected | {"init_latent", "init_pixels"}
    for name, term in terms.items():
        run.generator.z.grad = None
        term.backward(retain_graph=True)
        assert run.generator.z.grad.abs().sum() > 0, name


def test_sdxl_samples_by_default_and_a_typed_updater_wins():
    assert compose(["generator=sdxl_tiny"]).updater._target_ == "genart.samplers.SampleUpdater"
    typed = compose(["generator=sdxl_tiny", "updater=gradient"]).updater._target_
    assert typed == "genart.updaters.GradientUpdater"


def test_sampling_frames_are_decoded_x0_previews_in_the_video_and_wandb(tmp_path, monkeypatch):
    from hydra.utils import instantiate

    from genart.samplers import DiffusionSampler

    monkeypatch.setenv("WANDB_MODE", "offline")
    run = [*SDXL, "size=[32,32]", "save_every=1", "log_every=1"]
    run_tiny(tmp_path, [*run, "logger=wandb"])
    frames = [np.asarray(Image.open(tmp_path / f"frames/{s:05d}.png")) for s in (1, 2, 3, 4)]
    # the preview moves (x̂0 of the last two Euler steps nearly agree: 1% of values differ)
    assert (frames[0] != frames[1]).mean() > 0.5 and (frames[1] != frames[2]).mean() > 0.3
    generator = instantiate(compose([*TINY, *run]).generator)
    sampler = DiffusionSampler(generator)
    for step in range(2):
        _, x0 = sampler.step(step, generator.conditioning(step))  # (1, 4, h, w)
    with torch.no_grad():
        x0 = generator.decode_latent(x0)[0].permute(1, 2, 0).numpy() * 255  # (H, W, 3)
    assert np.abs(frames[1] - x0).max() <= 1
    assert (tmp_path / "trajectory.mp4").stat().st_size > 0
    (media,) = (tmp_path / "wandb").glob("offline-run-*/files/media/images")
    logged = sorted(media.glob("image_*.png"), key=lambda p: int(p.name.split("_")[1]))
    assert len(logged) == 4  # one W&B image per logged step
    assert np.array_equal(np.asarray(Image.open(logged[1]))[..., :3], frames[1][..., :3])


@pytest.mark.slow
def test_a_sweep_over_seeds_and_wordings_samples_each(tmp_path):
    import json

    from tests.conftest import cli

    sweep = [*SDXL, "guide=clip_tiny", "logger=none", "size=[32,32]", "seed=0,1"]
    out = cli("genart", *sweep, "prompts.text=a red fox,a blue sea", "-m", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    (sweep_dir,) = (tmp_path / "outputs/multirun").glob("*/*")
    jobs = sorted(p for p in sweep_dir.iterdir() if p.name.isdigit())
    assert len(jobs) == 4
    results = [json.loads((job / "result.json").read_text()) for job in jobs]
    assert all(r["status"] == "ok" and r["steps"] == 4 for r in results)
    images = {np.asarray(Image.open(job / "final.png")).tobytes() for job in jobs}
    assert len(images) == 4  # every seed and every wording makes its own image


def test_below_fp32_the_unet_and_text_encoders_cast_and_the_vae_and_latents_stay_fp32(tmp_path):
    from contextlib import nullcontext
    from pathlib import Path

    from genart.render import Run, build

    cfg = compose([*TINY, "generator=sdxl_tiny", "size=[32,32]", "precision=bf16"])
    run = Run(run_dir=Path("unused"), config={}, meta={})
    build(cfg, run)
    generator = run.generator
    assert generator.unet.dtype == generator.text_encoder_2.dtype == torch.bfloat16
    assert generator.vae.dtype == torch.float32  # SDXL's VAE overflows in fp16
    assert run.autocast is nullcontext  # the generator's own hook, not render's autocast
    assert run.updater.sampler.latents.dtype == torch.float32
    reduced = sample(generator)
    node = compose([*TINY, "generator=sdxl_tiny", "size=[32,32]", "precision=fp32"]).generator
    full = sample(instantiate_generator(node))
    assert reduced.dtype == torch.float32 and (reduced - full).abs().mean() < 0.02


def instantiate_generator(node):
    from hydra.utils import instantiate

    return instantiate(node)
