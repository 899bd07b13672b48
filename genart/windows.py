"""Overlapping full-height windows across the latent canvas, each denoised with its own text
conditioning and fused per column: MultiDiffusion (Bar-Tal et al. 2023, arXiv:2302.08113).

SDXL sees one text conditioning per UNet call, so a whole-canvas call cannot put one prompt on
the left and another on the right. Cutting the canvas into windows that slide along x lets each
window be conditioned on the prompt mix at its own centre (PromptConditioning.at in
genart.conditioning); averaging the overlaps keeps the seams continuous (docs/sdxl.md, "The
doorway's two sides: windows").
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from genart.errors import UserError

KEYS = ("width", "stride")


class Windows:
    """Windows `width` image pixels wide, `stride` pixels apart, over a canvas of any width.

    Sizes are given in image pixels (what a user sees) and turned into latent columns with the
    VAE's `scale_factor` (8 for SDXL); both must be multiples of it (check_windows says so).
    """

    def __init__(self, width: int, stride: int, scale_factor: int):
        self.width, self.stride, self.scale_factor = width, stride, scale_factor

    def layout(self, latent_width: int) -> list[tuple[int, int]]:
        """(x0, x1) latent column ranges: `width // f` wide, every `stride // f`, the last one
        flush with the right edge, so every column is covered. A window is at most half the
        canvas wide (its stride shrinks in proportion), so any canvas gets at least two windows (three
        with half-window strides) and its two sides their own prompts: doorway's 512-px canvas on SDXL gets 256-px windows."""
        size = min(self.width // self.scale_factor, latent_width // 2)
        if size < 1:  # a canvas one column wide is one window
            return [(0, latent_width)]
        step = max(1, size * self.stride // self.width)
        starts = [*range(0, latent_width - size, step), latent_width - size]
        return [(x0, x0 + size) for x0 in starts]

    def centres(self, latent_width: int) -> list[float]:
        """Each window's centre x in [-1, 1] of the canvas (−1 the left edge, +1 the right): the
        convention of genart's view centres (cutouts.box_geometry: 2·mid / W − 1), so prompt
        anchors (left = −1, right = +1) mean the same here as for CLIP's views."""
        return [(x0 + x1) / latent_width - 1 for x0, x1 in self.layout(latent_width)]

    def pixel_widths(self, latent_width: int) -> list[int]:
        """Each window's width in image pixels (its SDXL micro-conditioning size)."""
        return [(x1 - x0) * self.scale_factor for x0, x1 in self.layout(latent_width)]

    def coverage(self, latents: torch.Tensor) -> torch.Tensor:
        """(W,) how many windows cover each latent column, on the latents' device."""
        count = latents.new_zeros(latents.shape[-1])
        for x0, x1 in self.layout(latents.shape[-1]):
            count[x0:x1] += 1
        return count

    def blend(
        self, latents: torch.Tensor, call: Callable[[torch.Tensor, int], torch.Tensor]
    ) -> torch.Tensor:
        """MultiDiffusion's closed-form fusion (Bar-Tal et al. 2023) with uniform weights: the
        per-column mean of `call(latents[..., x0:x1], j)` over the windows j covering it.

        `call` returns the window's noise prediction ε̂ (B, C, h, x1 − x0). MultiDiffusion
        averages each window's denoising *step*; for a scheduler whose step is linear in ε̂ (Euler,
        DDIM, LCM: x_{t−1} = a·x_t + b·ε̂ (+ noise)), averaging ε̂ first and stepping once gives the
        same x_{t−1}, and the ancestral noise is then drawn once for the whole canvas rather than
        once per window. Each window counts equally in a column (no feathering), as MultiDiffusion's
        panoramas do: the overlaps make neighbouring windows agree over the steps. Differentiable
        in `latents` and in what `call` returns (CLIP guidance backpropagates through it); no
        value is read back to the host.
        """
        width = latents.shape[-1]
        fused = None
        for j, (x0, x1) in enumerate(self.layout(width)):
            eps = call(latents[..., x0:x1], j)  # (B, C, h, x1 − x0)
            placed = torch.nn.functional.pad(eps, (x0, width - x1))  # (B, C, h, W), zeros outside
            fused = placed if fused is None else fused + placed
        return fused / self.coverage(fused)  # (B, C, h, W) / (W,): broadcast over columns


def check_windows(node: Mapping | None, scale_factor: int) -> Windows | None:
    """generator.windows checked: None (off), or {width, stride} whole pixel counts, multiples of
    the VAE's factor, 0 < stride ≤ width; anything else is one paragraph naming the key."""
    if node is None:
        return None
    if not isinstance(node, Mapping) or set(node) != set(KEYS):
        raise UserError(
            f"generator.windows={node} is not a window setting: give both sizes in image pixels, "
            "e.g. generator.windows={width: 512, stride: 256}, or generator.windows=null to "
            "condition the whole canvas at once."
        )
    for key in KEYS:
        value = node[key]
        whole = isinstance(value, int) and not isinstance(value, bool)
        if not (whole and value > 0 and value % scale_factor == 0):
            raise UserError(
                f"generator.windows.{key}={value} is not allowed: window sizes are whole numbers "
                f"of image pixels > 0 and multiples of the VAE's factor {scale_factor} (a window "
                f"is cut from the latent, one column per {scale_factor} pixels). Set e.g. "
                f"generator.windows={{width: {64 * scale_factor}, stride: {32 * scale_factor}}}."
            )
    if node["stride"] > node["width"]:
        half = max(scale_factor, node["width"] // 2 // scale_factor * scale_factor)
        raise UserError(
            f"generator.windows.stride={node['stride']} is wider than generator.windows.width="
            f"{node['width']}: windows would leave columns between them that no window denoises. "
            f"Set a stride ≤ the width, e.g. generator.windows.stride={half} (half a "
            "window of overlap, MultiDiffusion's usual choice)."
        )
    return Windows(int(node["width"]), int(node["stride"]), scale_factor)


def positional_windows(windows: Windows | None, conditioning, latent_width: int) -> Windows | None:
    """The windows when the prompts are anchored (else None: one whole-canvas call, as the
    pipeline makes), their centres' positional weights computed now rather than on a step."""
    if windows is None or not conditioning.positional:
        return None
    conditioning.cache_positions(windows.centres(latent_width))
    return windows
