"""genart.safety: shared presets are judged on what Hydra composes from them, before it runs.

The hostile cases (header tricks, file-writing targets) are in test_hostile_presets.py; these
tests cover the machinery: override forms, search paths, allow-lists, messages, start-up.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from genart.errors import UserError
from genart.safety import ALLOWED_TARGETS, available_presets, check_presets

REPO = Path(__file__).resolve().parents[1]

ALLOWED = """\
# @package _global_
# description: only targets genart's own conf/ uses, and values that merely look like them
defaults:
  - override /generator: vqgan_tiny
  - _self_
optimizer:
  _target_: torch.optim.Adam
  lr: 0.05
cutouts:
  augmentations:
    - _target_: kornia.augmentation.RandomAffine
      degrees: 15
init:
  make: {_target_: genart.seed_images.two_blotches}
prompts: {text: "a _doorway_ to heaven, my_target_audience, oc.env"}
"""

EVIL = {
    "os_system": ("losses: {evil: {_target_: os.system, command: ls}}", "losses.evil._target_"),
    "torch_hub": ("generator: {_target_: torch.hub.load, repo: x/y}", "generator._target_"),
    "list_item": (
        "cutouts:\n  augmentations:\n    - {_target_: kornia.augmentation.RandomAffine}\n"
        "    - {p: [{_target_: builtins.eval}]}",
        "cutouts.augmentations[1].p[0]._target_",
    ),
    "hydra_node": ("hydra: {callbacks: {x: {_target_: genart.foo}}}", "hydra.callbacks.x"),
    "hydra_other_type": (  # 0 is not false where Hydra keeps the type as written
        "hydra: {job_logging: {disable_existing_loggers: 0}}",
        "hydra.job_logging.disable_existing_loggers",
    ),
    "hydra_default": ("defaults:\n  - override /hydra/launcher: joblib", "hydra/launcher"),
    "reexport": (
        "optimizer: {_target_: torch.optim.optimizer.torch.load}",
        "torch.optim.optimizer",
    ),
    "tunnel": ("x: {_target_: kornia.filters.filter.torch.load}", "kornia.filters.filter"),
    "prefix_only": (
        "x: {_target_: kornia.filters.GaussianBlur2d}",
        "kornia.filters.GaussianBlur2d",
    ),
    "interpolated": ("x: {_target_: '${oc.env:EVIL}'}", "oc.env"),
    "unresolvable": ("x: {_target_: '${nowhere.to.be.found}'}", "cannot be resolved"),
    "dunder": ("x: {_target_: genart.errors.UserError.__init__}", "UserError.__init__"),
    "private": (
        "x: {_target_: genart.tools.presets._safe_name}",
        "genart.tools.presets._safe_name",
    ),
    "not_a_name": ("x: {_target_: {a: 1}}", "x._target_"),
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
def presets(tmp_path: Path) -> Path:
    root = tmp_path / "shared"
    write(root, "preset/allowed", ALLOWED)
    for name, (text, _) in EVIL.items():
        write(root, f"preset/evil/{name}", text)
    return root


def test_allowed_preset_passes(presets: Path) -> None:
    check_presets(["+preset=allowed"], [presets])


def test_a_hydra_node_that_changes_nothing_passes(presets: Path) -> None:
    """What counts is what Hydra will use: restating genart's own settings is harmless."""
    write(presets, "preset/same", "hydra: {job: {chdir: false}, run: {dir: '${hydra.run.dir}'}}")
    with pytest.raises(UserError, match="hydra.run.dir"):  # an interpolation is not the value
        check_presets(["+preset=same"], [presets])
    write(presets, "preset/same", "hydra: {job: {chdir: false}}")
    check_presets(["+preset=same"], [presets])


@pytest.mark.parametrize("name", sorted(EVIL))
def test_evil_preset_is_refused_with_file_key_and_fix(name: str, presets: Path) -> None:
    with pytest.raises(UserError) as err:
        check_presets([f"+preset=evil/{name}"], [presets])
    message = str(err.value)
    assert f"evil/{name}.yaml" in message and EVIL[name][1] in message
    assert "\n" not in message  # one paragraph
    assert "trust" in message  # says how to proceed if trusted


def shipped_targets(root: Path = REPO / "conf") -> set[str]:
    """Every `_target_` value in genart's own conf/**, found in the YAML as written."""

    def walk(node: object) -> set[str]:
        if isinstance(node, dict):
            own = {node["_target_"]} if isinstance(node.get("_target_"), str) else set()
            return own.union(*map(walk, node.values()))
        return set().union(*map(walk, node)) if isinstance(node, list) else set()

    return set().union(*(walk(yaml.safe_load(p.read_text())) for p in root.rglob("*.yaml")))


def test_allow_list_is_exactly_the_targets_genart_ships() -> None:
    shipped = shipped_targets()
    literal = "\n".join(f'        "{t}",' for t in sorted(shipped))
    assert shipped <= ALLOWED_TARGETS, f"add to safety.ALLOWED_TARGETS:\n{literal}"
    assert ALLOWED_TARGETS <= shipped, f"conf/ no longer uses {sorted(ALLOWED_TARGETS - shipped)}"


def test_torch_optim_sgd_is_refused_unless_genart_uses_it(presets: Path) -> None:
    write(presets, "preset/sgd", "optimizer: {_target_: torch.optim.SGD}")
    assert "torch.optim.SGD" not in shipped_targets()
    with pytest.raises(UserError, match="GENART_ALLOW_TARGETS=torch.optim.SGD"):
        check_presets(["+preset=sgd"], [presets])


FORMS = ["preset={}", "++preset={}", "+preset=allowed,{}", "+preset=choice(allowed,{})"]
FORMS += ["+preset=[allowed,{}]", "+preset=glob(*)", "preset/evil={}", "+preset@pkg={}"]


@pytest.mark.parametrize("form", FORMS)
def test_every_override_form_is_checked(form: str, tmp_path: Path) -> None:
    """Each option is composed as typed (`preset=x` as `+preset=x`); Hydra refuses `++`."""
    root = tmp_path / "dir"
    write(root, "preset/allowed", ALLOWED)
    write(
        root,
        "preset/evil/os_system" if "preset/evil" in form else "preset/bad",
        EVIL["os_system"][0],
    )
    value = "os_system" if "preset/evil" in form else "bad"
    with pytest.raises(UserError, match="force-add" if "++" in form else "os.system"):
        check_presets(["-m", form.format(value)], [root])


def test_no_preset_no_check(presets: Path) -> None:
    check_presets([], [presets])
    check_presets(["~preset=evil/os_system", "steps=3", "-m"], [presets])  # ~ deletes


ENTRIES = ["/preset/evil/os_system", "evil/os_system", "override /losses: bad"]
ENTRIES += ["/parts: [ok, bad]"]


@pytest.mark.parametrize("entry", ENTRIES)
def test_files_a_preset_pulls_in_are_checked(entry: str, presets: Path) -> None:
    write(presets, "losses/bad", "b: {_target_: subprocess.run}")
    write(presets, "parts/ok", "a: {_target_: torch.optim.Adam}")
    write(presets, "parts/bad", "b: {_target_: subprocess.run}")
    default = entry if entry.startswith("/") or " " not in entry else "{" + entry + "}"
    write(presets, "preset/outer", f"defaults:\n  - {default}\n  - _self_\nsteps: 3")
    with pytest.raises(UserError, match=r"(os\.system|subprocess\.run)"):
        check_presets(["+preset=outer"], [presets])


def test_a_compose_error_is_hydras_message_as_one_paragraph(presets: Path) -> None:
    write(presets, "preset/broken", "defaults:\n  - override /generator: no_such_generator")
    with pytest.raises(UserError) as err:
        check_presets(["+preset=broken"], [presets])
    message = str(err.value)
    assert "preset/broken.yaml" in message and "no_such_generator" in message
    assert "Hydra cannot compose it" in message and "\n" not in message


def test_env_allow_list_adds_exact_names(presets: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(UserError, match="GENART_ALLOW_TARGETS=torch.hub.load"):
        check_presets(["+preset=evil/torch_hub"], [presets])
    monkeypatch.setenv("GENART_ALLOW_TARGETS", "torch.hub.")  # a prefix allows nothing
    with pytest.raises(UserError, match="torch.hub.load"):
        check_presets(["+preset=evil/torch_hub"], [presets])
    monkeypatch.setenv("GENART_ALLOW_TARGETS", "builtins.print, torch.hub.load")
    check_presets(["+preset=evil/torch_hub"], [presets])
    with pytest.raises(UserError, match="os.system"):  # the rest stays refused
        check_presets(["+preset=evil/os_system"], [presets])


def test_main_config_allow_list_counts_but_a_preset_cannot_allow_itself(
    presets: Path, tmp_path: Path
) -> None:
    main_config = tmp_path / "main" / "config.yaml"
    main_config.parent.mkdir()
    main_config.write_text("security:\n  allow_targets: []\n")
    text = "security: {allow_targets: [os.system]}\nx: {_target_: os.system}"
    write(presets, "preset/self_allow", text)
    with pytest.raises(UserError, match="os.system"):
        check_presets(["+preset=self_allow"], [presets], main_config=main_config)
    main_config.write_text("security:\n  allow_targets: [os.system]\n")
    check_presets(["+preset=self_allow"], [presets], main_config=main_config)


def test_missing_preset_lists_the_available_ones(presets: Path) -> None:
    with pytest.raises(UserError) as err:
        check_presets(["+preset=nope"], [presets])
    message = str(err.value)
    assert "'nope' not found" in message and "\n" not in message
    assert ": allowed, composition_details," in message and "evil/dunder" in message  # all dirs
    assert "allowed" in available_presets([presets])


@pytest.mark.parametrize("flag", ["--config-dir", "--config-dir=", "hydra.searchpath"])
def test_search_path_from_the_command_line_is_searched(flag: str, presets: Path) -> None:
    argv = {
        "--config-dir": ["--config-dir", str(presets)],
        "--config-dir=": [f"--config-dir={presets}"],
        "hydra.searchpath": [f"hydra.searchpath=[{presets.as_uri()}]"],
    }[flag]
    with pytest.raises(UserError, match="os.system"):
        check_presets([*argv, "+preset=evil/os_system"], [])
    check_presets([*argv, "+preset=allowed"], [])


SHIPPED = sorted((REPO / "conf/preset").rglob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_every_shipped_preset_passes(path: Path) -> None:
    name = path.relative_to(REPO / "conf/preset").with_suffix("").as_posix()
    check_presets([f"+preset={name}"], [REPO / "conf"])


def test_no_preset_imports_nothing_and_a_preset_only_hydra(presets: Path) -> None:
    code = (
        "import sys; from pathlib import Path\n"
        "from genart.safety import check_presets\n"
        f"dirs = [Path({str(presets)!r})]\n"
        "check_presets(['steps=3', '--cfg', 'job'], dirs)\n"
        "assert not {'torch', 'hydra', 'omegaconf'} & set(sys.modules), 'import without a preset'\n"
        "check_presets(['+preset=allowed'], dirs)\n"
        "assert not {'torch', 'kornia'} & set(sys.modules), 'heavy import'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
