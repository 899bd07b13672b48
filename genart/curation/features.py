"""Image embeddings for curation: VGG16 style statistics and CLIP meaning ("Gallery of Unseen",
stages 2 and 3)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # torchvision's VGG16 was trained on these statistics
IMAGENET_STD = (0.229, 0.224, 0.225)


def load_pixels(paths: Sequence[Path], size: int) -> torch.Tensor:
    """RGB images resized to size x size -> (N, 3, size, size) in [0, 1]."""
    images = [Image.open(p).convert("RGB").resize((size, size), Image.BICUBIC) for p in paths]
    array = np.stack([np.asarray(im, dtype=np.float32) / 255 for im in images])  # (N, H, W, 3)
    return torch.from_numpy(array).permute(0, 3, 1, 2).contiguous()


def build_vgg16(
    layer: int, weights: Path | None = None, random_seed: int | None = None
) -> torch.nn.Module:
    """`vgg16().features[:layer]`: weights from a state-dict file, or seeded random ones."""
    from torchvision.models import vgg16

    with torch.random.fork_rng(devices=[], enabled=random_seed is not None):
        if random_seed is not None:
            torch.manual_seed(random_seed)  # leaves the caller's RNG alone (fork_rng)
        model = vgg16(weights=None)
    if weights is not None:
        from genart.pretrained import load_checkpoint

        model.load_state_dict(load_checkpoint(weights))
    return model.features[:layer].eval().requires_grad_(False)


def style_statistics(activations: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, 2C): each channel's spatial mean and std, the statistics that carry
    style in AdaIN (Huang & Belongie 2017), 512 numbers at relu3_3 instead of a 256² Gram."""
    flat = activations.flatten(2)  # (N, C, H*W)
    return torch.cat([flat.mean(-1), flat.std(-1)], dim=1)


def standardise(pixels: torch.Tensor, per_image: bool) -> torch.Tensor:
    """VGG's input: ImageNet-normalised, or (per_image) each image's luminance with its own mean
    and std removed, copied to 3 channels, so colour and contrast drop out and texture stays."""
    if per_image:
        luma = pixels.mean(1, keepdim=True)  # (N, 1, H, W)
        luma = (luma - luma.mean((2, 3), keepdim=True)) / (luma.std((2, 3), keepdim=True) + 1e-3)
        return luma.expand(-1, 3, -1, -1)  # + 1e-3 above: a flat image stays flat
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    return (pixels - mean) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


@torch.no_grad()
def embed_style(
    paths: Sequence[Path], vgg: torch.nn.Module, size: int, per_image: bool = False, batch: int = 16
) -> np.ndarray:
    """Style embeddings (N, 2C), one row per image."""
    rows = []
    for start in range(0, len(paths), batch):
        pixels = load_pixels(paths[start : start + batch], size)  # (B, 3, S, S)
        rows.append(style_statistics(vgg(standardise(pixels, per_image))))
    return torch.cat(rows).numpy()


@torch.no_grad()
def embed_meaning(
    paths: Sequence[Path], encode_image: Callable[[torch.Tensor], list[torch.Tensor]], size: int
) -> np.ndarray:
    """CLIP image embeddings (N, D): a guide's unit vectors, its models' concatenated."""
    rows = [torch.cat(encode_image(load_pixels([p], size)), dim=-1) for p in paths]
    return torch.cat(rows).numpy()


VGG16_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"  # torchvision's IMAGENET1K_V1


def vgg_weights(path: str | None) -> Path:
    """torchvision's VGG16 state dict: the given path, else genart's cache, else one download."""
    from genart.errors import UserError
    from genart.pretrained import PretrainedNotFound, cache_dir, resolve_pretrained

    name = VGG16_URL.rsplit("/", 1)[1]
    try:
        return resolve_pretrained({"path": path, "url": VGG16_URL, "size_mb": 528}, "vgg")
    except PretrainedNotFound:
        raise UserError(
            f"VGG16's weights ({name}, ~528 MB, from {VGG16_URL}) are not at --vgg-weights, not "
            f"in genart's cache ({cache_dir() / name}) and could not be downloaded (offline?). "
            f"Pass a local copy with --vgg-weights /path/to/{name}, or cluster with seeded "
            "random weights (tests only: random features mostly track colour) with "
            "--vgg-random-seed 0."
        ) from None
