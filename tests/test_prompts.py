"""Prompt parsing, templates and the per-view weight rule W_ip = time·pos·size·sel·w."""

import csv
import inspect
import math
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from genart.errors import UserError
from genart.prompt_weights import SizeWeighting, interpolate_positions, size_weights
from genart.prompts import PromptSchedule, parse_prompt, render_template
from tests.conftest import REPO, compose


def views_at(xs, composition=None, sizes=None):
    n = len(xs)
    return SimpleNamespace(
        centres=torch.tensor([[x, 0.0] for x in xs]),
        sizes=torch.tensor(sizes or [0.5] * n),
        pair=torch.full((n,), -1),
        composition=torch.tensor(composition or [False] * n),
    )


def test_parse_prompt_defaults_and_fields():
    assert parse_prompt("a sea") == ("a sea", 1.0, -math.inf)
    assert parse_prompt("a sea:-0.5") == ("a sea", -0.5, -math.inf)
    assert parse_prompt("a sea:2:0.1") == ("a sea", 2.0, 0.1)


@pytest.mark.parametrize("bad", ["sea:abc", "sea:1:x", ":1"])
def test_parse_prompt_refuses_malformed(bad):
    with pytest.raises(UserError, match="prompt"):
        parse_prompt(bad)


def test_suffix_and_several_prompts():
    s = PromptSchedule(text="a sea|a ship:-1", suffix="by James Gurney")
    assert s.texts == ["a sea by James Gurney", "a ship by James Gurney"]
    assert s.signed_weights().tolist() == [1.0, -1.0]


@pytest.mark.parametrize(
    "template, subject, entrance, expected",
    [
        ("{entrance} to the {subject} realm", "heaven", "entrance", "entrance to the heaven realm"),
        (
            "{entrance} to the {subject} realm",
            "The Underworld",
            "gateway",
            "gateway to the Underworld realm",
        ),
        ("{entrance} to {subject}", "El Dorado", "archway", "archway to El Dorado"),
        ("{entrance} to {subject}", "The Shire", "gate", "gate to The Shire"),
    ],
)
def test_render_template(template, subject, entrance, expected):
    assert render_template(template, subject, entrance) == expected


def test_doorway_strings():
    s = PromptSchedule(
        left="heaven",
        right="The Underworld",
        template="{entrance} to the {subject} realm",
        entrance="entrance",
        suffix="by James Gurney",
    )
    assert s.texts == [
        "entrance to the heaven realm by James Gurney",
        "entrance to the Underworld realm by James Gurney",
    ]
    assert all("the The" not in t for t in s.texts)


def test_linear_positional_weights():
    x = torch.tensor([-1.0, 0.0, 1.0, -0.5])
    w = interpolate_positions(x, torch.tensor([-1.0, 1.0]), "linear", 4.0)
    assert torch.allclose(w[:, 0], torch.tensor([1.0, 0.5, 0.0, 0.75]))
    assert torch.allclose(w.sum(1), torch.ones(4))


@pytest.mark.parametrize("mode", ["linear", "cosine", "sigmoid"])
@pytest.mark.parametrize("anchors", [[-1.0, 1.0], [-1.0, 0.0, 1.0], [1.0, -1.0, -0.3, 0.4]])
def test_every_interpolation_is_normalised(mode, anchors):
    x = torch.linspace(-1, 1, 41)
    w = interpolate_positions(x, torch.tensor(anchors), mode, 6.0)
    assert torch.allclose(w.sum(1), torch.ones(41), atol=1e-6)
    assert (w >= 0).all()
    # each anchor dominates at its own position
    for k, a in enumerate(anchors):
        at = interpolate_positions(torch.tensor([a]), torch.tensor(anchors), mode, 6.0)
        assert at[0].argmax() == k


def test_sigmoid_is_symmetric_and_sharp():
    w = interpolate_positions(
        torch.tensor([-1.0, 0.0, 1.0]), torch.tensor([-1.0, 1.0]), "sigmoid", 8.0
    )
    assert torch.allclose(w[1], torch.tensor([0.5, 0.5]))
    assert w[0, 0] > 0.99 and w[2, 1] > 0.99


# catalogue entries whose wording departs from the doorway prompts', and the prompts they render
CATALOGUE_WORDING = {
    "heaven_hell": [
        "entrance to the heaven realm by James Gurney",
        "entrance to the hell realm by James Gurney",
    ],
    "el_dorado_atlantis": [
        "entrance to El Dorado by James Gurney",
        "entrance to Atlantis by James Gurney",
    ],
    "mars_luna": ["airlock door to Mars by James Gurney", "airlock door to Luna by James Gurney"],
    "aaru_ammut": [
        "gateway to the Fields of A'aru, the Egyptian paradise of reeds along the Nile by James Gurney",
        "gateway to the Maw of Ammut, the Egyptian devourer of unworthy hearts by James Gurney",
    ],
}


@pytest.mark.parametrize("entry", sorted(CATALOGUE_WORDING))
def test_catalogue_entries_render_their_own_wording(entry):
    schedule = instantiate(compose([f"+preset=doorways/{entry}"]).prompts, _convert_="all")
    assert schedule.texts == CATALOGUE_WORDING[entry]


def test_size_weighting_is_monotone_with_mean_one_and_leaves_windows_alone():
    sizes = torch.tensor([0.2, 0.5, 0.8, 1.0, 1.0])
    composition = torch.tensor([False, False, False, False, True])
    large = SizeWeighting(power=2.0)(sizes, composition)
    small = size_weights(sizes, -2.0, composition)
    assert (large[:4].diff() > 0).all() and (small[:4].diff() < 0).all()
    for weights in (large, small):
        assert float(weights[:4].mean()) == pytest.approx(1.0)
        assert weights[4] == 1
    assert torch.equal(SizeWeighting()(sizes), torch.ones(5))


def test_unanchored_prompts_weigh_one_everywhere():
    s = PromptSchedule(text="secluded, empty, silent, alone", left="heaven", right="hell")
    pos = s.positional(views_at([-1.0, 0.3, 1.0]))
    assert torch.allclose(pos[:, 0], torch.ones(3))
    assert torch.allclose(pos[:, 1:].sum(1), torch.ones(3))


def test_combined_weight_rule_by_hand():
    """W_ip = time_p · pos_ip · size_i · sel_ip · w_p on a case computed by hand."""
    s = PromptSchedule(
        left="a",
        right="b",
        text="c:-0.5",
        prompts=[{"text": "d", "weight": 2.0, "start": 5, "end": 10}],
        size_weighting=lambda sizes, composition: sizes * 2,  # size(s) = 2s
    )
    v = views_at([-0.5, 1.0], sizes=[0.25, 0.5])
    W, winners = s.weights(step=3, views=v)
    # prompts order: c (everywhere), a (left), b (right), d (time window 5..10)
    expected = torch.tensor(
        [
            [-0.5 * 0.5, 0.75 * 0.5, 0.25 * 0.5, 0.0],
            [-0.5 * 1.0, 0.0, 1.0 * 1.0, 0.0],
        ]
    )
    assert torch.allclose(W, expected)
    assert winners is None
    W7, _ = s.weights(step=7, views=v)
    assert torch.allclose(W7[:, 3], torch.tensor([2 * 0.5, 2 * 1.0]))


def test_composition_prompts_only_on_composition_views():
    s = PromptSchedule(left="a", right="b", composition="a landscape")
    v = views_at([0.0, 0.0], composition=[False, True])
    W, _ = s.weights(0, v)
    assert W[0, 2] == 0 and W[1, 2] == 1  # composition prompt
    assert W[1, :2].abs().sum() == 0  # no positional prompts on a whole-image window


def test_story_phases():
    s = PromptSchedule(
        phases=[{"start": 0, "end": 10, "text": "dawn"}, {"start": 10, "text": "dusk"}]
    )
    v = views_at([0.0])
    assert s.weights(3, v)[0].tolist() == [[1.0, 0.0]]
    assert s.weights(12, v)[0].tolist() == [[0.0, 1.0]]


def test_story_prompts_outside_their_window_never_win():
    """dusk matches better, but before its phase starts only dawn may win (and vice versa)."""
    s = PromptSchedule(
        phases=[{"start": 0, "end": 10, "text": "dawn"}, {"start": 10, "text": "dusk"}]
    )
    sims = torch.tensor([[0.1, 0.9], [0.2, 0.8]])  # (N, P): dusk is every view's best match
    assert s.weights(3, views_at([0.0, 0.5]), sims)[1].tolist() == [0, 0]
    assert s.weights(12, views_at([0.0, 0.5]), sims.flip(1))[1].tolist() == [1, 1]


def test_best_match_group_picks_among_active_prompts_only():
    s = PromptSchedule(
        best_match={"prompts": "sword|cthulhu"},
        prompts=[{"text": "kraken", "start": 5}],
    )
    assert s.texts == ["kraken", "sword", "cthulhu"]
    s.prompts[0] = replace(s.prompts[0], group="best_match")  # a group member with a window
    sims = torch.tensor([[0.9, 0.3, 0.1]])
    W, winners = s.weights(0, views_at([0.0]), sims)
    assert winners.tolist() == [1] and W.tolist() == [[0.0, 1.0, 0.0]]
    W, winners = s.weights(5, views_at([0.0]), sims)
    assert winners.tolist() == [0] and W.tolist() == [[1.0, 0.0, 0.0]]


def test_story_best_match_csv_credits_only_active_prompts(tiny_run, tmp_path):
    """best_match.csv: a phase wins no view at the steps before it starts or after it ends."""
    phases = "prompts.phases=[{start:0,end:2,text:dawn},{start:2,text:dusk}]"
    tiny_run(["prompts=story", "steps=4", phases])
    with (tmp_path / "run" / "stats" / "best_match.csv").open() as f:
        rows = list(csv.DictReader(f))
    won = {(int(r["step"]), r["prompt"].split()[0]): int(r["views_won"]) for r in rows}
    # stats rows carry the step done: steps 1-2 optimised at steps 0-1 (dawn), 3-4 at 2-3 (dusk)
    assert [won[step, "dusk"] for step in (1, 2)] == [0, 0]
    assert [won[step, "dawn"] for step in (3, 4)] == [0, 0]
    assert all(won[step, "dawn"] > 0 for step in (1, 2))


@pytest.mark.parametrize("select, expected", [("best", [1, 0]), ("worst", [0, 1])])
def test_best_match_selects_one_prompt(select, expected):
    s = PromptSchedule(best_match={"prompts": "sword|cthulhu", "select": select})
    sims = torch.tensor([[0.3, 0.1], [0.2, 0.4]])
    W, winners = s.weights(0, views_at([0.0, 0.5]), sims)
    assert W[:, 0].tolist() == [float(expected[0]), float(expected[1])]
    assert W.sum(1).tolist() == [1.0, 1.0]
    assert len(winners) == 2


def test_best_match_all_applies_every_prompt():
    s = PromptSchedule(best_match={"prompts": "sword|cthulhu", "select": "all"})
    W, winners = s.weights(0, views_at([0.0]), torch.tensor([[0.3, 0.1]]))
    assert W.tolist() == [[1.0, 1.0]] and winners.tolist() == [0]


PROMPT_OPTIONS = sorted(p.stem for p in (REPO / "conf" / "prompts").glob("*.yaml"))


@pytest.mark.parametrize("option", PROMPT_OPTIONS)
def test_every_prompts_option_declares_every_argument(option):
    """Any prompts.<key>=… the schedule reads can be set on any option, without "+"."""
    node = OmegaConf.load(REPO / "conf" / "prompts" / f"{option}.yaml")
    arguments = set(inspect.signature(PromptSchedule).parameters)
    assert set(node) - {"_target_"} == arguments


def test_panorama_takes_a_centre_prompt_and_sharpness():
    cfg = compose(["prompts=panorama", "prompts.center=x", "prompts.sharpness=2"])
    s = instantiate(cfg.prompts, _convert_="all")
    assert [(p.text, p.anchor) for p in s.prompts] == [
        ("Sunny Clearing in the Enchanted Garden by James Gurney", -1.0),
        ("x by James Gurney", 0.0),
        ("Enchanted Garden by James Gurney", 1.0),
    ]
    assert s.sharpness == 2


@pytest.mark.parametrize("option", PROMPT_OPTIONS)
def test_nested_and_plain_keys_set_on_every_option(option):
    overrides = ["prompts.center=mid", "prompts.best_match.prompts=a|b", "prompts.composition=c"]
    s = instantiate(compose([f"prompts={option}", *overrides]).prompts, _convert_="all")
    texts = [p.text.removesuffix(" by James Gurney") for p in s.prompts]
    assert {"a", "b", "c"} <= set(texts) and any("mid" in t for t in texts)  # doorway: a template


def test_no_prompt_is_a_clear_error():
    with pytest.raises(UserError, match="No prompt"):
        PromptSchedule(text="")
