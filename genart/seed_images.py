"""Seed images made in code, used as init images (the Doorways post's Mars / Luna airlock seed; docs/references.md)."""

from __future__ import annotations

import torch


def two_blotches(
    width: int, height: int, base: float = 0.5, darkness: float = 0.08, radius: float = 0.18
) -> torch.Tensor:
    """Mid grey with a slightly darker soft blotch at the centre of each half: (1, 3, H, W).

    The post: "two slightly darker blotches in the center of both sides ... points the
    optimization in the right direction" (a seed for the two doors to grow around).
    """
    ys = torch.linspace(-1, 1, height)[:, None]
    xs = torch.linspace(-1, 1, width)[None, :]
    image = torch.full((height, width), base)
    for cx in (-0.5, 0.5):  # centre of the left half, centre of the right half
        dist2 = ((xs - cx) * width / height) ** 2 + ys**2
        image = image - darkness * torch.exp(-dist2 / (2 * radius**2))
    return image.clamp(0, 1).expand(3, height, width)[None].clone()
