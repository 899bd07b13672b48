"""Anti-aliased, batched, differentiable resampling of many square crops of one image.

The filter (equal to `torchvision.ops.roi_align` with sampling_ratio=-1 plus a prefilter):

* a box filter whose width follows each crop's own shrink factor: every output pixel averages
  ceil(shrink)² bilinear samples, exactly `roi_align(..., sampling_ratio=-1, aligned=True)`;
* blended with the same taken from a [1, 2, 1]/4-prefiltered copy (zero gain at the pixel
  Nyquist) by α = clamp(shrink − 1, 0, 1). A box filter alone leaks whenever the shrink is an odd
  integer: a 3-px box over 1-px stripes averages 2/3 or 1/3 (±17 % ripple). So the filter is
  box(shrink) ∗ [α/4, 1 − α/2, α/4]: an exact copy for crops at the output size (α = 0), fully
  prefiltered from a 2x shrink on, where 1-px patterns vanish exactly.

How: both the box-of-bilinear-samples and the blur are separable, so crop n of image A is
Rₙ A Cₙᵀ with 1-D weight matrices (S × H, S × W), and the blend is
(1 − α) Rₙ A Cₙᵀ + α (Rₙ B) A (Cₙ B)ᵀ: matrix products for all crops at once (down the rows,
then across the columns, once per source), whose backward is more of the same. Measured for 32
views of 224² on 2 CPU threads, forward + backward: 0.14 s from a 256² image against roi_align's
0.56 s (its backward scatters one sample at a time), 0.42 s against 0.73 s from 512², 1.36 s
against 1.51 s from 1024². Tests check it equals roi_align on the sharp and prefiltered images to
float precision. No scatter and no atomics: deterministic on CPU and GPU.

Coordinates are pixel edges: pixel i spans [i, i + 1), the whole image is the box (0, 0, W, H).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def most_samples(lo: Tensor, hi: Tensor, size: int) -> int:
    """The largest number of samples per output pixel among the crops [lo, hi) on one axis."""
    return int(torch.ceil((hi - lo) / size).clamp(min=1).max()) if len(lo) else 0


def sample_weights(lo: Tensor, hi: Tensor, size: int, length: int, samples: int) -> Tensor:
    """(N, size, length) 1-D weights of roi_align(aligned=True, sampling_ratio=-1) on one axis.

    Output pixel p of crop [lo, hi) averages g = ceil((hi − lo) / size) bilinear samples at
    lo − 0.5 + (p + (i + 0.5) / g)·bin, i < g; roi_align drops samples beyond one pixel outside
    the image and clamps the rest to [0, length − 1]: a clamped sample is a hat at that position.
    """
    extent = hi - lo  # (N,)
    grid = torch.ceil(extent / size).clamp(min=1)  # (N,) samples per output pixel
    step = extent / size  # (N,) bin width
    pixels = torch.arange(size, dtype=lo.dtype, device=lo.device)  # (S,)
    taps = torch.arange(length, dtype=lo.dtype, device=lo.device)  # (L,)
    weights = lo.new_zeros(lo.shape[0], size, length)
    for i in range(samples):  # most_samples(lo, hi, size), read where the boxes were made
        x = (lo - 0.5)[:, None] + pixels * step[:, None] + ((i + 0.5) * step / grid)[:, None]
        keep = (i < grid[:, None]) & (x >= -1) & (x <= length)  # (N, S)
        hat = (1 - (taps - x.clamp(0, length - 1)[..., None]).abs()).clamp(min=0)  # (N, S, L)
        weights = weights + hat * (keep / grid[:, None])[..., None]
    return weights


def blur_weights(weights: Tensor) -> Tensor:
    """weights @ B for B the [1, 2, 1]/4 blur with reflected edges (B A blurs A's rows)."""
    padded = F.pad(weights, (1, 1))  # (..., L + 2), zeros outside
    out = 0.25 * padded[..., :-2] + 0.5 * padded[..., 1:-1] + 0.25 * padded[..., 2:]
    edges = torch.zeros_like(out)  # reflection folds the taps that fall outside back in
    edges[..., 1], edges[..., -2] = weights[..., 0], weights[..., -1]
    return out + 0.25 * edges


def prefilter_amount(boxes: Tensor, size: int) -> Tensor:
    """α (N,): 0 for crops at or below the output size, 1 from a 2x shrink on."""
    shrink = (boxes[:, 2:] - boxes[:, :2]).amax(dim=1) / size  # (N,)
    return (shrink - 1).clamp(0, 1)


def resample_crops(
    image: Tensor, boxes: Tensor, size: int, dtype: torch.dtype | None = None
) -> Tensor:
    """Crops boxes (N, 4) = (x1, y1, x2, y2) of image (1, C, H, W) → (N, C, size, size).

    `dtype` (default the image's): the matrix products' inputs. The weights are computed in the
    image's dtype and the result returns in it; bf16 products accumulate in fp32 (4x faster
    than fp32 on a CPU with AVX512-BF16, and on Tensor Cores).
    """
    n, (_, c, h, w) = boxes.shape[0], image.shape
    if n == 0:
        return image.new_zeros(0, c, size, size)
    boxes = boxes.to(dtype=image.dtype)  # loop bounds from the boxes where they were made
    samples = [most_samples(boxes[:, a], boxes[:, a + 2], size) for a in (1, 0)]  # (CPU: no sync)
    boxes, dtype = boxes.to(image.device), dtype or image.dtype
    alpha = prefilter_amount(boxes, size)[:, None, None]  # (N, 1, 1)
    rows = sample_weights(boxes[:, 1], boxes[:, 3], size, h, samples[0])  # (N, S, H)
    cols = sample_weights(boxes[:, 0], boxes[:, 2], size, w, samples[1])  # (N, S, W)
    # Down the rows, once per source: one matrix product each for all crops, no per-crop copy.
    image_rows = image[0].transpose(0, 1).reshape(h, c * w).to(dtype)  # (H, C·W)
    sharp = ((1 - alpha) * rows).reshape(n * size, h).to(dtype) @ image_rows  # (N·S, C·W)
    soft = (alpha * blur_weights(rows)).reshape(n * size, h).to(dtype) @ image_rows
    # Across the columns: sharp and prefiltered halves, summed (rows of each are (s, c) pairs).
    out = sharp.view(n, size * c, w) @ cols.transpose(1, 2).to(dtype)  # (N, S·C, S)
    out = out + soft.view(n, size * c, w) @ blur_weights(cols).transpose(1, 2).to(dtype)
    # One contiguous copy in the image's dtype: kornia's warps ran 4 % slower (forward +
    # backward) on the transposed view.
    return image.new_empty(n, c, size, size).copy_(out.view(n, size, c, size).transpose(1, 2))


def pad_reflect(image: Tensor, pads: tuple[int, int, int, int]) -> Tensor:
    """Reflect padding (left, right, top, bottom) of any width, in passes of < side each."""
    remaining = list(pads)
    while sum(remaining) > 0:
        h, w = image.shape[-2:]
        step = [min(p, side - 1) for p, side in zip(remaining, (w, w, h, h), strict=True)]
        image = F.pad(image, step, mode="reflect")
        remaining = [p - s for p, s in zip(remaining, step, strict=True)]
    return image


def pad_border(image: Tensor, pads: tuple[int, int, int, int]) -> Tensor:
    """Border padding (left, right, top, bottom): the edge pixels repeated."""
    return F.pad(image, pads, mode="replicate")


PAD_MODES = {"reflect": pad_reflect, "border": pad_border}  # pad_to_square's modes by name


def pad_to_square(image: Tensor, mode: str = "reflect") -> Tensor:
    """Pads (B, C, H, W) symmetrically to (B, C, M, M), M = max(H, W); mode a key of PAD_MODES."""
    h, w = image.shape[-2:]
    dx, dy = max(h - w, 0), max(w - h, 0)
    pads = (dx // 2, dx - dx // 2, dy // 2, dy - dy // 2)
    return PAD_MODES[mode](image, pads)
