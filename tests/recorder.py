"""What a tiny in-process run showed: its images as tensors (before PNG rounding) and its final θ.

A test that asserts "the same result again" first needs to know that the result moved at all;
these images, taken through the public callback interface, let it check both.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from genart.callbacks import Callback


@dataclass
class Seen:
    """Images (1, 3, H, W) in [0, 1]: at on_start (after init or resume), per save step, final."""

    start: torch.Tensor | None = None
    frames: dict[int, torch.Tensor] = field(default_factory=dict)
    final: torch.Tensor | None = None
    theta: list[torch.Tensor] = field(default_factory=list)  # θ after the last step


class Recorder(Callback):
    """Copies what the run would save, without touching the run's numbers or its RNG."""

    def __init__(self, seen: Seen):
        self.seen = seen

    def on_start(self, run) -> None:
        from genart.render import current_image

        self.run = run
        self.seen.start = current_image(run)().detach().clone()

    def on_step(self, report: dict) -> None:
        if report["save"]:
            self.seen.frames[report["step"]] = report["image"]().detach().clone()

    def on_end(self, report: dict) -> None:
        self.seen.final = report["image"]().detach().clone()
        self.seen.theta = [p.detach().clone() for p in self.run.generator.theta()]


def record(monkeypatch) -> list[Seen]:
    """From now on every run appends what it showed to the returned list (one Seen per run)."""
    import genart.render

    runs: list[Seen] = []
    original = genart.render.build

    def build_with_recorder(cfg, run) -> None:
        original(cfg, run)
        runs.append(Seen())
        run.callbacks.append(Recorder(runs[-1]))

    monkeypatch.setattr(genart.render, "build", build_with_recorder)
    return runs


def changed_fraction(a: torch.Tensor, b: torch.Tensor) -> float:
    """The share of 8-bit pixel values (as final.png stores them) that differ between a and b."""
    from genart.images import to_pil

    return float((np.asarray(to_pil(a)) != np.asarray(to_pil(b))).mean())
