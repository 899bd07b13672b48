"""Every `python -m genart…` line of the README runs as a newcomer would type it (slow tier).

Lines are read from the README's bash blocks and inline code, in order, and run in one scratch
folder, so a line may use what an earlier one made (a sweep, then its gallery, then a preset saved
from one of its jobs). A line that would render a real image is composed with `--cfg job` (the
real weights cannot be downloaded here); a sweep (`-m`, where Hydra refuses `--cfg`) really runs,
on the tiny models for one step. Placeholders take paths from those runs.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import REPO, cli

pytestmark = pytest.mark.slow

TINY_SWEEP = ["generator=vqgan_tiny", "guide=clip_tiny", "logger=none", "steps=1", "size=[32,32]"]
LONG = {  # minutes on the real architectures: their arguments only
    "genart.bench": ["--help"],
    "genart.tools.kernel_bench": ["--help"],
    "genart.tools.guided_bench": ["--help"],
    "genart.tools.guided_modes": ["--help"],
    "genart.curate": ["--help"],  # real VGG16 and CLIP weights; tests/test_curate.py runs it tiny
    "genart.tools.throughput": ["--help"],  # many sweeps; tests/test_throughput.py runs it tiny
}
# a search's lines: the tiny scorer and 2 generations of 2 (its defaults: NIMA, 20 × 10 × 50 jobs)
TINY_SEARCH = [
    "scorer=nima_tiny",
    "search.population=2",
    "search.repeats=1",
    "search.generations=2",
]


def readme_lines() -> list[list[str]]:
    """The README's `python -m genart…` commands as argv lists, in order, each once."""
    text = (REPO / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.DOTALL)
    candidates = [line for block in blocks for line in block.splitlines()]
    candidates += re.findall(
        r"`(python -m genart[^`]*)`", re.sub(r"```.*?```", "", text, flags=re.DOTALL)
    )
    commands = []
    for line in candidates:
        words = shlex.split(line, comments=True)
        if "&&" in words:
            words = words[len(words) - words[::-1].index("&&") :]
        if (
            words[:2] == ["python", "-m"]
            and words[2].startswith("genart")
            and words not in commands
        ):
            commands.append(words)
    return commands


def test_the_readme_names_its_commands():
    modules = {words[2] for words in readme_lines()}
    assert {"genart", "genart.gallery", "genart.presets", "genart.bench"} <= modules
    assert len(readme_lines()) >= 15


def ray_installed() -> bool:
    import importlib.util
    import os

    return os.environ.get("CI") == "true" or importlib.util.find_spec("ray") is not None


def fill(words: list[str], places: dict[str, str]) -> list[str]:
    out = []
    for word in words:
        for placeholder, value in places.items():
            word = word.replace(placeholder, value)
        out.append(word)
    return out


def latest_sweep(cwd: Path) -> Path:
    return max((cwd / "outputs/multirun").glob("*/*"), key=lambda p: p.stat().st_mtime)


def test_every_readme_command_runs(tmp_path):
    Image.fromarray(np.full((32, 32, 3), 120, np.uint8)).save(tmp_path / "edited.png")
    env = {"GENART_PRESETS_DIR": str(tmp_path / "my_presets")}
    places: dict[str, str] = {}
    ran = []
    for words in readme_lines():
        module, args = words[2], words[3:]
        if module == "genart" and "-m" in args:
            search = TINY_SEARCH if "hydra/sweeper=evolve" in args else []
            args = [*TINY_SWEEP, *search, *args]  # Hydra takes no override after -m
            if "hydra/launcher=ray" in args and not ray_installed():
                continue  # `pip install -e '.[ray]'`, as the line says; CI installs it
        elif module == "genart" and "--cfg" not in args:
            args = [*args, "--cfg", "job"]
        args = LONG.get(module, args)
        args = fill(args, places)
        out = cli(module, *args, cwd=tmp_path, env=env, timeout=900)
        shown = f"python -m {module} {shlex.join(args)}"
        assert out.returncode == 0, f"{shown}\n{out.stderr[-3000:]}"
        assert "Traceback" not in out.stderr, f"{shown}\n{out.stderr[-3000:]}"
        ran.append(shown)
        if module == "genart" and "-m" in args:
            sweep = latest_sweep(tmp_path)
            places = {
                "outputs/multirun/<date>/<time>": str(sweep.relative_to(tmp_path)),
                "outputs/2026-11-22/10-00-00": str((sweep / "0").relative_to(tmp_path)),
            }
        if "--cfg" in args and module == "genart":
            assert "generator:" in out.stdout and "prompts:" in out.stdout, shown
            for key, _, text in (a.partition("=") for a in args if a.startswith("prompts.")):
                assert f"{key.split('.')[-1]}: {text}" in out.stdout, shown  # the text as typed
    print("\n".join(ran))
    assert (tmp_path / "my_presets/preset/forest_doorway.yaml").exists()
    assert list(latest_sweep(tmp_path).glob("index.html")) or list(
        (tmp_path / "outputs/multirun").rglob("index.html")
    )
