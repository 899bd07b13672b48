"""genart.render's checks: what a run refuses at start, what a NaN message promises."""

from __future__ import annotations

import math
import warnings

import pytest

from genart.errors import UserError
from genart.render import Run, build, build_objective, embed_targets, nan_advice
from tests.conftest import TINY, compose


def build_tiny(tmp_path, overrides: list[str]) -> Run:
    """A run built as `render` builds it before its first step (no init image)."""
    run = Run(run_dir=tmp_path, config={}, meta={})
    build(compose([*TINY, "size=[64,64]", *overrides]), run)
    run.objective = build_objective(run, embed_targets(run), {})
    return run


def test_semantic_symmetry_without_mirrored_cutouts_is_refused_at_start(tmp_path):
    """It compares mirrored pairs: without them it would stay 0 for the whole run."""
    with pytest.raises(UserError) as caught:
        build_tiny(tmp_path, ["+preset=doorway", "cutouts=standard"])
    message = str(caught.value)
    assert message.startswith("losses.semantic_symmetry (weight 0.1) needs pairs, which")
    assert "cutouts.mirrored is false" in message and "\n" not in message
    assert "cutouts=mirrored" in message and "cutouts.mirrored=true" in message
    assert "losses.semantic_symmetry.weight=0" in message


@pytest.mark.parametrize(
    "overrides",
    [
        ["+preset=doorway"],  # mirrored pairs: the loss has something to compare
        ["+preset=doorway", "cutouts=standard", "losses.semantic_symmetry.weight=0"],
    ],
    ids=["mirrored", "weight_0"],
)
def test_no_refusal_when_pairs_exist_or_loss_is_off(tmp_path, overrides):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run = build_tiny(tmp_path, overrides)
    measured = "semantic_symmetry" in run.objective.losses  # weight 0 without pairs: nothing to log
    assert measured == getattr(run.cutouts, "mirrored", False)


def nan_run(tmp_path, monkeypatch, nan_from: int, save_every: int) -> str:
    """A tiny run whose TV term is NaN from optimisation step `nan_from` on; its error message."""
    from genart import losses
    from genart.errors import UserError
    from tests.conftest import run_tiny

    monkeypatch.setattr(losses.TVLoss, "forward", lambda self, ctx: ctx.image.sum() * math.nan)
    overrides = ["steps=6", "log_every=2", f"save_every={save_every}"]
    overrides += ["+losses.tv._target_=genart.losses.TVLoss", f"+losses.tv.start={nan_from}"]
    with pytest.raises(UserError) as caught:
        run_tiny(tmp_path / "nan", overrides)
    return str(caught.value)


def test_nan_before_any_save_says_nothing_was_saved(tmp_path, monkeypatch):
    message = nan_run(tmp_path, monkeypatch, nan_from=1, save_every=50)
    assert not (tmp_path / "nan" / "checkpoint.pt").exists()
    assert "at step 2 (term: tv)" in message
    assert "Nothing has been saved yet" in message and "start again" in message
    assert "lower optimizer.lr, lower that term's weight" in message, "the updater's own advice"
    assert "checkpoint" not in message and "resume=" not in message


def test_nan_after_a_save_names_the_checkpoint_step_and_resume(tmp_path, monkeypatch):
    message = nan_run(tmp_path, monkeypatch, nan_from=3, save_every=2)
    assert "at step 4 (term: tv)" in message
    assert "checkpoint.pt of step 2" in message
    assert f"python -m genart resume={tmp_path / 'nan'}" in message


def test_an_updater_without_nan_advice_gets_the_advice_for_any_run():
    assert nan_advice(object()) == "lower that term's weight, or use precision=fp32"
