"""The doorway's two sides on SDXL: MultiDiffusion windows (genart.windows) each conditioned on
the prompt mix at their centre (PromptConditioning.at). Layout and fusion are checked on plain
tensors, the positional conditioning on stand-in encodings, and the whole path by a spy on the tiny
UNet's inputs in a real `+preset=doorway generator=sdxl_tiny` run and in a direct blend."""

from __future__ import annotations

import zlib

import pytest
import torch

from genart.conditioning import PromptConditioning, TextEmbeds
from genart.errors import UserError
from genart.prompts import PromptSchedule
from genart.windows import Windows, check_windows
from tests.conftest import run_tiny
from tests.sdxl_helpers import one_thread, tiny_generator  # noqa: F401 (a fixture)

LAYOUTS = [  # (image width px, window px, stride px, VAE factor)
    (64, 32, 16, 2),  # sdxl_tiny's: 3 windows
    (1024, 512, 256, 8),  # SDXL's: 3 windows
    (1200, 512, 256, 8),  # the last window flush with the edge, not on the stride's grid
    (520, 512, 256, 8),  # one column wider than a window: 2 windows, almost on top of each other
    (1024, 512, 512, 8),  # stride = width: abutting windows
    (1024, 64, 8, 8),  # one-latent stride: MultiDiffusion's panoramas use 8 latents
]


# ---------------------------------------------------------------- the layout


@pytest.mark.parametrize("image, width, stride, f", LAYOUTS)
def test_every_latent_column_is_covered(image, width, stride, f):
    latent_width = image // f
    covered = torch.zeros(latent_width)
    for x0, x1 in Windows(width, stride, f).layout(latent_width):
        assert 0 <= x0 < x1 <= latent_width
        covered[x0:x1] += 1
    assert covered.min() >= 1


@pytest.mark.parametrize("image, width, stride, f", LAYOUTS)
def test_windows_are_the_width_asked_and_the_last_is_flush(image, width, stride, f):
    windows = Windows(width, stride, f)
    layout = windows.layout(image // f)
    size = min(width // f, image // f // 2)  # at most half the canvas
    assert all(x1 - x0 == size for x0, x1 in layout) and len(layout) >= 2
    assert windows.pixel_widths(image // f) == [size * f] * len(layout)
    assert layout[-1][1] == image // f
    starts = [x0 for x0, _ in layout]
    assert starts[0] == 0 and all(
        0 < b - a <= max(1, size * stride // width)
        for a, b in zip(starts, starts[1:], strict=False)
    )


def test_sdxl_tiny_puts_three_windows_on_a_64_px_canvas():
    assert Windows(32, 16, 2).layout(32) == [(0, 16), (8, 24), (16, 32)]


@pytest.mark.parametrize("latent_width", [16, 64])
def test_a_canvas_no_wider_than_a_window_gets_windows_half_its_width(latent_width):
    windows = Windows(512, 256, 8)  # 64 latent columns
    half, quarter = latent_width // 2, latent_width // 4
    assert windows.layout(latent_width) == [(0, half), (quarter, quarter + half), (half, 2 * half)]
    assert windows.centres(latent_width) == [-0.5, 0.0, 0.5]


def test_a_canvas_one_column_wide_is_one_window():
    assert Windows(512, 256, 8).layout(1) == [(0, 1)]


@pytest.mark.parametrize("image, width, stride, f", LAYOUTS)
def test_centres_are_where_genarts_views_put_them(image, width, stride, f):
    """The convention of Views.centres[:, 0] (cutouts.box_geometry): x in [-1, 1], −1 left."""
    from genart.cutouts import box_geometry

    windows = Windows(width, stride, f)
    layout = windows.layout(image // f)
    boxes = torch.tensor([[x0 * f, 0, x1 * f, 64] for x0, x1 in layout], dtype=torch.float64)
    expected, _ = box_geometry(boxes, 64, image)
    assert windows.centres(image // f) == pytest.approx(expected[:, 0].tolist(), abs=1e-12)
    centres = windows.centres(image // f)
    assert centres == sorted(centres) and centres[0] < 0 < centres[-1]  # left to right


# ---------------------------------------------------------------- the fusion


@pytest.mark.parametrize("image, width, stride, f", LAYOUTS)
def test_the_blend_of_a_constant_is_the_constant(image, width, stride, f):
    latents = torch.randn(2, 4, 3, image // f)
    fused = Windows(width, stride, f).blend(latents, lambda crop, j: torch.full_like(crop, 0.7))
    assert torch.allclose(fused, torch.full_like(latents, 0.7))


@pytest.mark.parametrize("image, width, stride, f", LAYOUTS)
def test_the_blend_is_each_columns_mean_over_its_windows(image, width, stride, f):
    """Window j answers j + 1: each column gets the mean of the windows that cover it."""
    windows = Windows(width, stride, f)
    latents = torch.randn(1, 4, 2, image // f)
    fused = windows.blend(latents, lambda crop, j: torch.full_like(crop, j + 1.0))
    for column in range(image // f):
        over = [
            j + 1.0 for j, (x0, x1) in enumerate(windows.layout(image // f)) if x0 <= column < x1
        ]
        assert torch.allclose(fused[..., column], torch.tensor(sum(over) / len(over)))


def test_the_blend_gives_each_window_its_own_columns():
    windows = Windows(32, 16, 2)
    latents = torch.arange(32.0).expand(1, 4, 3, 32)
    seen = {}

    def call(crop, j):
        seen[j] = crop
        return crop

    assert torch.equal(windows.blend(latents, call), latents)  # identity windows: the input
    for j, (x0, x1) in enumerate(windows.layout(32)):
        assert torch.equal(seen[j], latents[..., x0:x1])


def test_the_blend_is_differentiable():
    """CLIP guidance backpropagates through it: d(Σ blend)/d latents, with call = crop · s_j."""
    windows = Windows(32, 16, 2)
    scales = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    latents = torch.randn(1, 2, 2, 32, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda z: windows.blend(z, lambda crop, j: crop * scales[j]), (latents,)
    )


# ---------------------------------------------------------------- the conditioning at x


def stand_in_encode(text: str) -> TextEmbeds:
    """Random embeddings fixed by the text, shaped as encode_text's (no model to build)."""
    rng = torch.Generator().manual_seed(zlib.crc32(text.encode()))
    return TextEmbeds(torch.randn(1, 77, 8, generator=rng), torch.randn(1, 4, generator=rng))


def conditioning(**prompts) -> PromptConditioning:
    return PromptConditioning(PromptSchedule(**prompts), stand_in_encode, True)


DOORWAY = {"left": "heaven", "right": "hell", "template": "{subject}"}


def test_anchored_prompts_make_the_conditioning_positional():
    assert conditioning(**DOORWAY).positional
    assert not conditioning(text="sea|sky").positional


def test_at_the_left_edge_only_the_left_prompt_conditions_and_at_the_right_only_the_right():
    cond = conditioning(**DOORWAY)
    left, right = cond.embeds("heaven"), cond.embeds("hell")
    assert cond.at(0, -1.0) is left and cond.at(0, 1.0) is right  # bit for bit: weights 1 and 0
    assert torch.equal(cond.at(0, -1.0).hidden, left.hidden)
    assert torch.equal(cond.at(0, 1.0).pooled, right.pooled)


@pytest.mark.parametrize("x", [-0.9, -0.5, -0.1, 0.0, 0.3, 0.75, 0.999])
def test_in_between_the_sides_blend_linearly_in_x(x):
    """Linear interpolation (doorway's): the right prompt's share is (x + 1) / 2."""
    cond = conditioning(**DOORWAY)
    left, right = cond.embeds("heaven"), cond.embeds("hell")
    share = (x + 1) / 2
    at = cond.at(0, x)
    assert torch.allclose(at.hidden, (1 - share) * left.hidden + share * right.hidden, atol=1e-6)
    assert torch.allclose(at.pooled, (1 - share) * left.pooled + share * right.pooled, atol=1e-6)


def test_the_conditioning_is_continuous_across_x():
    cond = conditioning(**DOORWAY)
    xs = torch.linspace(-1, 1, 201).tolist()
    hidden = torch.stack([cond.at(0, x).hidden for x in xs])  # (201, 1, 77, 8)
    steps = (hidden[1:] - hidden[:-1]).abs().amax(dim=(1, 2, 3))
    span = (cond.embeds("hell").hidden - cond.embeds("heaven").hidden).abs().max()
    assert steps.max() <= span / 100 + 1e-6  # a 1/100 step in x moves it by at most 1/100


@pytest.mark.parametrize("x", [-1.0, -0.5, 0.0, 0.25, 1.0])
def test_swapping_left_and_right_mirrors_the_conditioning(x):
    cond = conditioning(**DOORWAY)
    swapped = conditioning(**{**DOORWAY, "left": "hell", "right": "heaven"})
    assert torch.allclose(swapped.at(0, x).hidden, cond.at(0, -x).hidden, atol=1e-6)
    assert torch.allclose(swapped.at(0, x).pooled, cond.at(0, -x).pooled, atol=1e-6)


def test_unanchored_prompts_condition_everywhere_and_weights_count():
    cond = conditioning(**DOORWAY, text="sea:2")
    sea, left, right = cond.embeds("sea"), cond.embeds("heaven"), cond.embeds("hell")
    at_left = cond.at(0, -1.0)
    assert torch.allclose(at_left.hidden, (2 * sea.hidden + left.hidden) / 3, atol=1e-6)
    middle = (2 * sea.hidden + 0.5 * left.hidden + 0.5 * right.hidden) / 3
    assert torch.allclose(cond.at(0, 0.0).hidden, middle, atol=1e-6)


def test_prompts_over_time_and_the_empty_prompt_at_x():
    phases = [{"text": "sea", "start": 0, "end": 2}]
    cond = conditioning(left="heaven:-1", right="hell", template="{subject}", phases=phases)
    assert cond.at(0, -1.0) is cond.embeds("sea")  # the negative left prompt is not positive
    assert cond.at(3, -1.0) is cond.embeds("")  # nothing positive there after the phase ends


def test_the_whole_canvas_conditioning_keeps_its_meaning():
    """__call__ still averages every prompt by its weight alone (the pipeline's parity path)."""
    cond = conditioning(**DOORWAY)
    whole = cond(0).positive
    mean = (cond.embeds("heaven").hidden + cond.embeds("hell").hidden) / 2
    assert torch.allclose(whole.hidden, mean, atol=1e-6)


def test_at_reads_nothing_back_once_its_positions_are_known(monkeypatch):
    """Positions are computed once per x (the generator does it for its windows when built);
    after that at() and blend() read no tensor back to the host (tests/test_no_sync.py)."""
    from tests.test_no_sync import Reads

    cond = conditioning(**DOORWAY, text="sea")
    windows = Windows(32, 16, 2)
    centres = windows.centres(32)
    cond.cache_positions(centres)
    reads = Reads(monkeypatch)
    reads.strict = True
    try:
        for step in range(3):
            pooled = [cond.at(step, x).pooled for x in centres]
            windows.blend(torch.zeros(1, 4, 4, 32), lambda crop, j, p=pooled: crop + p[j].mean())
    finally:
        reads.strict = False


# ---------------------------------------------------------------- the config


def test_check_windows_passes_good_values_and_off():
    assert check_windows(None, 8) is None
    windows = check_windows({"width": 512, "stride": 256}, 8)
    assert (windows.width, windows.stride, windows.scale_factor) == (512, 256, 8)


BAD = [
    ({"width": 512.5, "stride": 256}, "generator.windows.width=512.5"),
    ({"width": "512", "stride": 256}, "generator.windows.width=512"),
    ({"width": True, "stride": 8}, "generator.windows.width=True"),
    ({"width": 512, "stride": 0}, "generator.windows.stride=0"),
    ({"width": 500, "stride": 256}, "multiples of the VAE's factor 8"),
    ({"width": 512, "stride": 100}, "generator.windows.stride=100"),
    ({"width": 256, "stride": 512}, "wider than generator.windows.width=256"),
    ({"width": 512}, "give both sizes"),
    ({"width": 512, "stride": 256, "overlap": 8}, "give both sizes"),
    (512, "give both sizes"),
]


@pytest.mark.parametrize("node, says", BAD)
def test_bad_windows_are_one_paragraph_naming_the_key(node, says):
    with pytest.raises(UserError) as err:
        check_windows(node, 8)
    message = str(err.value)
    assert says in message and "generator.windows" in message and "\n" not in message


def test_sdxl_configs_say_how_wide_their_windows_are():
    from tests.conftest import compose

    for name, expected in [
        ("sdxl", 512),
        ("sdxl_turbo", 512),
        ("sdxl_lcm", 512),
        ("sdxl_tiny", 32),
    ]:
        node = compose([f"generator={name}"]).generator.windows
        windows = check_windows(dict(node), 8 if expected == 512 else 2)
        assert windows.width == expected and windows.stride == expected // 2


# ---------------------------------------------------------------- the generator


@pytest.mark.usefixtures("one_thread")
def test_the_generator_has_windows_only_for_anchored_prompts():
    plain = tiny_generator("a red fox", "size=[64,32]")
    assert plain.windows is None  # one whole-canvas call, as the pipeline makes
    doorway = tiny_generator(DOORWAY, "size=[64,32]")
    assert doorway.windows.layout(32) == [(0, 16), (8, 24), (16, 32)]
    assert set(doorway.windows.centres(32)) <= set(doorway.conditioning.places)  # known already
    off = tiny_generator(DOORWAY, "size=[64,32]", windows=None)
    assert off.windows is None


@pytest.mark.usefixtures("one_thread")
def test_a_canvas_no_wider_than_a_window_still_has_two_sides():
    generator = tiny_generator(DOORWAY, "size=[32,32]")  # 16 latent columns; windows of 32 px
    assert generator.windows.layout(16) == [(0, 8), (4, 12), (8, 16)]
    assert generator.windows.centres(16) == [-0.5, 0.0, 0.5]


@pytest.mark.usefixtures("one_thread")
def test_bad_windows_in_the_config_stop_the_generator():
    with pytest.raises(UserError, match="generator.windows.stride=15"):
        tiny_generator(DOORWAY, "size=[64,32]", "generator.windows.stride=15")


@pytest.mark.usefixtures("one_thread")
def test_a_windows_time_ids_are_its_own_size_without_crop():
    generator = tiny_generator(DOORWAY, "size=[64,32]")
    ids = generator.window_time_ids(32, 48)
    assert torch.equal(ids, torch.tensor([[32.0, 48.0, 0.0, 0.0, 32.0, 48.0]]))
    assert generator.window_time_ids(32, 48) is ids  # cached


# ---------------------------------------------------------------- the spy on the UNet


def spy_on_windows(generator) -> list[dict]:
    """Every UNet call: its latent width, conditioning, time ids and the window it was made for."""
    calls: list[dict] = []
    forward, blend = generator.unet.forward, generator.windows.blend

    def recording(sample, timestep, encoder_hidden_states=None, **kwargs):
        added = kwargs["added_cond_kwargs"]
        calls.append(
            {
                "width": sample.shape[-1],
                "hidden": encoder_hidden_states.detach().clone(),  # (B, 77, D)
                "pooled": added["text_embeds"].detach().clone(),  # (B, D2)
                "time_ids": added["time_ids"].detach().clone(),  # (B, 6)
            }
        )
        return forward(sample, timestep, encoder_hidden_states=encoder_hidden_states, **kwargs)

    def tagging(latents, call):
        def tagged(crop, j):
            start = len(calls)
            eps = call(crop, j)
            for record in calls[start:]:
                record["window"] = j
            return eps

        return blend(latents, tagged)

    generator.unet.forward, generator.windows.blend = recording, tagging
    return calls


def positive_rows(calls: list[dict], window: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(hidden, pooled) of the window's positive side: doorway has no negative prompt, so the
    negative side is SDXL's zeros and every non-zero row is the prompts'."""
    rows = []
    for call in calls:
        if call.get("window") == window:
            rows += [
                (h, p)
                for h, p in zip(call["hidden"], call["pooled"], strict=True)
                if h.abs().sum() > 0
            ]
    return rows


def doorway_run(tmp_path, monkeypatch, left: str, right: str):
    """A real `+preset=doorway generator=sdxl_tiny` run on a 64×32 canvas; its UNet calls."""
    import genart.render

    spied, original = [], genart.render.build

    def build_and_spy(cfg, run):
        original(cfg, run)
        spied.append((run.generator, spy_on_windows(run.generator)))

    monkeypatch.setattr(genart.render, "build", build_and_spy)
    overrides = ["+preset=doorway", "generator=sdxl_tiny", "size=[64,32]", "cutouts.cutn=2"]
    sides = [f"prompts.left={left}", f"prompts.right={right}", "precision=fp32"]
    run_tiny(tmp_path, [*overrides, *sides, "generator.sampler.steps=2"])
    ((generator, calls),) = spied
    return generator, calls


def expected_at(generator, x: float, left: str, right: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(hidden, pooled) of the doorway's two texts mixed linearly at x, encoded afresh."""
    suffix = " by James Gurney"
    a = generator.encode_text(f"entrance to the {left} realm{suffix}")
    b = generator.encode_text(f"entrance to the {right} realm{suffix}")
    share = (x + 1) / 2
    return (1 - share) * a.hidden + share * b.hidden, (1 - share) * a.pooled + share * b.pooled


@pytest.mark.usefixtures("one_thread")
def test_in_a_doorway_run_the_left_windows_get_the_left_prompt(tmp_path, monkeypatch):
    """FULL RUN (needs genart.samplers' windowed path): each window's UNet calls get the prompts
    mixed at the window's centre (−0.5, 0, 0.5 of the tiny canvas's three windows): the window
    over the left columns is 3/4 the left prompt; swapping left and right mirrors the windows."""
    generator, calls = doorway_run(tmp_path / "a", monkeypatch, "heaven", "hell")
    centres = generator.windows.centres(32)
    assert centres == [-0.5, 0.0, 0.5]
    assert all(c["width"] == 16 and "window" in c for c in calls)  # no whole-canvas call
    assert all(torch.equal(c["time_ids"][0], torch.tensor([32.0, 32, 0, 0, 32, 32])) for c in calls)
    for j, x in enumerate(centres):
        hidden, pooled = expected_at(generator, x, "heaven", "hell")
        rows = positive_rows(calls, j)
        assert len(rows) == 2  # one per denoising step
        for h, p in rows:
            assert torch.allclose(h, hidden[0], atol=1e-5)
            assert torch.allclose(p, pooled[0], atol=1e-5)
    heaven, _ = expected_at(generator, -1.0, "heaven", "hell")  # the left prompt alone
    hell, _ = expected_at(generator, 1.0, "heaven", "hell")
    leftmost = positive_rows(calls, 0)[0][0]  # (77, D): the window over the left columns
    assert (leftmost - heaven[0]).norm() < (leftmost - hell[0]).norm()

    _, swapped = doorway_run(tmp_path / "b", monkeypatch, "hell", "heaven")
    for j in range(3):
        mirrored = positive_rows(swapped, 2 - j)
        for (h, p), (hm, pm) in zip(positive_rows(calls, j), mirrored, strict=True):
            assert torch.allclose(h, hm, atol=1e-5) and torch.allclose(p, pm, atol=1e-5)


@pytest.mark.usefixtures("one_thread")
def test_the_windows_blend_conditions_each_window_at_its_centre():
    """DIRECT (no sampler): Windows.blend over the real tiny UNet, each window conditioned by
    PromptConditioning.at at its centre, as genart.samplers calls them."""
    generator = tiny_generator(DOORWAY, "size=[64,32]")
    swapped = tiny_generator({**DOORWAY, "left": "hell", "right": "heaven"}, "size=[64,32]")
    outputs = []
    for model in (generator, swapped):
        calls = spy_on_windows(model)
        centres = model.windows.centres(32)
        latents = torch.randn(1, 4, 16, 32, generator=torch.Generator().manual_seed(0))

        def eps(crop, j, model=model, centres=centres):
            embeds = model.conditioning.at(0, centres[j])
            ids = model.window_time_ids(32, crop.shape[-1] * 2)  # (1, 6), 2: sdxl_tiny's VAE
            added = {"text_embeds": embeds.pooled, "time_ids": ids}
            return model.unet(crop, 500, embeds.hidden, added_cond_kwargs=added)[0]

        with torch.no_grad():
            outputs.append(model.windows.blend(latents, eps))
        outputs.append(calls)
    _, calls, _, mirrored = outputs
    left, right = generator.encode_text("heaven"), generator.encode_text("hell")
    assert [c["window"] for c in calls] == [0, 1, 2] and all(c["width"] == 16 for c in calls)
    assert torch.allclose(
        calls[0]["hidden"][0], 0.75 * left.hidden[0] + 0.25 * right.hidden[0], atol=1e-6
    )
    assert torch.allclose(
        calls[2]["hidden"][0], 0.25 * left.hidden[0] + 0.75 * right.hidden[0], atol=1e-6
    )
    for j in range(3):
        assert torch.allclose(calls[j]["hidden"], mirrored[2 - j]["hidden"], atol=1e-6)
        assert torch.allclose(calls[j]["pooled"], mirrored[2 - j]["pooled"], atol=1e-6)


@pytest.mark.usefixtures("one_thread")
def test_a_windowed_run_reads_nothing_back_on_quiet_steps(tmp_path, monkeypatch):
    """FULL RUN: tests/test_no_sync.py's rule with the windows on (positions known when built).
    Doorway's prompts without its losses: kornia's blur in the symmetry loss reads its sigma
    back, kornia's code and not the windows'."""
    from tests.test_no_sync import PLAIN, Reads, strict_on_quiet_steps

    reads = Reads(monkeypatch)
    strict_on_quiet_steps(monkeypatch, reads)
    overrides = ["prompts=doorway", "generator=sdxl_tiny", "size=[64,32]", "cutouts.cutn=2"]
    run_tiny(tmp_path, [*overrides, *PLAIN, "generator.sampler.steps=3", "log_every=3"])
    assert (tmp_path / "final.png").exists()
