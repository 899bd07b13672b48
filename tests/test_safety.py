"""genart.safety: shared presets that could run code are refused before Hydra composes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from genart.errors import UserError
from genart.safety import available_presets, check_presets

REPO = Path(__file__).resolve().parents[1]

ALLOWED = """\
# @package _global_
# description: only targets on the allow-list
defaults:
  - override /generator: vqgan_tiny  # not in the tmp dirs: left to Hydra, nothing to scan
  - _self_
optimizer:
  _target_: torch.optim.Adam
  _partial_: true
cutouts:
  augs:
    - _target_: kornia.augmentation.RandomAffine
      degrees: 15
    - _target_: kornia.filters.GaussianBlur2d
      kernel_size: [3, 3]
      sigma: [1.0, 1.0]
errors: {_target_: genart.errors.UserError}
prompts: ["a _doorway_ to heaven", "my_target_audience"]
"""

EVIL = {
    "os_system": ("losses: {evil: {_target_: os.system, command: ls}}", "losses.evil._target_"),
    "torch_hub": ("generator: {_target_: torch.hub.load, repo: x/y}", "generator._target_"),
    "list_item": (
        "cutouts:\n  augs:\n    - {_target_: kornia.augmentation.RandomAffine, degrees: 5}\n"
        "    - {p: [{_target_: builtins.eval}]}",
        "cutouts.augs[1].p[0]._target_",
    ),
    "hydra_node": ("hydra: {callbacks: {x: {_target_: genart.foo}}}", "hydra"),
    "hydra_nested": ("losses: {hydra: {a: 1}}", "losses.hydra"),
    "hydra_package": ("# @package hydra.callbacks\nx: {_target_: genart.foo}", "@package"),
    "hydra_default": ("defaults:\n  - override /hydra/launcher: joblib", "hydra/launcher"),
    "reexport": ("optimizer: {_target_: torch.optim.optimizer.torch.load}", "`torch.load`"),
    "tunnel": ("x: {_target_: kornia.filters.filter.torch.load}", "`torch.load`"),
    "interpolated": ("x: {_target_: '${oc.env:EVIL}'}", "not a plain dotted name"),
    "dunder": ("x: {_target_: genart.errors.UserError.__init__}", "not a plain dotted name"),
    "private": ("x: {_target_: genart.presets._git_commit}", "not a plain dotted name"),
    "tool": ("x: {_target_: genart.presets.main, _args_: [[save]]}", "`genart.presets.main`"),
    "decode": ("x: \"${oc.decode:'{a: 1}'}\"", "oc.decode"),
    "env": ("prompts: {text: '${oc.env:WANDB_API_KEY}'}", "reads an environment variable"),
    "not_yaml": ("x: !!python/object/apply:os.system [ls]", "not plain YAML"),
}


def write(root: Path, rel: str, text: str) -> Path:
    path = root / f"{rel}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text if text.startswith("#") else f"# @package _global_\n{text}\n")
    return path


@pytest.fixture(autouse=True)
def no_user_allow(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GENART_ALLOW_TARGETS", raising=False)


@pytest.fixture
def main_config(tmp_path: Path) -> Path:
    """A user main config (so the repo's conf/config.yaml, being written, is not read)."""
    path = tmp_path / "main" / "config.yaml"
    path.parent.mkdir()
    path.write_text("seed: 0\n")
    return path


@pytest.fixture
def presets(tmp_path: Path) -> Path:
    root = tmp_path / "shared"
    write(root, "preset/allowed", ALLOWED)
    for name, (text, _) in EVIL.items():
        write(root, f"preset/evil/{name}", text)
    return root


def check(overrides: list[str], dirs: list[Path], main_config: Path) -> None:
    check_presets(overrides, dirs, main_config=main_config)


def test_allowed_preset_passes(presets: Path, main_config: Path) -> None:
    check(["+preset=allowed"], [presets], main_config)


@pytest.mark.parametrize("name", sorted(EVIL))
def test_evil_preset_is_refused_with_file_key_and_fix(
    name: str, presets: Path, main_config: Path
) -> None:
    with pytest.raises(UserError) as err:
        check([f"+preset=evil/{name}"], [presets], main_config)
    message = str(err.value)
    assert f"evil/{name}.yaml" in message and EVIL[name][1] in message
    assert "\n" not in message  # one paragraph
    assert "trust" in message or "plain YAML" in message  # says how to proceed if trusted


FORMS = ["preset={}", "++preset={}", "+preset=allowed,{}", "+preset=choice(allowed,{})"]
FORMS += ["+preset=[allowed,{}]", "+preset=glob(*)", "preset/evil={}", "+preset@pkg={}"]


@pytest.mark.parametrize("form", FORMS)
def test_every_override_form_is_scanned(form: str, tmp_path: Path, main_config: Path) -> None:
    root = tmp_path / "dir"
    write(root, "preset/allowed", ALLOWED)
    write(
        root,
        "preset/evil/os_system" if "preset/evil" in form else "preset/bad",
        EVIL["os_system"][0],
    )
    value = "os_system" if "preset/evil" in form else "bad"
    with pytest.raises(UserError, match="os.system"):
        check(["-m", form.format(value)], [root], main_config)


def test_no_preset_no_check(presets: Path, main_config: Path) -> None:
    check([], [presets], main_config)
    check(["~preset=evil/os_system", "steps=3", "-m"], [presets], main_config)  # ~ deletes


ENTRIES = ["/preset/evil/os_system", "evil/os_system", "{/losses: bad}", "{/losses: [ok, bad]}"]


@pytest.mark.parametrize("entry", ENTRIES)
def test_defaults_entries_of_a_preset_are_followed(
    entry: object, presets: Path, main_config: Path
) -> None:
    write(presets, "losses/ok", "a: {_target_: torch.optim.SGD}")
    write(presets, "losses/bad", "b: {_target_: subprocess.run}")
    default = (
        entry if isinstance(entry, str) else f"{{{next(iter(entry))}: {entry[next(iter(entry))]}}}"
    )
    write(presets, "preset/outer", f"defaults:\n  - {default}\n  - _self_\nsteps: 3")
    with pytest.raises(UserError, match=r"(os\.system|subprocess\.run)"):
        check(["+preset=outer"], [presets], main_config)


def test_env_allow_list_extends_the_built_in_one(
    presets: Path, main_config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(UserError, match="GENART_ALLOW_TARGETS=torch.hub.load"):
        check(["+preset=evil/torch_hub"], [presets], main_config)
    monkeypatch.setenv("GENART_ALLOW_TARGETS", "builtins.print, torch.hub.load")
    check(["+preset=evil/torch_hub"], [presets], main_config)
    with pytest.raises(UserError, match="os.system"):  # the rest stays refused
        check(["+preset=evil/os_system"], [presets], main_config)


def test_main_config_allow_list_counts_but_a_preset_cannot_allow_itself(
    presets: Path, main_config: Path
) -> None:
    write(
        presets, "preset/self_allow", "security: {allow_targets: [os.]}\nx: {_target_: os.system}"
    )
    with pytest.raises(UserError, match="os.system"):
        check(["+preset=self_allow"], [presets], main_config)
    main_config.write_text("security:\n  allow_targets: [os.system]\n")
    check(["+preset=self_allow"], [presets], main_config)


def test_missing_preset_lists_the_available_ones(presets: Path, main_config: Path) -> None:
    with pytest.raises(UserError) as err:
        check(["+preset=nope"], [presets], main_config)
    assert "'nope' not found" in str(err.value) and "allowed, evil/decode" in str(err.value)
    assert "allowed" in available_presets([presets])


def test_search_path_from_the_command_line_is_searched(presets: Path, main_config: Path) -> None:
    for argv in (["--config-dir", str(presets)], [f"hydra.searchpath=[{presets.as_uri()}]"]):
        with pytest.raises(UserError, match="os.system"):
            check([*argv, "+preset=evil/os_system"], [], main_config)


SHIPPED = sorted((REPO / "conf/preset").rglob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_every_shipped_preset_passes(path: Path) -> None:
    name = path.relative_to(REPO / "conf/preset").with_suffix("").as_posix()
    check_presets([f"+preset={name}"], [REPO / "conf"])


def test_check_is_fast_and_imports_neither_torch_nor_hydra(presets: Path) -> None:
    code = (
        "import sys, time; t = time.time(); from pathlib import Path\n"
        "from genart.safety import check_presets\n"
        f"check_presets(['+preset=allowed'], [Path({str(presets)!r})])\n"
        "assert time.time() - t < 2, time.time() - t\n"
        "assert not {'torch', 'hydra', 'kornia'} & set(sys.modules), 'heavy import'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
