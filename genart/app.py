"""The Hydra task: run directory, resume, and turning failures into one clear paragraph.

A single run prints a user mistake as one paragraph and exits 2; inside a sweep (`-m`) each job
catches its own error, writes `error.txt` and a failed `result.json`, and the sweep goes on. A
failed resume leaves the run's own record alone: its error goes to `resume-errors/<time>.txt`.
"""

from __future__ import annotations

import json
import shlex
import sys
import traceback
import warnings
from datetime import datetime
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from genart.checks import check_config, check_prompt_source
from genart.errors import UserError
from genart.files import replace_atomic, write_atomic
from genart.moved_keys import saved_with_auto_precision, upgrade_config, upgrade_precision
from genart.overrides import key_of

FAILED_STATUS = float("nan")  # what a failed job returns to sweepers


def job_meta() -> dict:
    """W&B group (overrides without the seed), name (the job's overrides) and tags (the preset)."""
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    meta = meta_from(
        list(hc.overrides.task), hc.job.override_dirname, hc.runtime.choices.get("preset")
    )
    return {**meta, "multirun": str(hc.mode) == "RunMode.MULTIRUN"}


def meta_from(overrides: list[str], override_dirname: str, preset: str | None) -> dict:
    return {
        "overrides": overrides,
        "group": override_dirname or "default",
        "name": ",".join(overrides) or "defaults",
        "tags": [preset] if preset else [],
    }


def run_job(cfg: DictConfig) -> float:
    """Entry for every job: resolve the run dir (or the resumed one), run, handle failures."""
    from hydra.core.hydra_config import HydraConfig

    warnings.formatwarning = lambda message, category, *args, **kwargs: f"genart: {message}\n"
    meta = job_meta()
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    resumed = Path(cfg.resume).expanduser() if cfg.get("resume") else None
    one_thread_per_job(cfg)
    try:
        if resumed is not None:
            cfg, run_dir = prepare_resume(cfg, meta["overrides"])
            meta = resumed_meta(run_dir, meta)
        else:
            check_prompt_source(cfg, HydraConfig.get().runtime.choices, meta["overrides"])
            upgrade_old_preset_precision(cfg, meta["overrides"])
        cfg = upgrade_config(cfg, meta["overrides"])  # an old preset's logger node -> logger.wandb
        check_config(cfg)  # before weights are fetched or models built
        if resumed is None:
            record_run_info(run_dir, cfg)
        from genart.render import render

        score = render(cfg, run_dir, meta, resume=resumed is not None)
        if resumed is not None:
            retire_error(run_dir)
        return score
    except KeyboardInterrupt:
        print(
            f"\nInterrupted. Everything saved so far stays in {run_dir}; continue with:\n"
            f"  python -m genart resume={run_dir}",
            file=sys.stderr,
        )
        raise SystemExit(130) from None
    except Exception as err:  # noqa: BLE001 - every failure is recorded, user mistakes are explained
        user_error = as_user_error(err)
        if resumed is not None and is_run_dir(resumed):
            note = record_resume_failure(resumed, user_error or err)
        else:
            note = record_failure(run_dir, cfg, meta, user_error or err)
        if meta["multirun"]:
            return FAILED_STATUS
        if user_error is None:
            if note:
                print(f"genart: {note}", file=sys.stderr)
            raise
        print(f"genart: {user_error}{' ' + note if note else ''}", file=sys.stderr)
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


def upgrade_old_preset_precision(cfg: DictConfig, overrides: list[str]) -> None:
    """A preset saved before `presets save` froze the resolved precision says `precision: auto`
    and was made when auto meant fp32 on CPU: it runs under that rule (moved_keys.LEGACY_AUTO),
    unless the command line sets precision itself."""
    if any(key_of(o) == "precision" for o in overrides):
        return
    preset = chosen_preset_file()
    if preset is not None and saved_with_auto_precision(preset):
        upgrade_precision(cfg, f"preset {preset}")


def chosen_preset_file() -> Path | None:
    """The file of the `+preset=` this job composed, found on Hydra's own search path."""
    from hydra.core.hydra_config import HydraConfig

    from genart.safety import PRESET_GROUP, searchpath_dir

    runtime = HydraConfig.get().runtime
    name = runtime.choices.get(PRESET_GROUP)
    if not name:
        return None
    for source in runtime.config_sources:
        folder = searchpath_dir(f"{source.schema}://{source.path}") if source.path else None
        path = folder / PRESET_GROUP / f"{name}.yaml" if folder else None
        if path is not None and path.is_file():
            return path
    return None


def record_run_info(run_dir: Path, cfg: DictConfig) -> None:
    """run_info.json at the start: the precision the run resolved, read by a resume (a run without
    it is from before auto chose bf16 on CPU) and by `presets save` of a run that never finished."""
    from genart.runtime import pick_device
    from genart.speed.precision import cpu_bf16, resolve_precision

    info = {"precision": resolve_precision(cfg.precision, pick_device(cfg.device))}
    info["cpu_bf16"] = cpu_bf16()
    run_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(
        run_dir / "run_info.json", lambda part: part.write_text(json.dumps(info, indent=2))
    )


def as_user_error(err: BaseException) -> UserError | None:
    """Hydra wraps errors raised in constructors; find the UserError inside, if any."""
    while err is not None:
        if isinstance(err, UserError):
            return err
        err = err.__cause__ or err.__context__
    return None


def record_failure(run_dir: Path, cfg: DictConfig, meta: dict, err: BaseException) -> str:
    """error.txt (message, and the traceback for bugs) and a failed result.json; never deletes a
    complete record. Returns what the user should also read ("" when all was written)."""
    from genart.render import write_result

    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        replace_atomic(run_dir / "error.txt", lambda part: part.write_text(error_text(err)))
    except OSError as failed:
        return unrecorded(run_dir / "error.txt", failed)
    try:
        write_result(run_dir, cfg, meta, "failed", error=error_line(err))
    except OSError as failed:
        (run_dir / "result.json").unlink(missing_ok=True)  # torn JSON would misreport the run
        return unrecorded(run_dir / "result.json", failed)
    return ""


def record_resume_failure(run_dir: Path, err: BaseException) -> str:
    """A failed resume's error in resume-errors/<time>.txt: the run's own result.json and error.txt
    (its outcome before this attempt) stay as they were. Returns the sentence saying where."""
    path = None
    try:
        path = new_file(run_dir / "resume-errors", datetime.now().strftime("%Y-%m-%d_%H-%M-%S"))
        replace_atomic(path, lambda part: part.write_text(error_text(err)))
    except OSError as failed:
        if path is not None:
            path.unlink(missing_ok=True)  # the name it reserved, left empty
        return unrecorded(run_dir / "resume-errors", failed)
    return f"This resume's error is in {path}; {run_dir}'s own result.json and error.txt are unchanged."


def retire_error(run_dir: Path) -> None:
    """A resume finished the run: the error.txt of its earlier failure moves to resume-errors/,
    so it no longer sits beside an ok result.json as if it were this outcome's."""
    error = run_dir / "error.txt"
    if not error.exists():
        return
    stamp = datetime.fromtimestamp(error.stat().st_mtime).strftime("%Y-%m-%d_%H-%M-%S")
    try:
        error.replace(new_file(run_dir / "resume-errors", f"{stamp}-before-resume"))
    except OSError:  # the run itself finished: a full disk here must not turn it into a failure
        pass


def error_text(err: BaseException) -> str:
    detail = "" if isinstance(err, UserError) else "\n\n" + "".join(traceback.format_exception(err))
    return f"{type(err).__name__}: {err}{detail}\n"


def error_line(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}".splitlines()[0]


def unrecorded(path: Path, failed: OSError) -> str:
    return f"(genart could not record this in {path}: {failed.strerror or failed}.)"


def new_file(folder: Path, stem: str) -> Path:
    """folder/stem.txt, or stem-02.txt, -03…: the first name no earlier error took."""
    folder.mkdir(parents=True, exist_ok=True)
    for n in range(1, 1000):
        path = folder / (f"{stem}.txt" if n == 1 else f"{stem}-{n:02d}.txt")
        try:
            path.open("x").close()
            return path
        except FileExistsError:
            continue
    raise FileExistsError(folder / f"{stem}.txt")


def is_run_dir(path: Path) -> bool:
    return (path / ".hydra" / "config.yaml").is_file()


def prepare_resume(cfg: DictConfig, overrides: list[str]) -> tuple[DictConfig, Path]:
    """Load the resumed run's saved config; refuse overrides that would change it."""
    run_dir = Path(cfg.resume).expanduser()
    saved_path = run_dir / ".hydra" / "config.yaml"
    if not saved_path.exists():
        raise UserError(
            f"resume={run_dir} is not a genart run directory (no .hydra/config.yaml in it). Give the "
            "directory of an earlier run, e.g. resume=outputs/2026-11-22/10-00-00."
        )
    saved = upgrade_config(OmegaConf.load(saved_path))  # in the keys this version reads
    conflicts = []
    for override in overrides:
        key = key_of(override)
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
    refuse_failed_without_checkpoint(run_dir)
    if not (run_dir / "run_info.json").is_file():
        upgrade_precision(saved, f"run {run_dir}")
    for key in cfg.keys() - saved.keys():  # a part added since that run (updater): its default
        saved[key] = cfg[key]
    saved.resume = str(run_dir)
    return saved, run_dir


def refuse_failed_without_checkpoint(run_dir: Path) -> None:
    """A failed run continues from its last checkpoint.pt; one that failed before saving any has
    nothing to continue, and resuming it would only fail again the same way."""
    previous = read_result(run_dir)
    if previous.get("status") != "failed" or (run_dir / "checkpoint.pt").exists():
        return
    again = shlex.join(["python", "-m", "genart", *map(str, previous.get("overrides") or [])])
    raise UserError(
        f"resume={run_dir} failed before it saved a checkpoint.pt, so there is nothing to "
        f"continue ({previous.get('error') or 'see its error.txt'}). Fix what that says and "
        f"start the run again: {again}"
    )


def read_result(run_dir: Path) -> dict:
    """The run's result.json, or {} when it has none (killed) or it cannot be read."""
    try:
        result = json.loads((run_dir / "result.json").read_text())
    except (OSError, ValueError):
        return {}
    return result if isinstance(result, dict) else {}


def resumed_meta(run_dir: Path, meta: dict) -> dict:
    """The resumed run's own overrides, W&B group, name and tags (from its .hydra/hydra.yaml), not
    those of the `resume=…` command; the sweep mode stays this command's."""
    try:
        hydra = OmegaConf.load(run_dir / ".hydra" / "hydra.yaml").hydra
        overrides = [str(o) for o in hydra.overrides.task]
        preset = OmegaConf.select(hydra, "runtime.choices.preset", default=None)
        dirname = str(OmegaConf.select(hydra, "job.override_dirname", default="") or "")
    except Exception:  # noqa: BLE001 - no or a damaged hydra.yaml: this command's own meta
        return meta
    return {**meta, **meta_from(overrides, dirname, preset)}
