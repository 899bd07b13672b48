"""A failed resume leaves the run's own record alone, and a full disk cannot hide an error."""

from __future__ import annotations

import errno
import json
import pathlib
from pathlib import Path

import pytest
from omegaconf import OmegaConf, open_dict

from tests.conftest import TINY

FAST = [*TINY, "size=[64,64]", "steps=4", "save_every=2", "log_every=2"]


def job(overrides: list[str], output_dir: Path) -> float:
    """genart.app.run_job as `python -m genart <overrides>` calls it, in-process: the Hydra config
    is set and .hydra/ written as Hydra writes them."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    from genart.app import run_job

    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
    HydraConfig.instance().set_config(cfg)
    (output_dir / ".hydra").mkdir(parents=True, exist_ok=True)
    task = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    OmegaConf.save(task, output_dir / ".hydra/config.yaml")
    OmegaConf.save(OmegaConf.create({"hydra": cfg.hydra}), output_dir / ".hydra/hydra.yaml")
    OmegaConf.save(OmegaConf.create(overrides), output_dir / ".hydra/overrides.yaml")
    return run_job(task)


def failing_job(overrides: list[str], output_dir: Path, capsys) -> str:
    """Run a job that must fail with a user error; its stderr."""
    with pytest.raises(SystemExit) as exit_:
        job(overrides, output_dir)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "During handling" not in err, err
    return err


def record(run_dir: Path) -> dict[str, bytes]:
    return {
        n: (run_dir / n).read_bytes()
        for n in ("result.json", "error.txt")
        if (run_dir / n).exists()
    }


def finished_run_with_init(tmp_path) -> tuple[Path, Path]:
    from PIL import Image

    image = tmp_path / "init.png"
    Image.new("RGB", (64, 64), (200, 40, 40)).save(image)
    run_dir = tmp_path / "run"
    job([*FAST, f"init.image={image}"], run_dir)
    assert json.loads((run_dir / "result.json").read_text())["status"] == "ok"
    return run_dir, image


@pytest.mark.parametrize("damage", ["deleted init image", "corrupt checkpoint"])
def test_a_failed_resume_leaves_the_runs_record_alone(tmp_path, capsys, damage):
    run_dir, image = finished_run_with_init(tmp_path)
    before = record(run_dir)
    if damage == "deleted init image":
        image.unlink()
    else:
        (run_dir / "checkpoint.pt").write_bytes(b"not a checkpoint")
    err = failing_job([f"resume={run_dir}"], tmp_path / "resume_cmd", capsys)
    assert record(run_dir) == before, (
        "the run's own result.json (ok) and error.txt stay as they were"
    )
    (saved,) = (run_dir / "resume-errors").glob("*.txt")
    assert str(saved) in err, "the message says where this resume's error went"
    reason = "init.png" if damage == "deleted init image" else "checkpoint"
    assert reason in saved.read_text() and reason in err


def test_a_run_that_failed_before_saving_is_not_resumed(tmp_path, capsys):
    run_dir = tmp_path / "run"
    failing_job([*FAST, "prompts.text=sea:abc"], run_dir, capsys)
    before = record(run_dir)
    assert set(before) == {"result.json", "error.txt"}
    err = failing_job([f"resume={run_dir}"], tmp_path / "resume_cmd", capsys)
    assert "failed before it saved a checkpoint.pt" in err and "sea:abc" in err
    assert "python -m genart" in err and "prompts.text=sea:abc" in err, "how to start it again"
    assert record(run_dir) == before
    assert len(list((run_dir / "resume-errors").glob("*.txt"))) == 1


def test_a_run_that_failed_after_a_checkpoint_resumes_from_it(tmp_path, capsys, monkeypatch):
    import genart.render
    from genart.errors import UserError

    real_step = genart.render.guided_step

    def fails_at_step_3(run, step):
        if step == 2:  # the third step: checkpoint.pt of step 2 is on disk
            raise UserError("a passing failure at step 3")
        return real_step(run, step)

    monkeypatch.setattr(genart.render, "guided_step", fails_at_step_3)
    run_dir = tmp_path / "run"
    failing_job(FAST, run_dir, capsys)
    assert json.loads((run_dir / "result.json").read_text())["status"] == "failed"
    monkeypatch.setattr(genart.render, "guided_step", real_step)
    job([f"resume={run_dir}"], tmp_path / "resume_cmd")
    result = json.loads((run_dir / "result.json").read_text())
    assert result["status"] == "ok" and result["overrides"] == FAST, "the run's own overrides"
    assert not (run_dir / "error.txt").exists(), "no error.txt beside an ok result.json"
    (earlier,) = (run_dir / "resume-errors").glob("*-before-resume.txt")
    assert "passing failure" in earlier.read_text()


@pytest.mark.parametrize("full", ["error.txt", "result.json", "both"])
def test_a_full_disk_still_shows_the_error_and_leaves_no_torn_record(
    tmp_path, capsys, monkeypatch, full
):
    real_write = pathlib.Path.write_text
    names = {"error.txt.part", "result.json"} if full == "both" else {full, full + ".part"}

    def write_text(self, data, *args, **kwargs):
        if self.name in names:
            real_write(self, data[: len(data) // 2])  # a torn file, as a full disk leaves it
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real_write(self, data, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "write_text", write_text)
    run_dir = tmp_path / "run"
    err = failing_job([*FAST, "prompts.text=sea:abc"], run_dir, capsys)
    assert '"sea:abc"' in err, "the original paragraph"
    assert "could not record this" in err and "No space left on device" in err
    left = {p.name for p in run_dir.iterdir()}
    assert not {"error.txt.part", "result.json.part"} & left
    assert ("error.txt" in left) == (full == "result.json")
    if "error.txt" in left:
        assert (run_dir / "error.txt").read_text().startswith("UserError:")
    assert "result.json" not in left, "no torn result.json"


def test_a_full_disk_during_a_failed_resume_leaves_no_empty_error_file(tmp_path, monkeypatch):
    from genart.app import record_resume_failure
    from genart.errors import UserError

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(self))

    monkeypatch.setattr(pathlib.Path, "write_text", full)
    note = record_resume_failure(tmp_path, UserError("the image is gone"))
    assert "could not record this" in note and "No space left on device" in note
    assert list((tmp_path / "resume-errors").iterdir()) == []
