"""Hostile shared presets: each is refused before Hydra runs anything (genart.safety).

Each case is a folder of files a stranger could hand over as GENART_PRESETS_DIR. The check must
judge what Hydra will compose from them, not their text: header tricks, files pulled in through
`defaults`, targets hidden in lists or interpolations, and allowed-looking names that write files.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from genart.errors import UserError
from genart.safety import check_presets
from tests.conftest import TINY, cli

LOGGING = """\
job_logging:
  handlers:
    evil: {class: logging.FileHandler, filename: MARKER, mode: w}
  root: {handlers: [evil]}
"""
ENV_SET = "job:\n  env_set: {GENART_EVIL: '1'}\n"
RUN_DIR = "run:\n  dir: /tmp/genart-hostile-run-dir\n"
EVIL_CALLBACK = "evil: {_target_: os.system, command: 'touch MARKER'}\n"

# name: ({file under the presets dir: text}, a fragment the refusal must name)
CASES: dict[str, tuple[dict[str, str], str]] = {
    "double_header": (
        {"preset/x": "# @package _global_\n# @package hydra\n" + LOGGING},
        "hydra.job_logging",
    ),
    "double_header_run_dir": (
        {"preset/x": "# @package _global_\n# @package hydra\n" + RUN_DIR},
        "hydra.run.dir",
    ),
    "double_header_env_set": (
        {"preset/x": "# @package _global_\n# @package hydra\n" + ENV_SET},
        "hydra.job.env_set",
    ),
    "double_header_crlf": (
        {"preset/x": ("# @package _global_\n# @package hydra\n" + RUN_DIR).replace("\n", "\r\n")},
        "hydra.run.dir",
    ),
    "indented_header": ({"preset/x": "  # @package hydra\n" + RUN_DIR}, "hydra.run.dir"),
    # A tab is no YAML indentation: Hydra cannot read the file at all.
    "tab_indented_header": ({"preset/x": "\t# @package hydra\n" + ENV_SET}, "cannot compose"),
    # Hydra reads no header after a byte-order mark: the file lands under `preset`, and its
    # target is still found wherever it sits.
    "bom_header": (
        {"preset/x": "\ufeff# @package _global_\nlosses:\n  evil: {_target_: os.system}\n"},
        "os.system",
    ),
    "package_hydra_job": (
        {"preset/x": "# @package hydra.job\nenv_set: {GENART_EVIL: '1'}\n"},
        "hydra.job.env_set",
    ),
    "package_global_hydra": (
        {"preset/x": "# @package _global_.hydra\n" + RUN_DIR},
        "hydra.run.dir",
    ),
    "package_hydra_callbacks": (
        {"preset/x": "# @package _global_\n# @package hydra.callbacks\n" + EVIL_CALLBACK},
        "hydra.callbacks",
    ),
    "package_hydra_overrides": (
        {"preset/x": "# @package _global_\n# @package hydra.overrides\ntask: [resume=/etc]\n"},
        "hydra.overrides.task",
    ),
    "hydra_key_in_global": (
        {"preset/x": "# @package _global_\nhydra:\n  " + ENV_SET.replace("\n  ", "\n    ")},
        "hydra.job.env_set",
    ),
    "override_job_logging": (
        {
            "preset/x": "# @package _global_\ndefaults:\n  - override /hydra/job_logging: evil\n",
            "hydra/job_logging/evil": "version: 1\nhandlers:\n  evil: {class: logging.FileHandler, filename: MARKER}\nroot: {handlers: [evil]}\n",
        },
        "hydra/job_logging",
    ),
    "override_launcher": (
        {"preset/x": "# @package _global_\ndefaults:\n  - override /hydra/launcher: joblib\n"},
        "hydra",
    ),
    "defaults_package_hydra": (
        {
            "preset/x": "# @package _global_\ndefaults:\n  - /parts/env@hydra.job: env\n  - _self_\n",
            "parts/env/env": "env_set: {GENART_EVIL: '1'}\n",
        },
        "hydra.job.env_set",
    ),
    "defaults_pull_double_header": (
        {
            "preset/x": "# @package _global_\ndefaults:\n  - /parts/logs\n  - _self_\nsteps: 3\n",
            "parts/logs": "# @package _global_\n# @package hydra\n" + LOGGING,
        },
        "hydra.job_logging",
    ),
    "defaults_pull_writer": (
        {
            "preset/x": "# @package _global_\ndefaults:\n  - override /losses: sneaky\n  - _self_\n",
            "losses/sneaky": "evil:\n  _target_: genart.callbacks.stats.append_csv\n  path: MARKER\n  row: {a: 1}\n",
        },
        "genart.callbacks.stats.append_csv",
    ),
    "append_csv": (
        {
            "preset/x": "# @package _global_\ninit:\n  make: {_target_: genart.callbacks.stats.append_csv, path: MARKER, row: {a: 1}}\n"
        },
        "genart.callbacks.stats.append_csv",
    ),
    "download_url": (
        {
            "preset/x": "# @package _global_\nlosses:\n  evil: {_target_: genart.pretrained.download_url, url: 'file:///etc/hostname', dest: MARKER}\n"
        },
        "genart.pretrained.download_url",
    ),
    "build_gallery": (
        {
            "preset/x": "# @package _global_\nlosses:\n  evil: {_target_: genart.tools.gallery.build_gallery, sweep_dir: /tmp, out: MARKER}\n"
        },
        "genart.tools.gallery.build_gallery",
    ),
    "target_in_list": (
        {
            "preset/x": "# @package _global_\ncutouts:\n  augmentations:\n"
            "    - {_target_: kornia.augmentation.RandomAffine, degrees: 5}\n"
            "    - {_target_: genart.pretrained.download_url, url: 'file:///etc/hostname', dest: MARKER}\n"
        },
        "cutouts.augmentations[1]._target_",
    ),
    "target_interpolated": (
        {
            "preset/x": "# @package _global_\nnames: {w: genart.tools.gallery.build_gallery}\nlosses:\n  evil: {_target_: '${names.w}', sweep_dir: /tmp}\n"
        },
        "genart.tools.gallery.build_gallery",
    ),
    "target_selected": (
        {
            "preset/x": "# @package _global_\nnames: {w: builtins.exec}\nlosses:\n  evil: {_target_: '${oc.select:names.w}'}\n"
        },
        "builtins.exec",
    ),
    "oc_decode": (
        {
            "preset/x": "# @package _global_\nlosses:\n  evil: \"${oc.decode:'{_target_: os.system}'}\"\n"
        },
        "oc.decode",
    ),
    "oc_create": (
        {
            "preset/x": "# @package _global_\nlosses:\n  evil: '${oc.create:{_target_: os.system}}'\n"
        },
        "oc.create",
    ),
    "oc_env": (
        {"preset/x": "# @package _global_\nprompts:\n  text: '${oc.env:WANDB_API_KEY,x}'\n"},
        "oc.env",
    ),
    "oc_env_spaced": (
        {"preset/x": "# @package _global_\nprompts:\n  text: '${ oc.env : HOME }'\n"},
        "oc.env",
    ),
    "resolver_name_interpolated": (
        {"preset/x": "# @package _global_\nkind: env\nprompts:\n  text: '${oc.${kind}:HOME}'\n"},
        "prompts.text",
    ),
    "torch_optim_sgd": (
        {"preset/x": "# @package _global_\noptimizer:\n  _target_: torch.optim.SGD\n"},
        "torch.optim.SGD",
    ),
    "builtins_exec": (
        {
            "preset/x": "# @package _global_\nlosses:\n  evil: {_target_: builtins.exec, _args_: ['print(1)']}\n"
        },
        "builtins.exec",
    ),
    "tool_of_genart": (
        {
            "preset/x": "# @package _global_\nlosses:\n  evil: {_target_: genart.tools.presets.main, _args_: [[list]]}\n"
        },
        "genart.tools.presets.main",
    ),
    "not_plain_yaml": (
        {"preset/x": "# @package _global_\nx: !!python/object/apply:os.system [ls]\n"},
        "python/object",
    ),
}


@pytest.fixture(autouse=True)
def no_user_allow(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GENART_ALLOW_TARGETS", raising=False)


def hostile_dir(root: Path, files: dict[str, str], marker: Path) -> Path:
    for rel, text in files.items():
        path = root / f"{rel}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text.replace("MARKER", str(marker)).encode())
    return root


@pytest.mark.parametrize("name", sorted(CASES))
def test_hostile_preset_is_refused(name: str, tmp_path: Path) -> None:
    files, fragment = CASES[name]
    root = hostile_dir(tmp_path / "shared", files, tmp_path / "marker")
    with pytest.raises(UserError) as err:
        check_presets(["+preset=x"], [root])  # composed on genart's own conf/, as a run does
    message = str(err.value)
    assert "\n" not in message  # one paragraph
    assert fragment in message and "preset/x.yaml" in message
    assert not (tmp_path / "marker").exists()


def test_hostile_logging_preset_is_refused_before_hydra_runs(tmp_path: Path) -> None:
    """End to end: a preset whose Hydra logging would create a file stops the run first."""
    marker = tmp_path / "marker.log"
    files = {"preset/x": "# @package _global_\n# @package hydra\n" + LOGGING}
    root = hostile_dir(tmp_path / "shared", files, marker)
    work = tmp_path / "work"
    work.mkdir()
    args = ["+preset=x", *TINY, "steps=1", "size=[32,32]"]
    result = cli("genart", *args, cwd=work, env={"GENART_PRESETS_DIR": str(root)}, timeout=300)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "hydra.job_logging" in result.stderr
    assert not marker.exists() and not (work / "outputs").exists()


def test_a_defaults_entry_cannot_pick_its_file_from_the_command_line(tmp_path: Path) -> None:
    """`- /parts: ${generator}` would compose a benign file in the check (genart's default
    generator) and a hostile one in a run with `generator=vqgan_tiny`. Hydra 1.3 resolves a
    preset's defaults against its own choice only, so it cannot be composed at all."""
    files = {
        "preset/x": "# @package _global_\ndefaults:\n  - /parts@losses.evil: ${generator}\n",
        "parts/vqgan": "weight: 1.0\n",
        "parts/vqgan_tiny": "_target_: genart.tools.gallery.build_gallery\nsweep_dir: /tmp\n",
    }
    root = hostile_dir(tmp_path / "shared", files, tmp_path / "marker")
    with pytest.raises(UserError, match="Hydra cannot compose it: Error resolving interpolation"):
        check_presets(["+preset=x", "generator=vqgan_tiny"], [root])


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_every_hostile_preset_stops_the_command_and_writes_nothing(tmp_path: Path) -> None:
    """Each case above, as a user meets it: `python -m genart +preset=x` exits 2 in one paragraph,
    and neither the working folder, the presets folder nor the marker path gains a file."""
    refused = []
    for name in sorted(CASES):
        case = tmp_path / name
        root = hostile_dir(case / "shared", CASES[name][0], case / "marker")
        work = case / "work"
        work.mkdir()
        before = snapshot(case)
        args = ["+preset=x", *TINY, "steps=1", "size=[32,32]"]
        result = cli("genart", *args, cwd=work, env={"GENART_PRESETS_DIR": str(root)}, timeout=300)
        assert result.returncode == 2, (name, result.stderr[-2000:])
        assert "Traceback" not in result.stderr, (name, result.stderr[-2000:])
        assert result.stderr.startswith("genart: ") and result.stderr.count("\n") == 1, name
        assert snapshot(case) == before, name
        refused.append(name)
    assert len(refused) == len(CASES) >= 30
    assert not Path(RUN_DIR.split()[-1]).exists()  # where the hydra.run.dir cases point
