"""VQGAN latents as θ: taming's encoder/decoder/codebook (Esser et al. 2021) with the
straight-through quantisation and ClampWithGrad of VQGAN+CLIP (Crowson 2021)."""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from typing import Any

import torch
import torch.nn.functional as F
from taming.modules.diffusionmodules.model import Decoder, Encoder
from taming.modules.vqvae.quantize import VectorQuantizer2
from torch import nn

from genart.errors import UserError
from genart.generators.base import Generator, round_size
from genart.pretrained import load_checkpoint
from genart.speed.decoder import FastDecoder
from genart.speed.kernels import plan_or_rule


class ClampWithGrad(torch.autograd.Function):
    """clamp(x, 0, 1) whose gradient never pushes a value further out of range."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return x.clamp(0, 1)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return grad * (grad * (x - x.clamp(0, 1)) >= 0)


def clamp_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Apply ClampWithGrad."""
    return ClampWithGrad.apply(x)


def nearest_codes(z: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """q(z): the nearest codebook row at every position, distances in fp32."""
    b, c, h, w = z.shape
    flat = z.float().permute(0, 2, 3, 1).reshape(-1, c)  # (B·h·w, D)
    book = codebook.float()  # (K, D)
    dist = flat.pow(2).sum(1, keepdim=True) + book.pow(2).sum(1) - 2 * flat @ book.T  # (B·h·w, K)
    rows = book[dist.argmin(1)]  # (B·h·w, D)
    return rows.view(b, h, w, c).permute(0, 3, 1, 2).to(z.dtype)  # (B, D, h, w)


def quantize_st(z: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Straight-through quantisation: forward exactly q(z) (z + (q − z) would round), gradient
    of the identity."""
    return nearest_codes(z, codebook) + (z - z.detach())


def plain(value: Any) -> Any:
    """Config containers (e.g. OmegaConf) → plain dicts and lists, as taming expects."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str):
        return [plain(v) for v in value]
    return value


class TamingVQ(nn.Module):
    """taming's VQModel without Lightning or the loss: attribute names match its state_dict."""

    def __init__(self, ddconfig: dict, n_embed: int, embed_dim: int):
        super().__init__()
        with contextlib.redirect_stdout(io.StringIO()):  # taming's Decoder prints the z shape
            self.encoder = Encoder(**ddconfig)
            self.decoder = Decoder(**ddconfig)
        self.quantize = VectorQuantizer2(n_embed, embed_dim, beta=0.25)
        self.quant_conv = nn.Conv2d(ddconfig["z_channels"], embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(embed_dim, ddconfig["z_channels"], 1)


@torch.no_grad()
def init_random_(model: nn.Module, seed: int) -> None:
    """Seeded init from a local generator (same model in every process, global RNG untouched)."""
    gen = torch.Generator().manual_seed(seed)
    done: set[int] = set()
    for module in model.modules():
        if isinstance(module, nn.Conv2d | nn.Linear):  # torch's default init distribution
            bound = 1 / math.sqrt(module.weight[0].numel())
            for p in (module.weight, module.bias):
                if p is not None:
                    p.uniform_(-bound, bound, generator=gen)
        elif isinstance(module, nn.GroupNorm):
            module.weight.fill_(1)
            module.bias.fill_(0)
        elif isinstance(module, nn.Embedding):  # unit-scale codes so a random decoder sees z vary
            module.weight.normal_(generator=gen)
        done.update(id(p) for p in module.parameters(recurse=False))
    missed = [n for n, p in model.named_parameters() if id(p) not in done]
    if missed:
        raise TypeError(f"init_random_ does not know how to initialise {missed[:3]}")


def load_pretrained_(model: nn.Module, path: str) -> None:
    """Load a taming checkpoint (Lightning or bare state_dict) strictly, minus the `loss.*` keys."""
    checkpoint = load_checkpoint(path)
    state = checkpoint.get("state_dict", checkpoint)
    state = {k: v for k, v in state.items() if not k.startswith("loss.")}
    problems = state_dict_mismatch(model.state_dict(), state)
    if problems:
        raise UserError(
            f"The checkpoint {path} does not fit this VQGAN config ({problems}). Pick the generator "
            "config that matches the file (n_embed, embed_dim, ddconfig), or the file that "
            "matches the config."
        )
    model.load_state_dict(state, strict=True, assign=True)


def state_dict_mismatch(expected: Mapping, given: Mapping) -> str:
    """A short description of missing, unexpected and mis-shaped keys ('' when they match)."""
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    shapes = [
        f"{k}: file {tuple(given[k].shape)} vs config {tuple(v.shape)}"
        for k, v in expected.items()
        if k in given and tuple(getattr(given[k], "shape", ())) != tuple(v.shape)
    ]
    parts = [
        f"{len(keys)} {what}, e.g. {keys[0]}"
        for what, keys in (("missing keys", missing), ("unexpected keys", unexpected))
        if keys
    ]
    if shapes:
        parts.append(f"{len(shapes)} shape mismatches, e.g. {shapes[0]}")
    return "; ".join(parts)


def build_model(
    ddconfig: dict, n_embed: int, embed_dim: int, pretrained: Mapping | None, seed: int
):
    """A frozen TamingVQ: from a pretrained file, or randomly initialised from `seed`."""
    with torch.device("meta"):  # no memory and no global-RNG draws until weights arrive
        model = TamingVQ(ddconfig, n_embed, embed_dim)
    if pretrained is None:
        model.to_empty(device="cpu")
        init_random_(model, seed)
    elif pretrained.get("path"):
        load_pretrained_(model, str(pretrained["path"]))
    else:
        raise ValueError(
            "pretrained['path'] is unset: resolve it with genart.pretrained.resolve_pretrained"
        )
    return model.float().requires_grad_(False).eval()


class VQGANGenerator(Generator):
    """θ = z (1, embed_dim, h, w); image = ClampWithGrad((decoder(q(z)) + 1) / 2)."""

    def __init__(
        self,
        size: list[int],
        ddconfig: dict,
        n_embed: int,
        embed_dim: int,
        pretrained: dict | None = None,
        init_seed: int = 0,
        init: str = "random",
    ):
        super().__init__()
        ddconfig = plain(ddconfig)
        self.factor = 2 ** (len(ddconfig["ch_mult"]) - 1)
        self.size = round_size(size, self.factor, "VQGAN")
        self.model = build_model(ddconfig, int(n_embed), int(embed_dim), pretrained, int(init_seed))
        codebook = self.codebook  # (K, D)
        self.register_buffer("z_min", codebook.amin(0).view(1, -1, 1, 1))  # (1, D, 1, 1)
        self.register_buffer("z_max", codebook.amax(0).view(1, -1, 1, 1))
        if init != "random":
            raise ValueError(f"VQGANGenerator init={init!r}: only 'random' (codebook tokens)")
        self.new_run()
        self.set_precision(torch.float32)  # the decoder's compute dtype and kernel plan

    @property
    def codebook(self) -> torch.Tensor:
        """The codebook (n_embed, embed_dim)."""
        return self.model.quantize.embedding.weight

    def new_run(self) -> None:
        """θ afresh, as this constructor draws it: a kept generator's next run (genart.model_cache)."""
        width, height = self.size
        h, w = height // self.factor, width // self.factor
        self.tokens = torch.randint(self.codebook.shape[0], (h, w))  # (h, w) long: the run's gene
        self.z = nn.Parameter(self.tokens_to_z(self.tokens))  # (1, D, h, w)

    def random_latent(self, h: int, w: int) -> torch.Tensor:
        """Random codebook tokens (= one_hot(idx) @ codebook), drawn from the global RNG."""
        return self.tokens_to_z(torch.randint(self.codebook.shape[0], (h, w)))  # (1, D, h, w)

    def tokens_to_z(self, tokens: torch.Tensor) -> torch.Tensor:
        """Codebook tokens (h, w) long → z (1, D, h, w): each position's codebook row."""
        h, w = tokens.shape
        rows = self.codebook[tokens.reshape(-1).to(self.codebook.device)]  # (h·w, D)
        return rows.T.reshape(1, -1, h, w).clone()

    def start_latent(self) -> torch.Tensor:
        """The codebook tokens (h, w) long this run's z started from, before optimisation."""
        return self.tokens

    @torch.no_grad()
    def set_start_latent(self, tokens: torch.Tensor, source: str = "init.start_latent") -> None:
        """Start z from codebook tokens (h, w) long instead of the ones new_run drew."""
        width, height = self.size
        h, w = height // self.factor, width // self.factor
        n_embed = self.codebook.shape[0]
        fits = tokens.dtype == torch.long and tuple(tokens.shape) == (h, w)
        if not fits or int(tokens.min()) < 0 or int(tokens.max()) >= n_embed:
            got = f"{tuple(tokens.shape)} {str(tokens.dtype).removeprefix('torch.')}"
            raise UserError(
                f"{source} holds a latent of shape {got}, but this VQGAN at size={width}x{height} "
                f"starts from codebook tokens of shape ({h}, {w}) int64 (size / {self.factor}), "
                f"each in [0, {n_embed}). Use a start_latent.safetensors recorded by a run of "
                f"the same generator and size, or change size= to the one that recorded it."
            )
        self.tokens = tokens.clone()
        self.z.copy_(self.tokens_to_z(self.tokens))

    def train(self, mode: bool = True) -> VQGANGenerator:
        """Only z trains; the frozen model stays in eval mode."""
        super().train(mode)
        self.model.eval()
        return self

    def theta(self) -> list[nn.Parameter]:
        return [self.z]

    def latent(self) -> torch.Tensor:
        return self.z

    def set_precision(self, dtype: torch.dtype, plan=None) -> None:
        """Run the frozen decoder at `dtype` the way genart.speed.kernels' plan says: the
        upsampling (phases or taming's), the layout, and below fp32 autocast or cast weights.

        Decoder forward + backward at 256², 2-core AVX512-BF16 CPU, best of 4: fp32 3.35 s, bf16
        autocast 0.95 s, bf16-cast weights 1.15 s. Layout, same machine, interleaved medians of
        10: fp32 channels_last 2.15 s vs contiguous 2.56 s; bf16 contiguous 1.09 s vs
        channels_last 1.20 s (GroupNorm's channels_last backward is slow in bf16). z, q(z), the
        codebook, the encoder and the output clamp stay fp32.
        """
        self.dtype = dtype
        self.plan = plan_or_rule(plan, self.z.device, dtype)
        cast = dtype if dtype != torch.float32 and self.plan.decoder_reduced == "cast" else None
        phases = self.plan.decoder_upsample == "phases"
        self.decoder = FastDecoder(self.model.decoder, phases=phases, cast=cast)

    def decoder_layout(self) -> torch.memory_format:
        """The decoder's memory format (the kernel plan's `decoder_layout`)."""
        if self.plan.decoder_layout == "channels_last":
            return torch.channels_last
        return torch.contiguous_format

    def decode_latent(self, z: torch.Tensor) -> torch.Tensor:
        """Any latent (B, D, h, w) → image (B, 3, H, W) in [0, 1], quantised straight-through."""
        z_q = quantize_st(z, self.codebook).contiguous(memory_format=self.decoder_layout())
        reduced = self.dtype != torch.float32
        if reduced and self.plan.decoder_reduced == "cast":  # the decoder's weights are cast
            dec = self.decoder(self.model.post_quant_conv(z_q).to(self.dtype))
        else:
            autocast = torch.autocast(z_q.device.type, self.dtype) if reduced else nullcontext()
            with autocast:
                dec = self.decoder(self.model.post_quant_conv(z_q))  # (B, 3, H, W) in ~[-1, 1]
        return clamp_with_grad((dec.float() + 1) / 2)

    def forward(self) -> torch.Tensor:
        return self.decode_latent(self.z)  # (1, 3, H, W) in [0, 1]

    @torch.no_grad()
    def post_step(self) -> None:
        """Keep z inside the codebook's per-channel range."""
        self.z.copy_(torch.minimum(torch.maximum(self.z, self.z_min), self.z_max))

    @torch.no_grad()
    def encode(self, image: torch.Tensor) -> None:
        """z = quant_conv(encoder(2·image − 1)), the image resized to self.size first."""
        width, height = self.size
        image = image.to(self.z)
        if image.shape[-2:] != (height, width):
            image = F.interpolate(
                image, size=(height, width), mode="bicubic", align_corners=False, antialias=True
            ).clamp(0, 1)
        z = self.model.quant_conv(self.model.encoder(2 * image - 1))  # (1, D, h, w)
        self.z.copy_(z)
