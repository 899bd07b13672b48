"""Reading and writing images: init images, image prompts, PNGs with their config in text chunks."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import torch

from genart.errors import UserError
from genart.files import write_atomic


def load_image(path: str | Path, key: str) -> torch.Tensor:
    """An RGB image file → (1, 3, H, W) in [0, 1]; a wrong path or file names the config key to fix."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path).expanduser()
    if path.is_dir():
        raise UserError(
            f"{key}={path} is a directory. Point {key} at an image file inside it, e.g. "
            f"{key}={path / 'final.png'} (an earlier run's final image)."
        )
    if not path.is_file():
        raise UserError(
            f"{key}={path} does not exist (looked relative to {Path.cwd()}). Point {key} at an "
            "existing image file (PNG, JPEG, …), e.g. an earlier run's final.png."
        )
    try:
        with warnings.catch_warnings():  # Pillow warns between its limit and twice it: refuse too
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / 255
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise UserError(too_many_pixels(path, key, str(err), Image.MAX_IMAGE_PIXELS)) from None
    except (UnidentifiedImageError, OSError) as err:
        raise UserError(f"{key}={path} is not an image that Pillow can read ({err}).") from None
    return torch.from_numpy(rgb).permute(2, 0, 1)[None]


def too_many_pixels(path: Path, key: str, pillow_message: str, limit: int) -> str:
    """Pillow's decompression-bomb guard, said in genart's words (its message has the count)."""
    count = re.search(r"\((\d+) pixels\)", pillow_message)
    size = f"{int(count[1]):,} pixels" if count else "more pixels"
    return (
        f"{key}={path} is {size}, more than the {limit:,} that genart (with Pillow) opens: an "
        "image that large is refused as a possible decompression bomb, and genart resizes "
        "it to `size` anyway. Scale it down first, e.g. to 4096 px on its long side, and point "
        f"{key} at the smaller copy."
    )


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
    pil = to_pil(image)
    write_atomic(path, lambda tmp: pil.save(tmp, format="PNG", pnginfo=info))
