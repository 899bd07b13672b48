"""kornia's hue shift (rgb → hsv, shift, → rgb) as one autograd function, swapped into ColorJitter.

kornia's `adjust_hue` picks hexcone sextants with ~20 `torch.where`s, and autograd adds two more
per `where` in the backward; torch's CPU `where` is not vectorised (3.8 ms for 1.6 M floats here,
against 0.25 ms for a product). This computes the same function from vectorised products, signs
and clamps: rgb → hue in sextants as kornia does, then each channel
v − v·s·clamp(2 − |hue − centre|₆, 0, 1), with |·|₆ the distance around the six sextants and
centres 3, 5, 1 for r, g, b (the sextant where the channel is lowest). The backward is kornia's
gradient written out, ties included: amax / amin share the gradient among tied channels, and the
sextant is that of the first maximal channel. Values equal kornia's to float rounding (a test
holds them together). 32 views of 224², forward + backward, 2-core CPU: 137 → 47 ms, and
kornia's whole ColorJitter 227 → 115 ms (compiled: 161 → 111 ms).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor, nn

from genart.speed.guard import Patch, applies, first_difference, parameters_differ

EPS = 1e-8  # kornia's rgb_to_hsv eps
TWO_PI = 2 * math.pi
CENTRES = (3.0, 5.0, 1.0)  # r, g, b: the hue, in sextants, opposite each channel's peak


def hue_sextants(image: Tensor, v: Tensor, delta_safe: Tensor) -> tuple[Tensor, ...]:
    """kornia's hue in sextants, in (−1, 5], computed as kornia does (the same roundings), and
    the masks of its first two formulas (the third's is 1 − both)."""
    r, g, b = image.unbind(-3)
    rc, gc, bc = v - r, v - g, v - b  # kornia's, per channel (a channel broadcast is slower)
    first = (r >= g) & (r >= b)  # the first maximal channel is r
    red, green = first.to(r.dtype), ((g >= b) & ~first).to(r.dtype)
    blue = 1 - red - green
    sextant = (bc - gc) * red + ((rc - bc) + 2 * delta_safe) * green
    sextant = sextant + ((gc - rc) + 4 * delta_safe) * blue  # products by 0 or 1 are exact
    return sextant / delta_safe, red, green


def shift_hue(hue: Tensor, factor: Tensor) -> tuple[Tensor, Tensor]:
    """The shifted hue in sextants [0, 6), rounded as kornia's hsv_to_rgb reads it, and 0 where
    kornia folds a rounded-up 2π to 0 (which cuts the gradient)."""
    angle = TWO_PI * torch.remainder(hue / 6, 1.0)
    kept = (angle < TWO_PI).to(hue.dtype)
    shifted = torch.remainder(angle * kept + factor.view(-1, 1, 1), TWO_PI)
    kept = kept * (shifted < TWO_PI)
    return torch.remainder(shifted * kept / TWO_PI * 6, 6), kept


def ramp(sextants: Tensor, centre: float) -> Tensor:
    """clamp(2 − |hue − centre|₆, 0, 1): 1 within a sextant of the centre, 0 beyond two."""
    distance = (sextants - centre).abs()  # in [0, 6)
    return (2 - torch.minimum(distance, 6 - distance)).clamp_(0, 1)


def ramp_slope(sextant: Tensor, centre: float) -> Tensor:
    """d ramp / d hue as kornia's table has it: +1 in the sextant two before the centre, −1 in
    the one after, each taken from its left edge (kornia's floor), else 0."""
    rising, falling = (centre - 2) % 6, (centre + 1) % 6
    return (sextant == rising).to(sextant.dtype) - (sextant == falling).to(sextant.dtype)


def tie_shares(image: Tensor, extreme: Tensor) -> list[Tensor]:
    """amax / amin's gradient weights per channel: 1 / (number of tied channels) on the ties."""
    hits = [1 - (extreme - x).abs().sign() for x in image.unbind(-3)]
    ties = sum(hits)
    return [hit / ties for hit in hits]


def value_range(image: Tensor) -> tuple[Tensor, ...]:
    """v = max, min, Δ = v − min, and kornia's guarded divisors of s = Δ / v and hue / Δ."""
    r, g, b = image.unbind(-3)  # (B, H, W) each
    v = torch.maximum(torch.maximum(r, g), b)
    low = torch.minimum(torch.minimum(r, g), b)
    delta = v - low
    s_divisor = (v + EPS).masked_fill_(v == 0, 1.0)  # kornia's guard of black pixels
    return v, low, delta, s_divisor, delta.masked_fill(delta == 0, 1.0)


class _AdjustHue(torch.autograd.Function):
    @staticmethod
    def forward(ctx, image: Tensor, factor: Tensor) -> Tensor:
        v, _, delta, s_divisor, delta_safe = value_range(image)
        hue, red, green = hue_sextants(image, v, delta_safe)
        shifted, kept = shift_hue(hue, factor)
        chroma = v * delta / s_divisor  # v·s
        ctx.save_for_backward(image, hue, red, green, shifted, kept)
        return torch.stack([v - chroma * ramp(shifted, c) for c in CENTRES], dim=-3)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        image, hue, red, green, shifted, kept = ctx.saved_tensors
        v, low, delta, s_divisor, delta_safe = value_range(image)
        blue = 1 - red - green
        saturation = delta / s_divisor
        grad_sum = grad_ramp = grad_slope = 0
        sextant = shifted.floor()
        for channel_grad, centre in zip(grad.unbind(-3), CENTRES, strict=True):
            grad_sum = grad_sum + channel_grad
            grad_ramp = grad_ramp + channel_grad * ramp(shifted, centre)
            grad_slope = grad_slope + channel_grad * ramp_slope(sextant, centre)
        # each channel is v − v·s·ramp(hue): to v, s and the hue
        grad_v = grad_sum - saturation * grad_ramp
        grad_s = -v * grad_ramp
        grad_hue = -v * saturation * grad_slope * kept
        # hue = sextant / Δ', the sextant from kornia's three formulas
        grad_sextant = grad_hue / delta_safe
        grad_delta_safe = grad_sextant * (2 * green + 4 * blue - hue)
        grad_delta = grad_delta_safe * delta.sign() + grad_s / s_divisor
        grad_v = grad_v + grad_delta - grad_s * saturation / s_divisor * v.abs().sign()
        formulas = (blue - green, red - blue, green - red)  # d sextant / d r, g, b
        parts = zip(formulas, tie_shares(image, v), tie_shares(image, low), strict=True)
        grad_image = [
            grad_sextant * f + to_v * grad_v - to_low * grad_delta for f, to_v, to_low in parts
        ]
        return torch.stack(grad_image, dim=-3), None


def adjust_hue(image: Tensor, factor: Tensor) -> Tensor:
    """kornia.enhance.adjust_hue for RGB (B, 3, H, W) and angles factor (B,) in radians."""
    return _AdjustHue.apply(image, torch.as_tensor(factor, dtype=image.dtype, device=image.device))


def hue_internals() -> str | None:
    """Why kornia's ColorJitter does not keep adjust_hue(image, factor) in `_hue_fn`, or None."""
    import kornia
    from kornia.augmentation import ColorJitter

    kept = getattr(ColorJitter(hue=0.1), "_hue_fn", None) is kornia.enhance.adjust_hue
    return first_difference(
        None if kept else "ColorJitter keeps no kornia.enhance.adjust_hue in _hue_fn",
        parameters_differ(kornia.enhance.adjust_hue, "image", "factor"),
    )


FAST_HUE = Patch(
    "fast_hue",
    "kornia",
    ">=0.7.2,<0.10",  # ColorJitter._hue_fn(image, radians) through 0.9; 0.x minors may move it
    "the fast hue shift in kornia's ColorJitter (genart.speed.color)",
    hue_internals,
)


def use_fast_hue(modules: Iterable[nn.Module]) -> None:
    """Swap `adjust_hue` into kornia ColorJitter modules that use kornia's own."""
    import kornia

    jitters = [m for m in modules if isinstance(m, kornia.augmentation.ColorJitter)]
    if not jitters or not applies(FAST_HUE):  # no warning where no hue would be shifted
        return
    for module in jitters:
        if getattr(module, "_hue_fn", None) is kornia.enhance.adjust_hue:
            module._hue_fn = adjust_hue
