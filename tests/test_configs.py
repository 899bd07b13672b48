"""Every config option builds and works; every preset composes, its own values winning."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from tests.conftest import REPO, compose

GROUPS = ["generator", "guide", "cutouts", "prompts", "losses", "optimizer", "callbacks", "logger"]
CALLBACK_GROUPS = {"callbacks", "logger"}  # dicts of named callbacks, built by one helper
OPTIONS = [(g, p.stem) for g in GROUPS for p in sorted((REPO / "conf" / g).glob("*.yaml"))]
PRESETS = sorted(
    str(p.relative_to(REPO / "conf/preset").with_suffix(""))
    for p in (REPO / "conf/preset").rglob("*.yaml")
)
SLOW_OPTIONS = {("guide", "clip_ensemble")}  # two ViT-B builds (~18 s); covered in test_guides
# A real SDXL's architecture lives in its repo's config.json files: without the weights folder,
# building one means a random 2.6 B-parameter UNet. Each composes here, and the same loading code
# builds from a saved tiny repo in tests/test_sdxl_generator.py (…saved_repo_loads…).
FROM_A_REPO = {("generator", name) for name in ("sdxl", "sdxl_turbo", "sdxl_lcm")}
# SDXL base's real architecture with random weights (3.5 B parameters, ~13 GB while built): for
# genart.tools.guided_bench, which builds it in its own process; here it only composes.
BENCH_ONLY = {("generator", "sdxl_random")}


WEIGHT_KEYS = ("weights", "pretrained")  # a checkpoint to load; null: random weights


def without_weights(node):
    """Real-weight configs build their architecture with random weights (nothing to download)."""
    container = OmegaConf.to_container(node, resolve=True)

    def strip(value):
        if isinstance(value, dict):
            return {k: (None if k in WEIGHT_KEYS else strip(v)) for k, v in value.items()}
        return [strip(v) for v in value] if isinstance(value, list) else value

    return OmegaConf.create(strip(container))


def prompt_words(prompts) -> list[str]:
    """What a prompts node asks for, one entry per prompt: subjects and texts, without weights."""
    from genart.prompts import parse_prompt, split_prompts

    node = OmegaConf.to_container(prompts, resolve=True)
    subjects = [node.get(side) for side in ("left", "center", "right") if node.get(side)]
    subjects += [anchor["subject"] for anchor in node.get("anchors") or ()]
    words = [s.removeprefix("the ").removeprefix("The ") for s in subjects]  # "the the" fix
    specs = [
        node.get("text"),
        node.get("composition"),
        (node.get("best_match") or {}).get("prompts"),
    ]
    specs += [phase["text"] for phase in node.get("phases") or ()]
    specs += [prompt["text"] for prompt in node.get("prompts") or ()]
    words += [parse_prompt(spec)[0] for spec in split_prompts([s for s in specs if s])]
    return words + [parse_prompt(spec)[0] for spec in node.get("images") or ()]


def check_schedule(prompts) -> None:
    """The node builds a PromptSchedule with one prompt per word it sets, each word in it."""
    from genart.prompts import PromptSchedule

    schedule = instantiate(prompts, _convert_="all")
    assert isinstance(schedule, PromptSchedule)
    words = prompt_words(prompts)
    assert len(schedule.texts) == len(words), (schedule.texts, words)
    for word in words:
        assert any(word.lower() in t.lower() for t in schedule.texts), (word, schedule.texts)
    suffix = prompts.get("suffix") or ""
    texts = [p.text for p in schedule.prompts if not p.is_image]
    assert all(t.endswith(suffix) for t in texts), (suffix, texts)


def check_built(group: str, built, node) -> None:
    """What each group's option must do once built (a leaf of the real run, not just exist)."""
    if group == "generator":
        from genart.generators.base import Generator

        assert isinstance(built, Generator) and tuple(built.size) == (64, 48)
        image = built()  # (1, 3, H, W) in [0, 1]
        assert image.shape == (1, 3, 48, 64) and 0 <= image.min() and image.max() <= 1
        assert image.std() > 0 and all(p.requires_grad for p in built.theta())
    elif group == "guide":
        s = built.input_size
        images, texts = built.encode_image(torch.rand(2, 3, s, s)), built.encode_text(["a", "b c"])
        assert len(images) == len(texts) == len(built.model_weights) == len(node.models)
        for e, t in zip(images, texts, strict=True):
            assert e.shape == (2, t.shape[1]) and t.shape[0] == 2
            assert torch.allclose(e.norm(dim=-1), torch.ones(2), atol=1e-4)
            assert torch.allclose(t.norm(dim=-1), torch.ones(2), atol=1e-4)
    elif group == "cutouts":
        views = built(torch.rand(1, 3, 48, 64), 0)
        composition = node.composition.count if node.get("composition") else 0
        assert views.pixels.shape == (node.cutn + composition, 3, 32, 32)
        assert int(views.composition.sum()) == composition
        assert bool((views.pair >= 0).any()) == bool(node.mirrored)
        assert views.centres.abs().max() <= 1
    elif group == "prompts":
        check_schedule(node)
    elif group == "losses":
        from genart.losses import Loss

        assert set(built) == {k for k, v in node.items() if v is not None}
        for name, loss in built.items():
            assert isinstance(loss, Loss) and loss.weight == node[name].get("weight", 1.0)
    elif group == "optimizer":
        theta = [torch.zeros(1, requires_grad=True)]
        optimizer = built(params=theta)
        assert isinstance(optimizer, torch.optim.Optimizer)
        assert (
            optimizer.param_groups[0]["lr"] == node.lr
            and optimizer.param_groups[0]["params"] == theta
        )
    elif group in CALLBACK_GROUPS:
        from genart.callbacks import Callback

        assert list(built) == [k for k, v in node.items() if v is not None]
        assert all(isinstance(callback, Callback) for callback in built.values())


@pytest.mark.parametrize("group, option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_option_composes_and_instantiates(group, option):
    if (group, option) in SLOW_OPTIONS:
        pytest.skip("built in tests/test_guides.py (slow tier)")
    cfg = compose([f"{group}={option}", "size=[64,48]"])
    if (group, option) in FROM_A_REPO:
        assert cfg[group].pretrained.hf_repo and cfg[group].pretrained.path is None
        pytest.skip("its architecture comes from the repo folder: built in test_sdxl_generator")
    if (group, option) in BENCH_ONLY:
        assert cfg[group].architecture.unet.block_out_channels == [320, 640, 1280]
        pytest.skip("SDXL's full size: built by genart.tools.guided_bench in its own process")
    if not cfg[group]:  # empty: render.build adds no logger
        assert (group, option) == ("logger", "none"), "only logger=none may switch its group off"
        return
    node = without_weights(cfg[group])
    if group == "losses" or group in CALLBACK_GROUPS:
        built = {k: instantiate(v) for k, v in node.items() if v is not None}
    elif group == "cutouts":
        built = instantiate(node, cut_size=32)
    else:
        built = instantiate(node, _convert_="all")
    check_built(group, built, node)


def leaves(node: dict, prefix: str = ""):
    """(dotted key, value) of every leaf a YAML mapping sets; lists count as leaves."""
    for key, value in node.items():
        if isinstance(value, dict) and value:
            yield from leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_composes(preset):
    cfg = compose([f"+preset={preset}", "generator=vqgan_tiny", "guide=clip_tiny"])
    path = REPO / "conf/preset" / f"{preset}.yaml"
    own = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    own.pop("defaults", None)
    composed = OmegaConf.to_container(cfg, resolve=False)
    for key, value in leaves(own):  # the preset's own values win over everything it extends
        found = composed
        for part in key.split("."):
            found = found[part]
        assert found == value, f"{preset} sets {key}={value!r}, the composed config has {found!r}"
    check_schedule(cfg.prompts)
    header = path.read_text().splitlines()
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
    assert len(PRESETS) >= 33 + 3  # the catalogue, doorway, panorama, composition_details


def test_an_invalid_override_is_refused():
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException):
        compose(["no_such_option=1"])


COMPOSE_FROM_INSTALL = """
import conf, genart
from hydra import compose, initialize_config_module
with initialize_config_module(config_module="conf", version_base="1.3"):
    cfg = compose(config_name="config", overrides=["+preset=doorways/forest_kelp_forest"])
print(conf.__file__, genart.__file__, cfg.prompts.anchors[1].subject, sep="\\n")
"""


@pytest.mark.slow
def test_the_wheel_ships_every_config_and_composes_outside_the_repo(tmp_path):
    """`pkg://conf` works only if conf/ is a package whose YAML files are in the built wheel."""
    source = tmp_path / "src"  # built from a copy: a build writes build/ and *.egg-info/
    for name in ("genart", "conf", "hydra_plugins"):
        shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, source / name)
    pip = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index"]
    out = subprocess.run(
        [*pip, "-q", "-w", str(tmp_path / "dist"), str(source)], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("genart-*.whl")
    shipped = set(zipfile.ZipFile(wheel).namelist())
    configs = {str(p.relative_to(REPO)) for p in (REPO / "conf").rglob("*.yaml")}
    assert "conf/__init__.py" in shipped and configs <= shipped, sorted(configs - shipped)[:5]
    assert "hydra_plugins/genart_launcher/joblib_safe.py" in shipped  # Hydra finds launchers there
    zipfile.ZipFile(wheel).extractall(tmp_path / "site")
    elsewhere = tmp_path / "elsewhere"  # not the repo: only the installed files can be found
    elsewhere.mkdir()
    out = subprocess.run(
        [sys.executable, "-c", COMPOSE_FROM_INSTALL],
        cwd=elsewhere,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tmp_path / "site")},
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    conf_file, genart_file, subject = out.stdout.splitlines()[-3:]
    site = str(tmp_path / "site")
    assert conf_file.startswith(site) and genart_file.startswith(site)
    assert subject == "kelp forest"  # a catalogue preset, nested two folders deep, composed
