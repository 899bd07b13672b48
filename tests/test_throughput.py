"""genart.tools.throughput: the plan interleaves the arms, the report's rows and ratios, and the
tool end to end on the tiny VQGAN (two 2-image sweeps, slow tier). No timed assertions."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import cli

from genart.generators.vqgan import VQGANGenerator, plain
from genart.guides import CLIPModel
from genart.tools import random_weights as RW
from genart.tools import throughput as T


def test_written_weights_load_through_pretrained_path(tmp_path):
    """The writers' files load into genart's own classes, weight for weight (tiny options: the
    same code path as the real architectures' files)."""
    ckpt = RW.write_vqgan_checkpoint(tmp_path / "last.ckpt", option="vqgan_tiny", seed=3)
    node = RW.option_config("generator", "vqgan_tiny")
    args = plain(node.ddconfig), node.n_embed, node.embed_dim
    loaded = VQGANGenerator([64, 64], *args, pretrained={"path": str(ckpt)}).model.state_dict()
    for key, value in VQGANGenerator([64, 64], *args, init_seed=3).model.state_dict().items():
        assert torch.equal(loaded[key], value), key
    assert "state_dict" in torch.load(ckpt, weights_only=True)

    weights = RW.write_open_clip_weights(tmp_path / "clip.bin", option="clip_tiny", seed=3)
    node = RW.option_config("guide", "clip_tiny").models.tiny
    clip = CLIPModel(node.arch, {"path": str(weights)}, model_config=node.model_config)
    for key, value in torch.load(weights, weights_only=True).items():
        assert torch.equal(clip.model.state_dict()[key], value), key


def test_plan_alternates_the_arms_and_flips_their_order_each_repeat():
    cells = T.plan(["vqgan_tiny"], [1, 2], ["per_job", "cached"], repeats=2)
    arms = [(c["workers"], c["arm"]) for c in cells]
    assert arms == [
        (1, "per_job"), (1, "cached"), (2, "per_job"), (2, "cached"),
        (1, "cached"), (1, "per_job"), (2, "cached"), (2, "per_job"),
    ]  # fmt: skip


def test_rows_take_the_median_and_the_ratio_is_cached_over_per_job():
    runs = [
        {"model": "m", "workers": 1, "arm": arm, "jobs": 4, "seconds": s, "sweep_s": s - 2}
        for arm, s in [("per_job", 60), ("cached", 30), ("cached", 50), ("per_job", 80)]
    ]
    (row,) = T.summarise(runs, ["per_job", "cached"])
    assert row["per_job"]["images_per_min"] == pytest.approx(4 * 60 / 70, abs=1e-3)
    assert row["cached"]["images_per_min"] == pytest.approx(4 * 60 / 40, abs=1e-3)
    assert row["ratio"] == pytest.approx(70 / 40, abs=1e-2)
    assert row["cached"]["seconds"] == [30, 50]


def test_the_cache_switch_is_passed_only_when_asked(tmp_path):
    weights = {"vqgan": "/w/v.ckpt", "clip": "/w/c.bin"}
    cmd = T.sweep_command("vqgan", 2, "cached", 3, tmp_path / "s", weights)
    assert "cache_models=true" in cmd and "hydra/launcher=joblib_safe" in cmd
    assert "generator.pretrained.path=/w/v.ckpt" in cmd and "seed=range(0,3)" in cmd
    plain = T.sweep_command("vqgan_tiny", 1, None, 2, tmp_path / "s", {})
    assert not any(a.startswith(("cache_models", "hydra/launcher")) for a in plain)


def test_launch_offset_reads_hydras_log_stamp():
    line = "[2026-11-24 10:20:23,758][HYDRA] Launching 2 jobs locally\n"
    start = T.datetime.datetime(2026, 11, 24, 10, 20, 21, 258000).timestamp()
    assert T.launch_offset("noise\n" + line, start) == pytest.approx(2.5)
    assert T.launch_offset("no hydra here", start) is None


@pytest.mark.slow
def test_throughput_cli_writes_the_report(tmp_path):
    out = tmp_path / "throughput.json"
    args = ["--only", "vqgan_tiny", "--workers", "1", "--jobs", "2", "--repeats", "1"]
    cache = T.has_cache_switch()
    args += ["--json", str(out)] + ([] if cache else ["--allow-missing-cache"])
    proc = cli("genart.tools.throughput", *args, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    report = json.loads(out.read_text())
    assert report["cpu"]["name"] and report["torch"] and report["cache_models_key"] == cache
    arms = ["per_job", "cached"] if cache else ["per_job"]
    assert [r["arm"] for r in report["runs"]] == arms
    (row,) = report["rows"]
    assert (row["model"], row["workers"]) == ("vqgan_tiny", 1)
    for arm in arms:
        assert row[arm]["jobs"] == 2 and row[arm]["images_per_min"] > 0
        assert len(row[arm]["seconds"]) == 1
    assert (row["ratio"] > 0) if cache else row["ratio"] is None
    assert "| vqgan_tiny | 1 | 2 |" in proc.stdout
    assert not (tmp_path / "outputs").exists()  # the sweeps ran in a temporary folder


def test_missing_cache_switch_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(T, "has_cache_switch", lambda: False)
    with pytest.raises(SystemExit, match="no top-level cache_models key.*--allow-missing-cache"):
        T.arms_or_exit(allow_missing=False)
    assert T.arms_or_exit(allow_missing=True) == ["per_job"]
