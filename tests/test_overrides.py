"""Prompts as users type them: genart quotes free text for Hydra, and leaves Hydra's syntax alone."""

from __future__ import annotations

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser

from genart.overrides import as_typed, quote
from tests.conftest import compose

TRICKY = ["it's", "a\\", "a\\'b", 'x " y', "50% off!", "stórm, oil; a=b (c) [d] #e", "'", "\\\\"]


@pytest.mark.parametrize("text", TRICKY)
def test_quote_round_trips_through_hydras_parser(text):
    assert OverridesParser.create().parse_override(f"k={quote(text)}").value() == text


@pytest.mark.parametrize(
    "typed, text",
    [
        (
            "prompts.text=a lighthouse in a storm, oil on canvas",
            "a lighthouse in a storm, oil on canvas",
        ),
        ("prompts.text=stórm", "stórm"),
        ("prompts.text=it's 50% off!", "it's 50% off!"),
        ("prompts.text=1984", "1984"),  # a year is a text, not an int
        ("prompts.text=a calm sea:1|boats:-0.5", "a calm sea:1|boats:-0.5"),  # Hydra reads it as is
        ("prompts.text='already, quoted'", "already, quoted"),
    ],
)
def test_a_single_run_takes_a_prompt_as_typed(typed, text):
    (fixed,) = as_typed([typed])
    assert compose([fixed]).prompts.text == text


def test_other_keys_are_quoted_only_where_hydra_cannot_read_them():
    assert compose(as_typed(["init.image=café.png"])).init.image == "café.png"
    untouched = ["size=[64,32]", "seed=3", "prompts.text=null", "prompts.text=choice(a,b)"]
    assert as_typed(untouched) == untouched
    assert compose(as_typed(["size=[64,32]"])).size == [64, 32]


def test_a_sweep_still_splits_wordings_at_commas():
    swept = as_typed(["prompts.left=forest,kelp forest", "-m"])
    assert swept == ["prompts.left=forest,kelp forest", "-m"]
    accents = as_typed(["prompts.left=forêt, désert !", "--multirun"])[0]
    override = OverridesParser.create().parse_override(accents)
    assert override.is_sweep_override()
    jobs = [f"prompts.left={v}" for v in override.sweep_string_iterator()]  # as the sweeper does
    assert [compose(["+preset=doorway", job]).prompts.left for job in jobs] == ["forêt", "désert !"]
    kept = "prompts.left='forest, at dawn',desert"
    assert as_typed([kept, "-m"])[0] == kept
    assert as_typed(["seed=range(0,8)", "-m"]) == ["seed=range(0,8)", "-m"]


def test_no_arguments_no_change():
    assert as_typed([]) == [] and as_typed(["-m"]) == ["-m"]


def test_flag_values_are_not_overrides():
    argv = ["--config-dir", "/tmp/a=b", "--cfg", "job", "prompts.text=x, y"]
    assert as_typed(argv) == ["--config-dir", "/tmp/a=b", "--cfg", "job", "prompts.text='x, y'"]


@pytest.mark.parametrize(
    "override, key",
    [
        ("a.b=1", "a.b"),
        ("+a.b=x=y", "a.b"),
        ("++a=1", "a"),
        ("~a.b", "a.b"),
        ("precision", "precision"),
    ],
)
def test_key_of_is_the_key_an_override_sets(override, key):
    from genart.overrides import key_of

    assert key_of(override) == key
