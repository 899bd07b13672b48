"""run.py's checks: what a build warns about at start, what a NaN message promises."""

from __future__ import annotations

import warnings

import pytest

from genart.run import Run, build
from tests.conftest import TINY, compose


def build_tiny(tmp_path, overrides: list[str]) -> Run:
    run = Run(run_dir=tmp_path, config={}, meta={})
    build(compose([*TINY, "size=[64,64]", *overrides]), run)
    return run


def test_semantic_symmetry_without_mirrored_cutouts_warns_at_start(tmp_path):
    with pytest.warns(UserWarning, match="losses.semantic_symmetry") as caught:
        build_tiny(tmp_path, ["+preset=doorway", "cutouts=standard"])
    message = str(caught[0].message)
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
def test_no_pair_warning_when_pairs_exist_or_loss_is_off(tmp_path, overrides):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_tiny(tmp_path, overrides)
