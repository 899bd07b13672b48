"""Aesthetic scorers (conf/scorer): each tiny one scores into its range, deterministically; NIMA's
expectation against its formula; published checkpoint layouts load and wrong ones are refused in
one paragraph; result.json names the scorer; the default score is today's `score_image`."""

from __future__ import annotations

import json
import math

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from genart import pretrained as W
from genart.errors import UserError
from genart.scorers import LAIONAestheticScorer, NIMAScorer, aesthetic_mlp, expected_rating
from tests.conftest import REPO, TINY, compose, run_tiny

SCORERS = sorted(p.stem for p in (REPO / "conf/scorer").glob("*.yaml"))
TINY_SCORERS = ["nima_tiny", "laion_tiny"]


def build(name: str):
    return instantiate(compose([*TINY, f"scorer={name}"]).scorer)


def images(n: int = 2) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(5)
    return [torch.rand(1, 3, 48, 80, generator=gen) for _ in range(n)]  # (1, 3, H, W) in [0, 1]


def tiny_nima(**kwargs) -> NIMAScorer:
    return NIMAScorer(backbone="test_efficientnet", input_size=64, name="nima_tiny", **kwargs)


# ---------------------------------------------------------------- every config


@pytest.mark.parametrize("name", SCORERS)
def test_every_scorer_declares_its_name_and_range(name):
    node = OmegaConf.load(REPO / "conf/scorer" / f"{name}.yaml")
    lo, hi = node.range
    assert node.name == name and lo < hi and "_target_" in node


def test_the_scorer_group_covers_the_three_scorers_and_their_tiny_versions():
    assert SCORERS == ["clip_prompt", "laion", "laion_tiny", "nima", "nima_tiny"]


# ---------------------------------------------------------------- tiny scorers


@pytest.mark.parametrize("name", TINY_SCORERS)
def test_a_tiny_scorer_scores_into_its_range_and_is_deterministic(name):
    first, second = build(name), build(name)
    a, b = images()
    lo, hi = first.range
    assert first.name == name and (lo, hi) == (1.0, 10.0)
    assert lo <= first.score(a) <= hi and lo <= first.score(b) <= hi
    assert first.score(a) == second.score(a)  # same seed, same weights: same score
    assert first.score(a) != first.score(b)


def test_building_a_tiny_scorer_leaves_the_global_rng_alone():
    torch.manual_seed(3)
    expected = torch.rand(3)
    torch.manual_seed(3)
    build("nima_tiny")
    assert torch.equal(torch.rand(3), expected)


def test_the_real_nima_architecture_builds_without_weights_and_scores_into_range():
    cfg = compose([*TINY, "scorer=nima", "scorer.pretrained=null"])
    scorer = instantiate(cfg.scorer)
    assert (
        scorer.input_size == 224 and scorer.classifier[2].in_features == 512
    )  # pyiqa's VGG16 head
    assert 1 <= scorer.score(images(1)[0]) <= 10


# ---------------------------------------------------------------- NIMA's formula


def test_nima_score_is_the_expected_rating_of_its_softmax():
    """Σ i·p_i over i = 1..10, p the softmax of the head's logits (here its bias alone)."""
    scorer = tiny_nima(init_seed=0)
    logits = [0.3, -1.0, 2.0, 0.5, 0.0, 1.5, -0.5, 0.7, 3.0, -2.0]
    with torch.no_grad():
        scorer.classifier[2].weight.zero_()
        scorer.classifier[2].bias.copy_(torch.tensor(logits))
    total = sum(math.exp(z) for z in logits)
    by_hand = sum(i * math.exp(z) / total for i, z in enumerate(logits, start=1))
    assert scorer.score(images(1)[0]) == pytest.approx(by_hand, rel=1e-6)
    assert float(expected_rating(torch.eye(10)[[0]])) == 1.0  # all mass on the lowest bucket
    assert float(expected_rating(torch.full((1, 10), 0.1))) == pytest.approx(5.5)


# ---------------------------------------------------------------- checkpoints


def test_a_pyiqa_layout_nima_checkpoint_loads(tmp_path):
    """pyiqa's published NIMA files are torch.save({"params": state_dict})."""
    source = tiny_nima(init_seed=7)
    path = tmp_path / "NIMA_tiny_ava.pth"
    torch.save({"params": source.state_dict()}, path)
    loaded = tiny_nima(init_seed=0, pretrained={"path": str(path)})
    for key, value in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    image = images(1)[0]
    assert loaded.score(image) == source.score(image) != tiny_nima(init_seed=0).score(image)


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_a_laion_mlp_state_dict_loads(tmp_path, fmt):
    """The published sac+logos+ava1-l14-linearMSE.pth is a bare state_dict of `layers`."""
    from safetensors.torch import save_file

    torch.manual_seed(11)
    mlp = aesthetic_mlp(64)
    path = tmp_path / f"mlp.{fmt}"
    if fmt == "pth":
        torch.save(mlp.state_dict(), path)
    else:
        save_file(mlp.state_dict(), str(path))
    scorer = build("laion_tiny")
    loaded = LAIONAestheticScorer(clip=scorer.clip, pretrained={"path": str(path)})
    image = images(1)[0]
    with torch.no_grad():
        expected = float(mlp.eval()(scorer.embed(image))[0, 0])
    assert loaded.score(image) == pytest.approx(expected)


def test_a_checkpoint_for_another_backbone_is_refused_in_one_paragraph(tmp_path):
    other = NIMAScorer(backbone="test_resnet", input_size=64, init_seed=0)
    path = tmp_path / "resnet_nima.pth"
    torch.save({"params": other.state_dict()}, path)
    with pytest.raises(UserError) as err:
        tiny_nima(pretrained={"path": str(path)})
    message = str(err.value)
    assert "\n" not in message and "scorer.pretrained.path" in message
    assert "missing keys" in message and "unexpected keys" in message


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"params": Exploit()}, path)
    with pytest.raises(UserError, match="Refusing to load"):
        tiny_nima(pretrained={"path": str(path)})


class Exploit:
    """Unpickling this would call print; genart's loader must never get that far."""

    def __reduce__(self):
        return (print, ("unpickled!",))


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GENART_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("GENART_OFFLINE", "1")
    monkeypatch.setattr(W, "is_reachable", lambda *a: pytest.fail("no network when offline"))


@pytest.mark.parametrize(
    "name, key", [("nima", "scorer.pretrained.path"), ("laion", "scorer.clip.pretrained.path")]
)
def test_offline_without_the_file_names_the_key(offline_cache, name, key):
    cfg = compose([*TINY, f"scorer={name}"])
    with pytest.raises(W.PretrainedNotFound) as err:
        W.resolve_all_pretrained(cfg)
    message = str(err.value)
    assert "\n" not in message and f"python -m genart {key}=/path/to/file" in message


def test_laion_mlp_offline_without_the_file_names_its_key(offline_cache, tmp_path):
    clip = tmp_path / "clip.bin"
    clip.write_bytes(b"x")
    cfg = compose([*TINY, "scorer=laion", f"scorer.clip.pretrained.path={clip}"])
    with pytest.raises(
        W.PretrainedNotFound, match=r"sac\+logos\+ava1-l14-linearMSE\.pth.*scorer\.pretrained\.path"
    ):
        W.resolve_all_pretrained(cfg)


# ---------------------------------------------------------------- runs and result.json


def test_a_tiny_run_records_its_scorer_in_result_json(tmp_path):
    score = run_tiny(tmp_path / "run", ["steps=2", "scorer=nima_tiny"])
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["scorer"] == {"name": "nima_tiny", "range": [1, 10]}
    assert result["score"] == pytest.approx(score) and 1 <= score <= 10


def test_the_default_score_is_score_image_over_the_configs_views(tmp_path, monkeypatch):
    import genart.render

    calls = []
    real = genart.render.score_image

    def spy(run, image, targets, step, n_views, seed):
        calls.append((run, image, targets, step, n_views, seed))
        return real(run, image, targets, step, n_views, seed)

    monkeypatch.setattr(genart.render, "score_image", spy)
    score = run_tiny(tmp_path / "run", ["steps=2"])
    ((run, image, targets, step, n_views, seed),) = calls
    assert (step, n_views, seed) == (1, 32, 1234)  # the last step; score.views and score.seed
    assert score == real(run, image, targets, step, n_views, seed)
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["scorer"] == {"name": "clip_prompt", "range": [-1, 1]}
    assert -1 <= result["score"] <= 1


def test_a_config_without_a_scorer_node_scores_as_before(tmp_path):
    """A run saved before scorers existed resumes with clip_prompt (its config has no `scorer`)."""
    from types import SimpleNamespace

    from genart.render import build_scorer

    cfg = OmegaConf.create({"score": {"views": 8, "seed": 3}})
    run = SimpleNamespace(steps=5)
    scorer = build_scorer(cfg, run, [], torch.device("cpu"))
    assert (scorer.name, scorer.views, scorer.seed) == ("clip_prompt", 8, 3)


def test_known_keys_accept_scorer_and_still_refuse_a_stray_key():
    from genart.checks import check_known_keys

    check_known_keys(compose([*TINY, "scorer=nima_tiny"]))
    with pytest.raises(UserError, match=r"\+scorerz=1 sets a top-level key.*Did you mean scorer"):
        check_known_keys(compose([*TINY, "+scorerz=1"]))
