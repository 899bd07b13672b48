"""CLIP guidance of diffusion sampling: genart's objective steers each denoising step.

At a guided step the objective (cutouts → CLIP guide → prompt schedule → every loss) is evaluated
on the predicted clean image x̂0, decoded by the VAE or by TAESD, and its gradient with respect to
the latents x_t moves the step, classifier-guidance style. The update rule is the `cond_fn` of
diffusers' community CLIP-guided pipeline (examples/community/clip_guided_stable_diffusion.py),
which follows Dhariwal & Nichol's classifier guidance (2021, arXiv:2105.05233, eq. 14) with the
log-likelihood replaced by −scale·loss (docs/guidance.md):

- x̂0 from the text-conditioned noise prediction ε_text alone, as `cond_fn` computes it:
  sigma schedulers (latents scaled by σ: Euler, Euler ancestral, LMS): x̂0 = x − σ·ε_text;
  alpha schedulers (DDIM, DDPM, LCM, DPM-Solver++): x̂0 = (x − √(1−ᾱ_t)·ε_text) / √ᾱ_t.
- g = ∂loss/∂x_t, through the decoder and the UNet.
- sigma schedulers: x_t ← x_t − scale·σ²·g, the noise prediction unchanged;
  alpha schedulers: ε ← ε + scale·√(1−ᾱ_t)·g, x_t unchanged.

Unlike `cond_fn`, which runs the UNet on the text embeddings a second time (with grad), genart
takes ε_text from the one forward that also feeds classifier-free guidance; that forward runs with
grad on guided steps only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from genart.errors import UserError

DECODERS = ("vae", "taesd")
SIGMA_SCHEDULERS = (
    "EulerDiscreteScheduler",
    "EulerAncestralDiscreteScheduler",
    "LMSDiscreteScheduler",
)
ALPHA_SCHEDULERS = ("DDIMScheduler", "DDPMScheduler", "LCMScheduler", "DPMSolverMultistepScheduler")
KEYS = ("scale", "every", "start", "end", "decoder")


@dataclass(frozen=True)
class ClipGuidance:
    """The `clip_guidance:` node: how strongly, and at which denoising steps, CLIP steers.

    Guided steps are start, start + every, … before `end` (None: to the last step); scale 0 turns
    guidance off. `decoder`: vae (exact) or taesd (madebyollin/taesdxl: fast, approximate).
    """

    scale: float = 0.0
    every: int = 1
    start: int = 0
    end: int | None = None
    decoder: str = "vae"

    def active(self, step: int) -> bool:
        end = math.inf if self.end is None else self.end
        return (
            self.scale != 0 and self.start <= step < end and (step - self.start) % self.every == 0
        )


def clip_guidance(node: Mapping | None) -> ClipGuidance:
    """The node, checked: each wrong value is refused in one paragraph naming its key and a fix."""
    node = dict(node or {})
    unknown = sorted(set(node) - set(KEYS))
    if unknown:
        raise UserError(
            f"clip_guidance.{unknown[0]} is not a setting of CLIP guidance; its settings are "
            f"{', '.join('clip_guidance.' + k for k in KEYS)}."
        )
    settings = ClipGuidance(**{k: v for k, v in node.items()})
    scale = settings.scale
    if (
        isinstance(scale, bool)
        or not isinstance(scale, (int, float))
        or not math.isfinite(scale)
        or scale < 0
    ):
        raise UserError(
            f"clip_guidance.scale={scale!r} is not allowed: it is how strongly genart's objective "
            "steers each denoising step, a finite number ≥ 0 (0 = plain sampling). Set it like "
            "clip_guidance.scale=100."
        )
    for key, low in (("every", 1), ("start", 0)):
        value = getattr(settings, key)
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise UserError(
                f"clip_guidance.{key}={value!r} is not allowed: it must be a whole number ≥ {low} "
                f"(every: guide every k-th denoising step; start: the first guided step). Set it "
                f"like clip_guidance.{key}={max(low, 1) if key == 'every' else 0}."
            )
    end = settings.end
    if end is not None and (
        isinstance(end, bool) or not isinstance(end, int) or end <= settings.start
    ):
        raise UserError(
            f"clip_guidance.end={end!r} is not allowed: it is the denoising step where guidance "
            f"stops (not guided itself), a whole number above clip_guidance.start="
            f"{settings.start}, or null for the last step. Set it like clip_guidance.end=20."
        )
    if settings.decoder not in DECODERS:
        raise UserError(
            f"clip_guidance.decoder={settings.decoder!r} is not known: use vae (SDXL's own VAE, "
            "exact) or taesd (madebyollin/taesdxl, ~10x cheaper and approximate)."
        )
    return settings


class GuidanceRule:
    """x̂0 and the update of one scheduler family, with its σ_i or ᾱ_t read once, as Python floats
    (no tensor is read back on a step)."""

    def __init__(self, scheduler, timesteps: torch.Tensor):
        name = type(scheduler).__name__
        prediction = scheduler.config.get("prediction_type", "epsilon")
        if name not in SIGMA_SCHEDULERS + ALPHA_SCHEDULERS or prediction != "epsilon":
            raise UserError(
                f"CLIP guidance (clip_guidance.scale > 0) does not support {name} with "
                f"prediction_type {prediction}: its update rule is written for epsilon-predicting "
                f"models with {', '.join(SIGMA_SCHEDULERS + ALPHA_SCHEDULERS)}. Set "
                "generator.sampler.scheduler=EulerDiscreteScheduler, or clip_guidance.scale=0."
            )
        self.sigma_family = name in SIGMA_SCHEDULERS
        if self.sigma_family:
            self.sigmas = [float(s) for s in scheduler.sigmas]  # σ_i of step i (begin index 0)
        else:
            cumprod = scheduler.alphas_cumprod.cpu()
            self.alphas = [float(cumprod[int(t)]) for t in timesteps.cpu()]  # ᾱ_t of step i

    def x0(self, latents: torch.Tensor, noise: torch.Tensor, i: int) -> torch.Tensor:
        """The clean latent the noise prediction implies at step i."""
        if self.sigma_family:
            return latents - self.sigmas[i] * noise
        alpha = self.alphas[i]
        return (latents - math.sqrt(1 - alpha) * noise) / math.sqrt(alpha)

    def apply(
        self, latents, noise, grad, scale: float, i: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_t, ε) after guidance by g = ∂loss/∂x_t, as `cond_fn` moves them."""
        if self.sigma_family:
            return latents - (scale * self.sigmas[i] ** 2) * grad, noise
        return latents, noise + (scale * math.sqrt(1 - self.alphas[i])) * grad


def gradient(total: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
    """∂total/∂x_t (tests replace it by zeros to check that guidance adds nothing else)."""
    return torch.autograd.grad(total, latents)[0]


def decode(generator, latents: torch.Tensor, decoder: str) -> torch.Tensor:
    """x̂0 → image (1, 3, H, W) in [0, 1], differentiably, through the chosen decoder."""
    if decoder == "taesd":
        return generator.decode_fast(latents)
    return generator.decode_for_guidance(latents)
