"""TAESD as SDXL's cheap decoder (genart.generators.taesd): the tiny random one's sizes, range,
gradient and seeding; the on-disk format; the latent space against diffusers' own pipeline."""

from __future__ import annotations

import json

import pytest
import torch
from omegaconf import OmegaConf

from genart import pretrained as W
from genart.errors import UserError
from genart.generators.taesd import KEY, TAESDXL, TINY_TAESD, decode_taesd, load_taesd
from tests.sdxl_helpers import SEED, SIZE, one_thread, reference_pipeline, tiny_generator  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: a second thread only waits

PATH_KEY = f"{KEY}.pretrained.path"
TINY = {"architecture": TINY_TAESD, "init_seed": 0}  # the node sdxl_tiny's generator.taesd holds
REAL = {"pretrained": {"path": None, "hf_repo": "madebyollin/taesdxl", "revision": None,
                       "variant": None, "subfolder": None}}  # fmt: skip


def tiny(seed: int = 0, **changes):
    node = {"architecture": {**TINY_TAESD, **changes}, "init_seed": seed}
    return load_taesd(node, torch.float32, "cpu")


def latent(h: int = 8, w: int = 6) -> torch.Tensor:
    return torch.randn(1, 4, h, w, generator=torch.Generator().manual_seed(SEED))  # (1, 4, h, w)


def weights(model) -> torch.Tensor:
    return torch.cat([p.flatten() for p in model.parameters()])


def test_tiny_decodes_an_sdxl_tiny_latent_to_twice_its_side_in_unit_range():
    image = decode_taesd(tiny(), latent(8, 6))
    assert image.shape == (1, 3, 16, 12) and image.dtype == torch.float32
    assert image.min() >= 0 and image.max() <= 1


def test_gradient_reaches_the_latents():
    z = latent().requires_grad_(True)
    decode_taesd(tiny(), z).mean().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0


def test_clamped_pixels_keep_the_gradient_that_pulls_them_back():
    """clamp_with_grad's rule: a pixel below 0 still passes a gradient that would raise it."""
    taesd, z = tiny(), latent().requires_grad_(True)
    (-decode_taesd(taesd, z).mean()).backward()  # raise every pixel
    raw = (taesd.decode(z, return_dict=False)[0] + 1) / 2  # (1, 3, H, W), unclamped
    assert (raw < 0).any(), "no pixel below 0: the test shows nothing"
    expected = torch.autograd.grad(-(raw * (raw <= 1).detach()).mean(), z)[0]
    assert torch.allclose(z.grad, expected, atol=1e-7)


def test_frozen_in_eval_mode_and_the_global_rng_left_alone():
    state = torch.get_rng_state()
    taesd = tiny()
    assert torch.equal(state, torch.get_rng_state())
    assert not taesd.training and not any(p.requires_grad for p in taesd.parameters())


def test_same_seed_same_weights_another_seed_others():
    assert torch.equal(weights(tiny(0)), weights(tiny(0)))
    assert not torch.equal(weights(tiny(0)), weights(tiny(1)))


def test_golden_slice():
    """A 3x3 corner of the tiny decode, computed once (diffusers' fast-test habit)."""
    with torch.no_grad():
        image = decode_taesd(tiny(), latent(8, 8))
    expected = torch.tensor(GOLDEN)
    assert torch.allclose(image[0, 0, -3:, -3:], expected, atol=1e-4), image[0, 0, -3:, -3:]


GOLDEN = [  # image[0, 0, -3:, -3:]: random weights make a dark image, a third of it below 0
    [0.041130, 0.015601, 0.073602],
    [0.090032, 0.087802, 0.093952],
    [0.000000, 0.023167, 0.035580],
]


@pytest.mark.parametrize("scaling_factor", [1.0, 0.5])
def test_decodes_as_the_sdxl_pipeline_does_with_taesd_as_its_vae(scaling_factor):
    """diffusers' StableDiffusionXLPipeline with `vae=taesd`: its image from its own latents."""
    taesd = tiny(scaling_factor=scaling_factor)
    generator = tiny_generator()
    pipe = reference_pipeline(generator, generator.scheduler)
    pipe.vae = taesd  # as diffusers' docs swap it in: `pipe.vae = AutoencoderTiny.from_pretrained`
    run = dict(num_inference_steps=2, guidance_scale=1.0, width=SIZE[0], height=SIZE[1])
    images = [
        pipe("a red fox", generator=torch.Generator().manual_seed(SEED), output_type=kind, **run)
        for kind in ("latent", "pt")
    ]
    latents, expected = images[0].images, images[1].images  # (1, 4, h, w), (1, 3, H, W)
    assert expected.shape == (1, 3, SIZE[1], SIZE[0])
    assert torch.allclose(decode_taesd(taesd, latents), expected, atol=1e-6)


def test_the_real_architecture_decodes_8x():
    """taesdxl's published config: 8x, as SDXL's VAE; TAESD's latent scale factor is 1."""
    from diffusers import AutoencoderTiny

    taesd = AutoencoderTiny(**TAESDXL)
    assert taesd.config.scaling_factor == 1.0
    with torch.no_grad():
        assert decode_taesd(taesd, latent(4, 3)).shape == (1, 3, 32, 24)


# ---------------------------------------------------------------- on disk


def saved(folder, architecture: dict, seed: int = 0):
    """A folder in diffusers' real on-disk format (config.json + safetensors)."""
    from genart.generators.taesd import random_taesd

    random_taesd(architecture, seed).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("architecture", [TINY_TAESD, TAESDXL], ids=["tiny", "taesdxl"])
def test_a_saved_folder_loads_through_pretrained_path(tmp_path, architecture):
    folder = saved(tmp_path / "taesd", architecture)
    node = {"pretrained": {**REAL["pretrained"], "path": str(folder)}}
    loaded = load_taesd(node, torch.float32, "cpu")
    built = load_taesd({"architecture": architecture, "init_seed": 0}, torch.float32, "cpu")
    assert torch.equal(weights(loaded), weights(built))
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())


def test_a_resolved_config_node_loads(tmp_path, monkeypatch):
    """genart.pretrained points generator.taesd.pretrained at the folder; load_taesd takes it."""
    monkeypatch.setattr(W, "is_reachable", no_network)
    folder = saved(tmp_path / "taesd", TINY_TAESD)
    node = {"pretrained": {**REAL["pretrained"], "path": str(folder)}}
    guided = {"scale": 1, "decoder": "taesd"}  # else the unused TAESD is not looked up at all
    config = {"generator": {"taesd": node}, "clip_guidance": guided}
    cfg = W.resolve_all_pretrained(OmegaConf.create(config))
    taesd = load_taesd(cfg.generator.taesd, torch.bfloat16, "cpu")
    assert taesd.dtype == torch.bfloat16
    assert decode_taesd(taesd, latent()).dtype == torch.float32  # fp32 out whatever the weights


def without_weights(folder):
    saved(folder, TINY_TAESD)
    (folder / "diffusion_pytorch_model.safetensors").unlink()


def another_class(folder):
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL"}))
    (folder / "diffusion_pytorch_model.safetensors").write_bytes(b"")


def broken_weights(folder):
    saved(folder, TINY_TAESD)
    (folder / "diffusion_pytorch_model.safetensors").write_bytes(b"not safetensors")


@pytest.mark.parametrize(
    "make, expected",
    [
        (without_weights, "it holds no weights"),
        (lambda folder: folder.mkdir(), "it holds no config.json"),
        (another_class, "its config.json is for AutoencoderKL, not AutoencoderTiny"),
        (broken_weights, "diffusers cannot load it"),
        (lambda folder: saved(folder, {**TINY_TAESD, "latent_channels": 16}), "16-channel"),
    ],
    ids=["no-weights", "empty", "another-class", "broken-weights", "16-channels"],
)
def test_an_unusable_folder_is_one_paragraph_naming_the_key(tmp_path, make, expected):
    make(tmp_path / "taesd")
    node = {"pretrained": {**REAL["pretrained"], "path": str(tmp_path / "taesd")}}
    with pytest.raises(UserError) as error:
        load_taesd(node, torch.float32, "cpu")
    message = str(error.value)
    assert expected in message and PATH_KEY in message and "\n" not in message


def test_a_node_without_weights_or_architecture_names_the_key():
    with pytest.raises(UserError, match=PATH_KEY):
        load_taesd({"pretrained": None}, torch.float32, "cpu")


def no_network(*args, **kwargs):
    raise AssertionError("the resolver must not touch the network here")


def test_offline_with_an_empty_cache_is_the_missing_repo_paragraph(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    for name in (*W.OFFLINE_ENV, "HF_HOME", "HF_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GENART_OFFLINE", "1")
    monkeypatch.setattr(W, "is_reachable", no_network)
    (tmp_path / "hub").mkdir()
    guided = {"scale": 1, "decoder": "taesd"}  # else the unused TAESD is not looked up at all
    cfg = OmegaConf.create({"generator": {"taesd": REAL}, "clip_guidance": guided})
    with pytest.raises(W.PretrainedNotFound) as error:
        W.resolve_all_pretrained(cfg)
    message = str(error.value)
    assert "Pretrained Hugging Face repo madebyollin/taesdxl" in message and "\n" not in message
    assert "because GENART_OFFLINE=1" in message and PATH_KEY in message


def documented_nodes() -> list[dict]:
    """The two `generator.taesd` nodes docs/taesd.md gives for conf/generator/sdxl*.yaml."""
    from pathlib import Path

    text = (Path(__file__).parents[1] / "docs" / "taesd.md").read_text()
    blocks = [b.split("```")[0] for b in text.split("```yaml\n")[1:]]
    return [OmegaConf.to_container(OmegaConf.create(b))["taesd"] for b in blocks]


def test_the_documented_nodes_are_the_ones_tested():
    real, tiny_node = documented_nodes()
    assert real == REAL and tiny_node == {"pretrained": None, **TINY}
    taesd = load_taesd(tiny_node, torch.float32, "cpu")
    assert torch.equal(weights(taesd), weights(tiny()))
