"""Plain sampling on sdxl_tiny equals diffusers' StableDiffusionXLPipeline over the same parts, for
the same seed, scheduler, steps, cfg_scale and size (Euler, LCM, Turbo), to float rounding."""

from __future__ import annotations

import pytest
import torch

from tests.sdxl_helpers import SEED, SIZE, reference_pipeline, sample, tiny_generator, tiny_node

# scheduler class, overrides on SDXL base's scheduler config, cfg_scale, steps
CASES = {
    "euler": ("EulerDiscreteScheduler", {}, 5.0, 3),  # SDXL base's own
    "lcm": ("LCMScheduler", {}, 1.5, 4),  # LCM-LoRA's model card: 4 steps, guidance 1-2
    "turbo": ("EulerAncestralDiscreteScheduler", {"timestep_spacing": "trailing"}, 0.0, 2),
}
# the Euler case's final image, channel 2, bottom-right 3x3 (diffusers' golden-slice habit):
# silent drift in diffusers, the tiny config or the sampler fails here even if both sides move
EULER_SLICE = [0.8951, 0.5456, 0.3584, 0.4542, 0.5884, 0.4803, 0.3278, 0.3995, 0.5233]


def case_settings(case: str) -> dict:
    name, overrides, cfg_scale, steps = CASES[case]
    return {
        "scheduler": name,
        "scheduler_config": overrides,
        "cfg_scale": cfg_scale,
        "steps": steps,
        "seed": SEED,
    }


def diffusers_scheduler(case: str):
    """The scheduler built diffusers' documented way: swap the class, keep the model's config."""
    import diffusers

    name, overrides, _, _ = CASES[case]
    base = diffusers.EulerDiscreteScheduler.from_config(tiny_node()["architecture"]["scheduler"])
    return getattr(diffusers, name).from_config(base.config, **overrides)


def pipeline_image(generator, case: str, prompt: str, negative: str | None) -> torch.Tensor:
    _, _, cfg_scale, steps = CASES[case]
    pipe = reference_pipeline(generator, diffusers_scheduler(case))
    return pipe(
        prompt,
        negative_prompt=negative,
        generator=torch.Generator().manual_seed(SEED),
        num_inference_steps=steps,
        guidance_scale=cfg_scale,
        width=SIZE[0],
        height=SIZE[1],
        output_type="pt",  # (1, 3, H, W) in [0, 1]
    ).images


@pytest.mark.parametrize("case", CASES)
def test_plain_sampling_equals_the_diffusers_pipeline(case):
    generator = tiny_generator("a red fox|a stormy lake:-1", sampler=case_settings(case))
    image = sample(generator)
    expected = pipeline_image(generator, case, "a red fox", "a stormy lake")
    assert image.shape == expected.shape == (1, 3, SIZE[1], SIZE[0])
    assert torch.allclose(image, expected, rtol=0, atol=1e-5), (image - expected).abs().max()


def test_without_a_negative_prompt_too():
    """No negative prompt: the pipeline's zeros (force_zeros_for_empty_prompt) on both sides."""
    generator = tiny_generator("a red fox", sampler=case_settings("euler"))
    image = sample(generator)
    expected = pipeline_image(generator, "euler", "a red fox", None)
    assert torch.allclose(image, expected, rtol=0, atol=1e-5), (image - expected).abs().max()


def test_the_golden_slice_holds():
    generator = tiny_generator("a red fox|a stormy lake:-1", sampler=case_settings("euler"))
    image = sample(generator)
    found = image[0, 2, -3:, -3:].flatten()
    assert torch.allclose(found, torch.tensor(EULER_SLICE), atol=1e-3), found.tolist()


def test_the_objective_does_not_touch_the_samplers_noise():
    """Ancestral noise comes from the sampler's own generator: an objective drawing from the
    global RNG (as cutouts do) leaves the image as it is."""

    def greedy(image, step):
        torch.rand(10_000)
        return image.new_zeros(()), {}, {}

    settings = {**case_settings("turbo"), "steps": 3}  # the last step adds no noise: 3, not 2
    first = sample(tiny_generator(sampler=settings))
    second = sample(tiny_generator(sampler=settings), greedy)
    assert torch.equal(first, second)


def test_the_sampler_runs_its_own_number_of_steps():
    from genart.samplers import SampleUpdater

    generator = tiny_generator(sampler=case_settings("lcm"))
    assert SampleUpdater(generator).total_steps(300) == 4
