"""Each loss against its formula and its invariants (shared/DESIGN.md)."""

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from genart.losses import (
    EdgeSymmetryLoss,
    InitImageLoss,
    LossContext,
    PromptLoss,
    SemanticSymmetryLoss,
    ToneSymmetryLoss,
    TVLoss,
    mirrored_pairs,
    spherical_dist,
)


def unit(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g), dim=-1)


def context(image=None, e=None, t=None, W=None, stops=None, pair=None, mix=None, **kw):
    image = torch.rand(1, 3, 32, 32) if image is None else image
    e = unit(4, 8) if e is None else e
    t = unit(2, 8, seed=1) if t is None else t
    n, p = len(e), len(t)
    pair = torch.full((n,), -1) if pair is None else pair
    return LossContext(
        step=kw.pop("step", 0),
        image=image,
        views=SimpleNamespace(pair=pair),
        image_embeds=[e],
        text_embeds=[t],
        model_weights=[1.0],
        W=torch.ones(n, p) if W is None else W,
        stops=torch.full((p,), -math.inf) if stops is None else stops,
        anchor_mix=torch.zeros(n, p) if mix is None else mix,
        pairs=mirrored_pairs(pair),
        **kw,
    )


def test_spherical_distance_is_half_the_squared_angle():
    a, b = unit(5, 16), unit(3, 16, seed=2)
    theta = torch.arccos((a @ b.T).clamp(-1, 1))
    assert torch.allclose(spherical_dist(a, b), theta**2 / 2, atol=1e-5)
    chord = (a[:, None] - b[None]).norm(dim=-1)
    assert torch.allclose(spherical_dist(a, b), 2 * torch.arcsin(chord / 2) ** 2)


def test_prompt_loss_value_and_sign():
    e, t = unit(4, 8), unit(2, 8, seed=1)
    W = torch.tensor([[1.0, -0.5]] * 4)
    value = PromptLoss()(context(e=e, t=t, W=W))
    d = spherical_dist(e, t)
    assert torch.allclose(value, (d[:, 0] - 0.5 * d[:, 1]).mean())


def test_prompt_loss_stop_blocks_gradient_but_not_value():
    e = unit(4, 8).requires_grad_()
    t = unit(1, 8, seed=1)
    stop_above = torch.tensor([10.0])  # every view is already closer than the stop
    ctx = context(e=e, t=t, W=torch.ones(4, 1), stops=stop_above)
    loss = PromptLoss()(ctx)
    loss.backward()
    assert torch.allclose(loss, spherical_dist(e, t).mean())
    assert e.grad.abs().sum() == 0
    e.grad = None
    PromptLoss()(context(e=e, t=t, W=torch.ones(4, 1))).backward()
    assert e.grad.abs().sum() > 0


def test_semantic_symmetry_matches_formula_and_is_ordered():
    e, t = unit(4, 8), unit(2, 8, seed=1)
    pair = torch.tensor([2, 3, 0, 1])  # (0 left, 2 right), (1 left, 3 right)
    mix = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.1, 0.9], [0.4, 0.6]])
    value = SemanticSymmetryLoss()(context(e=e, t=t, pair=pair, mix=mix))
    offset = e - mix @ t
    expected = torch.stack(
        [1 - F.cosine_similarity(offset[i], offset[j], dim=0) for i, j in [(0, 2), (1, 3)]]
    ).mean()
    assert torch.allclose(value, expected)
    # swapping which member is left changes which t each side subtracts, hence the value
    swapped = SemanticSymmetryLoss()(context(e=e[[2, 3, 0, 1]], t=t, pair=pair, mix=mix))
    assert not torch.allclose(value, swapped)


def test_semantic_symmetry_zero_for_translated_pair():
    t = unit(2, 8, seed=1)
    offset = unit(1, 8, seed=5)[0]
    e = torch.stack([t[0] + offset, t[1] + offset])
    value = SemanticSymmetryLoss()(context(e=e, t=t, pair=torch.tensor([1, 0]), mix=torch.eye(2)))
    assert value.abs() < 1e-6


def symmetric_image():
    half = torch.rand(1, 3, 32, 16)
    return torch.cat([half, half.flip(-1)], dim=-1)


@pytest.mark.parametrize("loss", [ToneSymmetryLoss(sigma=2.0), EdgeSymmetryLoss(sigma=2.0)])
def test_symmetry_losses_vanish_on_mirror_images_only(loss):
    image = symmetric_image()
    assert torch.equal(image, image.flip(-1))
    assert loss(context(image=image)) < 1e-7
    lopsided = image.clone()
    lopsided[..., :8] = 1.0
    assert loss(context(image=lopsided)) > 1e-4


def test_tone_symmetry_formula():
    import kornia

    image = torch.rand(1, 3, 16, 16)
    g = kornia.filters.gaussian_blur2d(
        kornia.color.rgb_to_grayscale(image), (13, 13), (2.0, 2.0), border_type="reflect"
    )
    assert torch.allclose(
        ToneSymmetryLoss(sigma=2.0)(context(image=image)), (g - g.flip(-1)).abs().mean()
    )


@pytest.mark.parametrize("sigma", [1.0, 2.0])
def test_edge_symmetry_formula(sigma):
    import kornia

    image = torch.rand(1, 3, 24, 32)  # wider than tall: flip_x must flip the width
    edges = kornia.filters.sobel(kornia.color.rgb_to_grayscale(image))  # (1, 1, H, W)
    k = 2 * math.ceil(3 * sigma) + 1  # the kernel reaches 3σ on each side
    blurred = kornia.filters.gaussian_blur2d(edges, (k, k), (sigma, sigma), border_type="reflect")
    expected = ((blurred - blurred.flip(-1)) ** 2).mean()
    assert torch.allclose(EdgeSymmetryLoss(sigma=sigma)(context(image=image)), expected, rtol=1e-5)


def test_tv_zero_on_flat_image():
    assert TVLoss()(context(image=torch.full((1, 3, 8, 8), 0.3))) == 0
    assert TVLoss()(context(image=torch.rand(1, 3, 8, 8))) > 0


def test_init_image_pull_decays():
    latent, init = torch.ones(1, 4, 2, 2), torch.zeros(1, 4, 2, 2)
    loss = InitImageLoss(decay=0.5)
    assert loss(context(latent=latent, init_latent=init, step=0)) == 1.0
    assert loss(context(latent=latent, init_latent=init, step=2)) == 0.25


@pytest.mark.parametrize("space", ["latent", "image"])
def test_init_pull_reads_only_the_needs_of_its_space(space):
    now, init = torch.full((1, 3, 4, 4), 0.5), torch.zeros(1, 3, 4, 4)
    made = {"latent": now, "init_latent": init, "init_image": init}
    loss = InitImageLoss(space=space)
    needs = {name: made[name] for name in loss.needs}  # a read of anything else would raise
    assert set(needs) == ({"latent", "init_latent"} if space == "latent" else {"init_image"})
    assert loss(context(image=now, **needs)) == pytest.approx(0.25)


def test_mirrored_pairs_lists_each_pair_once_left_first():
    left, right = mirrored_pairs(torch.tensor([2, -1, 0, 4, 3]))
    assert left.tolist() == [0, 3] and right.tolist() == [2, 4]


def test_ensemble_terms_average_with_the_model_weights():
    e, t = [unit(4, 8), unit(4, 8, seed=2)], [unit(2, 8, seed=1), unit(2, 8, seed=3)]
    ctx = context(e=e[0], t=t[0])
    ctx.image_embeds, ctx.text_embeds, ctx.model_weights = e, t, [3.0, 1.0]
    value = PromptLoss()(ctx)
    each = [PromptLoss()(context(e=a, t=b)) for a, b in zip(e, t, strict=True)]
    assert torch.allclose(value, (3 * each[0] + each[1]) / 4)


def test_loss_windows():
    loss = SemanticSymmetryLoss(weight=0.1, start=5, end=10)
    assert [loss.active(s) for s in (4, 5, 9, 10)] == [False, True, True, False]
