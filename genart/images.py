"""Reading and writing images: init images, image prompts, PNGs with their config in text chunks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from genart.errors import UserError


def load_image(path: str | Path, key: str) -> torch.Tensor:
    """An RGB image file → (1, 3, H, W) in [0, 1]; a missing file names the config key to fix."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(
            f"{key}={path} does not exist (looked relative to {Path.cwd()}). Point {key} at an "
            "existing image file (PNG, JPEG, …), e.g. an earlier run's final.png."
        )
    try:
        rgb = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255
    except (UnidentifiedImageError, OSError) as err:
        raise UserError(f"{key}={path} is not an image that Pillow can read ({err}).") from None
    return torch.from_numpy(rgb).permute(2, 0, 1)[None]


def to_pil(image: torch.Tensor):
    """(1, 3, H, W) in [0, 1] → PIL image."""
    from PIL import Image

    array = image[0].detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray((array * 255).round().astype(np.uint8))


def save_png(image: torch.Tensor, path: Path, text: dict[str, str] | None = None) -> None:
    """Write a PNG atomically, with optional tEXt chunks (prompts, seed, config)."""
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    for key, value in (text or {}).items():
        info.add_itxt(key, value)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".part.png")
    to_pil(image).save(tmp, pnginfo=info)
    tmp.replace(path)
