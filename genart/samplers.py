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
        # the starting noise ε_T, drawn as prepare_latents draws it (the same RNG calls), kept
        # unscaled: the run's start latent (start_latent.safetensors, init.start_latent=)
        from diffusers.utils.torch_utils import randn_tensor

        shape = (1, channels, height // pipe.vae_scale_factor, width // pipe.vae_scale_factor)
        self.start_noise(randn_tensor(shape, generator=self.rng, device=device, dtype=dtype))
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
        # positional prompts through overlapping windows (MultiDiffusion; genart.windows)
        positional = getattr(getattr(model, "conditioning", None), "positional", False)
        self.windowed = getattr(model, "windows", None) is not None and positional

    def start_noise(self, noise: torch.Tensor) -> None:
        """x_T from this unscaled noise: the pipeline's prepare_latents (× init_noise_sigma)."""
        width, height = self.model.size
        self.initial_noise = noise.to(self.model.z.device, torch.float32)
        channels = self.model.unet.config.in_channels
        self.latents = self.pipe.prepare_latents(
            1,
            channels,
            height,
            width,
            torch.float32,
            self.initial_noise.device,
            None,
            self.initial_noise.clone(),
        )

    def __len__(self) -> int:
        return len(self.timesteps)

    @property
    def guided(self) -> bool:
        """The pipeline's do_classifier_free_guidance: cfg_scale > 1 and no guidance embedding."""
        return self.cfg_scale > 1 and self.model.unet.config.time_cond_proj_dim is None

    def unet_noise(
        self, latents: torch.Tensor, t: torch.Tensor, embeds_at, step: int
    ) -> torch.Tensor:
        """ε̂(x_t, t) for a batch of sides: `embeds_at(x)` is their embeddings at horizontal
        position x in [-1, 1] (genart's view centres), one row per latent. One UNet call over the
        canvas (at x = 0), or, when the generator has windows and the prompts are positional
        (`self.windowed`), the windows' blend (genart.windows), each window conditioned at its
        centre."""
        if not self.windowed:
            return self.unet_call(latents, t, embeds_at(0.0), self.time_ids)
        windows, f = self.model.windows, self.pipe.vae_scale_factor
        centres = windows.centres(latents.shape[-1])
        return windows.blend(
            latents,
            lambda crop, j: self.unet_call(
                crop,
                t,
                embeds_at(centres[j]),
                self.model.window_time_ids(crop.shape[-2] * f, crop.shape[-1] * f),
            ),
        )

    def unet_call(self, latents, t, embeds, time_ids) -> torch.Tensor:
        unet = self.model.unet
        cast = lambda x: None if x is None else x.to(unet.dtype)  # noqa: E731
        n = latents.shape[0]
        return unet(
            cast(self.pipe.scheduler.scale_model_input(latents, t)),
            t,
            encoder_hidden_states=cast(embeds.hidden),
            timestep_cond=cast(self.timestep_cond),
            added_cond_kwargs={
                "text_embeds": cast(embeds.pooled),
                "time_ids": cast(time_ids.repeat(n, 1)),  # negative_add_time_ids = add_time_ids
            },
            return_dict=False,
        )[0].float()

    def positive_at(self, cond, step: int):
        """x ↦ the prompts' side at x: position by position when windowed, else the canvas'."""
        if self.windowed:
            return lambda x: self.model.conditioning.at(step, x)
        return lambda x: cond.positive

    def predict(self, latents: torch.Tensor, t, cond, step: int = 0):
        """(ε̂, ε̂_text): the noise prediction after classifier-free guidance,
        ε̂_neg + s·(ε̂_text − ε̂_neg), and the prompts' side alone (what CLIP guidance
        differentiates: genart.guidance). With CFG, both sides are one batch [neg, text], as the
        pipeline runs them; a guided step runs the same batch with grad, so that its arithmetic
        is plain sampling's exactly."""
        positive = self.positive_at(cond, step)
        if not self.guided:
            text = self.unet_noise(latents, t, positive, step)
            return text, text

        def both(x):  # (2, 77, D) hidden, (2, D2) pooled: [negative, positive]
            neg, pos = cond.negative, positive(x)
            hidden = torch.cat([neg.hidden, pos.hidden])
            return type(pos)(hidden, torch.cat([neg.pooled, pos.pooled]))

        uncond, text = self.unet_noise(torch.cat([latents] * 2), t, both, step).chunk(2)
        return uncond + self.cfg_scale * (text - uncond), text

    def noise(self, latents: torch.Tensor, t: torch.Tensor, cond, step: int = 0) -> torch.Tensor:
        """ε̂(x_t, t), with classifier-free guidance when guided."""
        return self.predict(latents, t, cond, step)[0]

    @torch.no_grad()
    def advance(self, i: int, noise: torch.Tensor, latents: torch.Tensor | None = None):
        """The scheduler's step from x_t (the sampler's, or a guided one) with ε̂; returns
        (x_{t-1}, x̂0), the predicted clean latent."""
        t = self.timesteps[i]
        latents = self.latents if latents is None else latents
        out = self.pipe.scheduler.step(noise, t, latents, **self.extra, return_dict=True)
        self.latents = out.prev_sample
        x0 = getattr(out, "pred_original_sample", None)  # Euler, Euler ancestral, DDIM
        x0 = getattr(out, "denoised", None) if x0 is None else x0  # LCM
        return self.latents, (self.latents if x0 is None else x0)

    @torch.no_grad()
    def step(self, i: int, cond, autocast=nullcontext) -> tuple[torch.Tensor, torch.Tensor]:
        """x_t → x_{t-1} at timestep i; returns (x_{t-1}, x̂0), the predicted clean latent."""
        with autocast():
            noise = self.noise(self.latents, self.timesteps[i], cond, i)
        return self.advance(i, noise)

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
    """Diffusion sampling as an updater: each step is one denoising step of the generator's sampler.

    Plain (clip_guidance.scale 0): the objective is measured on the decoded x̂0 (the predicted
    clean image: the frames, stats and NaN checks read it) but does not steer. Guided steps
    (genart.guidance): the objective, evaluated on x̂0 of ε̂_text before the step, steers it; the
    step reports that objective. Afterwards θ holds x̂0, and after the last step the final latent,
    so the run's image is the sampler's. The step count is the sampler's (generator.sampler.steps),
    not the run's `steps`.
    """

    advice_on_nan = "lower generator.sampler.cfg_scale or clip_guidance.scale"
    init_unused = (
        "updater=sample starts from the sampler's own noise, so the init image (init.image or "
        "init.make) does not shape the picture; only init losses compare against it. To start "
        "from the image, optimise the latent instead: updater=gradient."
    )

    def __init__(self, generator, autocast=nullcontext, clip_guidance=None):
        from genart.guidance import GuidanceRule
        from genart.guidance import clip_guidance as checked

        self.sampler = DiffusionSampler(generator)
        self.autocast = autocast  # the run's: below fp32, for generators without their own hook
        self.guidance = checked(clip_guidance)
        self.rule = None
        if self.guidance.scale:
            self.rule = GuidanceRule(generator.pipe.scheduler, self.sampler.timesteps)
            if self.guidance.decoder == "taesd" and getattr(generator, "taesd", None) is None:
                from genart.errors import UserError

                raise UserError(
                    "clip_guidance.decoder=taesd needs the generator's TAESD, but this generator "
                    "has none (generator.taesd is null, or the generator is not SDXL). Set "
                    "generator.taesd as conf/generator/sdxl.yaml does, or use "
                    "clip_guidance.decoder=vae."
                )

    def start_latent(self) -> torch.Tensor:
        """The noise ε_T (1, C, H/f, W/f) sampling starts from (x_T = ε_T · init_noise_sigma): the
        run's gene (start_latent.safetensors), as the studio breeds it."""
        return self.sampler.initial_noise

    def set_start_latent(self, noise: torch.Tensor, source: str = "init.start_latent") -> None:
        """Sample from this noise instead of the one drawn from generator.sampler.seed (the
        sampler's RNG still draws what it draws later, e.g. an ancestral scheduler's noise)."""
        from genart.generators.base import check_start_latent

        expected = tuple(self.sampler.initial_noise.shape)
        model = self.sampler.model
        check_start_latent(noise, expected, model.size, "SDXL sampling's noise", source)
        self.sampler.start_noise(noise)

    def total_steps(self, steps: int) -> int:
        """The sampler's own number of steps; the run's `steps` counts optimisation steps."""
        return len(self.sampler)

    def step(self, objective, generator, step: int) -> dict:
        """One denoising step; the objective's terms and stats (of x̂0 after a plain step, of the
        x̂0 that steered a guided one)."""
        if self.guidance.active(step):
            latents, x0, out = self.guided_step(objective, generator, step)
        else:
            latents, x0 = self.sampler.step(step, generator.conditioning(step), self.autocast)
        generator.set_latent(latents if step == len(self.sampler) - 1 else x0)
        if self.guidance.active(step):
            return out
        with torch.no_grad():
            with self.autocast():
                image = generator().float()  # (1, 3, H, W) in [0, 1]
            total, terms, stats = objective(image, step)
        return {"terms": terms, "total": total, **stats}

    def guided_step(self, objective, generator, step: int):
        """ε̂ and ε̂_text from one forward with grad (the plain step's batch); x̂0 of ε̂_text →
        decoder → objective; g = ∂loss/∂x_t moves the step by the rule of genart.guidance (the
        community pipeline's cond_fn, which runs ε̂_text's forward a second time)."""
        from genart import guidance

        sampler, rule, scale = self.sampler, self.rule, float(self.guidance.scale)
        t, cond, x = sampler.timesteps[step], generator.conditioning(step), sampler.latents
        leaf = x.detach().requires_grad_()
        with torch.enable_grad():
            with self.autocast():
                noise, text = sampler.predict(leaf, t, cond, step)
            with self.autocast():
                image = guidance.decode(generator, rule.x0(leaf, text, step), self.guidance.decoder)
            total, terms, stats = objective(image.float(), step)
            grad = guidance.gradient(total, leaf)
        latents, noise = rule.apply(x, noise.detach(), grad, scale, step)
        x_next, x0 = sampler.advance(step, noise, latents)
        out = {"terms": {k: v.detach() for k, v in terms.items()}, "total": total.detach(), **stats}
        return x_next, x0, out

    def state_dict(self) -> dict:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state)
