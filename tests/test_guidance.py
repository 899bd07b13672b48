"""CLIP guidance of SDXL sampling (genart.guidance), tested as guidance, not only as plumbing:
with its gradient zeroed a guided run is plain sampling exactly, and with a scale it ends with a
lower objective than plain sampling from the same seed."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from genart.errors import UserError
from genart.tools.guided_modes import build_run, final_objective, sample
from tests.conftest import compose
from tests.sdxl_helpers import one_thread  # noqa: F401  (fixture)

BASE = [
    "generator=sdxl_tiny",
    "guide=clip_tiny",
    "logger=none",
    "precision=fp32",
    "size=[48,32]",
    "cutouts.cutn=16",
]
SCHEDULERS = {
    "euler": ["generator.sampler.scheduler=EulerDiscreteScheduler"],
    "turbo": [  # ancestral: fresh noise from the sampler's own generator at every step
        "generator.sampler.scheduler=EulerAncestralDiscreteScheduler",
        "+generator.sampler.scheduler_config.timestep_spacing=trailing",
        "generator.sampler.cfg_scale=0",
    ],
    "lcm": ["generator.sampler.scheduler=LCMScheduler", "generator.sampler.cfg_scale=1.5"],
}


def built(tmp_path: Path, *overrides: str):
    """A run as genart.render builds it (generator, guide, cutouts, prompts, losses, updater,
    objective), without its loop."""
    return build_run([*BASE, *overrides])


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_guidance_with_its_gradient_zeroed_is_plain_sampling_exactly(
    tmp_path,
    monkeypatch,
    one_thread,
    name,
):
    from genart import guidance

    steps = ["generator.sampler.steps=4", *SCHEDULERS[name]]
    plain_run = built(tmp_path, *steps)
    start = plain_run.updater.sampler.latents.clone()
    plain = sample(plain_run)
    assert (plain - start).abs().mean() > 0.1  # sampling moves the latents a long way

    real, grads = guidance.gradient, []

    def zeroed(total, latents):
        grad = real(total, latents)  # the objective evaluated and differentiated, as guided
        grads.append(float(grad.abs().sum()))
        return torch.zeros_like(grad)

    monkeypatch.setattr(guidance, "gradient", zeroed)
    guided = sample(built(tmp_path, *steps, "clip_guidance.scale=10000"))
    assert len(grads) == 4 and min(grads) > 0  # every step guided, each with a real gradient
    assert torch.equal(guided, plain)


@pytest.mark.parametrize(
    "family, steps",
    [  # a sigma scheduler moves x_t, an alpha scheduler moves ε̂ (genart.guidance.GuidanceRule)
        ("euler", ["generator.sampler.steps=8"]),
        ("lcm", ["generator.sampler.steps=4", *SCHEDULERS["lcm"]]),
    ],
)
def test_guidance_lowers_the_objective_for_every_seed(tmp_path, one_thread, family, steps):
    for seed in range(4):
        plain = final_objective_of(built(tmp_path, *steps, f"seed={seed}"))
        guided = final_objective_of(
            built(tmp_path, *steps, f"seed={seed}", "clip_guidance.scale=10000")
        )
        assert guided < plain - 1e-3, (family, seed, plain, guided)


def final_objective_of(run) -> float:
    sample(run)
    return final_objective(run)


def test_every_start_and_end_pick_the_guided_steps():
    from genart.guidance import clip_guidance

    chosen = clip_guidance({"scale": 1.0, "every": 3, "start": 2, "end": 9})
    assert [s for s in range(12) if chosen.active(s)] == [2, 5, 8]
    assert not any(clip_guidance({"scale": 0}).active(s) for s in range(5))
    assert [s for s in range(4) if clip_guidance({"scale": 2}).active(s)] == [0, 1, 2, 3]


def test_only_guided_steps_differentiate(tmp_path, monkeypatch, one_thread):
    from genart import guidance

    seen = []
    real = guidance.gradient
    monkeypatch.setattr(guidance, "gradient", lambda t, x: seen.append(1) or real(t, x))
    run = built(
        tmp_path,
        "generator.sampler.steps=6",
        "clip_guidance.scale=100",
        "clip_guidance.every=2",
        "clip_guidance.start=1",
        "clip_guidance.end=5",
    )
    sample(run)
    assert len(seen) == 2  # steps 1 and 3


@pytest.mark.parametrize(
    "override, words",
    [
        ("clip_guidance.scale=-1", "clip_guidance.scale=-1 is not allowed"),
        ("clip_guidance.scale=lots", "clip_guidance.scale='lots' is not allowed"),
        ("clip_guidance.every=0", "clip_guidance.every=0 is not allowed"),
        ("clip_guidance.end=0", "clip_guidance.end=0 is not allowed"),
        ("clip_guidance.decoder=jpeg", "clip_guidance.decoder='jpeg' is not known"),
        ("+clip_guidance.scael=3", "clip_guidance.scael is not a setting"),
    ],
)
def test_bad_guidance_settings_are_refused_in_one_paragraph(override, words):
    from genart.checks import check_config

    with pytest.raises(UserError) as err:
        check_config(compose([*BASE, override]))
    assert words in str(err.value) and "\n" not in str(err.value)


def test_guidance_on_the_gradient_updater_is_refused():
    from genart.checks import check_config

    with pytest.raises(UserError, match="would ignore it"):
        check_config(compose(["generator=vqgan_tiny", "guide=clip_tiny", "clip_guidance.scale=5"]))


def test_a_scheduler_without_a_guidance_rule_is_refused(tmp_path, one_thread):
    with pytest.raises(UserError, match="does not support HeunDiscreteScheduler"):
        built(
            tmp_path,
            "generator.sampler.scheduler=HeunDiscreteScheduler",
            "clip_guidance.scale=10",
        )


@pytest.mark.parametrize(
    "guided, decoder, needed", [(0, "taesd", False), (10, "vae", False), (10, "taesd", True)]
)
def test_taesd_weights_are_looked_up_only_when_guidance_decodes_with_them(
    tmp_path, monkeypatch, guided, decoder, needed
):
    from omegaconf import OmegaConf

    from genart.pretrained import resolve_all_pretrained

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))  # empty: nothing cached
    monkeypatch.setenv("GENART_OFFLINE", "1")
    taesd = {"hf_repo": "madebyollin/taesdxl", "path": None, "revision": None}
    cfg = OmegaConf.create(
        {
            "generator": {"taesd": {"pretrained": taesd}},
            "clip_guidance": {"scale": guided, "decoder": decoder},
        }
    )
    if needed:
        with pytest.raises(UserError, match="generator.taesd.pretrained.path"):
            resolve_all_pretrained(cfg)
    else:
        assert resolve_all_pretrained(cfg).generator.taesd is None


def test_the_taesd_decoder_is_what_guided_steps_decode_with(tmp_path, monkeypatch, one_thread):
    from genart.generators.sdxl import SDXLGenerator

    used = []
    for name in ("decode_fast", "decode_latent"):
        real = getattr(SDXLGenerator, name)
        spy = lambda self, z, real=real, name=name: (
            used.append((name, z.requires_grad))
            or real(  # noqa: E731
                self, z
            )
        )
        monkeypatch.setattr(SDXLGenerator, name, spy)
    run = built(
        tmp_path,
        "generator.sampler.steps=3",
        "clip_guidance.scale=100",
        "clip_guidance.decoder=taesd",
    )
    assert run.generator.taesd is not None
    sample(run)
    assert [n for n, grad in used if grad] == ["decode_fast"] * 3  # the guidance graph: TAESD only


def test_taesd_guidance_without_a_taesd_is_refused(tmp_path, one_thread):
    with pytest.raises(UserError, match="generator.taesd"):
        built(
            tmp_path,
            "generator.taesd=null",
            "clip_guidance.scale=100",
            "clip_guidance.decoder=taesd",
        )


def test_in_bf16_guidance_decodes_with_a_bf16_vae_and_frames_with_the_fp32_one(
    tmp_path, one_thread
):
    import torch

    run = built(tmp_path, "precision=bf16", "generator.sampler.steps=2", "clip_guidance.scale=100")
    generator = run.generator
    assert generator.vae.dtype == torch.float32 and generator.guidance_vae.dtype == torch.bfloat16
    seen = []
    generator.guidance_vae.decoder.register_forward_hook(lambda m, a, out: seen.append(out.dtype))
    start = run.updater.sampler.latents.clone()
    final = sample(run)
    assert seen == [torch.bfloat16] * 2 and not torch.equal(start, final)
    assert generator().dtype == torch.float32  # the frames' decode: the VAE at vae_dtype
