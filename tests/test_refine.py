"""`+refine=details` stacks on any preset: its prompts stay, the edited image is the start."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from genart.cli import refine_last
from genart.errors import UserError
from tests.conftest import compose, run_tiny
from tests.test_configs import PRESETS

REFINE = ["+preset=doorways/forest_kelp_forest", "+refine=details"]


def test_refine_keeps_the_catalogue_presets_prompts_and_losses():
    from hydra.utils import instantiate

    alone = compose(["+preset=doorways/forest_kelp_forest"])
    cfg = compose(REFINE)
    schedule = instantiate(cfg.prompts, _convert_="all")
    assert schedule.texts == [
        "entrance to the forest realm by James Gurney",
        "underwater entrance to the kelp forest realm by James Gurney",
    ]
    assert set(cfg.losses) == set(alone.losses) | {"init_image"}  # symmetry terms stay
    assert cfg.losses.semantic_symmetry == alone.losses.semantic_symmetry
    assert cfg.cutouts.mirrored and cfg.size == alone.size
    # what refining changes: a slow re-optimisation of details from a required, blurred image
    assert (cfg.steps, cfg.optimizer.lr, cfg.init.required, cfg.init.blur) == (300, 0.02, True, 2.0)
    assert cfg.cutouts.cut_pow == 2.0 and schedule.size_weighting.power == -1.0
    assert type(schedule.size_weighting).__module__ == "genart.prompt_weights"


@pytest.mark.parametrize("preset", PRESETS)
def test_refine_composes_with_every_preset(preset):
    cfg = compose([f"+preset={preset}", "+refine=details"])
    assert cfg.init.required and "init_image" in cfg.losses
    refined = OmegaConf.to_container(cfg.prompts)
    del refined["size_weighting"]  # refining weights small crops; every prompt stays the preset's
    plain = OmegaConf.to_container(compose([f"+preset={preset}"]).prompts)
    plain.pop("size_weighting", None)
    assert refined == plain


def test_refine_composes_after_the_preset_wherever_it_is_typed():
    typed = ["+refine=details", "+preset=doorways/forest_kelp_forest", "seed=3"]
    assert refine_last(typed) == [*REFINE, "seed=3"]
    assert compose(refine_last(typed)).optimizer.lr == 0.02  # not the preset's 0.025
    assert refine_last(["seed=3", "+refine=details"]) == ["seed=3", "+refine=details"]


def test_refine_an_edited_catalogue_doorway(tmp_path):
    edited = np.full((32, 64, 3), 90, np.uint8)
    edited[:, :32] = 200  # a painted-over left half
    Image.fromarray(edited).save(tmp_path / "edited.png")
    overrides = [
        *REFINE,
        "size=[64,32]",
        "steps=3",
        "log_every=1",
        "optimizer.lr=0.5",
        f"init.image={tmp_path / 'edited.png'}",
    ]
    run_tiny(tmp_path / "refined", overrides)
    run_dir = tmp_path / "refined"
    rows = list(csv.DictReader((run_dir / "stats/losses.csv").open()))
    assert {"prompt", "semantic_symmetry", "init_image"} <= set(rows[0])
    assert float(rows[-1]["init_image"]) > 0  # θ left the edit, and the pull measured it
    prompts = Image.open(run_dir / "final.png").text["prompts"]
    assert "forest realm" in prompts and "kelp forest realm" in prompts


def test_refine_without_an_init_image_says_so(tmp_path):
    with pytest.raises(UserError, match="init.image"):
        run_tiny(tmp_path / "refine", [*REFINE, "steps=1"])


def test_refine_with_no_preset_and_no_prompt_is_refused_naming_the_pngs_prompts(tmp_path):
    import torch

    from genart.checks import check_prompt_source
    from genart.images import save_png

    save_png(torch.rand(1, 3, 8, 8), tmp_path / "final.png", {"prompts": "a kelp forest"})
    cfg = compose(["+refine=details", f"init.image={tmp_path / 'final.png'}"])
    with pytest.raises(UserError, match='default prompt.*"a kelp forest".*\\+preset='):
        check_prompt_source(cfg, {"refine": "details"}, ["+refine=details"])
    for choices, overrides in [
        ({"refine": "details", "preset": "doorway"}, []),  # the preset's prompts
        ({"refine": "details"}, ["prompts.text=a forest"]),  # typed prompts
        ({"refine": "details"}, ["prompts=story"]),  # a prompts option
        ({}, []),  # no refining: the default prompt is what the user asked for
    ]:
        check_prompt_source(cfg, choices, overrides)
