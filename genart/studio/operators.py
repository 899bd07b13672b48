"""Breeding operators on starting latents: Voronoi crossover, local and plain mutation, after
Nevergrad's "Guiding image generation" note and IELDM (Videau et al., GECCO 2023).

A latent is any tensor whose last two dims are the spatial grid (H, W): Gaussian starting noise
(C, H, W) or (1, C, H, W) (SDXL's initial noise), or a grid of codebook token indices (H, W) of
dtype long (VQGAN's `init: random` start). Every operator draws only from the `generator` it is
given, so a seed fixes the child and the global RNG is left alone.

Coordinates: a grid point is (x, y) = (column, row); sites and clicks are continuous positions
in those grid units. Sizes are [width, height], as genart's `size`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from genart.errors import UserError


def grid_points(height: int, width: int) -> Tensor:
    """Every grid point as (x, y) in grid units, row-major: (H·W, 2) float64."""
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=torch.float64),
        torch.arange(width, dtype=torch.float64),
        indexing="ij",
    )
    return torch.stack([xs.flatten(), ys.flatten()], dim=1)  # (H·W, 2)


def draw_sites(n_sites: int, height: int, width: int, generator: torch.Generator) -> Tensor:
    """`n_sites` sites uniform on the continuous grid rectangle [0, W−1] × [0, H−1]: (n, 2) (x, y)."""
    u = torch.rand(n_sites, 2, generator=generator, dtype=torch.float64)  # (n, 2) in [0, 1)
    return u * torch.tensor([width - 1, height - 1], dtype=torch.float64)


def voronoi_owner(sites: Tensor, height: int, width: int) -> Tensor:
    """Index of each grid point's nearest site (Euclidean; ties to the lower index): (H, W) long."""
    d2 = (grid_points(height, width)[:, None, :] - sites[None]).pow(2).sum(-1)  # (H·W, n)
    return d2.argmin(dim=1).view(height, width)  # argmin returns the first of equal minima


def voronoi_crossover(
    parents: Sequence[Tensor], generator: torch.Generator
) -> tuple[Tensor, Tensor, Tensor]:
    """The note's Voronoi crossover: 2n random sites for n parents, cell j filled from parent j mod n.

    Returns (child, sites (2n, 2) as (x, y), owner (H, W): each grid point's site index). Every
    channel of a grid point comes from the same parent; n = 1 gives a copy of the parent.
    """
    check_same_shape(parents)
    n = len(parents)
    height, width = parents[0].shape[-2:]
    sites = draw_sites(2 * n, height, width, generator)
    owner = voronoi_owner(sites, height, width)
    parent_of_point = (owner % n).to(parents[0].device)  # (H, W), broadcast over channels
    child = parents[0].clone()
    for k in range(1, n):
        child = torch.where(parent_of_point == k, parents[k], child)
    return child, sites, owner


def check_same_shape(parents: Sequence[Tensor]) -> None:
    """Refuse an empty parent list or parents of different shapes, in one paragraph."""
    shapes = [tuple(p.shape) for p in parents]
    if not shapes or len(set(shapes)) > 1 or len(shapes[0]) < 2:
        raise UserError(
            f"Voronoi crossover needs one or more parent latents of the same shape, with the "
            f"spatial grid as the last two dims; got shapes {shapes}. Pick parents rendered by "
            f"the same generator at the same size."
        )


def click_to_grid(
    click_xy: Sequence[float], image_size: Sequence[int], grid_size: Sequence[int]
) -> tuple[float, float]:
    """A click (x, y) in image pixels → (x, y) in grid units; sizes are [width, height].

    Pixel coordinates are continuous, (0, 0) the image's top-left corner and (W, H) its
    bottom-right one (a browser click's offset scaled to the image's natural size). The
    downscale factor f = image size / grid size per axis (8 for SDXL, 16 for VQGAN f16), and
    grid point j covers pixels [f·j, f·(j+1)), so its centre f·(j + ½) maps to j exactly.
    """
    if not all(0 <= c <= s for c, s in zip(click_xy, image_size, strict=True)):
        raise UserError(
            f"the click {tuple(click_xy)} lies outside the {image_size[0]}×{image_size[1]} image; "
            f"click inside the image (x from 0 to its width, y from 0 to its height, in pixels)."
        )
    x, y = ((c * g / s) - 0.5 for c, s, g in zip(click_xy, image_size, grid_size, strict=True))
    return x, y


def disc_mask(centre_xy: Sequence[float], radius: float, height: int, width: int) -> Tensor:
    """Grid points within `radius` (grid units, inclusive) of `centre_xy` (grid units): (H, W) bool."""
    centre = torch.tensor(centre_xy, dtype=torch.float64)
    d2 = (grid_points(height, width) - centre).pow(2).sum(-1)  # (H·W,)
    return (d2 <= radius**2).view(height, width)


def blend_noise(
    latent: Tensor, mask: Tensor, strength: float, generator: torch.Generator
) -> Tensor:
    """cos θ · x + sin θ · ε on the masked grid points, θ = strength · π/2, ε ~ N(0, 1).

    For x ~ N(0, 1) the blend is N(0, cos²θ + sin²θ = 1) with correlation cos θ to x: the
    variance is kept; strength 0 keeps x, strength 1 is fresh noise.
    """
    check_strength(strength)
    theta = strength * math.pi / 2
    eps = torch.randn(
        latent.shape, generator=generator, dtype=latent.dtype, device=generator.device
    )
    blended = math.cos(theta) * latent + math.sin(theta) * eps.to(latent.device)
    return torch.where(mask.to(latent.device), blended, latent)


def redraw_tokens(
    tokens: Tensor, mask: Tensor, strength: float, n_codes: int, generator: torch.Generator
) -> Tensor:
    """Redraw each masked token with probability `strength`, uniform on [0, n_codes).

    Uniform tokens are how VQGANGenerator's `init: random` draws its start (genart/generators/
    vqgan.py: `randint(n_embed)` per grid point, z = codebook[tokens]), so a redrawn point is a
    fresh start there.
    """
    check_strength(strength)
    if tokens.dtype.is_floating_point or tokens.dtype == torch.bool:
        raise ValueError(f"kind='tokens' needs integer codebook indices, got {tokens.dtype}")
    hit = torch.rand(tokens.shape, generator=generator, device=generator.device) < strength
    fresh = torch.randint(n_codes, tokens.shape, generator=generator, device=generator.device)
    hit = hit.to(tokens.device) & mask.to(tokens.device)
    return torch.where(hit, fresh.to(tokens.device, tokens.dtype), tokens)


def check_strength(strength: float) -> None:
    if not 0 <= strength <= 1:
        raise UserError(f"mutation strength={strength} is not allowed: give a number in [0, 1].")


def mutate(
    latent: Tensor,
    mask: Tensor,
    strength: float,
    generator: torch.Generator,
    kind: str,
    n_codes: int | None,
) -> Tensor:
    """Dispatch on the latent's kind: Gaussian blend or token redraw, on `mask` (H, W)."""
    if kind == "gaussian":
        return blend_noise(latent, mask, strength, generator)
    if kind == "tokens":
        if n_codes is None:
            raise ValueError("kind='tokens' needs n_codes (the codebook size)")
        return redraw_tokens(latent, mask, strength, n_codes, generator)
    raise ValueError(f"kind={kind!r}: use 'gaussian' (noise latents) or 'tokens' (VQGAN codes)")


def local_mutation(
    latent: Tensor,
    centre_xy: Sequence[float],
    radius: float,
    strength: float,
    generator: torch.Generator,
    kind: str = "gaussian",
    image_size: Sequence[int] | None = None,
    n_codes: int | None = None,
) -> Tensor:
    """IELDM's local mutation: change only grid points within `radius` (grid units) of a click.

    `centre_xy` is the click in image pixels when `image_size` ([width, height]) is given
    (mapped by click_to_grid), else already in grid units.
    """
    height, width = latent.shape[-2:]
    if image_size is not None:
        centre_xy = click_to_grid(centre_xy, image_size, (width, height))
    mask = disc_mask(centre_xy, radius, height, width)
    return mutate(latent, mask, strength, generator, kind, n_codes)


def plain_mutation(
    latent: Tensor,
    strength: float,
    generator: torch.Generator,
    kind: str = "gaussian",
    n_codes: int | None = None,
) -> Tensor:
    """The same blend (or token redraw) on the whole latent."""
    mask = torch.ones(latent.shape[-2:], dtype=torch.bool)
    return mutate(latent, mask, strength, generator, kind, n_codes)
