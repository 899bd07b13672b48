"""The CLIP-guided denoising loop genart.tools.guided_bench measures genart against, kept apart
from genart's code.

diffusers' community pipeline `CLIPGuidedStableDiffusion` (examples/community/
clip_guided_stable_diffusion.py), its `__call__` loop and `cond_fn`, restated for SDXL's UNet
(micro-conditioning: pooled text and time ids) and for genart's objective in place of its
spherical distance, on a built genart run's models. Per denoising step:

1. classifier-free guidance: one UNet forward on the batch [uncond, text] without grad,
   ε = ε_u + s·(ε_t − ε_u);
2. `cond_fn`: x_t as a fresh leaf, a second UNet forward on the text embeddings alone with grad,
   x̂0 from it (sigma schedulers x̂0 = x − σ·ε; alpha schedulers (x − √(1−ᾱ)·ε)/√ᾱ), VAE decode
   of x̂0 / scaling_factor, the objective's total × scale, g = −∂loss/∂x_t; sigma schedulers
   x_t += σ²·g with ε unchanged, alpha schedulers ε −= √(1−ᾱ)·g;
3. `scheduler.step`.

Two departures, so that both loops compute the same thing: the decoded image goes through a
gradient-keeping clamp (the pipeline clamps hard, genart keeps the gradient of out-of-range
pixels: same cost), and the alpha branch decodes x̂0 itself (the pipeline decodes a blend of
x̂0 and x_t there). The benchmark's ratio is timed on Euler, a sigma scheduler.
"""

from __future__ import annotations

import torch

from genart.tools.plain_loop import plain_classes

SIGMA_SCHEDULERS = (  # the pipeline's LMS branch: latents scaled by σ
    "EulerDiscreteScheduler",
    "EulerAncestralDiscreteScheduler",
    "LMSDiscreteScheduler",
)


class CommunityGuidedLoop:
    """`step(i)` = one community-style guided denoising step of `sampler`'s latents; returns the
    objective's total (before × scale) on that step's x̂0."""

    def __init__(self, generator, objective, sampler, scale: float):
        self.unet = generator.unet
        # the run's precision for the whole loop, as the pipeline's `.to(dtype)` casts it: the
        # VAE copy genart decodes guidance with below fp32, if it keeps one
        guidance_vae = getattr(generator, "guidance_vae", None)
        self.vae = generator.vae if guidance_vae is None else guidance_vae
        self.scheduler = generator.pipe.scheduler
        self.conditioning, self.objective, self.scale = generator.conditioning, objective, scale
        self.sampler = sampler  # genart.samplers.DiffusionSampler: x_t, timesteps, time ids, RNG
        self.sigma_family = type(self.scheduler).__name__ in SIGMA_SCHEDULERS
        self.clamp_with_grad = plain_classes()[1]

    def unet_noise(self, latents, t, hidden, pooled):
        """ε̂(x_t, t) for a batch of embeddings, inputs cast to the UNet's dtype, output fp32."""
        n, dtype = hidden.shape[0], self.unet.dtype
        time_ids = self.sampler.time_ids.repeat(n, 1)  # (n, 6)
        cond = self.sampler.timestep_cond
        return self.unet(
            self.scheduler.scale_model_input(latents, t).to(dtype),
            t,
            encoder_hidden_states=hidden.to(dtype),
            timestep_cond=None if cond is None else cond.to(dtype),
            added_cond_kwargs={"text_embeds": pooled.to(dtype), "time_ids": time_ids.to(dtype)},
            return_dict=False,
        )[0].float()

    @torch.no_grad()
    def cfg_noise(self, latents, t, cond):
        """Step 1: the [uncond, text] batch in one forward, combined by classifier-free guidance."""
        pos, neg, s = cond.positive, cond.negative, self.sampler.cfg_scale
        if not self.sampler.guided:
            return self.unet_noise(latents, t, pos.hidden, pos.pooled)
        hidden = torch.cat([neg.hidden, pos.hidden])  # (2, 77, 2048)
        pooled = torch.cat([neg.pooled, pos.pooled])  # (2, 1280)
        uncond, text = self.unet_noise(torch.cat([latents] * 2), t, hidden, pooled).chunk(2)
        return uncond + s * (text - uncond)

    def x0(self, latents, noise, t, i: int):
        """The pipeline's predicted clean latent of ε at step i."""
        if self.sigma_family:
            return latents - self.scheduler.sigmas[i] * noise
        alpha = self.scheduler.alphas_cumprod[int(t)]
        return (latents - (1 - alpha) ** 0.5 * noise) / alpha**0.5

    def decode(self, x0):
        """x̂0 → (1, 3, H, W) in [0, 1] through the VAE, as the pipeline decodes it."""
        latents = (x0 / self.vae.config.scaling_factor).to(self.vae.dtype)
        image = self.vae.decode(latents, return_dict=False)[0]
        return self.clamp_with_grad((image.float() + 1) / 2, 0, 1)

    @torch.enable_grad()
    def cond_fn(self, latents, t, i: int, text, noise):
        """Step 2: the objective's gradient through a second, text-only UNet forward."""
        latents = latents.detach().requires_grad_()
        eps = self.unet_noise(latents, t, text.hidden, text.pooled)
        total = self.objective(self.decode(self.x0(latents, eps, t, i)), i)[0]
        grads = -torch.autograd.grad(total * self.scale, latents)[0]
        if self.sigma_family:
            return noise, latents.detach() + grads * self.scheduler.sigmas[i] ** 2, total
        alpha = self.scheduler.alphas_cumprod[int(t)]
        return noise - (1 - alpha) ** 0.5 * grads, latents.detach(), total

    def plain_step(self, i: int) -> None:
        """The pipeline's unguided step: classifier-free guidance, then the scheduler."""
        sampler, t = self.sampler, self.sampler.timesteps[i]
        noise = self.cfg_noise(sampler.latents, t, self.conditioning(i))
        self.advance(noise, t, sampler.latents)

    @torch.no_grad()
    def advance(self, noise, t, latents) -> None:
        """Step 3: the scheduler's step, with its own noise generator (ancestral samplers)."""
        self.sampler.latents = self.scheduler.step(
            noise, t, latents, **self.sampler.extra, return_dict=False
        )[0]

    def step(self, i: int) -> torch.Tensor:
        sampler, t = self.sampler, self.sampler.timesteps[i]
        cond = self.conditioning(i)
        noise = self.cfg_noise(sampler.latents, t, cond)
        noise, latents, total = self.cond_fn(sampler.latents, t, i, cond.positive, noise)
        self.advance(noise, t, latents)
        return total.detach()
