"""taming's VQGAN `Decoder.forward`, restated to run faster: the same modules, weights and function.

* SiLU: taming's nonlinearity is x·sigmoid(x), three kernels forward and four backward;
  `F.silu` is one each. GroupNorm + swish on 128 × 256², bf16, forward + backward: 23 → 16 ms.
* Upsampling by phases (below fp32): nearest 2x upsampling followed by a 3×3 convolution equals,
  for each of the four output phases (row and column parity), a 2×2 convolution of the
  low-resolution input with summed taps. 4/9 of the multiply-adds, and the 4x larger upsampled
  tensor is never made. bf16, forward + backward, 2-core CPU: 128 channels 128² → 256², 62 → 45
  ms; 256 channels 64² → 128², 53 → 34 ms. In fp32 (channels_last) it measured slower
  (122 → 166 ms), so fp32 keeps taming's path.

tests/test_vqgan.py checks `decode` against taming's own forward.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from genart.speed.guard import Patch, applies, first_difference, parameters_differ


def decoder_internals() -> str | None:
    """Why taming's Decoder, ResnetBlock and Upsample are not those `FastDecoder` restates, or None.

    A new constructor option (latent-diffusion's copy added tanh_out and attn_type) would be a
    branch of forward that the restatement lacks, so the parameters must match exactly.
    """
    from taming.modules.diffusionmodules import model

    decoder_options = ("ch", "out_ch", "ch_mult", "num_res_blocks", "attn_resolutions", "dropout")
    decoder_options += ("resamp_with_conv", "in_channels", "resolution", "z_channels")
    block_options = ("in_channels", "out_channels", "conv_shortcut", "dropout", "temb_channels")
    return first_difference(
        parameters_differ(model.Decoder, *decoder_options, "give_pre_end", "ignorekwargs"),
        parameters_differ(model.Decoder.forward, "self", "z"),
        parameters_differ(model.ResnetBlock, *block_options),
        parameters_differ(model.ResnetBlock.forward, "self", "x", "temb"),
        parameters_differ(model.Upsample, "in_channels", "with_conv"),
    )


FAST_DECODER = Patch(
    "fast_decoder",
    "taming-transformers-rom1504",
    ">=0.0.6,<0.0.7",  # restates 0.0.6's Decoder.forward; 0.0.x releases promise nothing
    "the faster VQGAN decoder (genart.speed.decoder)",
    decoder_internals,
)

# Which of the 3 kernel taps land on each of the 2 low-resolution taps, per output parity:
# even outputs read rows (i − 1, i) with taps (k0, k1 + k2), odd ones (i, i + 1) with (k0 + k1, k2).
_TAPS = torch.tensor([[[1.0, 0, 0], [0, 1, 1]], [[1.0, 1, 0], [0, 0, 1]]])  # (parity, 2, 3)


def phase_kernels(weight: torch.Tensor) -> torch.Tensor:
    """3×3 kernels (O, I, 3, 3) → the four phases' 2×2 kernels (4·O, I, 2, 2), phase 2a + b."""
    taps = _TAPS.to(weight)
    kernels = torch.einsum("aur,oirs,bvs->aboiuv", taps, weight, taps)  # (2, 2, O, I, 2, 2)
    return kernels.flatten(0, 2)


def upsample_by_phases(x: torch.Tensor, conv: nn.Conv2d, kernels: torch.Tensor) -> torch.Tensor:
    """conv(nearest_2x(x)) for a 3×3, padding-1 conv, as one 2×2 conv of x padded by one."""
    n, _, h, w = x.shape
    o = conv.out_channels
    bias = None if conv.bias is None else conv.bias.repeat(4)
    y = F.conv2d(F.pad(x, (1, 1, 1, 1)), kernels, bias)  # (N, 4·O, h + 1, w + 1)
    y = y.unflatten(1, (2, 2, o))  # (N, a, b, O, h + 1, w + 1); phase (a, b) starts at (a, b)
    rows = [torch.stack([y[:, a, b, :, a : a + h, b : b + w] for b in (0, 1)], -1) for a in (0, 1)]
    return torch.stack(rows, -3).reshape(n, o, 2 * h, 2 * w)  # (N, O, h, a, w, b) interleaved


def resnet_block(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """taming's ResnetBlock.forward without a timestep embedding (the decoder has none)."""
    h = block.conv1(F.silu(block.norm1(x)))
    h = block.conv2(block.dropout(F.silu(block.norm2(h))))
    if block.in_channels != block.out_channels:
        x = block.conv_shortcut(x) if block.use_conv_shortcut else block.nin_shortcut(x)
    return x + h


class FastDecoder:
    """Runs a taming `Decoder` the faster way. Not a module: the decoder's parameters stay where
    they are (and under their keys); this only holds a reference and the phase-kernel caches.
    Where FAST_DECODER does not apply, it runs taming's own forward."""

    def __init__(self, decoder: nn.Module, phases: bool = True, cast: torch.dtype | None = None):
        """`phases`: upsample by phases below fp32 (genart.speed.kernels' `decoder_upsample`);
        `cast`: run a frozen copy of the decoder with its weights cast to this dtype."""
        if getattr(decoder, "temb_ch", 0):
            raise ValueError("FastDecoder: a decoder with a timestep embedding is not supported")
        if cast is not None:  # a copy: the fp32 weights stay where they are, under their keys
            decoder = copy.deepcopy(decoder).to(cast).requires_grad_(False)
        self.decoder = decoder
        self.fast = applies(FAST_DECODER)
        self.phases = phases
        self._kernels: dict[int, tuple] = {}  # level → (weight's identity, its phase kernels)

    def phase_kernels(self, level: int, weight: torch.Tensor) -> torch.Tensor:
        """phase_kernels of a frozen conv weight, recomputed only when the weight changes."""
        key = (weight.data_ptr(), weight._version, weight.dtype, weight.device)
        cached = self._kernels.get(level)
        if cached is None or cached[0] != key:
            with torch.no_grad():
                cached = self._kernels[level] = (key, phase_kernels(weight))
        return cached[1]

    def upsample(self, level: int, x: torch.Tensor) -> torch.Tensor:
        module = self.decoder.up[level].upsample
        conv = getattr(module, "conv", None) if module.with_conv else None
        if conv is None or not self.phases:  # taming's path
            return module(x)
        return upsample_by_phases(x, conv, self.phase_kernels(level, conv.weight))

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        d = self.decoder
        if not self.fast:
            return d(z)
        h = d.conv_in(z)
        h = resnet_block(d.mid.block_1, h)
        h = d.mid.attn_1(h)
        h = resnet_block(d.mid.block_2, h)
        for level in reversed(range(d.num_resolutions)):
            up = d.up[level]
            for i in range(d.num_res_blocks + 1):
                h = resnet_block(up.block[i], h)
                if len(up.attn) > 0:
                    h = up.attn[i](h)
            if level != 0:
                h = self.upsample(level, h)
        if d.give_pre_end:
            return h
        return d.conv_out(F.silu(d.norm_out(h)))
