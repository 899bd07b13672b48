"""The pretrained-file resolver (path → cache → download → error), the move of old `weights:`
nodes to `pretrained:`, and the safe checkpoint loader."""

from __future__ import annotations

import builtins
import collections
import hashlib
import os
import subprocess
import sys
import types

import pytest
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from genart import pretrained as W
from genart.errors import UserError
from genart.generators.vqgan import VQGANGenerator
from tests.conftest import REPO, compose

HEIBOX = (
    "https://heibox.uni-heidelberg.de/d/a7530b09fed84f80a887/files/?p=%2Fckpts%2Flast.ckpt&dl=1"
)
VQGAN_SPEC = {
    "path": None,
    "url": HEIBOX,
    "filename": "vqgan_imagenet_f16_16384.ckpt",
    "size_mb": 980,
}
HF_SPEC = {"path": None, "hf_repo": "org/model", "filename": "model.bin"}
TINY = dict(
    size=[32, 32],
    n_embed=8,
    embed_dim=4,
    ddconfig=dict(
        double_z=False,
        z_channels=4,
        resolution=32,
        in_channels=3,
        out_ch=3,
        ch=32,
        ch_mult=[1, 2],
        num_res_blocks=1,
        attn_resolutions=[],
        dropout=0.0,
    ),
)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty genart cache and HF hub cache; no offline flags set."""
    import huggingface_hub.constants

    monkeypatch.setenv("GENART_CACHE", str(tmp_path / "genart"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    for name in W.OFFLINE_ENV:
        monkeypatch.delenv(name, raising=False)
    return tmp_path / "genart"


def no_network(*args, **kwargs):
    raise AssertionError("the resolver must not touch the network here")


# ---------------------------------------------------------------- resolve


@pytest.mark.parametrize("flag", W.OFFLINE_ENV)
def test_offline_names_key_url_and_size(cache, monkeypatch, flag):
    monkeypatch.setenv(flag, "1")
    monkeypatch.setattr(W, "is_reachable", no_network)
    with pytest.raises(W.PretrainedNotFound) as err:
        W.resolve_pretrained(VQGAN_SPEC, "generator.pretrained")
    message = str(err.value)
    assert "\n" not in message
    assert HEIBOX in message and "980 MB" in message and flag in message
    assert "python -m genart generator.pretrained.path=/path/to/file" in message
    assert isinstance(err.value, UserError)


def test_offline_hf_names_repo_and_file(cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(W, "is_reachable", no_network)
    with pytest.raises(W.PretrainedNotFound, match="repo org/model, file model.bin"):
        W.resolve_pretrained(HF_SPEC, "guide.models.vitb32.pretrained.path")


def test_unreachable_host_is_offline(cache, monkeypatch):
    monkeypatch.setattr(W, "is_reachable", lambda host, port: False)
    monkeypatch.setattr(W, "download", no_network)
    with pytest.raises(W.PretrainedNotFound, match="heibox.uni-heidelberg.de:443 is unreachable"):
        W.resolve_pretrained(VQGAN_SPEC, "generator.pretrained")


def test_explicit_path_wins(cache, tmp_path):
    (cache / "vqgan_imagenet_f16_16384.ckpt").parent.mkdir(parents=True)
    (cache / "vqgan_imagenet_f16_16384.ckpt").write_bytes(b"cached")
    mine = tmp_path / "mine.ckpt"
    mine.write_bytes(b"mine")
    assert W.resolve_pretrained({**VQGAN_SPEC, "path": str(mine)}, "generator.pretrained") == mine


def test_missing_explicit_path_is_named(cache, monkeypatch):
    monkeypatch.setattr(W, "is_reachable", no_network)
    with pytest.raises(W.PretrainedNotFound, match=r"generator\.pretrained\.path=/no/such\.ckpt"):
        W.resolve_pretrained({**VQGAN_SPEC, "path": "/no/such.ckpt"}, "generator.pretrained")


def test_cache_hit(cache, monkeypatch):
    monkeypatch.setattr(W, "is_reachable", no_network)
    cache.mkdir(parents=True)
    (cache / "vqgan_imagenet_f16_16384.ckpt").write_bytes(b"x")
    found = W.resolve_pretrained(VQGAN_SPEC, "generator.pretrained")
    assert found == cache / "vqgan_imagenet_f16_16384.ckpt"


def test_hf_cache_hit(cache, tmp_path, monkeypatch):
    monkeypatch.setattr(W, "is_reachable", no_network)
    repo = tmp_path / "hf" / "models--org--model"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    (repo / "snapshots" / "abc123" / "model.bin").write_bytes(b"x")
    assert (
        W.resolve_pretrained(HF_SPEC, "g.pretrained") == repo / "snapshots" / "abc123" / "model.bin"
    )


def test_cache_name_from_share_link():
    assert W.cache_name({"url": HEIBOX}) == "last.ckpt"
    assert W.cache_name({"url": "https://example.org/a/b/model.pt?x=1"}) == "model.pt"
    assert W.cache_name(VQGAN_SPEC) == "vqgan_imagenet_f16_16384.ckpt"


@pytest.mark.parametrize("good_hash", [True, False])
def test_download_is_checked_and_atomic(cache, tmp_path, monkeypatch, good_hash):
    source = tmp_path / "remote.bin"
    source.write_bytes(b"weights" * 1000)
    digest = hashlib.sha256(source.read_bytes()).hexdigest() if good_hash else "0" * 64
    spec = {"path": None, "url": source.as_uri(), "filename": "w.bin", "sha256": digest}
    monkeypatch.setattr(W, "is_reachable", lambda host, port: True)
    if good_hash:
        assert W.resolve_pretrained(spec, "g.pretrained").read_bytes() == source.read_bytes()
    else:
        with pytest.raises(W.PretrainedNotFound, match="sha256 mismatch"):
            W.resolve_pretrained(spec, "g.pretrained")
    assert not list(cache.glob("*.part"))


def test_import_does_not_load_torch():
    code = "import sys, genart.pretrained; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------- walk a config


def test_find_pretrained_nodes():
    cfg = {
        "generator": {"pretrained": {"path": None, "url": "u"}},
        "guide": {"models": {"a": {"pretrained": {"hf_repo": "r"}}, "b": {"pretrained": None}}},
        "extra": [{"pretrained": {"path": "p"}}],
        "note": {"pretrained": "not a dict", "weights": {"path": "an old node"}},
    }
    found = dict(W.find_pretrained_nodes(cfg))
    assert found == {
        "generator.pretrained": {"path": None, "url": "u"},
        "guide.models.a.pretrained": {"hf_repo": "r"},
        "extra.0.pretrained": {"path": "p"},
    }


def guide_models(path) -> list:
    return [m for m in OmegaConf.load(path).models.values() if m is not None]


# Model classes newer than genart 0.1: no saved preset or run ever gave them a `weights:` node.
NEWER_THAN_0_1 = {"genart.generators.sdxl.SDXLGenerator"}  # issue 14


def test_conf_model_nodes_say_pretrained_and_are_known():
    """conf/'s model classes are exactly MODEL_TARGETS (a class missing there would keep an old
    preset's `weights:`) and the newer ones, and each node says `pretrained:`, never `weights:`."""
    nodes = [OmegaConf.load(p) for p in sorted((REPO / "conf/generator").glob("*.yaml"))]
    nodes += [m for p in sorted((REPO / "conf/guide").glob("*.yaml")) for m in guide_models(p)]
    assert W.MODEL_TARGETS <= {n._target_ for n in nodes} <= W.MODEL_TARGETS | NEWER_THAN_0_1
    assert all("pretrained" in n and "weights" not in n for n in nodes)


def old_preset(root, name: str, text: str) -> str:
    """Write preset/NAME.yaml under root the way genart ≤ 0.1 saved it; the searchpath override."""
    (root / "preset").mkdir(parents=True, exist_ok=True)
    (root / "preset" / f"{name}.yaml").write_text(f"# @package _global_\n{text}")
    return f"hydra.searchpath=[{root.as_uri()}]"


def saved_by_main() -> str:
    """The generator and guide nodes of the preset saved by main (read, never changed)."""
    saved = OmegaConf.load(REPO / "tests/fixtures/saved_by_main/preset/doorway_tiny.yaml")
    assert "weights" in saved.generator and "weights" in saved.guide.models.tiny
    defaults = ["override /generator: vqgan_tiny", "override /guide: clip_tiny", "_self_"]
    part = OmegaConf.masked_copy(saved, ["generator", "guide"])
    return "defaults:\n" + "".join(f"  - {d}\n" for d in defaults) + OmegaConf.to_yaml(part)


def test_an_old_preset_composes_passes_the_checks_and_instantiates_once_upgraded(tmp_path):
    from genart.checks import check_config
    from genart.safety import check_presets, conf_dir

    searchpath = old_preset(tmp_path, "old_tiny", saved_by_main())
    check_presets(["+preset=old_tiny"], [conf_dir(), tmp_path])
    cfg = compose(["+preset=old_tiny", searchpath, "size=[64,32]"])
    check_config(cfg)
    assert "weights" in cfg.generator and "pretrained" in cfg.generator  # Hydra merged both
    with pytest.raises(InstantiationException, match="weights"):
        instantiate(cfg.generator)
    assert W.upgrade_weights_key(cfg) == ["generator.weights", "guide.models.tiny.weights"]
    assert "weights" not in cfg.generator and cfg.generator.pretrained is None
    cfg = W.resolve_all_pretrained(cfg)
    assert instantiate(cfg.generator)().shape == (1, 3, 32, 64)
    guide = instantiate(cfg.guide)
    assert guide.names == ["tiny"] and guide.model_weights == [1.0]
    assert W.upgrade_weights_key(cfg) == []  # once moved, nothing left to move


def test_a_resumed_run_config_from_main_instantiates_once_upgraded():
    """Resume reads an old run's .hydra/config.yaml as it is (no composing): a plain load."""
    saved = OmegaConf.load(REPO / "tests/fixtures/saved_by_main/killed_run/.hydra/config.yaml")
    assert W.upgrade_weights_key(saved) == ["generator.weights", "guide.models.tiny.weights"]
    assert instantiate(saved.generator).size == (64, 32)


OLD_VQGAN = "generator:\n  weights: {path: /saved/vqgan.ckpt, url: https://example.org/v.ckpt}\n"
OLD_CLIP = "guide:\n  models:\n    vitb32:\n      weights: {path: /saved/clip.bin}\n"


@pytest.mark.parametrize(
    "text, typed, key, expected",
    [
        (
            OLD_VQGAN,
            [],
            "generator",
            {"path": "/saved/vqgan.ckpt", "url": "https://example.org/v.ckpt"},
        ),
        ("generator:\n  weights: null\n", [], "generator", None),  # saved random init stays so
        (OLD_CLIP, [], "guide.models.vitb32", {"path": "/saved/clip.bin"}),
        (
            OLD_VQGAN,
            ["generator.pretrained.path=/typed.ckpt"],
            "generator",
            {"path": "/typed.ckpt", "url": "https://example.org/v.ckpt"},
        ),
        (OLD_VQGAN, ["generator.pretrained=null"], "generator", None),
    ],
    ids=["saved-path", "saved-null", "guide-path", "typed-path-wins", "typed-null-wins"],
)
def test_the_saved_value_moves_to_pretrained_unless_typed(tmp_path, text, typed, key, expected):
    searchpath = old_preset(tmp_path, "old", text)
    cfg = compose(["generator=vqgan", "guide=clip_vitb32", "+preset=old", searchpath, *typed])
    W.upgrade_weights_key(cfg, typed)
    node = OmegaConf.select(cfg, key)
    assert "weights" not in node
    assert OmegaConf.to_container(node)["pretrained"] == expected


def test_an_old_explicit_path_is_the_one_named_when_missing(tmp_path, monkeypatch):
    monkeypatch.setattr(W, "is_reachable", no_network)
    cfg = compose(["generator=vqgan", "+preset=old", old_preset(tmp_path, "old", OLD_VQGAN)])
    W.upgrade_weights_key(cfg)
    with pytest.raises(
        W.PretrainedNotFound, match=r"generator\.pretrained\.path=/saved/vqgan\.ckpt"
    ):
        W.resolve_all_pretrained(cfg)


def test_only_genart_model_nodes_move():
    cfg = {
        "losses": {"x": {"_target_": "genart.losses.PromptLoss", "weights": {"path": "p"}}},
        "guide": {"models": {"a": {"_target_": "genart.guides.CLIPModel", "weight": 0.5}}},
        "generator": {"_target_": "genart.generators.pixels.PixelGenerator", "weights": None},
    }
    assert W.upgrade_weights_key(cfg) == ["generator.weights"]
    assert cfg["generator"] == {
        "_target_": "genart.generators.pixels.PixelGenerator",
        "pretrained": None,
    }
    assert (
        cfg["losses"]["x"]["weights"] == {"path": "p"}
        and cfg["guide"]["models"]["a"]["weight"] == 0.5
    )


@pytest.mark.parametrize(
    "arg, expected",
    [
        ("generator.weights.path=/x", "generator.pretrained.path=/x"),
        ("generator.weights=null", "generator.pretrained=null"),
        ("~generator.weights", "~generator.pretrained"),
        (
            "++guide.models.vitb32.weights.path=/w.bin",
            "++guide.models.vitb32.pretrained.path=/w.bin",
        ),
        ("guide.models.vitb16.weights.hf_repo=a/b", "guide.models.vitb16.pretrained.hf_repo=a/b"),
        (
            "generator.weights.path=/models/weights.ckpt",
            "generator.pretrained.path=/models/weights.ckpt",
        ),
        ("guide.models.vitb32.weight=0.5", None),  # the ensemble share keeps its name
        ("losses.prompt.weight=2", None),
        ("generator.weightsx=1", None),
        ("guide.weights=1", None),
        ("steps=5", None),
    ],
)
def test_moved_override(arg, expected):
    assert W.moved_override(arg) == expected


# ---------------------------------------------------------------- checkpoints


def fake_lightning(mp: pytest.MonkeyPatch) -> type:
    """A ModelCheckpoint class pickled under Lightning's real module path (test-local modules)."""
    for name in ("pytorch_lightning", "pytorch_lightning.callbacks"):
        mp.setitem(sys.modules, name, types.ModuleType(name))
    module = types.ModuleType("pytorch_lightning.callbacks.model_checkpoint")
    cls = type("ModelCheckpoint", (), {"__module__": module.__name__})
    module.ModelCheckpoint = cls
    mp.setitem(sys.modules, module.__name__, module)
    return cls


def adam_state(*shapes: tuple[int, ...]) -> dict:
    """An optimizer state_dict as torch 1.7 wrote it (int steps)."""
    state = {
        i: {"step": 1000, "exp_avg": torch.randn(s), "exp_avg_sq": torch.rand(s)}
        for i, s in enumerate(shapes)
    }
    group = {"lr": 4.5e-6, "betas": (0.5, 0.9), "eps": 1e-8, "weight_decay": 0, "amsgrad": False}
    return {"state": state, "param_groups": [{**group, "params": list(state)}]}


def write_lightning_ckpt(path, state_dict) -> None:
    """Write a checkpoint in the on-disk layout of pytorch-lightning ~1.0 (taming's last.ckpt)."""
    with pytest.MonkeyPatch.context() as mp:
        model_checkpoint = fake_lightning(mp)
        callback_state = {"best_model_score": torch.tensor(0.21), "best_model_path": "/x/e.ckpt"}
        checkpoint = {
            "epoch": 12,
            "global_step": 361000,
            "pytorch-lightning_version": "1.0.8",
            "callbacks": {model_checkpoint: callback_state},
            "optimizer_states": [adam_state((4, 3)), adam_state((2,))],
            "lr_schedulers": [],
            "state_dict": state_dict,
        }
        torch.save(checkpoint, path)


def tiny_state_with_loss(seed: int) -> collections.OrderedDict:
    """A tiny VQGAN's state_dict plus discriminator/LPIPS keys, as VQModel saves it."""
    state = VQGANGenerator(**TINY, init_seed=seed).model.state_dict()
    state["loss.discriminator.main.0.weight"] = torch.randn(8, 3, 4, 4)
    state["loss.perceptual_loss.net.slice1.0.bias"] = torch.randn(8)
    return state


def test_lightning_checkpoint_loads_into_vqgan(tmp_path):
    path = tmp_path / "last.ckpt"
    state = tiny_state_with_loss(seed=7)
    write_lightning_ckpt(path, state)
    assert "pytorch_lightning.callbacks.model_checkpoint" in path.read_bytes().decode("latin-1")

    checkpoint = W.load_checkpoint(path)
    assert checkpoint["epoch"] == 12 and checkpoint["lr_schedulers"] == []
    (callback,) = checkpoint["callbacks"]
    assert callback is W.LightningModelCheckpoint
    assert float(checkpoint["callbacks"][callback]["best_model_score"]) == pytest.approx(0.21)

    gen = VQGANGenerator(**TINY, pretrained={"path": str(path)}, init_seed=0)
    for key, value in gen.model.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert not any(p.requires_grad for p in gen.model.parameters())


def test_checkpoint_for_another_config_is_a_user_error(tmp_path):
    path = tmp_path / "last.ckpt"
    write_lightning_ckpt(path, tiny_state_with_loss(seed=0))
    with pytest.raises(UserError, match="shape mismatches, e.g. quantize.embedding.weight"):
        VQGANGenerator(**{**TINY, "n_embed": 16}, pretrained={"path": str(path)})


class Exploit:
    """Unpickling this runs `call(arg)`."""

    def __init__(self, call, arg):
        self.call, self.arg = call, arg

    def __reduce__(self):
        return self.call, (self.arg,)


@pytest.mark.parametrize("call", [os.system, builtins.exec])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, call):
    marker = tmp_path / "pwned"
    command = f"touch {marker}" if call is os.system else f"open({str(marker)!r}, 'w')"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "callbacks": Exploit(call, command)}, path)
    with pytest.raises(UserError, match=r"refuses to unpickle arbitrary code") as err:
        W.load_checkpoint(path)
    assert call.__name__ in str(err.value) and str(path) in str(err.value)
    assert not marker.exists()


@pytest.mark.parametrize(
    "content, why",
    [
        (b"<!DOCTYPE html><html><body>Not found</body></html>", "HTML"),
        (b"", "empty"),
        (bytes(range(256)) * 16, "not a PyTorch checkpoint"),
    ],
)
def test_not_a_checkpoint(tmp_path, content, why):
    path = tmp_path / "last.ckpt"
    path.write_bytes(content)
    with pytest.raises(UserError, match=why):
        W.load_checkpoint(path)


def test_checkpoint_must_be_a_dict(tmp_path):
    path = tmp_path / "t.pt"
    torch.save(torch.zeros(3), path)
    with pytest.raises(UserError, match="holds a Tensor"):
        W.load_checkpoint(path)
