"""Golden slices (diffusers-style): a few float values of the final image of fixed tiny runs.

Each config runs a few fp32 steps on the tiny random models and pins a 3×3 slice of the final
image's blue channel (bottom right) and its mean, taken before PNG rounding. Silent numeric drift
in any part of the loop (cutouts, guide, losses, optimiser, generator) moves these numbers.

The tiny VQGAN's image is piecewise constant in θ (straight-through codes), so its values only
move when a change flips a code; the pixel-generator config moves continuously and catches
small drift (a loss scaled by 1.01 moves its values by ~2e-4).

Recorded with torch 2.14.1 (CPU, fp32) on a 2-core AVX512 x86 CPU (AMD EPYC). With 1 and 2
threads and ATEN_CPU_CAPABILITY=avx2 or =default (no SIMD) every value agreed within 1e-6
(test_golden_values_hold_on_one_thread_and_avx2 reruns them). Configs were chosen so that those
variations move θ by < 1e-4 and flip no code: others (e.g. composition_details with seed 0)
flipped one under avx2. To regenerate after an intended change, `python -m tests.test_golden`
prints every config's values; paste them into GOLDEN and say why in the commit.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO, run_tiny
from tests.recorder import changed_fraction, record

GOLDEN = {
    # the defaults: one text prompt, standard cutouts with the reference's augmentations
    "default": (
        ["steps=4", "seed=1", "optimizer.lr=0.5"],
        [
            [0.498263, 0.468447, 0.571407],
            [0.531158, 0.524292, 0.566262],
            [0.557684, 0.551431, 0.530468],
        ],
        0.500881,
    ),
    # positional prompts, mirrored pairs, semantic symmetry, on a wide canvas
    "doorway": (
        ["+preset=doorway", "size=[64,32]", "steps=4", "seed=1", "optimizer.lr=0.5"],
        [
            [0.472168, 0.490504, 0.584389],
            [0.474033, 0.454975, 0.563920],
            [0.467645, 0.476090, 0.542928],
        ],
        0.502109,
    ),
    # a continuous generator under all four doorway losses (tone and edge symmetry switched on)
    "pixels_symmetries": (
        [
            "generator=pixels",
            "+preset=doorway",
            "size=[64,64]",
            "steps=3",
            "optimizer.lr=0.1",
            "losses.tone_symmetry.weight=0.5",
            "losses.edge_symmetry.weight=0.5",
        ],
        [
            [0.389566, 0.191821, 0.162865],
            [0.124585, 0.641834, 0.185433],
            [0.813110, 0.338466, 0.277875],
        ],
        0.499859,
    ),
    # composition windows and best-match detail prompts (no time windows on the prompts)
    "composition_details": (
        [
            "+preset=composition_details",
            "size=[64,64]",
            "steps=3",
            "seed=1",
            "optimizer.lr=0.5",
            "cutouts.cutn=8",
            "cutouts.composition.count=2",
        ],
        [
            [0.522197, 0.491085, 0.529784],
            [0.508517, 0.477630, 0.537293],
            [0.517986, 0.521183, 0.532233],
        ],
        0.502519,
    ),
    # cosine hand-over between two anchored prompts, non-square, no mirrored pairs
    "panorama": (
        ["+preset=panorama", "size=[96,32]", "steps=4", "optimizer.lr=0.5"],
        [
            [0.504128, 0.475654, 0.551925],
            [0.501622, 0.499750, 0.542851],
            [0.516782, 0.520747, 0.505484],
        ],
        0.501617,
    ),
}
ATOL = 1e-4


def golden_values(run_dir: Path, overrides: list[str], monkeypatch):
    """A run's 3×3 slice (blue, bottom right) and mean, and the share of its pixels that moved."""
    seen = record(monkeypatch)
    run_tiny(run_dir, ["precision=fp32", *overrides])
    (run,) = seen
    final = run.final  # (1, 3, H, W) in [0, 1], as saved to final.png before rounding
    return final[0, 2, -3:, -3:], float(final.mean()), changed_fraction(run.start, final)


@pytest.mark.parametrize("name", list(GOLDEN))
def test_golden_slice(name, tmp_path, monkeypatch):
    overrides, expected_slice, expected_mean = GOLDEN[name]
    image_slice, mean, moved = golden_values(tmp_path / name, overrides, monkeypatch)
    assert moved > 0.5, "the golden image must move during its steps, or it pins only the init"
    assert torch.allclose(image_slice, torch.tensor(expected_slice), atol=ATOL, rtol=0), image_slice
    assert abs(mean - expected_mean) <= ATOL, mean


@pytest.mark.slow
def test_golden_values_hold_on_one_thread_and_avx2():
    """The values are robust to the thread count and to the CPU kernels torch picks."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ATEN_CPU_CAPABILITY": "avx2"}
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, "-k", "slice"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout[-3000:]


def print_golden_values() -> None:
    """Print each config's current values, to paste into GOLDEN after an intended change."""
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{torch.backends.cpu.get_cpu_capability()}"
    )
    for name, (overrides, *_) in GOLDEN.items():
        with pytest.MonkeyPatch.context() as monkeypatch, tempfile.TemporaryDirectory() as tmp:
            image_slice, mean, moved = golden_values(Path(tmp) / name, overrides, monkeypatch)
        rows = [[round(v, 6) for v in row] for row in image_slice.tolist()]
        print(f'"{name}" (moved {moved:.2f}): {rows}, {mean:.6f}')


if __name__ == "__main__":
    print_golden_values()
