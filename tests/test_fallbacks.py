"""The speed-ups that reach into kornia's, open_clip's and taming's internals fall back to the
library's own path (switched off, outside their tested versions, or when those internals moved),
with the same results and a warning that names them (genart.speed.guard)."""

from __future__ import annotations

import functools
import warnings

import kornia.augmentation as K
import kornia.enhance
import pytest
import torch
from hydra.utils import instantiate

from genart.cutouts import Cutouts
from genart.speed import guard
from genart.speed.color import FAST_HUE, adjust_hue
from genart.speed.decoder import FAST_DECODER
from genart.speed.guard import PatchFallbackWarning
from genart.speed.views import CHOSEN_VIEWS
from genart.speed.vit import FAST_VIT, ClassTokenBlock
from tests.conftest import compose

PATCHES = [FAST_HUE, FAST_VIT, FAST_DECODER, CHOSEN_VIEWS]


@pytest.fixture(autouse=True)
def _fresh_guard(monkeypatch):
    monkeypatch.delenv(guard.ENV, raising=False)
    guard.forget()
    yield
    guard.forget()


@functools.cache
def tiny_config():
    return compose(["guide=clip_tiny", "generator=vqgan_tiny", "size=[64,64]"])


def jittered_views() -> tuple[torch.Tensor, torch.Tensor, object]:
    """Views through a hue-only ColorJitter, their gradient, and the hue function it used."""
    cutouts = Cutouts(8, 32, augmentations=[K.ColorJitter(hue=0.5, p=1.0)])
    image = torch.rand(1, 3, 48, 48, generator=torch.Generator().manual_seed(1))
    image.requires_grad_(True)
    torch.manual_seed(3)
    views = cutouts(image, 0).pixels
    (grad,) = torch.autograd.grad(views.square().sum(), image)
    return views, grad, cutouts.augmentations[0]._hue_fn


def tiny_clip(dtype: torch.dtype = torch.float32):
    model = next(iter(instantiate(tiny_config().guide).models.values()))
    model.set_precision(dtype)
    return model


def tiny_vqgan(dtype: torch.dtype = torch.float32):
    torch.manual_seed(0)  # the same latent z in both
    generator = instantiate(tiny_config().generator)
    generator.set_precision(dtype)
    return generator


def hue_is_fast() -> bool:
    return Cutouts(2, 8, augmentations=[K.ColorJitter(hue=0.1)]).augmentations[0]._hue_fn is (
        adjust_hue
    )


def vit_is_fast() -> bool:
    return isinstance(tiny_clip().model.visual.transformer.resblocks[-1], ClassTokenBlock)


def decoder_is_fast() -> bool:
    return tiny_vqgan().decoder.fast


FAST = {"fast_hue": hue_is_fast, "fast_vit": vit_is_fast, "fast_decoder": decoder_is_fast}


def switched_off(monkeypatch, name: str, build):
    """build() with GENART_NO_PATCHES=name, checking the one warning names the patch."""
    monkeypatch.setenv(guard.ENV, name)
    with pytest.warns(PatchFallbackWarning, match=f"\\({name}\\) is off") as record:
        built = build()
    assert len([w for w in record if w.category is PatchFallbackWarning]) == 1
    assert "results are unchanged but slower" in str(record[0].message)
    return built


@pytest.mark.parametrize("patch", PATCHES, ids=lambda p: p.name)
def test_every_patch_applies_on_the_installed_libraries(patch):
    assert guard.why_off(patch) is None, patch
    if patch.name in FAST:
        assert FAST[patch.name]()


def test_hue_fallback_jitters_the_same(monkeypatch):
    views, grad, hue_fn = jittered_views()
    stock_views, stock_grad, stock_fn = switched_off(monkeypatch, "fast_hue", jittered_views)
    assert hue_fn is adjust_hue and stock_fn is kornia.enhance.adjust_hue
    # measured 3.0e-7 in the views and 1.2e-7 of max|g| in the gradient
    torch.testing.assert_close(views, stock_views, atol=2e-6, rtol=0)
    torch.testing.assert_close(grad, stock_grad, atol=2e-6 * float(grad.abs().max()), rtol=0)


def standard_views() -> tuple[torch.Tensor, torch.Tensor]:
    """Views through the standard cutouts (affine, perspective, jitter, erasing; p < 1 each) and
    their gradient, from fixed draws."""
    cutouts = instantiate(tiny_config().cutouts, cut_size=32)
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    image.requires_grad_(True)
    torch.manual_seed(5)
    views = cutouts(image, 0).pixels
    (grad,) = torch.autograd.grad(views.square().sum(), image)
    return views, grad


def test_chosen_views_fallback_augments_the_same(monkeypatch):
    views, grad = standard_views()
    stock_views, stock_grad = switched_off(monkeypatch, "chosen_views", standard_views)
    assert views.std() > 0.05  # real views, not a constant that any path would match
    torch.testing.assert_close(views, stock_views, atol=1e-5, rtol=0)
    torch.testing.assert_close(grad, stock_grad, atol=1e-5 * float(grad.abs().max()), rtol=0)


# max |Δ| of unit embeddings; measured fp32 1.2e-7, bf16 1.7e-3 (cos ≥ 0.999995)
@pytest.mark.parametrize(
    "dtype, atol", [(torch.float32, 1e-6), (torch.bfloat16, 1e-2)], ids=["fp32", "bf16"]
)
def test_clip_fallback_embeds_the_same(monkeypatch, dtype, atol):
    pixels = torch.rand(8, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    fast = tiny_clip(dtype)
    stock = switched_off(monkeypatch, "fast_vit", lambda: tiny_clip(dtype))
    visual = stock.model.visual
    assert isinstance(fast.model.visual.transformer.resblocks[-1], ClassTokenBlock)
    assert visual.transformer.batch_first and isinstance(visual.conv1, torch.nn.Conv2d)
    assert not any(isinstance(b, ClassTokenBlock) for b in visual.transformer.resblocks)
    expected = stock.encode_image(pixels)
    torch.testing.assert_close(fast.encode_image(pixels), expected, atol=atol, rtol=0)


# |Δ| of the [0, 1] image; measured fp32 mean 3e-7, max 2.7e-6; bf16 mean 3.4e-3, max 0.034,
# where each path is as far from fp32's image (mean 3.0e-3)
@pytest.mark.parametrize(
    "dtype, mean, most",
    [(torch.float32, 1e-6, 1e-5), (torch.bfloat16, 1e-2, 1e-1)],
    ids=["fp32", "bf16"],
)
def test_decoder_fallback_decodes_the_same(monkeypatch, dtype, mean, most):
    fast = tiny_vqgan(dtype)
    stock = switched_off(monkeypatch, "fast_decoder", lambda: tiny_vqgan(dtype))
    assert fast.decoder.fast and not stock.decoder.fast
    assert torch.equal(fast.z, stock.z)
    with torch.no_grad():
        error = (fast.decode_latent(fast.z) - stock.decode_latent(stock.z)).abs()
    assert error.mean() < mean and error.max() < most, (error.mean(), error.max())


OUTSIDE = [
    (FAST_HUE, "0.10.0"),
    (FAST_HUE, "0.7.1"),
    (CHOSEN_VIEWS, "1.0.0"),
    (FAST_VIT, "3.4.0"),
    (FAST_DECODER, "0.0.7"),
]


@pytest.mark.parametrize("patch, version", OUTSIDE, ids=[f"{p.name}-{v}" for p, v in OUTSIDE])
def test_a_version_outside_the_tested_range_switches_the_patch_off(monkeypatch, patch, version):
    installed = guard.installed_version
    pretend = lambda library: version if library == patch.library else installed(library)
    monkeypatch.setattr(guard, "installed_version", pretend)
    with pytest.warns(PatchFallbackWarning, match=f"\\({patch.name}\\) is off") as record:
        assert not guard.applies(patch)
    assert f"{patch.library} {version} is outside the tested range" in str(record[0].message)
    if patch.name in FAST:
        assert not FAST[patch.name]()


MOVED = [  # each internal a patch relies on, given a new parameter as a release might
    (FAST_HUE, "kornia.enhance.adjust_hue", lambda image, factor, eps=1e-8: image),
    (
        CHOSEN_VIEWS,
        "kornia.augmentation.base._BasicAugmentationBase.forward_parameters",
        lambda self, batch_shape, generator=None: {},
    ),
    (
        FAST_VIT,
        "open_clip.transformer.ResidualAttentionBlock.forward",
        lambda self, q_x, attn_mask=None, rope=None: q_x,
    ),
    (
        FAST_DECODER,
        "taming.modules.diffusionmodules.model.Decoder.forward",
        lambda self, z, tanh_out=False: z,
    ),
]


@pytest.mark.parametrize("patch, target, moved", MOVED, ids=[p.name for p, *_ in MOVED])
def test_moved_internals_switch_the_patch_off(monkeypatch, patch, target, moved):
    monkeypatch.setattr(target, moved)
    reason = guard.why_off(patch)
    assert reason is not None and "outside" not in reason
    with pytest.warns(PatchFallbackWarning, match=f"\\({patch.name}\\) is off"):
        assert not guard.applies(patch)
    if patch.name in FAST:
        assert not FAST[patch.name]()


@pytest.mark.parametrize(
    "setting, off",
    [
        ("1", {p.name for p in PATCHES}),
        ("all", {p.name for p in PATCHES}),
        ("fast_vit, fast_hue", {"fast_vit", "fast_hue"}),
        ("0", set()),
        ("", set()),
    ],
)
def test_genart_no_patches_switches_off_the_listed_patches(monkeypatch, setting, off):
    monkeypatch.setenv(guard.ENV, setting)
    assert {p.name for p in PATCHES if guard.why_off(p) is not None} == off


def test_the_warning_comes_once_per_patch(monkeypatch):
    monkeypatch.setenv(guard.ENV, "fast_vit")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        for _ in range(3):
            assert not guard.applies(FAST_VIT)
    assert [str(w.message).count("fast_vit") for w in record] == [1]
