"""What users saved with an earlier genart keeps working: a preset and a killed run's checkpoint.

tests/fixtures/saved_by_main was written on 2026-11-23 by that day's main (commit a371c0d, torch
2.14.1, fp32 on a 2-core AMD EPYC), from one tiny doorway run (`+preset=doorway generator=vqgan_tiny
guide=clip_tiny logger=none size=[64,32] steps=6 save_every=2 log_every=1 optimizer.lr=0.5 seed=3`):
- `preset/doorway_tiny.yaml`: `python -m genart.presets save` of the finished run;
- `killed_run/`: the same run killed with SIGKILL after its step-2 checkpoint;
- `expected/`: the finished run's final.png, its step-2 frame and its stats.
Refactors must keep both: the preset reproduces the image, the checkpoint resumes to it. Never
regenerate these files to make a test pass; a format change must load the old files or refuse
them in one paragraph (and then this test changes on purpose, saying why).
"""

from __future__ import annotations

import shutil

import pytest

from tests.conftest import REPO, cli

pytestmark = pytest.mark.slow

SAVED = REPO / "tests/fixtures/saved_by_main"
STATS = ["losses.csv", "best_match.csv", "best_match_totals.csv", "positional.csv"]


def test_the_saved_run_moved():
    """Equality below means something only because the image changed during the run."""
    expected = SAVED / "expected"
    assert (expected / "final.png").read_bytes() != (expected / "frames/00002.png").read_bytes()
    assert (SAVED / "killed_run/frames/00002.png").read_bytes() == (
        expected / "frames/00002.png"
    ).read_bytes()  # the killed run is the same run, cut short


def test_a_preset_saved_by_main_reproduces_its_image(tmp_path):
    out = cli(
        "genart",
        "+preset=doorway_tiny",
        f"hydra.run.dir={tmp_path / 'again'}",
        cwd=tmp_path,
        env={"GENART_PRESETS_DIR": str(SAVED)},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    again, expected = tmp_path / "again", SAVED / "expected"
    assert (again / "frames/00002.png").read_bytes() == (expected / "frames/00002.png").read_bytes()
    for name in STATS:
        assert (again / "stats" / name).read_bytes() == (expected / "stats" / name).read_bytes()
    assert_same_pixels(again / "final.png", expected / "final.png")


def test_a_checkpoint_written_by_main_resumes_to_the_same_image(tmp_path):
    run_dir = tmp_path / "killed_run"
    shutil.copytree(SAVED / "killed_run", run_dir)
    out = cli("genart", f"resume={run_dir}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert_same_pixels(run_dir / "final.png", SAVED / "expected/final.png")
    for name in STATS:
        expected = (SAVED / "expected/stats" / name).read_bytes()
        assert (run_dir / "stats" / name).read_bytes() == expected, name


def assert_same_pixels(a, b) -> None:
    import numpy as np
    from PIL import Image

    with Image.open(a) as image_a, Image.open(b) as image_b:
        assert np.array_equal(np.asarray(image_a), np.asarray(image_b))
