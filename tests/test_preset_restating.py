"""Each preset sets only what its defaults (groups, parent preset) do not already set."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from omegaconf import Container, OmegaConf

from tests.conftest import REPO, compose

PRESETS = REPO / "conf/preset"
UNSET = object()
# preset: {key: why it names a value its defaults already give}
RESTATED_ON_PURPOSE = {
    "doorways/heaven_hell": {
        "prompts.left": "a catalogue entry names its own pair",
        "prompts.right": "a catalogue entry names its own pair",
    },
}


def leaves(node: object, key: str = "") -> dict:
    """{`a.b`: value} for every value of a preset's body; a list is one value."""
    if not isinstance(node, dict) or not node:
        return {key: node}
    items = ((f"{key}.{k}".lstrip("."), v) for k, v in node.items())
    return {k: v for sub, child in items for k, v in leaves(child, sub).items()}


def value_at(cfg: Container, key: str) -> object:
    found = OmegaConf.select(cfg, key, default=UNSET)
    return OmegaConf.to_container(found) if isinstance(found, Container) else found


@pytest.mark.parametrize("path", sorted(PRESETS.rglob("*.yaml")), ids=lambda p: p.stem)
def test_a_preset_restates_nothing_its_defaults_set(path: Path, tmp_path: Path) -> None:
    name = path.relative_to(PRESETS).with_suffix("").as_posix()
    body = yaml.safe_load(path.read_text())
    probe = tmp_path / "preset/_probe.yaml"
    probe.parent.mkdir(parents=True)
    probe.write_text("# @package _global_\n" + yaml.safe_dump({"defaults": body.pop("defaults")}))
    inherited = compose(["+preset=_probe", f"hydra.searchpath=[file://{tmp_path}]"])
    allowed = RESTATED_ON_PURPOSE.get(name, {})
    restated = [
        key
        for key, value in leaves(body).items()
        if key not in allowed and value_at(inherited, key) == value
    ]
    assert not restated, f"{path.name} restates {restated}: set each where the value lives"
