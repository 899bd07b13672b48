"""CLIP guides: every conf/guide option builds offline; frozen weights, unit embeddings, caching."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from genart.errors import UserError
from genart.guides import CLIPModel, Guide

GUIDE_DIR = Path(__file__).resolve().parents[1] / "conf" / "guide"
SLOW_GUIDES = {"clip_ensemble"}  # two ViT-B builds (~6 s) and a 224-px forward each


def build_guide(name: str, **model_overrides) -> Guide:
    """Instantiate conf/guide/<name>.yaml with pretrained files switched off (architecture only)."""
    cfg = OmegaConf.load(GUIDE_DIR / f"{name}.yaml")
    for node in cfg.models.values():
        if node is not None:
            node.pretrained = None
            for key, value in model_overrides.items():
                node[key] = value
    return instantiate(cfg)


def tiny_config() -> dict:
    """The tiny model's constructor arguments, as plain values."""
    config = OmegaConf.to_container(OmegaConf.load(GUIDE_DIR / "clip_tiny.yaml").models.tiny)
    del config["_target_"]
    return config


def tiny_model(**kwargs) -> CLIPModel:
    return build_guide("clip_tiny", **kwargs).models["tiny"]


@pytest.fixture(scope="module")
def tiny() -> CLIPModel:
    return tiny_model()


def guide_params():
    for path in sorted(GUIDE_DIR.glob("*.yaml")):
        marks = [pytest.mark.slow] if path.stem in SLOW_GUIDES else []
        yield pytest.param(path.stem, marks=marks, id=path.stem)


@pytest.mark.parametrize("name", guide_params())
def test_every_guide_config_builds_and_embeds(name):
    guide = build_guide(name)
    pixels = torch.rand(2, 3, guide.input_size, guide.input_size)
    images, texts = guide.encode_image(pixels), guide.encode_text(["a red door", "a cave"])
    assert len(images) == len(texts) == len(guide.names) == len(guide.model_weights)
    for image, text in zip(images, texts, strict=True):
        assert image.shape == (2, text.shape[1]) and text.shape[0] == 2
        torch.testing.assert_close(image.norm(dim=-1), torch.ones(2))
    assert not any(p.requires_grad for p in guide.parameters())


def test_pretrained_configs_name_their_files():
    for path in GUIDE_DIR.glob("*.yaml"):
        for node in OmegaConf.load(path).models.values():
            assert "weights" not in node  # the file node is `pretrained`; `weight` is the share
            if node.pretrained is not None:
                spec = node.pretrained
                assert spec.path is None and spec.hf_repo and spec.filename


def test_null_model_is_skipped():
    cfg = OmegaConf.load(GUIDE_DIR / "clip_tiny.yaml")
    cfg.models.off = None
    guide = instantiate(cfg)
    assert guide.names == ["tiny"]
    with pytest.raises(UserError, match="switched off"):
        Guide({"tiny": None})


def test_same_init_seed_gives_identical_models(tiny):
    other = tiny_model()
    for (name, a), (_, b) in zip(
        tiny.state_dict().items(), other.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    different = tiny_model(init_seed=1)
    assert not torch.equal(tiny.model.visual.conv1.weight, different.model.visual.conv1.weight)


def test_init_seed_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    tiny_model()
    torch.testing.assert_close(torch.rand(3), expected)


def test_encode_image_unit_norm_and_shape(tiny):
    embeds = tiny.encode_image(torch.rand(5, 3, 64, 64))  # (N, D)
    assert embeds.shape == (5, 64) and embeds.dtype == torch.float32
    torch.testing.assert_close(embeds.norm(dim=-1), torch.ones(5))


def test_gradient_reaches_pixels_not_weights(tiny):
    pixels = torch.rand(3, 3, 64, 64, requires_grad=True)
    tiny.encode_image(pixels).sum().backward()
    assert pixels.grad is not None and pixels.grad.abs().sum() > 0
    for name, param in tiny.named_parameters():
        assert not param.requires_grad and param.grad is None, name


def test_model_stays_in_eval_mode(tiny):
    Guide({"tiny": tiny}).train()
    assert not tiny.training and not tiny.model.training


def test_text_cache_is_result_neutral(tiny):
    first = tiny.encode_text(["a door", "a forest"])  # (P, D)
    again = tiny.encode_text(["a door", "a forest"])
    assert torch.equal(first, again)
    tiny.encode_text(["something new entirely"])
    assert torch.equal(tiny.encode_text(["a door", "a forest"]), first)
    fresh = tiny_model().encode_text(["a forest", "a door"])  # cold cache, other order
    assert torch.equal(fresh, first.flip(0))
    torch.testing.assert_close(first.norm(dim=-1), torch.ones(2))


def test_ensemble_of_one_equals_the_model(tiny):
    guide = Guide({"tiny": tiny})
    pixels = torch.rand(4, 3, 64, 64)
    assert guide.names == ["tiny"] and guide.model_weights == [1.0] and guide.input_size == 64
    assert torch.equal(guide.encode_image(pixels)[0], tiny.encode_image(pixels))
    assert torch.equal(guide.encode_text(["x"])[0], tiny.encode_text(["x"]))


def test_views_of_another_size_are_resized(tiny):
    big = torch.rand(2, 3, 128, 128)
    small = torch.nn.functional.interpolate(
        big, size=(64, 64), mode="bilinear", align_corners=False, antialias=True
    )
    torch.testing.assert_close(tiny.encode_image(big), tiny.encode_image(small))


def test_guide_input_size_is_the_largest_model(tiny):
    model_config = tiny_config()["model_config"]
    model_config["vision_cfg"]["image_size"] = 32
    small = CLIPModel("genart-tiny-32", model_config=model_config, init_seed=0)
    guide = Guide({"tiny": tiny, "small": small})
    assert guide.input_size == 64 and small.input_size == 32
    embeds = guide.encode_image(torch.rand(3, 3, 64, 64))
    assert [e.shape for e in embeds] == [(3, 64), (3, 64)]


def test_registering_an_architecture_is_idempotent(tiny):
    import open_clip

    config = tiny_config()["model_config"]
    before = len(open_clip.factory._MODEL_CONFIG_PATHS)
    CLIPModel("genart-tiny", model_config=config, init_seed=0)
    assert len(open_clip.factory._MODEL_CONFIG_PATHS) == before
    with pytest.raises(UserError, match="built-in"):
        CLIPModel("ViT-B-32", model_config=config)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_loads_an_open_clip_state_dict(tiny, tmp_path, suffix):
    source = tiny_model(init_seed=7).model.state_dict()
    path = tmp_path / f"tiny{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in source.items()}, path)
    else:
        torch.save(source, path)
    loaded = tiny_model(pretrained={"path": str(path)}).model.state_dict()
    assert loaded.keys() == source.keys()
    for key, value in source.items():
        assert torch.equal(loaded[key], value), key
    assert not torch.equal(
        loaded["visual.conv1.weight"], tiny.model.state_dict()["visual.conv1.weight"]
    )


def test_pretrained_node_without_path_is_a_clear_error(tmp_path):
    config = tiny_config()
    with pytest.raises(UserError, match=r"guide\.models\.<name>\.pretrained\.path=FILE"):
        CLIPModel(**{**config, "pretrained": {"path": None, "hf_repo": "x/y"}})
    with pytest.raises(UserError, match="not found"):
        CLIPModel(**{**config, "pretrained": {"path": str(tmp_path / "missing.pt")}})


def test_unknown_tag_is_a_clear_error():
    config = tiny_config()
    with pytest.raises(UserError, match="no tag"):
        CLIPModel(**config, tag="openai")


def test_a_prompt_longer_than_the_context_warns_once_naming_it():
    guide = build_guide("clip_tiny")
    long = "a red door " * 30  # 90 tokens + start and end markers: 15 past the 77
    with pytest.warns(UserWarning) as caught:
        guide.encode_text([long, "a cave", long])
        guide.encode_text([long])
    assert len(caught) == 1
    message = str(caught[0].message)
    assert '"a red door a red door' in message and "..." in message and len(message) < 300
    assert "77 tokens" in message and "last 15 tokens" in message


def test_a_prompt_that_fits_does_not_warn():
    guide = build_guide("clip_tiny")
    fits = " ".join(["sea"] * 75)  # exactly the 75 tokens of text CLIP reads
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        guide.encode_text([fits])
