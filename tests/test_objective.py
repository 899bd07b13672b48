"""The objective on its own: any image tensor in, a differentiable total out; what a loss needs is
made only when read, and a weighted loss whose needs the run cannot supply is refused at start."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from genart.errors import UserError
from genart.generators.pixels import PixelGenerator
from genart.losses import Loss, LossContext, MissingNeed, PromptLoss, TVLoss
from genart.objective import Objective, mean_similarity, usable_losses
from tests.conftest import TINY, cli, compose, run_tiny


@pytest.fixture(scope="module")
def parts():
    """Cutouts, guide, prompt schedule and prompt targets of a tiny run: no generator."""
    from hydra.utils import instantiate

    cfg = compose([*TINY, "size=[64,64]", "cutouts.cutn=4"])
    guide = instantiate(cfg.guide)
    cutouts = instantiate(cfg.cutouts, cut_size=guide.input_size)
    schedule = instantiate(cfg.prompts, _convert_="all")
    return cutouts, guide, schedule, [t.float() for t in guide.encode_text(schedule.texts)]


def objective_of(parts, losses: dict, providers: dict | None = None) -> Objective:
    cutouts, guide, schedule, targets = parts
    return Objective(cutouts, guide, schedule, losses, targets, providers)


class Probe(Loss):
    """Reads its need twice per step: a provider called twice would show in the count."""

    needs = ("probe",)

    def forward(self, ctx: LossContext) -> torch.Tensor:
        return ctx.probe * ctx.image.mean() + 0 * ctx.probe


def counting(value: float = 1.0):
    calls = []

    def provider(ctx):
        calls.append(ctx.step)
        return torch.tensor(value)

    return provider, calls


def test_the_objective_of_a_plain_tensor_is_differentiable(parts):
    image = torch.rand(1, 3, 64, 64, requires_grad=True)  # no generator made it
    objective = objective_of(parts, {"prompt": PromptLoss(), "tv": TVLoss(weight=0.5)})
    total, terms, stats = objective(image, 0)
    assert torch.allclose(total, terms["prompt"] + 0.5 * terms["tv"])
    (grad,) = torch.autograd.grad(total, image)
    assert grad.abs().sum() > 0
    assert stats["W"].shape == stats["sims"].shape == (4, len(parts[3][0]))


def test_a_need_is_made_once_per_step_and_only_when_read(parts):
    provider, calls = counting()
    losses = {"tv": TVLoss(), "probe": Probe(start=1)}  # the probe is off at step 0
    objective = objective_of(parts, losses, {"probe": provider})
    image = torch.rand(1, 3, 64, 64)
    objective(image, 0)
    assert calls == [], "no active loss reads it"
    objective(image, 1)
    objective(image, 2)
    assert calls == [1, 2], "made at its first read, kept for the step's second read, not beyond"


def test_the_objectives_own_needs_are_lazy_too(parts, monkeypatch):
    schedule, calls = parts[2], []
    stops = schedule.stops
    monkeypatch.setattr(schedule, "stops", lambda device=None: calls.append(1) or stops(device))
    image = torch.rand(1, 3, 64, 64)
    objective_of(parts, {"tv": TVLoss()})(image, 0)
    assert calls == []
    objective_of(parts, {"prompt": PromptLoss()})(image, 0)
    assert len(calls) == 1


def test_a_need_nobody_makes_is_a_clear_error():
    ctx = LossContext(0, torch.rand(1, 3, 8, 8), None, [], [], [], torch.ones(1, 1))
    with pytest.raises(MissingNeed, match=r"no 'latent'.*no provider makes it.*`needs`"):
        _ = ctx.latent


def test_a_weighted_loss_with_an_unmet_need_is_refused_in_one_paragraph():
    losses = {"prompt": PromptLoss(), "probe": Probe(weight=0.3), "spare": Probe(weight=0)}
    with pytest.raises(UserError) as caught:
        usable_losses(losses, {"stops"})
    message = str(caught.value)
    assert message.startswith("losses.probe (weight 0.3) needs probe") and "\n" not in message
    assert "losses.probe.weight=0" in message and "spare" not in message


def test_a_weight_0_loss_with_an_unmet_need_is_left_out_not_refused():
    losses = {"prompt": PromptLoss(), "spare": Probe(weight=0)}
    assert list(usable_losses(losses, {"stops"})) == ["prompt"]


def test_ensemble_similarity_averages_with_the_model_weights():
    e = [torch.eye(2), torch.eye(2).flip(0)]
    t = [torch.eye(2), torch.eye(2)]
    sims = mean_similarity(SimpleNamespace(model_weights=[3.0, 1.0]), e, t)  # (N, P)
    assert torch.allclose(sims, (3 * torch.eye(2) + torch.eye(2).flip(0)) / 4)


class Brightness(Loss):
    """(mean gray − 0.5)²: a new loss with a new need, which it brings itself."""

    needs = ("gray",)
    provides = {"gray": lambda ctx: ctx.image.float().mean(dim=1, keepdim=True)}

    def forward(self, ctx: LossContext) -> torch.Tensor:
        return (ctx.gray.mean() - 0.5) ** 2


def test_a_new_loss_with_a_new_need_runs_without_editing_render(tmp_path):
    import csv

    target = f"{__name__}.Brightness"
    run_tiny(tmp_path / "run", ["steps=2", "log_every=1", f"+losses.bright._target_={target}"])
    rows = list(csv.DictReader((tmp_path / "run/stats/losses.csv").open()))
    assert all(float(row["bright"]) > 0 for row in rows)


class NoLatentGenerator(PixelGenerator):
    """Pixels with no single θ tensor to pull (as a generator of several parts could be)."""

    def latent(self):
        return None


def test_a_latent_pull_without_a_latent_is_refused_naming_the_image_space(tmp_path):
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(tmp_path / "init.png")
    pull = [
        f"generator._target_={__name__}.NoLatentGenerator",
        f"init.image={tmp_path / 'init.png'}",
        "+losses.init_image._target_=genart.losses.InitImageLoss",
    ]
    with pytest.raises(UserError) as caught:
        run_tiny(tmp_path / "run", ["generator=pixels", "steps=1", *pull])
    message = str(caught.value)
    assert message.startswith("losses.init_image (weight 1) needs latent and init_latent,")
    assert "latent() is None" in message and "losses.init_image.space=image" in message
    assert not (tmp_path / "run/stats").exists(), "refused before the first step"
    run_tiny(
        tmp_path / "image", ["generator=pixels", "steps=1", *pull, "+losses.init_image.space=image"]
    )


def test_an_init_pull_without_an_init_image_is_refused_at_start(tmp_path):
    """`losses=refine` pulls towards init.image: without one, the user hears so before a step."""
    out = cli("genart", *TINY, "size=[64,64]", "steps=1", "losses=refine", cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    (line,) = [ln for ln in out.stderr.splitlines() if "losses.init_image" in ln]
    assert line.startswith("genart: losses.init_image (weight 0.5) needs init_latent, which")
    assert "no init image was encoded" in line and "set init.image=<path>" in line
    assert "losses.init_image.weight=0" in line
    assert not list(tmp_path.glob("outputs/**/stats")), "refused before the first step"
