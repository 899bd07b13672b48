"""Every option of every config group composes and instantiates; every preset composes."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from tests.conftest import REPO, compose

GROUPS = ["generator", "guide", "cutouts", "prompts", "losses", "optimizer", "logger"]
OPTIONS = [(g, p.stem) for g in GROUPS for p in sorted((REPO / "conf" / g).glob("*.yaml"))]
PRESETS = sorted(
    str(p.relative_to(REPO / "conf/preset").with_suffix(""))
    for p in (REPO / "conf/preset").rglob("*.yaml")
)
SLOW_OPTIONS = {("guide", "clip_ensemble")}  # two ViT-B builds (~18 s); covered in test_guides


def without_weights(node):
    """Real-weight configs build their architecture with random weights (nothing to download)."""
    container = OmegaConf.to_container(node, resolve=True)

    def strip(value):
        if isinstance(value, dict):
            return {k: (None if k == "weights" else strip(v)) for k, v in value.items()}
        return [strip(v) for v in value] if isinstance(value, list) else value

    return OmegaConf.create(strip(container))


@pytest.mark.parametrize("group, option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_option_composes_and_instantiates(group, option):
    if (group, option) in SLOW_OPTIONS:
        pytest.skip("built in tests/test_guides.py (slow tier)")
    cfg = compose([f"{group}={option}", "size=[64,64]"])
    node = without_weights(cfg[group]) if cfg[group] is not None else None
    if group == "losses":
        built = {k: instantiate(v) for k, v in node.items() if v is not None}
        assert built and all(hasattr(v, "weight") for v in built.values())
    elif group == "cutouts":
        assert callable(instantiate(node, cut_size=64))
    elif group == "logger":
        assert node is None or instantiate(node) is not None
    elif group == "optimizer":
        import torch

        assert isinstance(
            instantiate(node)(params=[torch.zeros(1, requires_grad=True)]), torch.optim.Optimizer
        )
    else:
        assert instantiate(node, _convert_="all") is not None


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_composes(preset):
    cfg = compose([f"+preset={preset}", "generator=vqgan_tiny", "guide=clip_tiny"])
    assert cfg.prompts._target_ == "genart.prompts.PromptSchedule"
    header = (REPO / "conf/preset" / f"{preset}.yaml").read_text().splitlines()
    assert header[0] == "# @package _global_"
    assert any(line.startswith("# description:") for line in header[:3]), (
        "a one-line description for `list`"
    )


def test_doorway_reads_like_the_post():
    cfg = compose(["+preset=doorway"])
    assert cfg.prompts.template == "{entrance} to the {subject} realm"
    assert (cfg.prompts.left, cfg.prompts.right) == ("heaven", "hell")
    assert cfg.prompts.suffix == "by James Gurney"
    assert cfg.losses.semantic_symmetry.weight == 0.1
    assert cfg.losses.tone_symmetry.weight == 0.0
    assert cfg.optimizer.lr == 0.025
    assert cfg.cutouts.mirrored is True


def test_catalogue_wording_fixes():
    from genart.prompts import PromptSchedule

    def texts(preset):
        return instantiate(compose([f"+preset=doorways/{preset}"]).prompts, _convert_="all").texts

    assert texts("forest_kelp_forest") == [
        "entrance to the forest realm by James Gurney",
        "underwater entrance to the kelp forest realm by James Gurney",
    ]
    bodhi = texts("bodhi_samsara")
    assert "enlightenment" in bodhi[0] and "the cycle of death and rebirth" in bodhi[1]
    assert all("the The" not in t for t in texts("paradise_underworld"))
    assert all(isinstance(t, str) for t in PromptSchedule(left="a", right="b").texts)
    assert len(PRESETS) >= 33 + 4


def test_an_invalid_override_is_refused():
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException):
        compose(["no_such_option=1"])


def test_conf_is_a_package():
    assert (Path(REPO) / "conf/__init__.py").exists()
