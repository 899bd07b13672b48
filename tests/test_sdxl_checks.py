"""Bad SDXL input is one paragraph naming the key (genart/generators/sdxl_checks.py): the sampler
node, the scheduler registry, small canvases, LoRA files for another base model; and the same
inputs end to end through `python -m genart` (slow; skipped until the generator calls the check)."""

from __future__ import annotations

import dataclasses
import math
import warnings

import pytest
import torch
from omegaconf import OmegaConf

from genart.errors import UserError
from genart.generators import sdxl_checks
from genart.generators.sdxl_checks import (
    SmallCanvasWarning,
    base_guess,
    check_cfg_scale,
    check_lora_fits,
    check_sampler_node,
    check_scheduler,
    sdxl_schedulers,
    warn_small_canvas,
)
from tests.conftest import cli, compose
from tests.sdxl_helpers import one_thread, tiny, tiny_generator  # noqa: F401 (fixtures)

pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------- the sampler node


def test_sampler_keys_are_sampler_settings_fields():
    from genart.generators.sdxl import SamplerSettings

    assert set(sdxl_checks.SAMPLER_KEYS) == {f.name for f in dataclasses.fields(SamplerSettings)}


@pytest.mark.parametrize("option", ["sdxl", "sdxl_turbo", "sdxl_lcm", "sdxl_tiny"])
def test_every_sdxl_option_passes(option):
    node = OmegaConf.to_container(compose([f"generator={option}"]).generator.sampler)
    check_sampler_node(node)


BAD_SAMPLERS = [  # (change to the sampler node, what the paragraph must say)
    ({"cfg_scale": -1.0}, r"cfg_scale=-1\.0 is not allowed.*≥ 0.*cfg_scale=5\.0"),
    ({"cfg_scale": math.nan}, r"cfg_scale=nan is not allowed"),
    ({"cfg_scale": math.inf}, r"cfg_scale=inf is not allowed: .*finite"),
    ({"cfg_scale": "abc"}, r"cfg_scale=abc is not allowed"),
    ({"cfg_scale": True}, r"cfg_scale=True is not allowed"),
    ({"cfg": 3}, r"generator\.sampler\.cfg=3 is not a sampler setting.*Did you mean generator\.sampler\.cfg_scale\?"),
    ({"scheduler": "Nope"}, r"scheduler=Nope is not a diffusers scheduler class\. SDXL samples with .*EulerDiscreteScheduler"),
    ({"scheduler": "EulerDiscreteSchedular"}, r"Did you mean EulerDiscreteScheduler\?"),
    ({"scheduler": "UNet2DConditionModel"}, r"is not a diffusers scheduler class"),
    ({"scheduler": "FlowMatchEulerDiscreteScheduler"}, r"made for other models .*SDXL samples with"),
    ({"scheduler": "SchedulerMixin"}, r"made for other models"),
]  # fmt: skip


@pytest.mark.parametrize("change, message", BAD_SAMPLERS, ids=[str(c) for c, _ in BAD_SAMPLERS])
def test_a_bad_sampler_node_is_one_paragraph(change, message):
    node = {**OmegaConf.to_container(compose(["generator=sdxl_tiny"]).generator.sampler), **change}
    with pytest.raises(UserError, match=message) as caught:
        check_sampler_node(node)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("value", [0, 0.0, 1, 5.0, 7.5, 100])
def test_cfg_scale_at_or_above_zero_passes(value):
    assert check_cfg_scale(value) == float(value)


# genart.samplers.DiffusionSampler calls scheduler.set_begin_index unguarded; the pipeline guards it
# with hasattr, and these schedulers lack it (PNDM's warm-up Runge-Kutta steps also change the count)


@pytest.mark.parametrize("name", sdxl_schedulers())
def test_every_offered_scheduler_samples_the_tiny_model(tiny, name):
    """The registry the paragraph lists: each class steps genart's sampler to a finite latent,
    or, when its optional package is missing, is one paragraph saying what to install."""
    from importlib.util import find_spec

    from genart.samplers import DiffusionSampler

    cls = getattr(__import__("diffusers"), name)
    missing = [b for b in getattr(cls, "_backends", ()) if find_spec(b) is None]
    if missing:
        with pytest.raises(UserError, match=rf"needs the package {missing[-1]}.*pip install"):
            check_scheduler(name)
        return
    tiny.pipe.scheduler = check_scheduler(name).from_config(dict(tiny.scheduler.config))
    sampler = DiffusionSampler(tiny)
    for i in range(len(sampler)):
        latents, _ = sampler.step(i, tiny.conditioning(i))
    assert torch.isfinite(latents).all()


# ---------------------------------------------------------------- size


@pytest.mark.parametrize(
    "size, warns",
    [((256, 256), True), ((1024, 1024), False), ((512, 512), False), ((1152, 896), False)],
)
def test_a_canvas_far_below_the_trained_size_warns_once(size, warns):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warn_small_canvas(size, sample_size=128, scale_factor=8)  # SDXL base's UNet and VAE
    assert [w.category for w in caught] == ([SmallCanvasWarning] if warns else [])
    if warns:
        message = str(caught[0].message)
        assert "size=[256,256] is 6% of the 1024×1024" in message and "size=[1024,1024]" in message
        assert "\n" not in message


# ---------------------------------------------------------------- LoRA


def save_lora(unet, folder, targets=("to_q", "to_k", "to_v", "to_out.0"), text_encoder=None):
    """A random LoRA on `unet` (and `text_encoder`), saved as diffusers' training scripts save
    theirs: peft's adapter state dict in diffusers' key format, through save_lora_weights."""
    from diffusers import StableDiffusionXLPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    def layers(model, target_modules):
        config = LoraConfig(r=4, lora_alpha=4, init_lora_weights=False, target_modules=target_modules)  # fmt: skip
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(1)
            model.add_adapter(config)
        return convert_state_dict_to_diffusers(get_peft_model_state_dict(model))

    extra = {}
    if text_encoder is not None:
        extra["text_encoder_lora_layers"] = layers(text_encoder, ["q_proj", "v_proj"])
    folder.mkdir(parents=True, exist_ok=True)
    StableDiffusionXLPipeline.save_lora_weights(
        folder, unet_lora_layers=layers(unet, list(targets)), **extra
    )
    return folder / "pytorch_lora_weights.safetensors"


def sd15_like_unet():
    """A tiny UNet laid out as Stable Diffusion 1.x's (attention in the first block, none in the
    last, no SDXL micro-conditioning) with narrower cross-attention (32) than sdxl_tiny's (64)."""
    from diffusers import UNet2DConditionModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return UNet2DConditionModel(
            block_out_channels=(32, 64),
            layers_per_block=1,
            sample_size=32,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=32,
            norm_num_groups=8,
        )


@pytest.fixture(scope="module")
def loras(tmp_path_factory):
    """LoRA files: for sdxl_tiny (UNet and text encoder), for an SD 1.x-like UNet (all its
    attention, or only self-attention, whose widths match sdxl_tiny's), and not a LoRA at all."""
    import copy

    from safetensors.torch import load_file, save_file

    root, model = tmp_path_factory.mktemp("loras"), tiny_generator()
    files = {
        "right": save_lora(
            copy.deepcopy(model.unet),
            root / "right",
            text_encoder=copy.deepcopy(model.text_encoder),
        ),  # fmt: skip
        "sd15": save_lora(sd15_like_unet(), root / "sd15"),
        "sd15_self": save_lora(
            sd15_like_unet(), root / "sd15_self", targets=["attn1.to_q", "attn1.to_v"]
        ),  # fmt: skip
        "junk": root / "junk.safetensors",
        "weights": root / "weights.safetensors",
    }
    files["old_te"] = root / "old_te.safetensors"  # text encoder keys as transformers 4 named them
    state = load_file(files["right"])
    save_file({k.replace("text_encoder.", "text_encoder.text_model."): v for k, v in state.items()}, files["old_te"])  # fmt: skip
    files["junk"].write_bytes(b"not a safetensors file")
    save_file({"conv_in.weight": torch.zeros(32, 4, 3, 3)}, files["weights"])  # a model, no LoRA
    return files


def test_a_lora_for_this_model_passes_and_changes_the_model(tiny, loras):
    from genart.generators.sdxl import load_lora

    check_lora_fits(tiny.pipe, loras["right"])
    check_lora_fits(tiny.pipe, loras["old_te"])  # diffusers strips text_model. for transformers 5
    generator = tiny_generator()
    before = generator.unet.mid_block.attentions[0].transformer_blocks[0].attn2.to_k.weight.clone()
    load_lora(generator.pipe, {"pretrained": {"path": str(loras["right"])}, "scale": 1.0})
    after = generator.unet.mid_block.attentions[0].transformer_blocks[0].attn2.to_k.weight
    assert not torch.equal(before, after)  # fused into the weights


def test_a_lora_for_another_base_is_one_paragraph_naming_its_width(tiny, loras):
    with pytest.raises(UserError) as caught:
        check_lora_fits(tiny.pipe, loras["sd15"])
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"generator.lora.pretrained.path={loras['sd15']} is not a LoRA for this model: 26 of its 32 layers do not fit it")  # fmt: skip
    assert "attn2.to_k reads 32 features in the LoRA, 64 here" in message  # a width, before a gap
    assert "reads 32-wide text features and this UNet's 64-wide: it was made for another base model" in message  # fmt: skip
    assert message.endswith("or set generator.lora=null.")


def test_a_lora_diffusers_would_load_in_part_without_a_word_is_refused(tiny, loras):
    """Self-attention widths match, so load_lora_weights loads the mid block's layers and drops
    the rest silently; the check counts the layers this model lacks."""
    from diffusers.utils import logging as diffusers_logging

    generator = tiny_generator()
    diffusers_logging.set_verbosity_error()
    generator.pipe.load_lora_weights(str(loras["sd15_self"].parent))  # no error: the hazard
    diffusers_logging.set_verbosity_warning()
    with pytest.raises(UserError, match=r"6 of its 8 layers do not fit it, e\.g\. unet has no layer down_blocks\.0\.attentions\.0"):  # fmt: skip
        check_lora_fits(tiny.pipe, loras["sd15_self"])


@pytest.mark.parametrize(
    "name, message",
    [
        ("junk", r"junk\.safetensors could not be read as a LoRA \(.*\)\. Give a LoRA's \.safetensors file"),
        ("missing", r"missing\.safetensors could not be read as a LoRA"),
        ("weights", r"1 of its 1 layers do not fit it, e\.g\. conv_in\.weight belongs to no part of SDXL"),
    ],
)  # fmt: skip
def test_a_file_that_is_no_lora_is_one_paragraph(tiny, loras, name, message):
    path = loras.get(name, loras["junk"].parent / f"{name}.safetensors")
    with pytest.raises(UserError, match=message) as caught:
        check_lora_fits(tiny.pipe, path)
    assert "\n" not in str(caught.value) and "generator.lora=null" in str(caught.value)


@pytest.mark.parametrize("width, base", [(768, "Stable Diffusion 1.x"), (1024, "Stable Diffusion 2.x")])  # fmt: skip
def test_the_cross_attention_width_names_the_base_model(width, base):
    from types import SimpleNamespace

    pipe = SimpleNamespace(unet=SimpleNamespace(config=SimpleNamespace(cross_attention_dim=2048)))
    layers = {("unet", "mid_block.attentions.0.transformer_blocks.0.attn2.to_k"): (width, 1280)}
    assert base_guess(pipe, layers) == (
        f"Its cross-attention reads {width}-wide text features and this UNet's 2048-wide: it was "
        f"made for {base}. "
    )
    assert base_guess(pipe, {("unet", "x.attn2.to_k"): (2048, 1280)}) == ""


# ---------------------------------------------------------------- end to end (python -m genart)

CLI = ["generator=sdxl_tiny", "guide=clip_tiny", "logger=none", "updater=sample", "device=cpu"]
CLI += ["generator.sampler.steps=1", "size=[64,64]", "threads=1"]


def one_paragraph(out, message: str, returncode: int = 2) -> None:
    assert out.returncode == returncode, out.stderr[-2000:]
    assert "Traceback" not in out.stderr and "HYDRA_FULL_ERROR" not in out.stderr, out.stderr
    (line,) = [ln for ln in out.stderr.splitlines() if message in ln]
    assert line.startswith("genart: "), out.stderr


def run_cli(tmp_path, *overrides):
    return cli("genart", *CLI, *overrides, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)


@pytest.mark.slow
def test_cli_a_size_off_the_8_px_grid_is_rounded_with_one_paragraph(tmp_path):
    from PIL import Image

    out = run_cli(tmp_path, "size=[70,70]")
    one_paragraph(out, "SDXL renders multiples of 8 px: size 70x70 → using 72x72", returncode=0)
    assert Image.open(tmp_path / "run" / "final.png").size == (72, 72)


@pytest.mark.slow
def test_cli_a_canvas_far_below_the_trained_size_warns(tmp_path):
    one_paragraph(run_cli(tmp_path, "size=[16,16]"), "of the 64×64 canvas", returncode=0)


SAMPLER_CLI = [  # (override, the start of the paragraph, the sampler node it sets)
    ("generator.sampler.cfg_scale=-1", "generator.sampler.cfg_scale=-1 is not allowed", None),
    ("generator.sampler.cfg_scale=abc", "generator.sampler.cfg_scale=abc is not allowed", {"cfg_scale": "abc"}),
    ("+generator.sampler.cfg=3", "generator.sampler.cfg=3 is not a sampler setting", {"cfg": 3}),
    ("generator.sampler.scheduler=Nope", "generator.sampler.scheduler=Nope is not a diffusers scheduler", None),
    ("generator.sampler.scheduler=FlowMatchEulerDiscreteScheduler", "made for other models", {"scheduler": "FlowMatchEulerDiscreteScheduler"}),
]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize(
    "override, message, probe", SAMPLER_CLI, ids=[o for o, _, _ in SAMPLER_CLI]
)
def test_cli_a_bad_sampler_setting_is_one_paragraph(tmp_path, override, message, probe):
    one_paragraph(run_cli(tmp_path, override), message)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["sd15", "sd15_self"])
def test_cli_a_lora_for_another_base_is_one_paragraph(tmp_path, loras, name):
    node = f"generator.lora={{scale: 1.0, pretrained: {{path: '{loras[name]}'}}}}"
    one_paragraph(run_cli(tmp_path, node), "is not a LoRA for this model")
