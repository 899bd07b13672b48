"""The small interface every generator shares (see docs/architecture.md)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch import nn


def round_size(size: Sequence[int], multiple: int, family: str) -> tuple[int, int]:
    """(width, height) rounded to the nearest multiple of `multiple` (at least one), saying so."""
    width, height = (max(multiple, int(s / multiple + 0.5) * multiple) for s in size)
    if (width, height) != (int(size[0]), int(size[1])):
        warnings.warn(
            f"{family} renders multiples of {multiple} px: size {size[0]}x{size[1]} → using "
            f"{width}x{height}",
            stacklevel=3,
        )
    return width, height


def check_start_latent(
    latent: torch.Tensor, expected: tuple, size: Sequence[int], what: str, source: str
) -> None:
    """A start latent (init.start_latent=) of float32 and `expected` shape, or one paragraph
    saying which shape `what` (e.g. "SDXL at size=…", "… starts from noise") needs."""
    if latent.dtype == torch.float32 and tuple(latent.shape) == tuple(expected):
        return
    from genart.errors import UserError

    width, height = size
    raise UserError(
        f"{source} holds a latent of shape {tuple(latent.shape)} "
        f"{str(latent.dtype).removeprefix('torch.')}, but {what} at size={width}x{height} "
        f"starts from {tuple(expected)} float32. Use a start_latent.safetensors recorded by a run "
        "of the same generator and size, or change size= to the one that recorded it."
    )


class Generator(nn.Module):
    """θ → image (1, 3, H, W) in [0, 1]; the loop only sees this interface."""

    size: tuple[int, int]  # (width, height) actually rendered

    def theta(self) -> list[nn.Parameter]:
        """The tensors the optimiser updates."""
        raise NotImplementedError

    def encode(self, image: torch.Tensor) -> None:
        """Set θ from an image (1, 3, H, W) in [0, 1]."""
        raise NotImplementedError

    def latent(self) -> torch.Tensor:
        """θ as one tensor (for the init-image pull and crossover)."""
        return self.theta()[0]

    def post_step(self) -> None:
        """Called under no_grad after each optimiser step."""
