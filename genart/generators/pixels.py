"""A weight-free generator: the image's RGB values themselves (through a sigmoid) are θ."""

from __future__ import annotations

import torch
from torch import nn

from genart.generators.base import Generator, check_start_latent


class PixelGenerator(Generator):
    """θ = logits (1, 3, H, W); image = sigmoid(θ), so every value stays in [0, 1]."""

    def __init__(self, size: list[int], init_std: float = 1.0, pretrained: dict | None = None):
        super().__init__()
        width, height = int(size[0]), int(size[1])
        self.size = (width, height)
        self.logits = nn.Parameter(torch.randn(1, 3, height, width) * init_std)
        self.start = self.logits.detach().clone()  # (1, 3, H, W): the run's gene

    def theta(self) -> list[nn.Parameter]:
        return [self.logits]

    def start_latent(self) -> torch.Tensor:
        """The logits (1, 3, H, W) this run started from, before optimisation."""
        return self.start

    @torch.no_grad()
    def set_start_latent(self, logits: torch.Tensor, source: str = "init.start_latent") -> None:
        """Start from these logits (1, 3, H, W) float32 instead of the drawn ones."""
        width, height = self.size
        check_start_latent(logits, (1, 3, height, width), self.size, "the pixels generator", source)
        self.start = logits.clone()
        self.logits.copy_(self.start)

    def forward(self) -> torch.Tensor:
        return torch.sigmoid(self.logits)  # (1, 3, H, W) in [0, 1]

    @torch.no_grad()
    def encode(self, image: torch.Tensor) -> None:
        image = image.to(self.logits).clamp(1e-3, 1 - 1e-3)
        self.logits.copy_(torch.logit(image))
