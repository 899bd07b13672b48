"""No host synchronisation per step (issue 14, must have 7): on a step that neither logs nor saves,
nothing reads a tensor's value back to Python (`.item()`, `.tolist()`, `float()`, `int()`,
`bool()`, `.cpu()`, `.numpy()`), in the updater's step or in any callback. On a GPU each of those
waits for the queued kernels, so one per step would stall the loop."""

from __future__ import annotations

import os
import sys
import traceback

import pytest
import torch

from tests.conftest import run_tiny

READS = ["item", "tolist", "__bool__", "__float__", "__int__", "__index__", "cpu", "numpy"]


class Reads:
    """Patches every read-back; on while `strict`, each one raises with where it came from."""

    def __init__(self, monkeypatch):
        self.strict = False
        for name in READS:
            monkeypatch.setattr(torch.Tensor, name, self.guard(name, getattr(torch.Tensor, name)))

    def guard(self, name: str, read):
        def guarded(tensor, *args, **kwargs):
            if self.strict and not exempt(sys._getframe(1)):
                where = "".join(traceback.format_stack(limit=6)[:-1])
                raise AssertionError(f"Tensor.{name} on a quiet step:\n{where}")
            return read(tensor, *args, **kwargs)

        return guarded


# Reads allowed by where they are made, each for a stated reason:
EXEMPT = {
    # diffusers' Euler schedulers move sigmas to the CPU in set_timesteps ("to avoid too much
    # CPU/GPU communication") and compare them in Python: diffusers' own choice, not a GPU read
    f"diffusers{os.sep}schedulers{os.sep}": "diffusers' CPU-side schedule",
    # torch's Adam keeps its step count on the CPU unless capturable/fused and reads it there
    f"torch{os.sep}optim{os.sep}": "Adam's CPU step count",
    # resample_crops sizes its loop (most_samples) from the boxes before they move to the image's
    # device: the cutouts draw them on the CPU, so on a GPU this reads no device memory
    f"genart{os.sep}speed{os.sep}resample.py": "the crop grid's loop bound, from CPU boxes",
}


def exempt(frame) -> bool:
    """A read made in one of the EXEMPT files; every other read in the step counts."""
    return any(part in frame.f_code.co_filename for part in EXEMPT)


def strict_on_quiet_steps(monkeypatch, reads: Reads) -> None:
    """Strict during every updater step and during callbacks on steps that neither log nor save."""
    import genart.render

    real_step, real_build = genart.render.guided_step, genart.render.build

    def step(run, i):
        reads.strict = True
        try:
            return real_step(run, i)
        finally:
            reads.strict = False

    def build(cfg, run):
        real_build(cfg, run)
        for callback in run.callbacks:
            callback.on_step = quiet_unless_logging(callback.on_step, reads)

    monkeypatch.setattr(genart.render, "guided_step", step)
    monkeypatch.setattr(genart.render, "build", build)


def quiet_unless_logging(on_step, reads: Reads):
    def on_step_checked(report: dict):
        reads.strict = not (report["log"] or report["save"])
        try:
            on_step(report)
        finally:
            reads.strict = False

    return on_step_checked


# kornia's augmentations read their random parameters back (ColorJitter's order, .tolist()) and
# validate their ranges with Python comparisons: kornia's code, outside this test's reach
PLAIN = ["cutouts.augmentations=[]"]
RUNS = {
    "sample": ["generator.sampler.steps=6"],
    "gradient": ["updater=gradient", "steps=6"],
    "guided": ["generator.sampler.steps=6", "clip_guidance.scale=100"],  # a graph per step
    "guided_lcm": [
        "generator.sampler.steps=6",
        "clip_guidance.scale=100",
        "generator.sampler.scheduler=LCMScheduler",
    ],
}


@pytest.mark.parametrize("updater", list(RUNS))
def test_no_step_reads_a_tensor_back_unless_it_logs(tmp_path, monkeypatch, updater):
    reads = Reads(monkeypatch)
    strict_on_quiet_steps(monkeypatch, reads)
    overrides = ["generator=sdxl_tiny", "size=[32,32]", "cutouts.cutn=2", *RUNS[updater], *PLAIN]
    run_tiny(tmp_path, [*overrides, "log_every=3", "save_every=3"])
    assert (tmp_path / "final.png").exists()
