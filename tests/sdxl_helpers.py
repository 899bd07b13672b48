"""Shared by the SDXL tests: the tiny generator as the config builds it, diffusers' own pipeline
over the same parts, and a spy on what the UNet is given."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from tests.conftest import compose

SIZE = (48, 32)  # (width, height): not square, so swapped height and width in the time ids show
SEED = 7


def tiny_node(*overrides: str) -> dict:
    """conf/generator/sdxl_tiny.yaml as composed, minus its target and prompts."""
    cfg = compose(["generator=sdxl_tiny", f"size=[{SIZE[0]},{SIZE[1]}]", "device=cpu", *overrides])
    node = OmegaConf.to_container(cfg.generator, resolve=True)
    node.pop("_target_")
    node.pop("prompts")
    return node


def tiny_generator(prompts="a red fox", *overrides: str, **changes):
    """The tiny SDXL generator for a prompt schedule (a text, or PromptSchedule's arguments)."""
    from genart.generators.sdxl import SDXLGenerator
    from genart.prompts import PromptSchedule

    node = {**tiny_node(f"seed={SEED}", *overrides), **changes}
    schedule = (
        PromptSchedule(text=prompts) if isinstance(prompts, str) else PromptSchedule(**prompts)
    )
    return SDXLGenerator(prompts=schedule, **node)


def no_objective(image, step):
    """An objective that measures nothing: what plain sampling gives without CLIP."""
    return image.new_zeros(()), {}, {}


def sample(generator, objective=no_objective) -> torch.Tensor:
    """The image genart's SampleUpdater makes, stepping as render's loop does."""
    from genart.samplers import SampleUpdater

    updater = SampleUpdater(generator)
    for step in range(updater.total_steps(300)):
        updater.step(objective, generator, step)
    with torch.no_grad():
        return generator()


def reference_pipeline(generator, scheduler):
    """diffusers' StableDiffusionXLPipeline over the generator's own models and tokenizers."""
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline(
        vae=generator.vae,
        text_encoder=generator.text_encoder,
        text_encoder_2=generator.text_encoder_2,
        tokenizer=generator.pipe.tokenizer,
        tokenizer_2=generator.pipe.tokenizer_2,
        unet=generator.unet,
        scheduler=scheduler,
        add_watermarker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def spy_on_unet(generator) -> list[dict]:
    """Record every UNet call's conditioning: hidden states, pooled embeds, time ids, timestep."""
    calls: list[dict] = []
    forward = generator.unet.forward

    def recording(sample, timestep, encoder_hidden_states=None, **kwargs):
        added = kwargs["added_cond_kwargs"]
        calls.append(
            {
                "hidden": encoder_hidden_states.detach().clone(),  # (B, 77, D)
                "pooled": added["text_embeds"].detach().clone(),  # (B, D2)
                "time_ids": added["time_ids"].detach().clone(),  # (B, 6)
                "t": timestep,
            }
        )
        return forward(sample, timestep, encoder_hidden_states=encoder_hidden_states, **kwargs)

    generator.unet.forward = recording
    return calls


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from a second thread, and on a shared 2-core machine two OpenMP
    threads waiting on each other made a tiny UNet call 100x slower (3 s against 0.03 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny():
    return tiny_generator()
