"""User mistakes end in one paragraph naming the key and a valid example, never a traceback;
the same keys with valid values pass (genart/checks.py, genart/images.py)."""

from __future__ import annotations

import struct
import warnings
import zlib

import pytest

from genart.checks import TOP_LEVEL_KEYS, check_config, check_output_dir
from genart.errors import UserError
from tests.conftest import REPO, TINY, cli, compose
from tests.test_configs import OPTIONS, PRESETS

INVALID = [  # (overrides, what the message must say)
    (["+losses.tv.weight=0.5"], r"losses\.tv has no _target_.*\+losses\.tv\._target_=genart\.losses\.TVLoss"),
    (["+losses.tv=0.5"], r"losses\.tv has no _target_.*losses=refine"),
    (["cutouts.cutn=0"], r"cutouts\.cutn=0 .*whole number ≥ 1.*cutouts\.cutn=32"),
    (["cutouts=mirrored", "cutouts.cutn=31"], r"cutouts\.cutn=31 with mirrored .*cutouts\.cutn=32"),
    (["steps=-5"], r"steps=-5 .*whole number ≥ 0.*steps=300"),
    (["steps=5.5"], r"steps=5\.5 .*whole number"),
    (["log_every=-1"], r"log_every=-1 .*≥ 1.*log_every=10"),
    (["save_every=0"], r"save_every=0 .*≥ 1.*save_every=50"),
    (["optimizer.lr=nan"], r"optimizer\.lr=nan .*finite number ≥ 0.*optimizer\.lr=0\.1"),
    (["optimizer.lr=-0.1"], r"optimizer\.lr=-0\.1 .*finite"),
    (["optimizer.lr=inf"], r"optimizer\.lr=inf .*finite"),
    (["optimizer.lr=abc"], r"optimizer\.lr=abc .*finite"),
    (["threads=-1"], r"threads=-1 .*≥ 1, or null.*threads=4"),
    (["threads=0"], r"threads=0 "),
    (["seed=abc"], r"seed=abc .*whole number.*seed=0"),
    (["seed=true"], r"seed=True .*whole number"),
    (["device=tpu"], r"device=tpu is not a device name torch knows.*device=cpu"),
    (["device=meta"], r"device=meta .*no META device"),
    (["init.blur=-2"], r"init\.blur=-2 .*≥ 0.*init\.blur=2\.0"),
    (["size=[0,0]"], r"size=\[0, 0\] .*\[width, height\].*'size=\[256,256\]'"),
    (["size=[-64,64]"], r"size=\[-64, 64\] .*two whole numbers ≥ 1"),
    (["size=[64]"], r"size=\[64\] .*\[width, height\]"),
    (["size=64"], r"size=64 .*\[width, height\]"),
    (["size=[64,64,3]"], r"size=\[64, 64, 3\] "),
    (
        ["generator=pixels", "size=[1000000,1000000]"],
        r"1000000×1000000 image.* TB, more than this machine's .* GB of memory.*size=\[512,512\]",
    ),
    (["+stepz=5"], r"\+stepz=5 sets a top-level key that no part of genart reads.*steps=5"),
    (["+sead=3"], r"Did you mean seed, e\.g\. seed=3\?"),
    (["+nothing_like_it.x=1"], r"\+nothing_like_it\.… sets a top-level key"),
]  # fmt: skip

VALID = [  # the same keys, set right
    ["+losses.tv._target_=genart.losses.TVLoss", "+losses.tv.weight=0.5"],
    ["losses=refine", "losses.tv.weight=0.5"],
    ["losses.prompt=null", "+losses.tv._target_=genart.losses.TVLoss"],
    ["cutouts.cutn=1"],
    ["cutouts=mirrored", "cutouts.cutn=2"],
    ["steps=0", "log_every=1", "save_every=1"],
    ["optimizer.lr=0.025"],
    ["optimizer.lr=0"],
    ["threads=2"],
    ["threads=null"],
    ["seed=-1"],
    ["seed=18446744073709551615"],
    ["device=cpu"],
    ["device=auto"],
    ["init.blur=0"],
    ["init.blur=2.5"],
    ["size=[1,1]"],
    ["generator=pixels", "size=[2048,1024]"],
    ["+preset=doorway"],
    ["+hydra.job.env_set.GENART_TEST=1"],
]


def check(overrides: list[str]) -> None:
    check_config(compose([*TINY, *overrides]))


@pytest.mark.parametrize("overrides, message", INVALID, ids=[" ".join(o) for o, _ in INVALID])
def test_an_invalid_override_is_one_clear_paragraph(overrides, message):
    with pytest.raises(UserError, match=message) as caught:
        check(overrides)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("overrides", VALID, ids=[" ".join(o) for o in VALID])
def test_a_valid_override_passes(overrides):
    check(overrides)


def test_every_key_of_the_composed_config_is_known():
    """TOP_LEVEL_KEYS can't drift behind conf/: a new top-level key must be registered there."""
    assert set(compose([])) <= set(TOP_LEVEL_KEYS)


@pytest.mark.parametrize("group, option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_group_option_passes_the_checks(group, option):
    check([f"{group}={option}"])


def test_every_preset_and_refinement_passes_the_checks():
    refinements = [f"+refine={p.stem}" for p in sorted((REPO / "conf/refine").glob("*.yaml"))]
    for extra in [*(f"+preset={p}" for p in PRESETS), *refinements]:
        check([extra])


def test_a_resumed_config_is_checked_too(tmp_path):
    from omegaconf import OmegaConf

    from genart.app import prepare_resume

    (tmp_path / ".hydra").mkdir()
    OmegaConf.save(compose([*TINY, "+stepz=5"]), tmp_path / ".hydra/config.yaml")
    cfg, _ = prepare_resume(compose([*TINY, f"resume={tmp_path}"]), [f"resume={tmp_path}"])
    with pytest.raises(UserError, match=r"\+stepz=5"):
        check_config(cfg)


# ---------------------------------------------------------------- the run dir, before Hydra


@pytest.mark.parametrize(
    "argv, message",
    [
        (["hydra.run.dir={file}"], r"hydra\.run\.dir=.*afile is a file.*hydra\.run\.dir=outputs/"),
        (["hydra.run.dir={file}/run"], r"needs .*afile to be a directory, not a file"),
        (["hydra.run.dir={file}/${{now:%H}}"], r"needs .*afile to be a directory"),
        (["-m", "seed=0,1", "hydra.sweep.dir={file}"], r"hydra\.sweep\.dir=.*afile is a file"),
    ],
)
def test_a_file_where_the_run_dir_goes_is_refused(tmp_path, argv, message):
    (tmp_path / "afile").write_text("")
    with pytest.raises(UserError, match=message):
        check_output_dir([a.format(file=tmp_path / "afile") for a in argv])


def test_a_directory_for_the_run_dir_passes(tmp_path, monkeypatch):
    (tmp_path / "afile").write_text("")
    monkeypatch.chdir(tmp_path)
    check_output_dir([])  # the default, outputs/${now:…}
    check_output_dir([f"hydra.run.dir={tmp_path}"])  # existing
    check_output_dir([f"hydra.run.dir={tmp_path}/new/run_${{now:%H}}"])  # new
    check_output_dir(["-m", f"hydra.run.dir={tmp_path}/afile"])  # a sweep uses hydra.sweep.dir
    (tmp_path / "outputs").write_text("")
    with pytest.raises(UserError, match="hydra.run.dir=outputs/.* needs outputs to be a directory"):
        check_output_dir([])


# ---------------------------------------------------------------- images


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares width × height but holds no pixels: Pillow judges its size on open."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    "side, pixels",
    [(30000, "900,000,000"), (10000, "100,000,000")],  # Pillow's error, and its warning
)
def test_a_decompression_bomb_is_refused_in_one_paragraph(tmp_path, side, pixels):
    from genart.images import load_image

    path = tmp_path / "huge.png"
    path.write_bytes(png_header(side, side))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no Pillow warning may escape either
        with pytest.raises(UserError, match=rf"init\.image=.*huge\.png is {pixels} pixels, more than the 89,478,485") as caught:  # fmt: skip
            load_image(path, "init.image")
    assert "\n" not in str(caught.value)


def test_an_image_that_fits_loads(tmp_path):
    import torch

    from genart.images import load_image, save_png

    save_png(torch.full((1, 3, 4, 6), 0.5), tmp_path / "small.png")
    assert load_image(tmp_path / "small.png", "init.image").shape == (1, 3, 4, 6)


def test_a_directory_as_image_says_so(tmp_path):
    from genart.images import load_image

    with pytest.raises(UserError, match=r"init\.image=.* is a directory.*init\.image=.*final\.png"):
        load_image(tmp_path, "init.image")
    with pytest.raises(UserError, match="does not exist"):
        load_image(tmp_path / "missing.png", "init.image")


# ---------------------------------------------------------------- end to end


def test_an_error_mid_run_starts_on_its_own_line(tmp_path, monkeypatch, capsys):
    """The progress bar is closed (its line ended) before the error reaches the user."""
    import genart.render
    from tests.conftest import run_tiny

    def fail_at_step_2(out, step, run):
        if step == 2:
            raise UserError("stop here")

    monkeypatch.setattr(genart.render, "check_finite", fail_at_step_2)
    try:
        run_tiny(tmp_path / "run", ["steps=4", "log_every=1"])
        pytest.fail("the run should have stopped at step 2")
    except UserError:  # read stderr as app.py prints: while the error is handled, bar still alive
        err = capsys.readouterr().err
    assert "1/4" in err and err.endswith("\n")


def test_bad_commands_exit_2_with_one_paragraph_on_its_own_line(tmp_path):
    """As a user meets them: before Hydra (the run dir), in the job's checks, mid-run."""
    (tmp_path / "afile").write_text("")
    tiny = [*TINY, "size=[64,64]"]
    commands = [  # (command line, how the message starts)
        (["hydra.run.dir=afile"], "hydra.run.dir=afile is a file"),
        (["+stepz=5"], "+stepz=5 sets a top-level key"),
        ([*tiny, "steps=2", "log_every=1", "losses.prompt.weight=inf"], "NaN/inf at step 1"),
    ]
    for args, message in commands:
        out = cli("genart", *args, cwd=tmp_path)
        assert out.returncode == 2, out.stderr
        assert "Traceback" not in out.stderr, out.stderr
        # splitlines also splits at the bar's \r redraws: the message must start a line of its own
        (line,) = [ln for ln in out.stderr.splitlines() if message in ln]
        assert line.startswith("genart: ") and "it/s]" not in line, out.stderr  # not the bar's line
