"""genart.tools.presets: a saved run composes back to the same config; save/list user errors exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from genart.safety import check_presets
from genart.tools.presets import main, user_preset_dirs

# A tiny primary config of our own (the real conf/ is written concurrently): a group with extra
# keys (big has `codebook`, small has not), a nested group, a group only added with `+`, a loss
# dict, interpolations, a pretrained node, a genart model node (pixels) and `resume`, which a
# preset must not freeze.
TINY_CONF = {
    "config": """\
defaults:
  - generator: big
  - guide: single
  - _self_
seed: 0
steps: 10
size: [64, 32]
threads: null
resume: null
losses:
  tone: {_target_: kornia.filters.GaussianBlur2d, kernel_size: [3, 3], sigma: [1.0, 1.0]}
  edge: {_target_: kornia.filters.Sobel}
frames: ${hydra:runtime.output_dir}/frames
""",
    "generator/big": """\
_target_: torch.optim.Adam
size: ${size}
codebook: 16
pretrained: {path: /models/big.ckpt, url: null}
""",
    "generator/small": "_target_: torch.optim.SGD\nsize: ${size}\n",
    "generator/pixels": """\
_target_: genart.generators.pixels.PixelGenerator
size: ${size}
pretrained: {path: null, url: https://example.org/pixels.ckpt}
""",
    "guide/single": "defaults:\n  - models@models.a: m1\nmodels: {}\n",
    "guide/models/m1": "_target_: kornia.augmentation.RandomAffine\ndegrees: 5\n",
    "guide/models/m2": "_target_: kornia.augmentation.RandomAffine\ndegrees: 10\nextra: 1\n",
    "guide/models/m3": "_target_: kornia.augmentation.RandomPerspective\n",
    "init/image": "defaults:\n  - sub@sub: a\npath: x.png\n",
    "init/sub/a": "blur: 0.0\n",
    "init/sub/b": "blur: 2.0\n",
}
RUN = ["generator=small", "+init=image", "guide/models@guide.models.a=m2", "steps=7"]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GENART_PRESETS_DIR", raising=False)
    monkeypatch.delenv("GENART_ALLOW_TARGETS", raising=False)


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    root = tmp_path / "conf"
    for name, text in TINY_CONF.items():
        (root / f"{name}.yaml").parent.mkdir(parents=True, exist_ok=True)
        (root / f"{name}.yaml").write_text(text)
    return root


def make_run(conf: Path, run_dir: Path, overrides: list[str]) -> dict:
    """Write .hydra/ as a Hydra run does (unresolved job config + hydra node), result.json and
    final.png as a finished run does."""
    with initialize_config_dir(str(conf), version_base="1.3"):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    (run_dir / ".hydra").mkdir(parents=True)
    job = {k: v for k, v in OmegaConf.to_container(cfg).items() if k != "hydra"}
    (run_dir / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(job))
    (run_dir / ".hydra" / "hydra.yaml").write_text(OmegaConf.to_yaml({"hydra": cfg.hydra}))
    info = {"status": "ok", "device": "cpu", "precision": "fp32", "threads": 4}
    (run_dir / "result.json").write_text(json.dumps(info))
    (run_dir / "final.png").write_bytes(b"")  # a finished run; save only checks it is there
    return job


def compose_preset(conf: Path, user: Path, name: str) -> dict:
    with initialize_config_dir(str(conf), version_base="1.3"):
        cfg = compose("config", [f"+preset={name}", f"hydra.searchpath=[{user.as_uri()}]"])
    return OmegaConf.to_container(cfg)


def without(cfg: dict, *keys: str) -> dict:
    return {k: v for k, v in cfg.items() if k not in keys}


def test_saved_preset_composes_to_the_run_config(conf: Path, tmp_path: Path) -> None:
    job = make_run(conf, tmp_path / "run", [*RUN, "init/sub=b", "resume=/old/run"])
    user = tmp_path / "user"
    argv = ["save", str(tmp_path / "run"), "--name", "sub/frozen", "--dir", str(user / "preset")]
    assert main(argv) == 0
    text = (user / "preset" / "sub" / "frozen.yaml").read_text()
    assert text.startswith("# @package _global_\n")
    for note in ("# source run:", "# genart: 0.1.0, git commit:", "# description: frozen from run"):
        assert note in text
    assert "device=cpu, precision=fp32, threads=4" in text
    assert "- /init: image" in text and "- override /generator: small" in text
    assert "- override /init/sub: b" in text  # nested in an added group: an override
    assert "resume" not in text.split("defaults:")[1]
    composed = compose_preset(conf, user, "sub/frozen")
    assert composed["threads"] == 4  # null in the config: the count the run recorded is frozen
    assert without(composed, "resume") == without({**job, "threads": 4}, "resume")
    assert composed["resume"] is None  # never frozen: the default comes back
    assert "codebook" not in composed["generator"]  # starts from small.yaml, not big.yaml


@pytest.mark.parametrize(("ran", "frozen"), [("bf16", "bf16"), ("fp32", "fp32"), (None, "auto")])
def test_the_precision_auto_chose_is_frozen(ran, frozen, conf: Path, tmp_path: Path) -> None:
    """auto depends on the CPU: the preset says what the run used, so genart.app never takes it
    for one saved before saves froze it (those say auto); a run that recorded none stays auto."""
    from genart.moved_keys import saved_with_auto_precision

    make_run(conf, tmp_path / "run", ["+precision=auto"])
    info = {"status": "ok", "device": "cpu", **({"precision": ran} if ran else {})}
    (tmp_path / "run/result.json").write_text(json.dumps(info))
    user = tmp_path / "user"
    assert main(["save", str(tmp_path / "run"), "--name", "p", "--dir", str(user / "preset")]) == 0
    assert compose_preset(conf, user, "p")["precision"] == frozen
    assert saved_with_auto_precision(user / "preset/p.yaml") == (frozen == "auto")


def test_deleted_keys_come_back_as_null(conf: Path, tmp_path: Path) -> None:
    job = make_run(conf, tmp_path / "run", ["~losses.edge"])
    user = tmp_path / "user"
    assert (
        main(["save", str(tmp_path / "run"), "--name", "nolose", "--dir", str(user / "preset")])
        == 0
    )
    assert "null here: losses.edge" in (user / "preset" / "nolose.yaml").read_text()
    composed = compose_preset(conf, user, "nolose")
    assert composed["losses"] == {**job["losses"], "edge": None}  # genart skips null losses


def test_pretrained_files_are_listed_and_the_preset_passes_the_safety_check(
    conf: Path, tmp_path: Path
) -> None:
    make_run(conf, tmp_path / "run", [])
    user = tmp_path / "user"
    assert main(["save", str(tmp_path / "run"), "--name", "w", "--dir", str(user / "preset")]) == 0
    assert (
        "# pretrained: generator.pretrained.path = /models/big.ckpt"
        in (user / "preset/w.yaml").read_text()
    )
    check_presets(["+preset=w"], [user, conf], main_config=conf / "config.yaml")


def test_a_run_from_before_pretrained_saves_as_a_preset_with_pretrained(
    conf: Path, tmp_path: Path
) -> None:
    """Its config says `weights:`; the preset says `pretrained:`, keeps the run's value and lists
    no key as deleted (the group's own `pretrained` would otherwise look deleted)."""
    job = make_run(conf, tmp_path / "run", ["generator=pixels"])
    job["generator"]["weights"] = {"path": "/models/old.ckpt", "url": None}
    del job["generator"]["pretrained"]
    (tmp_path / "run/.hydra/config.yaml").write_text(OmegaConf.to_yaml(job))
    user = tmp_path / "user"
    assert (
        main(["save", str(tmp_path / "run"), "--name", "old", "--dir", str(user / "preset")]) == 0
    )
    text = (user / "preset/old.yaml").read_text()
    assert "# pretrained: generator.pretrained.path = /models/old.ckpt" in text
    assert "weights" not in text and "null here" not in text
    generator = compose_preset(conf, user, "old")["generator"]
    assert generator["pretrained"] == {"path": "/models/old.ckpt", "url": None}
    assert "weights" not in generator


def test_force_is_needed_to_replace(
    conf: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    make_run(conf, tmp_path / "run", [])
    args = ["save", str(tmp_path / "run"), "--name", "p", "--dir", str(tmp_path / "preset")]
    assert main([*args, "--description", "first"]) == 0
    assert main([*args, "--description", "second"]) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "--force" in err and "Traceback" not in err
    assert "first" in (tmp_path / "preset/p.yaml").read_text()
    assert main([*args, "--description", "second", "--force"]) == 0
    assert "# description: second" in (tmp_path / "preset/p.yaml").read_text()


@pytest.mark.parametrize(
    "name", ["../evil", "/etc/evil", "a//b", "a/../b", ".hidden", "-x", "a b", "", "a/", "x.y"]
)
def test_unsafe_names_are_refused(name: str, conf: Path, tmp_path: Path, capsys) -> None:
    make_run(conf, tmp_path / "run", [])
    assert (
        main(["save", str(tmp_path / "run"), f"--name={name}", "--dir", str(tmp_path / "p")]) == 2
    )
    assert "Unsafe preset name" in capsys.readouterr().err
    assert not (tmp_path / "p").exists() and not (tmp_path / "evil.yaml").exists()


@pytest.mark.parametrize("name", ["doorways/left", "my-preset_2", "plain.yaml"])
def test_safe_names_are_accepted(name: str, conf: Path, tmp_path: Path) -> None:
    make_run(conf, tmp_path / "run", [])
    assert main(["save", str(tmp_path / "run"), "--name", name, "--dir", str(tmp_path / "p")]) == 0
    assert (tmp_path / "p" / f"{name.removesuffix('.yaml')}.yaml").is_file()


def test_user_errors_exit_2_without_traceback(tmp_path: Path, capsys) -> None:
    assert main(["save", str(tmp_path / "nowhere"), "--name", "x"]) == 2
    err = capsys.readouterr().err
    assert "is not a genart run" in err and "Traceback" not in err and err.count("\n") == 1
    assert main(["save", str(tmp_path)]) == 2  # argparse: --name missing
    assert main(["list", "--dir", str(tmp_path / "missing")]) == 2


def test_list_shows_names_and_descriptions(
    conf: Path, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_run(conf, tmp_path / "run", [])
    user = tmp_path / "user"
    main(["save", str(tmp_path / "run"), "--name", "d/saved", "--dir", str(user / "preset")])
    (user / "preset/hand.yaml").write_text("# @package _global_\n\n# Hand-written.\nsteps: 3\n")
    monkeypatch.setenv("GENART_PRESETS_DIR", str(user))
    capsys.readouterr()
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert f"{user / 'preset'}:" in out
    assert [line.split()[0] for line in out.splitlines() if "— " in line].count("d/saved") == 1
    assert "d/saved" in out and "— frozen from run run" in out
    assert "hand" in out and "— Hand-written." in out


def test_user_preset_dirs_reads_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("GENART_PRESETS_DIR", f"{tmp_path / 'a'}:{tmp_path / 'b'}:")
    assert user_preset_dirs() == [tmp_path / "a", tmp_path / "b"]
