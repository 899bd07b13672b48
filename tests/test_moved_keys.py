"""A user's old words still work: moved override keys are renamed (one line on stderr), and the
single `logger` node of old presets and old runs' configs moves under `logger.wandb`."""

from __future__ import annotations

import sys

import pytest
from omegaconf import OmegaConf

from genart.callbacks import callback_nodes
from genart.errors import UserError
from genart.moved_keys import MOVED, new_key, rewrite_overrides, upgrade_config
from tests.conftest import TINY, compose

WANDB = "genart.callbacks.wandb.WandbCallback"
OLD_PRESET = f"""\
# @package _global_
# description: saved when the logger group was a single node
defaults:
  - override /logger: wandb
  - _self_
logger:
  _target_: {WANDB}
  mode: disabled
  project: old_project
  entity: null
  log_images: false
"""


@pytest.mark.parametrize(
    "old, new",
    [
        ("logger.mode=online", "logger.wandb.mode=online"),
        ("+logger.project=p", "+logger.wandb.project=p"),
        ("logger.mode=online,offline", "logger.wandb.mode=online,offline"),
        ("seed=1", "seed=1"),
        ("logger=none", "logger=none"),
        ("logger.wandb.mode=online", "logger.wandb.mode=online"),
        ("prompts.text=logger.mode=online", "prompts.text=logger.mode=online"),
        ("hydra/launcher=joblib", "hydra/launcher=joblib"),
        ("generator.weights.path=/x.ckpt", "generator.pretrained.path=/x.ckpt"),
        ("guide.models.vitb32.weights=null", "guide.models.vitb32.pretrained=null"),
    ],
)
def test_an_old_override_key_is_renamed_and_the_new_key_named(old, new, capsys):
    assert rewrite_overrides([old]) == [new]
    said = capsys.readouterr().err
    if old == new:
        assert said == ""
    else:
        (line,) = said.splitlines()
        assert new.split("=")[0].lstrip("+") in line and new in line


def test_every_moved_key_composes_where_it_points():
    for old in MOVED:
        cfg = compose([f"{new_key(old)}=null"])
        assert OmegaConf.select(cfg, new_key(old), default="missing") is None, old


def test_the_readme_words_run_with_the_new_key(monkeypatch, capsys):
    from genart.cli import before_hydra

    monkeypatch.setattr(sys, "argv", ["genart", *TINY[:2], "logger.mode=online"])
    before_hydra(sys.argv[1:])
    assert "logger.wandb.mode=online" in sys.argv and "logger.mode=online" not in sys.argv
    assert "logger.wandb.mode" in capsys.readouterr().err
    assert compose(sys.argv[1:]).logger.wandb.mode == "online"


def old_preset_config(tmp_path, overrides=()):
    (tmp_path / "preset").mkdir()
    (tmp_path / "preset" / "old_wandb.yaml").write_text(OLD_PRESET)
    search = f"hydra.searchpath=[file://{tmp_path}]"
    return compose([search, "+preset=old_wandb", *TINY[:2], *overrides])


def test_an_old_preset_with_a_single_logger_node_runs_it_as_logger_wandb(tmp_path, capsys):
    cfg = upgrade_config(old_preset_config(tmp_path))
    assert OmegaConf.to_container(cfg.logger) == {
        "wandb": {
            "_target_": WANDB,
            "mode": "disabled",
            "project": "old_project",
            "entity": None,
            "log_images": False,
        }
    }
    assert "logger.wandb" in capsys.readouterr().err
    (node,) = [n for n in callback_nodes(cfg) if n._target_ == WANDB]
    assert node.mode == "disabled"
    from genart.checks import check_config

    check_config(cfg)


def test_a_new_key_typed_with_an_old_preset_still_wins(tmp_path):
    cfg = upgrade_config(
        old_preset_config(tmp_path, ["logger.wandb.mode=offline"]), ["logger.wandb.mode=offline"]
    )
    assert (cfg.logger.wandb.mode, cfg.logger.wandb.project) == ("offline", "old_project")


def test_an_old_run_config_resumes_with_its_logger_under_wandb(tmp_path):
    from genart.app import prepare_resume

    run_dir = tmp_path / "old_run"
    (run_dir / ".hydra").mkdir(parents=True)
    saved = OmegaConf.to_container(compose(TINY))
    del saved["callbacks"]  # an old run's config has no callbacks group
    saved["logger"] = {"_target_": WANDB, "mode": "offline", "project": "p", "entity": None}
    (run_dir / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(saved))
    cfg = compose([*TINY, f"resume={run_dir}"])
    resumed, _ = prepare_resume(cfg, [f"resume={run_dir}"])
    assert OmegaConf.to_container(resumed.logger) == {
        "wandb": {"_target_": WANDB, "mode": "offline", "project": "p", "entity": None}
    }
    assert list(resumed.callbacks) == ["frames", "checkpoint", "stats"]


def test_a_single_node_of_another_class_names_the_new_form():
    cfg = OmegaConf.create({"logger": {"_target_": "my.Tracker", "x": 1}})
    with pytest.raises(UserError, match=r"logger\.<name>\._target_") as caught:
        upgrade_config(cfg)
    assert "\n" not in str(caught.value)


def test_an_old_refined_run_resumes_with_the_moved_size_weighting(tmp_path, capsys):
    from genart.app import prepare_resume
    from genart.safety import MOVED_TARGETS

    run_dir = tmp_path / "old_refined_run"
    (run_dir / ".hydra").mkdir(parents=True)
    saved = OmegaConf.to_container(compose([*TINY, "+refine=details", "init.image=x.png"]))
    old = next(
        k for k, v in MOVED_TARGETS.items() if v == saved["prompts"]["size_weighting"]["_target_"]
    )
    saved["prompts"]["size_weighting"]["_target_"] = old  # as a run saved before the move has it
    (run_dir / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(saved))
    resumed, _ = prepare_resume(compose([*TINY, f"resume={run_dir}"]), [f"resume={run_dir}"])
    assert resumed.prompts.size_weighting._target_ == MOVED_TARGETS[old]
    assert resumed.prompts.size_weighting.power == saved["prompts"]["size_weighting"]["power"]
    assert f"prompts.size_weighting._target_ {old} is now" in capsys.readouterr().err
