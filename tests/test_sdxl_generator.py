"""The SDXL generator family: configs, loading (a saved repo, a LoRA), θ = the latent through the VAE
(gradients, encode, init=sample), latent optimisation with genart's losses, the loop's step count."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from genart.errors import UserError
from tests.conftest import REPO, compose
from tests.sdxl_helpers import SEED, SIZE, reference_pipeline, sample, tiny_generator

REAL = {  # option → (hf_repo, scheduler, steps, cfg_scale)
    "sdxl": ("stabilityai/stable-diffusion-xl-base-1.0", "EulerDiscreteScheduler", 30, 5.0),
    "sdxl_turbo": ("stabilityai/sdxl-turbo", "EulerAncestralDiscreteScheduler", 1, 0.0),
    "sdxl_lcm": ("stabilityai/stable-diffusion-xl-base-1.0", "LCMScheduler", 4, 1.0),
}
LCM = {
    "scheduler": "LCMScheduler",
    "scheduler_config": {},
    "steps": 2,
    "cfg_scale": 1.0,
    "seed": SEED,
}


@pytest.mark.parametrize("option", REAL)
def test_real_options_name_their_repo_and_sampler(option):
    from genart.generators.sdxl import scheduler_class

    repo, scheduler, steps, cfg_scale = REAL[option]
    node = compose([f"generator={option}"]).generator
    assert node.pretrained == {
        "path": None,
        "hf_repo": repo,
        "revision": None,
        "variant": "fp16",
        "subfolder": None,
    }
    assert (node.sampler.scheduler, node.sampler.steps, node.sampler.cfg_scale) == (
        scheduler,
        steps,
        cfg_scale,
    )
    assert scheduler_class(scheduler).__name__ == scheduler


def test_turbo_and_lcm_keep_their_own_sampling():
    turbo, lcm = (
        compose(["generator=sdxl_turbo"]).generator,
        compose(["generator=sdxl_lcm"]).generator,
    )
    assert turbo.sampler.scheduler_config == {"timestep_spacing": "trailing"}  # as the repo ships
    assert lcm.lora.pretrained.hf_repo == "latent-consistency/lcm-lora-sdxl"
    assert lcm.lora.pretrained.filename == "pytorch_lora_weights.safetensors"


def test_tiny_builds_from_the_config_and_decodes_a_latent():
    from hydra.utils import instantiate

    generator = instantiate(
        compose(["generator=sdxl_tiny", "size=[50,30]", "device=cpu"]).generator
    )
    assert generator.size == (48, 32)  # multiples of 8, as StableDiffusionXLPipeline demands
    assert generator.z.shape == (1, 4, 16, 24)  # the tiny VAE halves each side
    image = generator()
    assert image.shape == (1, 3, 32, 48) and 0 <= image.min() and image.max() <= 1
    assert [p for p in generator.parameters() if p.requires_grad] == [generator.z]


def test_gradients_reach_theta_through_the_vae():
    generator = tiny_generator()
    generator().mean().backward()
    assert generator.z.grad is not None and generator.z.grad.abs().sum() > 0


def test_encode_is_the_vae_posterior_mode_scaled():
    generator = tiny_generator()
    image = torch.rand(1, 3, SIZE[1], SIZE[0])
    generator.encode(image)
    with torch.no_grad():
        mode = generator.vae.encode(2 * image - 1).latent_dist.mode()
    assert torch.allclose(generator.z, mode * generator.vae.config.scaling_factor, atol=1e-6)


def test_init_sample_starts_from_the_plain_samplers_latent():
    sampled = tiny_generator(init="sample").z.detach().clone()
    sample(plain := tiny_generator())
    assert torch.equal(sampled, plain.z)


def test_a_saved_repo_loads_through_the_pretrained_path(tmp_path):
    """The real options' code path (from_pretrained on a local folder, fp16 variant files, a
    component without them falling back to its plain weights) on the tiny model saved as diffusers
    saves a repo."""
    tiny = tiny_generator(sampler=LCM)
    reference_pipeline(tiny, tiny.scheduler).save_pretrained(tmp_path, variant="fp16")
    plain = tmp_path / "text_encoder_2" / "model.safetensors"
    (tmp_path / "text_encoder_2" / "model.fp16.safetensors").rename(plain)
    pretrained = {"path": str(tmp_path), "variant": "fp16"}
    loaded = tiny_generator(sampler=LCM, pretrained=pretrained, architecture=None)
    image, expected = sample(loaded), sample(tiny)
    assert torch.allclose(image, expected, atol=1e-5), (image - expected).abs().max()


def tiny_lora(generator, path):
    """A random LoRA on the tiny UNet's attention, saved as diffusers saves LoRA weights."""
    from diffusers import StableDiffusionXLPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    config = LoraConfig(r=4, lora_alpha=4, init_lora_weights=False, target_modules=["to_q", "to_v"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        generator.unet.add_adapter(config)
    layers = get_peft_model_state_dict(generator.unet)
    StableDiffusionXLPipeline.save_lora_weights(path, unet_lora_layers=layers)
    return path / "pytorch_lora_weights.safetensors"


def test_a_lora_loads_through_diffusers_load_lora_weights(tmp_path):
    file = tiny_lora(tiny_generator(), tmp_path)
    lora = {"pretrained": {"path": str(file)}, "scale": 1.0}
    with_lora, without = tiny_generator(sampler=LCM, lora=lora), tiny_generator(sampler=LCM)
    image, plain = sample(with_lora), sample(without)
    pipe = reference_pipeline(without, without.scheduler)
    pipe.load_lora_weights(str(tmp_path))
    pipe.fuse_lora()
    expected = pipe(
        "a red fox",
        generator=torch.Generator().manual_seed(SEED),
        num_inference_steps=2,
        guidance_scale=1.0,
        width=SIZE[0],
        height=SIZE[1],
        output_type="pt",
    ).images
    assert torch.allclose(image, expected, atol=1e-5)
    assert not torch.allclose(image, plain, atol=1e-3)


def test_a_lora_for_another_model_is_one_paragraph(tmp_path):
    file = tiny_lora(tiny_generator(), tmp_path)
    narrow = OmegaConf.to_container(compose(["generator=sdxl_tiny"]).generator.architecture)
    narrow["unet"]["block_out_channels"] = [32, 32]
    with pytest.raises(UserError, match="generator.lora.pretrained.path") as error:
        tiny_generator(architecture=narrow, lora={"pretrained": {"path": str(file)}})
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    "change, key",
    [
        ({"scheduler": "NoSuchScheduler"}, "generator.sampler.scheduler=NoSuchScheduler"),
        ({"scheduler": "UNet2DConditionModel"}, "is not a diffusers scheduler"),
        ({"cfg_scale": -1.0}, "generator.sampler.cfg_scale=-1.0"),
        ({"steps": 0}, "generator.sampler.steps=0"),
    ],
    ids=["unknown", "not-a-scheduler", "negative-cfg", "no-steps"],
)
def test_bad_sampler_settings_are_one_paragraph(change, key):
    settings = {**LCM, **change}
    with pytest.raises(UserError, match=key.replace(".", r"\.").replace("-", r"\-")):
        tiny_generator(sampler=settings)


def test_cfg_scale_is_never_called_guidance():
    """cfg_scale is classifier-free guidance; 'guidance' alone means CLIP guidance in genart."""
    for option in ("sdxl", "sdxl_turbo", "sdxl_lcm", "sdxl_tiny"):
        text = (REPO / "conf/generator" / f"{option}.yaml").read_text()
        assert "cfg_scale:" in text and "guidance_scale" not in text
