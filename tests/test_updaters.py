"""The updater seam: a second updater, written here and chosen by `_target_`, drives the same
objective, lowers its loss, and its own state goes through checkpoint.pt and back on resume."""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import run_tiny
from tests.recorder import changed_fraction, record


class PlainGD:
    """θ ← θ − lr/(1 + t)·∇θ: plain gradient descent whose step size depends on its own state t."""

    def __init__(self, generator, autocast=nullcontext, lr: float = 1.0):
        self.lr, self.updates = lr, 0

    def step(self, objective, generator, step: int) -> dict:
        image = generator()  # (1, 3, H, W) in [0, 1]
        total, terms, stats = objective(image, step)
        theta = generator.theta()
        grads = torch.autograd.grad(total, theta)
        with torch.no_grad():
            for param, grad in zip(theta, grads, strict=True):
                param -= self.lr / (1 + self.updates) * grad
            generator.post_step()
        self.updates += 1
        return {"terms": terms, "total": total, **stats}

    def state_dict(self) -> dict:
        return {"updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.updates = int(state["updates"])


# the pixels generator moves at every step under plain gradients (VQGAN's codes may not flip)
PLAIN_GD = [
    "generator=pixels",
    f"updater._target_={__name__}.PlainGD",
    "~updater.optimizer",  # PlainGD takes no torch optimiser
    "+updater.lr=2000",  # plain gradients on raw pixel logits are tiny: this moves the image
    "cutouts.noise=0",
]


def pixels(path):
    return np.asarray(Image.open(path))


def test_a_second_updater_lowers_the_loss(tmp_path):
    run_tiny(tmp_path / "gd", [*PLAIN_GD, "steps=30", "log_every=1"])
    rows = (tmp_path / "gd/stats/losses.csv").read_text().splitlines()[1:]
    prompt = [float(r.split(",")[2]) for r in rows]
    assert np.mean(prompt[-5:]) < np.mean(prompt[:5])


def test_a_second_updater_resumes_with_its_own_state(tmp_path, monkeypatch):
    from genart.callbacks.checkpoint import CheckpointCallback

    common = [*PLAIN_GD, "steps=6", "save_every=3", "log_every=1"]
    seen = record(monkeypatch)
    run_tiny(tmp_path / "whole", common)
    whole = seen[-1]
    assert changed_fraction(whole.start, whole.frames[3]) > 0.5, "the image must move"
    assert changed_fraction(whole.frames[3], whole.final) > 0.5
    saved = torch.load(tmp_path / "whole/checkpoint.pt", weights_only=True)["optimizer"]
    assert saved == {"updates": 6}, "the updater's state is what the checkpoint holds"

    original = CheckpointCallback.on_step

    def kill_at_step_5(self, state):
        original(self, state)
        if state["step"] == 5:
            raise KeyboardInterrupt

    def resume(name: str) -> None:
        monkeypatch.setattr(CheckpointCallback, "on_step", kill_at_step_5)
        with pytest.raises(KeyboardInterrupt):
            run_tiny(tmp_path / name, common)
        monkeypatch.setattr(CheckpointCallback, "on_step", original)
        run_tiny(tmp_path / name, common, resume=True)

    resume("cut")
    assert torch.equal(seen[-1].start, whole.frames[3]), "the resumed run starts from step 3's θ"
    assert torch.equal(seen[-1].final, whole.final)
    assert np.array_equal(pixels(tmp_path / "whole/final.png"), pixels(tmp_path / "cut/final.png"))

    # its step size depends on its state: a resume that dropped the state would end elsewhere
    monkeypatch.setattr(PlainGD, "load_state_dict", lambda self, state: None)
    resume("stateless")
    assert not torch.equal(seen[-1].final, whole.final)
