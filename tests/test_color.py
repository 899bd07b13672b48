"""genart.speed.color: the hue shift equals kornia's, in values and gradients, ties included."""

import math

import kornia.augmentation as K
import kornia.enhance
import pytest
import torch

from genart.cutouts import CompositionWindows, Cutouts
from genart.speed.color import adjust_hue, use_fast_hue


def images(kind: str) -> torch.Tensor:
    """(6, 3, 20, 24) in [0, 1]; 'ties' rounds to thirds: greys, blacks, whites, tied maxima."""
    x = torch.rand(6, 3, 20, 24, generator=torch.Generator().manual_seed(3))
    return (x * 3).round() / 3 if kind == "ties" else x


# radians, one per image; whole sextants (π/3) land ties on sextant edges, kornia's floor decides
FACTORS = torch.tensor([0.0, 0.3, -math.pi / 3, math.pi, -2 * math.pi / 3, 2.5])


@pytest.mark.parametrize("kind", ["smooth", "ties"])
def test_hue_shift_equals_kornia_in_values_and_gradients(kind):
    x = images(kind).requires_grad_(True)
    grad = torch.randn(6, 3, 20, 24, generator=torch.Generator().manual_seed(4))
    ours, theirs = adjust_hue(x, FACTORS), kornia.enhance.adjust_hue(x, FACTORS)
    torch.testing.assert_close(ours, theirs, atol=2e-6, rtol=0)
    (g_ours,) = torch.autograd.grad(ours, x, grad)
    (g_theirs,) = torch.autograd.grad(theirs, x, grad)
    torch.testing.assert_close(g_ours, g_theirs, atol=2e-5, rtol=1e-5)
    if kind == "ties":  # the tie rules matter: a wrong share changes these gradients
        assert ((x == x.amax(1, keepdim=True)).sum(1) > 1).float().mean() > 0.2


def test_hue_gradient_matches_finite_differences():
    x = torch.rand(2, 3, 5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    factor = torch.tensor([0.4, -1.1], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda t: adjust_hue(t, factor), (x.requires_grad_(True),))


def test_color_jitter_with_the_fast_hue_draws_and_computes_the_same():
    stock, fast = (K.ColorJitter(0.1, 0.1, 0.1, 0.1, p=0.7) for _ in range(2))
    use_fast_hue([fast, K.RandomAffine(15)])
    assert fast._hue_fn is adjust_hue and stock._hue_fn is kornia.enhance.adjust_hue
    x = images("ties").requires_grad_(True)
    outs = []
    for module in (stock, fast):
        torch.manual_seed(7)
        y = module(x)
        outs.append((y, *torch.autograd.grad(y.square().sum(), x)))
    torch.testing.assert_close(outs[0][0], outs[1][0], atol=2e-6, rtol=0)
    torch.testing.assert_close(outs[0][1], outs[1][1], atol=5e-5, rtol=1e-5)


def test_cutouts_and_windows_take_the_fast_hue():
    cutouts = Cutouts(4, 16, augmentations=[K.ColorJitter(hue=0.1)])
    windows = CompositionWindows(2, augmentations=[K.ColorJitter(hue=0.1)])
    assert cutouts.augmentations[0]._hue_fn is adjust_hue
    assert windows.augmentations[0]._hue_fn is adjust_hue
