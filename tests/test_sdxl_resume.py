"""A sampling run killed mid-way and resumed from its checkpoint.pt (latents, the scheduler's step
index, the sampler's RNG) makes the uninterrupted run's final image exactly, for Euler, an
ancestral scheduler that draws noise every step (Turbo's) and LCM (noise between steps)."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import killed_at_step_3, run_tiny
from tests.recorder import changed_fraction, record

SCHEDULERS = {
    "euler": ["generator.sampler.scheduler=EulerDiscreteScheduler"],
    "turbo": [
        "generator.sampler.scheduler=EulerAncestralDiscreteScheduler",
        "+generator.sampler.scheduler_config.timestep_spacing=trailing",
        "generator.sampler.cfg_scale=0",
    ],
    "lcm": ["generator.sampler.scheduler=LCMScheduler", "generator.sampler.cfg_scale=1.5"],
    "euler_bf16": ["precision=bf16"],  # the UNet and text encoders cast (precision=auto here)
}
GUIDED = "clip_guidance.scale=1000"  # CLIP steers every step: the objective's RNG is resumed too
SCHEDULERS |= {f"{name}_guided": [*SCHEDULERS[name], GUIDED] for name in ("euler", "turbo", "lcm")}
# 4 denoising steps, checkpoints at 2 and 4; fp32 unless a case says otherwise
COMMON = [
    "generator=sdxl_tiny",
    "precision=fp32",
    "cutouts.cutn=2",
    "generator.sampler.steps=4",
    "save_every=2",
    "size=[32,32]",
]


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_a_resumed_sampling_run_makes_the_uninterrupted_image(tmp_path, monkeypatch, name):
    overrides = [*COMMON, *SCHEDULERS[name]]
    seen = record(monkeypatch)
    run_tiny(tmp_path / "whole", overrides)
    whole = seen[-1]
    assert changed_fraction(whole.frames[2], whole.final) > 0.25  # x̂0 moves after step 2
    undo = killed_at_step_3(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        run_tiny(tmp_path / "cut", overrides)
    undo()
    assert torch.load(tmp_path / "cut/checkpoint.pt", weights_only=False)["step"] == 2
    run_tiny(tmp_path / "cut", overrides, resume=True)
    resumed = seen[-1]
    assert torch.equal(resumed.start, whole.frames[2])  # x̂0 of step 2, as saved
    assert torch.equal(resumed.final, whole.final)
    assert (tmp_path / "cut/final.png").read_bytes() == (tmp_path / "whole/final.png").read_bytes()
