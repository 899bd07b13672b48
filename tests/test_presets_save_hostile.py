"""`presets save` on hostile or unfinished runs: failed runs are refused, symlinks never lead the
write out of the preset dir, and nothing the run recorded becomes a live YAML key (issue 11)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from genart.tools.presets import main
from tests import test_presets as base
from tests.test_presets import compose_preset, make_run, without

clean_env, conf = base.clean_env, base.conf  # the same fixtures: a tiny conf/, no user env

INJECT = "x\nresume: /tmp/evil\nsteps: 99999"
HOSTILE = {  # result.json fields a run, a machine or a tampered file can put there
    "torch": "2.4.0\nresume: /tmp/evil",
    "genart": "0.1.0\nsteps: 99999",
    "hostname": "box\nseed: 7",
    "git_commit": "abc\r\nsize: [1, 1]",
    "overrides": ["seed=1\nlosses: null"],
    "device": "cpu\rresume: /tmp/cr",
    "precision": "fp32\n---\nsteps: 5",
    "threads": "4\nresume: /tmp/threads",
}
BREAKS = ["\n", "\r", "\x85", "\u2028", "\u2029", "\x0b", "\x0c"]  # YAML 1.1 (PyYAML) line breaks
BREAKS += ["\x00", "\x1b", "\x7f", "\x9b", "\ufeff"]  # not printable in YAML: the file won't load


def save(run: Path, dest: Path, *extra: str) -> int:
    return main(["save", str(run), "--name", "p", "--dir", str(dest / "preset"), *extra])


def assert_composes_to_run(conf: Path, dest: Path, job: dict, threads: object = 4) -> None:
    """Judged by what Hydra composes, not by the text: exactly the run's config, no extra key."""
    text = (dest / "preset/p.yaml").read_text()
    assert len(list(yaml.safe_load_all(text))) == 1  # one YAML document
    composed = compose_preset(conf, dest, "p")
    assert without(composed, "resume") == without({**job, "threads": threads}, "resume")
    assert composed["resume"] is None
    comments = [line for line in text.splitlines() if line.startswith("#")]
    assert not any(set(line) & set("\r\x85\u2028\u2029\x0b\x0c") for line in comments)


@pytest.mark.parametrize("field", sorted(HOSTILE))
def test_hostile_result_json_field_stays_a_comment(conf: Path, tmp_path: Path, field: str) -> None:
    job = make_run(conf, tmp_path / "run", [])
    result = json.loads((tmp_path / "run/result.json").read_text())
    (tmp_path / "run/result.json").write_text(json.dumps({**result, field: HOSTILE[field]}))
    assert save(tmp_path / "run", tmp_path / "user") == 0
    assert_composes_to_run(conf, tmp_path / "user", job, 4 if field != "threads" else None)


@pytest.mark.parametrize("brk", BREAKS, ids=[repr(b) for b in BREAKS])
def test_every_yaml_line_break_is_neutralised(conf: Path, tmp_path: Path, brk: str) -> None:
    job = make_run(conf, tmp_path / "run", [])
    hostile = {k: v.replace("\n", brk) for k, v in HOSTILE.items() if isinstance(v, str)}
    result = json.loads((tmp_path / "run/result.json").read_text())
    (tmp_path / "run/result.json").write_text(json.dumps({**result, **hostile}))
    assert save(tmp_path / "run", tmp_path / "user") == 0
    assert_composes_to_run(conf, tmp_path / "user", job, None)


def test_hostile_config_value_in_a_pretrained_comment(conf: Path, tmp_path: Path) -> None:
    job = make_run(conf, tmp_path / "run", [])
    job["generator"]["pretrained"]["path"] = INJECT  # listed in a `# pretrained:` comment
    (tmp_path / "run/.hydra/config.yaml").write_text(OmegaConf.to_yaml(job))
    assert save(tmp_path / "run", tmp_path / "user") == 0
    assert_composes_to_run(conf, tmp_path / "user", job)


def test_hostile_run_dir_name_and_description(conf: Path, tmp_path: Path) -> None:
    run = tmp_path / "run\nresume: evil\n---"
    job = make_run(conf, run, [])
    assert save(run, tmp_path / "user", "--description", "d\u2028steps: 3") == 0
    assert_composes_to_run(conf, tmp_path / "user", job)


@pytest.mark.parametrize("state", ["failed", "no result.json", "no final.png", "unreadable"])
def test_an_unfinished_run_is_refused_unless_forced(
    conf: Path, tmp_path: Path, capsys: pytest.CaptureFixture, state: str
) -> None:
    make_run(conf, tmp_path / "run", [])
    if state == "failed":
        (tmp_path / "run/result.json").write_text(json.dumps({"status": "failed", "error": "boom"}))
    elif state == "unreadable":
        (tmp_path / "run/result.json").write_text("{not json")
    else:
        (tmp_path / "run" / state.removeprefix("no ")).unlink()
    assert save(tmp_path / "run", tmp_path / "user") == 2
    err = capsys.readouterr().err
    assert "--force" in err and "Traceback" not in err and err.count("\n") == 1
    assert not (tmp_path / "user/preset/p.yaml").exists()
    assert save(tmp_path / "run", tmp_path / "user", "--force") == 0
    assert (tmp_path / "user/preset/p.yaml").is_file()


def test_a_symlinked_preset_file_is_never_written_through(conf: Path, tmp_path: Path, capsys):
    make_run(conf, tmp_path / "run", [])
    outside = tmp_path / "elsewhere.yaml"
    (tmp_path / "user/preset").mkdir(parents=True)
    (tmp_path / "user/preset/p.yaml").symlink_to(outside)  # dangling: exists() is False
    assert save(tmp_path / "run", tmp_path / "user") == 2
    assert "symlink" in capsys.readouterr().err
    assert not outside.exists()
    outside.write_text("keep me\n")
    assert save(tmp_path / "run", tmp_path / "user", "--force") == 2
    assert outside.read_text() == "keep me\n"


def test_a_symlinked_sub_folder_leading_outside_is_refused(conf: Path, tmp_path: Path, capsys):
    make_run(conf, tmp_path / "run", [])
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "user/preset").mkdir(parents=True)
    (tmp_path / "user/preset/sub").symlink_to(outside, target_is_directory=True)
    argv = ["save", str(tmp_path / "run"), "--name", "sub/deeper/p"]
    assert main([*argv, "--dir", str(tmp_path / "user/preset"), "--force"]) == 2
    err = capsys.readouterr().err
    assert "symlink" in err and "Traceback" not in err
    assert list(outside.iterdir()) == []


def test_symlinks_inside_the_preset_dir_and_a_symlinked_root_are_fine(conf: Path, tmp_path: Path):
    make_run(conf, tmp_path / "run", [])
    real = tmp_path / "real"
    (real / "preset/shared").mkdir(parents=True)
    (tmp_path / "user").symlink_to(real, target_is_directory=True)  # GENART_PRESETS_DIR a link
    (real / "preset/alias").symlink_to(real / "preset/shared", target_is_directory=True)
    argv = ["save", str(tmp_path / "run"), "--dir", str(tmp_path / "user/preset")]
    assert main([*argv, "--name", "alias/p"]) == 0
    assert (real / "preset/shared/p.yaml").is_file()


def test_the_write_is_atomic_and_leaves_no_temporary_file(conf: Path, tmp_path: Path) -> None:
    make_run(conf, tmp_path / "run", [])
    assert save(tmp_path / "run", tmp_path / "user") == 0
    assert save(tmp_path / "run", tmp_path / "user", "--force") == 0
    assert os.listdir(tmp_path / "user/preset") == ["p.yaml"]


def test_a_link_to_another_preset_is_replaced_not_followed(conf: Path, tmp_path: Path, capsys):
    make_run(conf, tmp_path / "run", [])
    preset = tmp_path / "user/preset"
    preset.mkdir(parents=True)
    (preset / "p.yaml").symlink_to(preset / "q.yaml")  # dangling for now: exists() is False
    assert save(tmp_path / "run", tmp_path / "user") == 2
    assert "already exists" in capsys.readouterr().err and not (preset / "q.yaml").exists()
    (preset / "q.yaml").write_text("# @package _global_\nsteps: 3\n")
    assert save(tmp_path / "run", tmp_path / "user", "--force") == 0
    assert not (preset / "p.yaml").is_symlink()
    assert (preset / "q.yaml").read_text() == "# @package _global_\nsteps: 3\n"
