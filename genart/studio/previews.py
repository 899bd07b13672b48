"""Cheap previews of candidate starting latents, and their CLIP embeddings: what the studio's
surrogate ranks a bred pool by (issue 17, must have 3; IELDM, Videau et al., GECCO 2023).

A preview only ranks; it is never shown or saved. Which preview a generator gets is decided here,
by what the generator offers (duck typing: no protocol method is added to the generators):

- a diffusion generator (has `pipe` and `unet`: genart.generators.sdxl.SDXLGenerator): the gene is
  the unscaled starting noise ε ~ N(0, 1), (1, C, h, w) or (C, h, w). x_T = ε · init_noise_sigma
  (what the pipeline's `prepare_latents` does), one noise prediction ε̂ at the first timestep
  (DiffusionSampler.noise: with classifier-free guidance, the ε̂ plain sampling steps with),
  x̂0 from ε̂ by GuidanceRule.x0 (the rule CLIP guidance uses), decoded by TAESD
  (`decode_fast`) when the generator has one, else by its VAE (`decode_latent`). One UNet call
  per candidate instead of a whole sampling.
- a VQGAN (has `codebook` and `decode_latent`): the gene is the starting z, given either as
  codebook tokens (h, w) / (1, h, w) of an integer dtype (the operators' kind="tokens") or as z
  itself (D, h, w) / (1, D, h, w); z = codebook[tokens], decoded by the generator's own
  `decode_latent`, so the preview is the run's first image exactly.
- a pixel generator (has `logits`: genart.generators.pixels): the gene is the logits, the
  preview sigmoid(logits), its own image.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from genart.errors import UserError

BATCH = 8  # previews decoded per call: bounds the decoder's memory on a big pool


@torch.no_grad()
def preview_images(generator, latents: Sequence[Tensor]) -> Tensor:
    """Candidate starting latents → their previews (N, 3, H, W) in [0, 1], fp32, on the CPU."""
    if hasattr(generator, "pipe") and hasattr(generator, "unet"):
        preview_one_batch = diffusion_previews
    elif hasattr(generator, "codebook") and hasattr(generator, "decode_latent"):
        preview_one_batch = vqgan_previews
    elif hasattr(generator, "logits"):
        preview_one_batch = pixel_previews
    else:
        raise UserError(
            f"the studio cannot preview starting latents of {type(generator).__name__}: it "
            "previews SDXL (first step's x̂0), VQGAN (the starting z) and pixel generators. "
            "Switch ranking off (rank=False) to breed for this generator."
        )
    latents = list(latents)
    chunks = [latents[i : i + BATCH] for i in range(0, len(latents), BATCH)]
    return torch.cat([preview_one_batch(generator, chunk).float().cpu() for chunk in chunks])


def vqgan_previews(generator, latents: Sequence[Tensor]) -> Tensor:
    """Starting tokens or z → decode_latent(z): the image the run starts from."""
    z = torch.cat([start_z(generator, latent) for latent in latents])  # (B, D, h, w)
    return generator.decode_latent(z)


def start_z(generator, latent: Tensor) -> Tensor:
    """Tokens (h, w) or (1, h, w) → codebook[tokens] (1, D, h, w); a float z is reshaped as is."""
    codebook = generator.codebook  # (K, D)
    if latent.dtype.is_floating_point:
        return latent.reshape(1, codebook.shape[1], *latent.shape[-2:]).to(codebook)
    tokens = latent.reshape(latent.shape[-2:]).to(codebook.device)  # (h, w)
    return codebook[tokens].permute(2, 0, 1)[None]  # (1, D, h, w)


def pixel_previews(generator, latents: Sequence[Tensor]) -> Tensor:
    """Logits → sigmoid(logits), as PixelGenerator renders them."""
    return torch.sigmoid(torch.stack([latent.reshape(3, *latent.shape[-2:]) for latent in latents]))


def diffusion_previews(generator, latents: Sequence[Tensor]) -> Tensor:
    """Starting noise → decode(x̂0 at the first denoising step), one candidate per UNet call
    (the conditioning is a batch of one)."""
    from genart.guidance import GuidanceRule
    from genart.samplers import DiffusionSampler

    sampler = DiffusionSampler(generator)  # set_timesteps, begin index 0; its own RNG only
    rule = GuidanceRule(generator.scheduler, sampler.timesteps)
    t, cond = sampler.timesteps[0], generator.conditioning(0)
    sigma = generator.scheduler.init_noise_sigma
    decode = generator.decode_fast if generator.taesd is not None else generator.decode_latent
    images = []
    for noise in latents:
        x_t = noise.reshape(sampler.latents.shape).to(sampler.latents) * sigma  # (1, C, h, w)
        x0 = rule.x0(x_t, sampler.noise(x_t, t, cond, 0), 0)
        images.append(decode(x0))
    return torch.cat(images)  # (B, 3, H, W)


@torch.no_grad()
def embed(guide, images: Tensor) -> Tensor:
    """Images (N, 3, H, W) in [0, 1] → unit CLIP embeddings (N, D), fp32, on the CPU.

    Guide.encode_image gives one unit embedding per model (resized to each model's input size);
    an ensemble's are concatenated and normalised again, so every model counts equally.
    """
    per_model = guide.encode_image(images.to(guide.device))  # [(N, D_m)] unit rows
    return F.normalize(torch.cat(per_model, dim=-1).float(), dim=-1).cpu()
