"""Plain diffusion sampling as an updater: StableDiffusionXLPipeline's denoising loop, one step per
updater step, on a generator with SDXL's parts (genart.generators.sdxl.SDXLGenerator).

`DiffusionSampler` restates `StableDiffusionXLPipeline.__call__` of diffusers 0.42.1
(pipelines/stable_diffusion_xl/pipeline_stable_diffusion_xl.py, steps 4-8) and calls the
pipeline's own helpers (`prepare_latents`, `prepare_extra_step_kwargs`, `_get_add_time_ids`,
`get_guidance_scale_embedding`), so the same seed, scheduler, steps, cfg_scale and size give the
same image (tests/test_sdxl_parity.py). Its noise comes from its own torch.Generator, which
nothing else draws from.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch


class DiffusionSampler:
    """The pipeline's loop state: timesteps, latents x_t, its RNG, time ids; `step(i)` advances."""

    def __init__(self, model):
        settings, pipe = model.sampler, model.pipe
        self.model, self.pipe, self.cfg_scale = model, pipe, float(settings.cfg_scale)
        device = model.z.device
        self.rng = torch.Generator(device).manual_seed(int(settings.seed))
        pipe.scheduler.set_timesteps(settings.steps, device=device)  # retrieve_timesteps
        self.timesteps = pipe.scheduler.timesteps
        # x_t and the scheduler's arithmetic in fp32 (the pipeline's prompt_embeds.dtype at fp32);
        # a UNet cast below fp32 (SDXLGenerator.set_precision) gets its inputs cast at its call
        dtype = torch.float32
        width, height = model.size
        channels = model.unet.config.in_channels
        self.latents = pipe.prepare_latents(1, channels, height, width, dtype, device, self.rng)
        self.extra = pipe.prepare_extra_step_kwargs(self.rng, 0.0)  # eta 0 (DDIM's default)
        self.time_ids = pipe._get_add_time_ids(
            (height, width),  # original_size: the pipeline's default, the image's own size
            (0, 0),  # crops_coords_top_left
            (height, width),  # target_size
            dtype=dtype,
            text_encoder_projection_dim=model.text_encoder_2.config.projection_dim,
        ).to(device)  # (1, 6)
        self.timestep_cond = guidance_embedding(model, self.cfg_scale, dtype)
        if hasattr(pipe.scheduler, "set_begin_index"):  # DDIM, DDPM, PNDM count no index
            pipe.scheduler.set_begin_index(0)

    def __len__(self) -> int:
        return len(self.timesteps)

    @property
    def guided(self) -> bool:
        """The pipeline's do_classifier_free_guidance: cfg_scale > 1 and no guidance embedding."""
        return self.cfg_scale > 1 and self.model.unet.config.time_cond_proj_dim is None

    def noise(self, latents: torch.Tensor, t: torch.Tensor, cond) -> torch.Tensor:
        """ε̂(x_t, t), with classifier-free guidance ε̂_neg + s·(ε̂_pos − ε̂_neg) when guided."""
        pos, neg = cond.positive, cond.negative
        if self.guided:
            hidden = torch.cat([neg.hidden, pos.hidden])  # (2, 77, D)
            pooled = torch.cat([neg.pooled, pos.pooled])  # (2, D2)
            time_ids = self.time_ids.repeat(2, 1)  # negative_add_time_ids = add_time_ids
            latents = torch.cat([latents] * 2)
        else:
            hidden, pooled, time_ids = pos.hidden, pos.pooled, self.time_ids
        unet = self.model.unet
        cast = lambda x: None if x is None else x.to(unet.dtype)  # noqa: E731
        noise = unet(
            cast(self.pipe.scheduler.scale_model_input(latents, t)),
            t,
            encoder_hidden_states=cast(hidden),
            timestep_cond=cast(self.timestep_cond),
            added_cond_kwargs={"text_embeds": cast(pooled), "time_ids": cast(time_ids)},
            return_dict=False,
        )[0].float()
        if not self.guided:
            return noise
        uncond, text = noise.chunk(2)
        return uncond + self.cfg_scale * (text - uncond)

    @torch.no_grad()
    def step(self, i: int, cond, autocast=nullcontext) -> tuple[torch.Tensor, torch.Tensor]:
        """x_t → x_{t-1} at timestep i; returns (x_{t-1}, x̂0), the predicted clean latent."""
        t = self.timesteps[i]
        with autocast():
            noise = self.noise(self.latents, t, cond)
        out = self.pipe.scheduler.step(noise, t, self.latents, **self.extra, return_dict=True)
        self.latents = out.prev_sample
        x0 = getattr(out, "pred_original_sample", None)  # Euler, Euler ancestral, DDIM
        x0 = getattr(out, "denoised", None) if x0 is None else x0  # LCM
        return self.latents, (self.latents if x0 is None else x0)

    def state_dict(self) -> dict:
        """Latents, RNG and scheduler position (enough for Euler, Euler ancestral and LCM)."""
        return {
            "latents": self.latents.detach().cpu(),
            "rng": self.rng.get_state(),
            "step_index": self.pipe.scheduler.step_index,
        }

    def load_state_dict(self, state: dict) -> None:
        if tuple(state["latents"].shape) != tuple(self.latents.shape):
            raise ValueError(
                f"latents are {tuple(state['latents'].shape)}, this run's are "
                f"{tuple(self.latents.shape)}"
            )
        self.latents = state["latents"].to(self.latents)
        self.rng.set_state(state["rng"])
        if hasattr(self.pipe.scheduler, "set_begin_index"):
            self.pipe.scheduler.set_begin_index(int(state["step_index"] or 0))


def guidance_embedding(model, cfg_scale: float, dtype: torch.dtype) -> torch.Tensor | None:
    """The pipeline's timestep_cond for UNets distilled with a guidance embedding (LCM's w)."""
    dim = model.unet.config.time_cond_proj_dim
    if dim is None:
        return None
    w = torch.tensor(cfg_scale - 1).repeat(1)
    emb = model.pipe.get_guidance_scale_embedding(w, embedding_dim=dim)
    return emb.to(device=model.z.device, dtype=dtype)


def sample_latents(model) -> torch.Tensor:
    """The whole plain sampling (what `generator.init=sample` starts latent optimisation from)."""
    sampler = DiffusionSampler(model)
    for i in range(len(sampler)):
        latents, _ = sampler.step(i, model.conditioning(i))
    return latents


class SampleUpdater:
    """Plain sampling as an updater: each step is one denoising step of the generator's sampler.

    The objective is measured on the decoded x̂0 (the predicted clean image: the frames, stats and
    NaN checks read it) but does not steer the sampler yet. Afterwards θ holds x̂0, and after the
    last step the final latent, so the run's image is the sampler's. The step count is the
    sampler's (generator.sampler.steps), not the run's `steps`.
    """

    advice_on_nan = "lower generator.sampler.cfg_scale"
    init_unused = (
        "updater=sample starts from the sampler's own noise, so the init image (init.image or "
        "init.make) does not shape the picture; only init losses compare against it. To start "
        "from the image, optimise the latent instead: updater=gradient."
    )

    def __init__(self, generator, autocast=nullcontext):
        self.sampler = DiffusionSampler(generator)
        self.autocast = autocast  # the run's: below fp32, for generators without their own hook

    def total_steps(self, steps: int) -> int:
        """The sampler's own number of steps; the run's `steps` counts optimisation steps."""
        return len(self.sampler)

    def step(self, objective, generator, step: int) -> dict:
        """One denoising step; the objective's terms and stats on the decoded x̂0."""
        latents, x0 = self.sampler.step(step, generator.conditioning(step), self.autocast)
        generator.set_latent(latents if step == len(self.sampler) - 1 else x0)
        with torch.no_grad():
            with self.autocast():
                image = generator().float()  # (1, 3, H, W) in [0, 1]
            total, terms, stats = objective(image, step)
        return {"terms": terms, "total": total, **stats}

    def state_dict(self) -> dict:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state)
