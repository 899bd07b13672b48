"""Presets saved before a class moved name its old `_target_`: each is refused, naming the new one.

A saved preset freezes every `_target_` of its run (`python -m genart.presets save`), so a preset
from a `+refine=details` run names the size weighting where it lived then. genart.safety refuses
it before Hydra runs anything, with the edit that makes it work.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.utils import get_class

from genart.errors import UserError
from genart.safety import ALLOWED_TARGETS, MOVED_TARGETS, check_presets
from tests.conftest import REPO, TINY, cli, compose

SAVED = REPO / "tests/fixtures/saved_by_main/preset/doorway_tiny.yaml"
OLD, NEW = "genart.cutouts.SizeWeighting", "genart.prompt_weights.SizeWeighting"


def saved_refined_preset(root: Path, target: str) -> Path:
    """A preset as `genart.presets save` wrote it from a refined run, naming `target`."""
    node = f"  size_weighting:\n    _target_: {target}\n    power: -1.0\n"
    text = SAVED.read_text()
    assert text.count("  size_weighting: null\n") == 1
    (root / "preset").mkdir(parents=True, exist_ok=True)
    (root / "preset/refined.yaml").write_text(text.replace("  size_weighting: null\n", node))
    return root


@pytest.fixture(autouse=True)
def no_user_allow(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GENART_ALLOW_TARGETS", raising=False)


@pytest.mark.parametrize(("old", "new"), sorted(MOVED_TARGETS.items()))
def test_each_moved_target_is_refused_and_its_new_name_is_allowed(old: str, new: str) -> None:
    assert new in ALLOWED_TARGETS and old not in ALLOWED_TARGETS
    assert get_class(new)
    with pytest.raises(Exception, match="Error locating target|No module|has no attribute"):
        get_class(old)  # what the run would meet if the check let it through


def test_an_old_saved_preset_stops_the_command_naming_the_new_target(tmp_path: Path) -> None:
    root = saved_refined_preset(tmp_path / "shared", OLD)
    work = tmp_path / "work"
    work.mkdir()
    result = cli(
        "genart", "+preset=refined", "steps=1", cwd=work, env={"GENART_PRESETS_DIR": str(root)}
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1, result.stderr
    assert (
        f"`prompts.size_weighting._target_` names `{OLD}`, which moved to `{NEW}`" in result.stderr
    )
    assert f"write `_target_: {NEW}`" in result.stderr
    assert not (work / "outputs").exists()


def test_allowing_the_old_name_still_refuses_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GENART_ALLOW_TARGETS cannot make an old name importable: the refusal says what to edit."""
    root = saved_refined_preset(tmp_path / "shared", OLD)
    monkeypatch.setenv("GENART_ALLOW_TARGETS", OLD)
    with pytest.raises(UserError, match=f"moved to `{NEW}`"):
        check_presets(["+preset=refined"], [root])


def test_the_edited_preset_passes_and_builds_the_size_weighting(
    tmp_path: Path, monkeypatch
) -> None:
    from hydra.utils import instantiate

    root = saved_refined_preset(tmp_path / "shared", NEW)
    check_presets(["+preset=refined"], [root])
    monkeypatch.setenv("GENART_PRESETS_DIR", str(root))
    cfg = compose(["+preset=refined", f"hydra.searchpath=[file://{root}]"])
    schedule = instantiate(cfg.prompts, _convert_="all")
    assert type(schedule.size_weighting).__module__ == "genart.prompt_weights"
    assert schedule.size_weighting.power == -1.0


@pytest.mark.slow
def test_a_preset_with_the_new_target_renders(tmp_path: Path) -> None:
    root = tmp_path / "shared"
    (root / "preset").mkdir(parents=True)
    node = f"{{_target_: {NEW}, power: -1.0}}"
    (root / "preset/small.yaml").write_text(
        f"# @package _global_\nprompts:\n  size_weighting: {node}\n"
    )
    work = tmp_path / "work"
    work.mkdir()
    args = ["+preset=small", *TINY, "steps=1", "size=[32,32]", "hydra.run.dir=run"]
    result = cli("genart", *args, cwd=work, env={"GENART_PRESETS_DIR": str(root)})
    assert result.returncode == 0, result.stderr[-2000:]
    assert (work / "run/final.png").is_file()
