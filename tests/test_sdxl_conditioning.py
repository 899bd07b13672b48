"""SDXL's conditioning follows the prompt schedule, seen by a spy on the UNet's inputs: weights mix
the embeddings, negative prompts are what CFG subtracts, prompts over time switch at their step."""

from __future__ import annotations

import pytest
import torch

from tests.sdxl_helpers import SEED, SIZE, sample, spy_on_unet, tiny_generator

STEPS = 4


def settings(cfg_scale: float = 5.0) -> dict:
    return {
        "scheduler": "EulerDiscreteScheduler",
        "scheduler_config": {},
        "steps": STEPS,
        "cfg_scale": cfg_scale,
        "seed": SEED,
    }


def sampled_calls(prompts, cfg_scale: float = 5.0):
    """The UNet's inputs at each step of plain sampling, and the generator (to encode texts)."""
    generator = tiny_generator(prompts, sampler=settings(cfg_scale))
    calls = spy_on_unet(generator)
    sample(generator)
    assert len(calls) == STEPS
    return calls, generator


def mean_of(generator, weighted: dict[str, float]):
    """(hidden, pooled): the weight-normalised mean of the texts' encodings."""
    total = sum(weighted.values())
    parts = [(w / total, generator.encode_text(text)) for text, w in weighted.items()]
    return sum(w * e.hidden for w, e in parts), sum(w * e.pooled for w, e in parts)


def assert_side(call, side: int, hidden, pooled):
    """side 0 = negative (CFG's uncond half), 1 = positive."""
    assert torch.allclose(call["hidden"][side], hidden[0], atol=1e-6)
    assert torch.allclose(call["pooled"][side], pooled[0], atol=1e-6)


def test_prompt_weights_mix_the_conditioning():
    calls, generator = sampled_calls("a red fox:1|a stormy lake:3")
    hidden, pooled = mean_of(generator, {"a red fox": 1, "a stormy lake": 3})
    for call in calls:
        assert call["hidden"].shape[0] == 2  # [negative, positive]
        assert_side(call, 1, hidden, pooled)
        assert_side(call, 0, torch.zeros_like(hidden), torch.zeros_like(pooled))  # no negative


def test_negative_prompts_are_what_cfg_subtracts():
    calls, generator = sampled_calls("a red fox|a stormy lake:-2|rain:-1")
    negative = mean_of(generator, {"a stormy lake": 2, "rain": 1})
    positive = mean_of(generator, {"a red fox": 1})
    for call in calls:
        assert_side(call, 0, *negative)
        assert_side(call, 1, *positive)


def test_prompts_over_time_switch_at_their_step():
    phases = [{"text": "a red fox", "start": 0, "end": 2}, {"text": "a stormy lake", "start": 2}]
    later_negative = [{"text": "rain:-1", "start": 3}]
    calls, generator = sampled_calls({"phases": phases, "prompts": later_negative})
    fox, lake = mean_of(generator, {"a red fox": 1}), mean_of(generator, {"a stormy lake": 1})
    rain = mean_of(generator, {"rain": 1})
    zeros = tuple(torch.zeros_like(t) for t in rain)
    for step, call in enumerate(calls):
        assert_side(call, 1, *(fox if step < 2 else lake))
        assert_side(call, 0, *(rain if step >= 3 else zeros))


def test_without_cfg_only_the_positive_side_goes_in():
    calls, generator = sampled_calls("a red fox|a stormy lake:-1", cfg_scale=1.0)
    fox = mean_of(generator, {"a red fox": 1})
    for call in calls:
        assert call["hidden"].shape[0] == 1
        assert_side(call, 0, *fox)


def test_with_no_positive_prompt_the_empty_prompt_conditions():
    calls, generator = sampled_calls("a stormy lake:-1")
    empty = mean_of(generator, {"": 1})
    assert_side(calls[0], 1, *empty)


def test_time_ids_are_the_images_size_without_crop():
    calls, _ = sampled_calls("a red fox")
    width, height = SIZE
    expected = torch.tensor([[height, width, 0, 0, height, width]] * 2, dtype=torch.float32)
    assert torch.equal(calls[0]["time_ids"].float(), expected)


@pytest.mark.parametrize("weights", [(1.0,), (2.0, 1.0)])
def test_the_mean_is_exact_for_one_prompt_and_a_share_for_several(weights):
    from genart.conditioning import TextEmbeds, weighted_mean

    parts = [TextEmbeds(torch.randn(1, 77, 8), torch.randn(1, 4)) for _ in weights]
    mixed = weighted_mean(parts, list(weights))
    if len(weights) == 1:
        assert mixed is parts[0]  # bit for bit: parity with the pipeline's single prompt
    else:
        assert torch.allclose(mixed.hidden, (2 * parts[0].hidden + parts[1].hidden) / 3)
