"""The Hydra task: run directory, resume, and turning failures into one clear paragraph.

A single run prints a user mistake as one paragraph and exits 2; inside a sweep (`-m`) each job
catches its own error, writes `error.txt` and a failed `result.json`, and the sweep goes on.
"""

from __future__ import annotations

import sys
import traceback
import warnings
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from genart.checks import check_config, check_prompt_source
from genart.errors import UserError

FAILED_STATUS = float("nan")  # what a failed job returns to sweepers


def job_meta() -> dict:
    """W&B group (overrides without the seed), name (the job's overrides) and tags (the preset)."""
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    overrides = list(hc.overrides.task)
    preset = hc.runtime.choices.get("preset")
    return {
        "overrides": overrides,
        "group": hc.job.override_dirname or "default",
        "name": ",".join(o for o in overrides) or "defaults",
        "tags": [preset] if preset else [],
        "multirun": str(hc.mode) == "RunMode.MULTIRUN",
    }


def run_job(cfg: DictConfig) -> float:
    """Entry for every job: resolve the run dir (or the resumed one), run, handle failures."""
    from hydra.core.hydra_config import HydraConfig

    warnings.formatwarning = lambda message, category, *args, **kwargs: f"genart: {message}\n"
    meta = job_meta()
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    one_thread_per_job(cfg)
    try:
        if cfg.get("resume"):
            cfg, run_dir = prepare_resume(cfg, meta["overrides"])
        else:
            check_prompt_source(cfg, HydraConfig.get().runtime.choices, meta["overrides"])
        check_config(cfg)  # before weights are fetched or models built
        from genart.run import run

        return run(cfg, run_dir, meta, resume=bool(cfg.get("resume")))
    except KeyboardInterrupt:
        print(
            f"\nInterrupted. Everything saved so far stays in {run_dir}; continue with:\n"
            f"  python -m genart resume={run_dir}",
            file=sys.stderr,
        )
        raise SystemExit(130) from None
    except Exception as err:  # noqa: BLE001 - every failure is recorded, user mistakes are explained
        user_error = as_user_error(err)
        record_failure(run_dir, cfg, meta, user_error or err)
        if meta["multirun"]:
            return FAILED_STATUS
        if user_error is None:
            raise
        print(f"genart: {user_error}", file=sys.stderr)
        raise SystemExit(2) from None


def one_thread_per_job(cfg: DictConfig) -> None:
    """Parallel launchers (joblib, Ray) run several jobs per machine: one torch thread each.

    The count is part of the run's record (result.json), so a preset saved from such a job
    restores it and a lone run reproduces the job's pixels.
    """
    from hydra.core.hydra_config import HydraConfig

    launcher = str(HydraConfig.get().launcher.get("_target_", "")).lower()
    if cfg.get("threads") is None and ("joblib" in launcher or "ray" in launcher):
        cfg.threads = 1


def as_user_error(err: BaseException) -> UserError | None:
    """Hydra wraps errors raised in constructors; find the UserError inside, if any."""
    while err is not None:
        if isinstance(err, UserError):
            return err
        err = err.__cause__ or err.__context__
    return None


def record_failure(run_dir: Path, cfg: DictConfig, meta: dict, err: BaseException) -> None:
    """error.txt (message, and the traceback for bugs) and a failed result.json; never deletes."""
    run_dir.mkdir(parents=True, exist_ok=True)
    detail = "" if isinstance(err, UserError) else "\n\n" + "".join(traceback.format_exception(err))
    (run_dir / "error.txt").write_text(f"{type(err).__name__}: {err}{detail}\n")
    from genart.run import write_result

    write_result(run_dir, cfg, meta, "failed", error=f"{type(err).__name__}: {err}".splitlines()[0])


def prepare_resume(cfg: DictConfig, overrides: list[str]) -> tuple[DictConfig, Path]:
    """Load the resumed run's saved config; refuse overrides that would change it."""
    run_dir = Path(cfg.resume).expanduser()
    saved_path = run_dir / ".hydra" / "config.yaml"
    if not saved_path.exists():
        raise UserError(
            f"resume={run_dir} is not a genart run directory (no .hydra/config.yaml in it). Give the "
            "directory of an earlier run, e.g. resume=outputs/2026-11-22/10-00-00."
        )
    saved = OmegaConf.load(saved_path)
    conflicts = []
    for override in overrides:
        key, _, _ = override.lstrip("+~").partition("=")
        if key == "resume":
            continue
        if OmegaConf.select(saved, key, default=None) != OmegaConf.select(cfg, key, default=None):
            conflicts.append(override)
    if conflicts:
        raise UserError(
            f"resume={run_dir} continues that run with its own saved config, but these overrides "
            f"would change it: {', '.join(conflicts)}. Resume without them, or start a new run "
            "with them instead."
        )
    saved.resume = str(run_dir)
    return saved, run_dir
