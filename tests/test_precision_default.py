"""`precision=auto` is bf16 on CPUs with native bf16, still reproducible; older saves keep fp32."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf

from genart.moved_keys import LEGACY_AUTO
from genart.speed import precision
from genart.speed.precision import cpu_bf16, resolve_precision
from tests.conftest import REPO, TINY, cli, compose, run_tiny
from tests.recorder import changed_fraction, record

CPU = torch.device("cpu")
NATIVE = pytest.mark.skipif(not cpu_bf16()["native"], reason="this CPU has no native bf16")
OLD_PRESETS = REPO / "tests/fixtures/saved_by_main"


@NATIVE
def test_auto_is_bf16_on_a_cpu_with_native_bf16():
    assert resolve_precision("auto", CPU) == "bf16"
    assert resolve_precision(LEGACY_AUTO, CPU) == "fp32"
    assert resolve_precision("fp32", CPU) == "fp32"


def test_auto_is_fp32_on_a_cpu_without_bf16_units(monkeypatch):
    monkeypatch.setattr(precision, "_bf16_units", lambda: {"avx512_bf16": False, "amx_bf16": False})
    assert cpu_bf16() == {"units": [], "limited_by": [], "native": False}
    assert resolve_precision("auto", CPU) == "fp32"


@pytest.mark.parametrize("unit", ["avx512_bf16", "amx_bf16"])
def test_either_bf16_unit_makes_auto_bf16(unit, monkeypatch):
    monkeypatch.setattr(precision, "_bf16_units", lambda: {"avx512_bf16": False, unit: True})
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    assert resolve_precision("auto", CPU) == "bf16"


@pytest.mark.parametrize(
    ("isa", "expected"),
    [("AVX2", "fp32"), ("avx512_core", "fp32"), ("AVX512_CORE_VNNI", "fp32")]
    + [("AVX512_CORE_BF16", "bf16"), ("AVX512_CORE_AMX", "bf16"), ("ALL", "bf16")],
)
@NATIVE
def test_a_onednn_isa_limit_below_bf16_makes_auto_fp32(isa, expected, monkeypatch):
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", isa)
    assert resolve_precision("auto", CPU) == expected
    assert bool(cpu_bf16()["limited_by"]) == (expected == "fp32")


@NATIVE
def test_forcing_aten_to_avx2_makes_auto_fp32():
    """ATen reads ATEN_CPU_CAPABILITY when torch loads: a fresh interpreter."""
    code = "import torch; from genart.speed.precision import resolve_precision as r; "
    code += "print(r('auto', torch.device('cpu')))"
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={"ATEN_CPU_CAPABILITY": "avx2", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.stdout.strip() == "fp32", out.stderr[-2000:]


@NATIVE
def test_the_same_config_twice_gives_the_same_pixels_at_the_default(tmp_path, monkeypatch):
    seen = record(monkeypatch)
    overrides = ["precision=auto", "steps=4", "save_every=2", "optimizer.lr=0.5"]
    for name in ("a", "b"):
        run_tiny(tmp_path / name, overrides)
    first, second = seen
    assert changed_fraction(first.start, first.final) > 0.5, "the image must move to mean anything"
    assert torch.equal(first.final, second.final)
    result = json.loads((tmp_path / "a/result.json").read_text())
    assert result["precision"] == "bf16"
    assert result["cpu_bf16"]["native"] and result["cpu_bf16"]["units"]


@pytest.mark.parametrize(("typed", "ran"), [([], "fp32"), (["precision=auto"], "bf16")])
@NATIVE
def test_a_preset_saved_before_auto_chose_bf16_runs_in_fp32(typed, ran, tmp_path):
    """...unless the command line asks for auto itself."""
    out = cli(
        "genart",
        "+preset=doorway_tiny",
        "steps=1",
        *typed,
        f"hydra.run.dir={tmp_path / 'run'}",
        cwd=tmp_path,
        env={"GENART_PRESETS_DIR": str(OLD_PRESETS)},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert (f"precision={LEGACY_AUTO}" in out.stderr) == (ran == "fp32")
    assert json.loads((tmp_path / "run/result.json").read_text())["precision"] == ran
    assert json.loads((tmp_path / "run/run_info.json").read_text())["precision"] == ran


def test_only_a_saved_preset_that_says_auto_is_read_as_old(tmp_path):
    from genart.moved_keys import saved_with_auto_precision

    old = OLD_PRESETS / "preset/doorway_tiny.yaml"
    assert saved_with_auto_precision(old)
    frozen = tmp_path / "frozen.yaml"
    frozen.write_text(old.read_text().replace("precision: auto", "precision: bf16"))
    assert not saved_with_auto_precision(frozen)
    hand_written = tmp_path / "mine.yaml"
    hand_written.write_text("# @package _global_\n# my own preset\nprecision: auto\n")
    assert not saved_with_auto_precision(hand_written)


@pytest.mark.parametrize("recorded", [False, True])
def test_a_resumed_run_keeps_the_rule_it_started_under(recorded, tmp_path, capsys):
    """A run dir without run_info.json is from before auto chose bf16 on CPU: it ran fp32."""
    from genart.app import prepare_resume

    run_dir = tmp_path / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    saved = OmegaConf.to_container(compose(TINY))
    (run_dir / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(saved))
    if recorded:
        (run_dir / "run_info.json").write_text(json.dumps({"precision": "bf16"}))
    resumed, _ = prepare_resume(compose([*TINY, f"resume={run_dir}"]), [f"resume={run_dir}"])
    assert resumed.precision == ("auto" if recorded else LEGACY_AUTO)
    assert (LEGACY_AUTO in capsys.readouterr().err) != recorded
