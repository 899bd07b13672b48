"""genart's one Gaussian blur: a kernel radius of ceil(3σ), shared by `init.blur` and the losses."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from genart.losses import gaussian_blur
from genart.render import load_init_image


@pytest.mark.parametrize("sigma", [0.5, 1.5, 2.2])
def test_kernel_reaches_exactly_ceil_3_sigma(sigma):
    impulse = torch.zeros(1, 1, 1, 41)
    impulse[..., 20] = 1.0
    blurred = gaussian_blur(impulse.expand(1, 1, 41, 41).contiguous(), sigma)[0, 0, 20]  # (41,)
    radius = math.ceil(3 * sigma)
    assert blurred[20 - radius] > 0 and blurred[20 + radius] > 0
    assert blurred[: 20 - radius].abs().max() == 0 and blurred[21 + radius :].abs().max() == 0
    assert blurred.sum() == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("sigma", [0.5, 1.5])  # 3σ not whole: int(3σ) would be a smaller kernel
def test_init_blur_is_the_losses_blur(tmp_path, sigma):
    noise = np.random.default_rng(0).integers(0, 256, (32, 32, 3), np.uint8)
    Image.fromarray(noise).save(tmp_path / "init.png")
    init = OmegaConf.create({"image": str(tmp_path / "init.png"), "make": None, "blur": sigma})
    plain = load_init_image(OmegaConf.merge(init, {"blur": 0.0}), (32, 32))
    torch.testing.assert_close(
        load_init_image(init, (32, 32)), gaussian_blur(plain, sigma), rtol=0, atol=1e-7
    )
