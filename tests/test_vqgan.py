"""VQGANGenerator: straight-through quantisation, ClampWithGrad, z clamping, sizes, seeding."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf
from taming.modules.vqvae.quantize import VectorQuantizer2

from genart.generators.vqgan import (
    VQGANGenerator,
    clamp_with_grad,
    nearest_codes,
    quantize_st,
    round_size,
)
from genart.speed.decoder import phase_kernels, upsample_by_phases
from genart.speed.kernels import kernel_plan, with_choices

CONF = Path(__file__).resolve().parents[1] / "conf" / "generator"
DDCONFIG = dict(
    double_z=False,
    z_channels=8,
    resolution=32,
    in_channels=3,
    out_ch=3,
    ch=32,
    ch_mult=[1, 2, 2],
    num_res_blocks=1,
    attn_resolutions=[8],
    dropout=0.0,
)


def tiny(size=(32, 16), **kwargs) -> VQGANGenerator:
    """A 4×-downsampling random VQGAN with 16 codes of dimension 8."""
    return VQGANGenerator(size=list(size), ddconfig=DDCONFIG, n_embed=16, embed_dim=8, **kwargs)


def test_forward_quantises_to_nearest_codebook_rows():
    codebook = torch.randn(16, 8)
    z = torch.randn(2, 8, 3, 5)
    flat = z.permute(0, 2, 3, 1).reshape(-1, 8)
    expected = codebook[torch.cdist(flat, codebook).argmin(1)].view(2, 3, 5, 8)
    assert torch.allclose(quantize_st(z, codebook), expected.permute(0, 3, 1, 2), atol=1e-6)


def test_quantisation_matches_taming():
    """Parity: taming's VectorQuantizer2 picks the same rows."""
    quantizer = VectorQuantizer2(16, 8, beta=0.25)
    quantizer.embedding.weight.data.normal_()
    z = torch.randn(1, 8, 4, 4)
    z_q, _, _ = quantizer(z)
    assert torch.allclose(nearest_codes(z, quantizer.embedding.weight), z_q, atol=1e-6)


def test_straight_through_gradient_is_identity():
    z = torch.randn(1, 8, 3, 3, requires_grad=True)
    z_q = quantize_st(z, torch.randn(16, 8))
    z_q.retain_grad()
    (z_q.sin() * torch.arange(72.0).view_as(z_q)).sum().backward()
    assert torch.equal(z.grad, z_q.grad)


def test_clamp_with_grad_forward_and_backward_rule():
    x = torch.tensor([-0.5, 0.5, 1.5, -0.2, 1.2, 0.0], requires_grad=True)
    y = clamp_with_grad(x)
    assert torch.equal(y, x.detach().clamp(0, 1))
    # descent moves x by −g: keep g only where that does not push further out of [0, 1]
    g = torch.tensor([1.0, 1.0, 1.0, -1.0, -1.0, -3.0])
    y.backward(g)
    assert torch.equal(x.grad, torch.tensor([0.0, 1.0, 1.0, -1.0, 0.0, -3.0]))


def test_post_step_clamps_z_to_codebook_range():
    gen = tiny()
    low, high = gen.codebook.min(0).values, gen.codebook.max(0).values  # (D,)
    inside = gen.z.detach().clone()
    with torch.no_grad():
        gen.z[:, :, 0, 0] = 100.0
        gen.z[:, :, 0, 1] = -100.0
        gen.post_step()
    assert torch.equal(gen.z[0, :, 0, 0], high) and torch.equal(gen.z[0, :, 0, 1], low)
    assert torch.equal(gen.z[..., 1:, :], inside[..., 1:, :])  # random tokens already inside


def test_gradient_reaches_theta_only():
    gen = tiny()
    image = gen()
    assert image.shape == (1, 3, 16, 32) and 0 <= image.min() and image.max() <= 1
    image.mean().backward()
    assert gen.theta() == [gen.z] and gen.latent() is gen.z
    assert gen.z.grad is not None and gen.z.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in gen.model.parameters())


def test_random_init_uses_codebook_tokens():
    gen = tiny()
    assert torch.equal(nearest_codes(gen.z.detach(), gen.codebook), gen.z.detach())


@pytest.mark.parametrize(
    "size, used",
    [((32, 16), (32, 16)), ((30, 14), (32, 16)), ((33, 21), (32, 20)), ((1, 2), (4, 4))],
)
def test_size_rounds_to_the_tile(size, used):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gen = tiny(size)
    assert gen.size == used and gen().shape[-2:] == (used[1], used[0])
    assert gen.z.shape == (1, 8, used[1] // 4, used[0] // 4)
    assert len(caught) == (size != used)
    if caught:
        assert f"using {used[0]}x{used[1]}" in str(caught[0].message)


def test_round_size_is_nearest_multiple():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert round_size([100, 70], 16, "VQGAN") == (96, 64)
        assert round_size([104, 72], 16, "VQGAN") == (112, 80)


def test_same_init_seed_same_model_whatever_the_global_rng():
    torch.manual_seed(1)
    a = tiny(init_seed=3).model.state_dict()
    torch.manual_seed(2)
    b = tiny(init_seed=3).model.state_dict()
    c = tiny(init_seed=4).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["decoder.conv_out.weight"], c["decoder.conv_out.weight"])


def test_global_seed_sets_the_random_tokens():
    torch.manual_seed(5)
    z1 = tiny().z.detach()
    torch.manual_seed(5)
    z2 = tiny().z.detach()
    assert torch.equal(z1, z2)


def test_encode_from_an_image():
    gen = tiny()
    image = torch.rand(1, 3, 40, 70)  # another size and aspect: resized to (16, 32) first
    gen.encode(image)
    resized = F.interpolate(image, size=(16, 32), mode="bicubic", antialias=True).clamp(0, 1)
    expected = gen.model.quant_conv(gen.model.encoder(2 * resized - 1))
    assert gen.z.shape == (1, 8, 4, 8) and torch.allclose(gen.z, expected, atol=1e-5)
    assert gen.z.requires_grad and gen().shape == (1, 3, 16, 32)


def test_model_stays_in_eval_mode():
    gen = tiny().train()
    assert gen.training and not gen.model.training


def test_an_unresolved_pretrained_node_is_refused():
    with pytest.raises(ValueError, match="resolve_pretrained"):
        tiny(pretrained={"path": None, "url": "https://example.org/x.ckpt"})


@pytest.mark.parametrize("size", [[64, 64], [128, 64]])
def test_tiny_yaml_instantiates(size):
    cfg = OmegaConf.create({"size": size, "generator": OmegaConf.load(CONF / "vqgan_tiny.yaml")})
    gen = instantiate(cfg.generator)
    assert gen.size == tuple(size) and gen().shape == (1, 3, size[1], size[0])


def test_full_yaml_matches_imagenet_f16_16384():
    """The real architecture builds (random weights, no file): 76.1 M parameters, f16."""
    cfg = OmegaConf.create({"size": [256, 256], "generator": OmegaConf.load(CONF / "vqgan.yaml")})
    cfg.generator.pretrained = None
    gen = instantiate(cfg.generator)
    assert gen.factor == 16 and gen.z.shape == (1, 256, 16, 16)
    assert sum(p.numel() for p in gen.model.parameters()) == pytest.approx(76.1e6, rel=1e-3)


@pytest.mark.parametrize(
    ("dtype", "layout"),
    [(torch.float32, torch.channels_last), (torch.bfloat16, torch.contiguous_format)],
)
def test_decoder_runs_in_the_layout_measured_fastest_for_its_dtype(dtype, layout):
    gen = tiny()
    gen.set_precision(dtype)
    seen = []
    gen.model.post_quant_conv.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    gen()
    assert seen[0].is_contiguous(memory_format=layout)


def test_fast_decoder_computes_tamings_decoder():
    """genart.speed.decoder restates taming's Decoder.forward: same function in fp32."""
    gen = tiny()
    z = torch.randn(1, 8, 4, 8)
    with torch.no_grad():
        assert torch.allclose(gen.decoder(z), gen.model.decoder(z), atol=1e-5)


def test_upsampling_by_phases_equals_nearest_upsampling_then_conv():
    conv = torch.nn.Conv2d(6, 5, 3, padding=1)
    x = torch.randn(2, 6, 5, 7)
    expected = conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
    got = upsample_by_phases(x, conv, phase_kernels(conv.weight))
    assert got.shape == expected.shape and torch.allclose(got, expected, atol=1e-5)


def test_bf16_decoder_upsamples_by_phases_as_accurately_as_tamings():
    gen = tiny()
    bf16 = kernel_plan("cpu", torch.bfloat16)
    gen.set_precision(torch.bfloat16, with_choices(bf16, decoder_upsample="phases"))
    calls = []
    for level in range(1, len(gen.model.decoder.up)):
        gen.model.decoder.up[level].upsample.register_forward_hook(lambda *a: calls.append(1))
    z = torch.randn(1, 8, 4, 8)
    with torch.no_grad():
        exact = gen.model.decoder(z)
        calls.clear()
        with torch.autocast("cpu", torch.bfloat16):
            fast = gen.decoder(z).float()
            assert not calls  # the phase path, not taming's interpolate + conv
            stock = gen.model.decoder(z).float()
    scale = exact.abs().max()
    assert (fast - exact).abs().mean() < 1.25 * (stock - exact).abs().mean() + 1e-3 * scale
