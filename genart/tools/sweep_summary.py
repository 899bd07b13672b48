"""The ends of a sweep: joblib's launcher swapped for one that survives a killed job; a summary of
failed jobs (exit ≠ 0) and a W&B comparison table per group.

Registered as a Hydra callback (`hydra.callbacks.sweep_summary` in conf/config.yaml), so it runs
in the launching process whatever the launcher (basic, joblib, Ray, Slurm).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, open_dict, read_write

JOBLIB = "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"
JOBLIB_SAFE = "hydra_plugins.genart_launcher.joblib_safe.JoblibSafeLauncher"


def read_results(sweep_dir: Path) -> list[dict]:
    """Every job's result.json (a job dir without one failed before writing anything)."""
    jobs = []
    for job_dir in sorted(
        (p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()),
        key=lambda p: int(p.name),
    ):
        path = job_dir / "result.json"
        if path.exists():
            result = json.loads(path.read_text())
        else:
            result = {"status": "failed", "error": "no result.json (the job died before finishing)"}
        jobs.append({"dir": job_dir, **result})
    return jobs


def summarise(jobs: list[dict]) -> str:
    if not jobs:
        return (
            "genart sweep: no job ran. A glob() over presets sees only the top level of conf/preset; "
            "for the Doorways catalogue sweep '+preset/doorways=glob(*)'."
        )
    failed = [j for j in jobs if j.get("status") != "ok"]
    lines = [f"genart sweep: {len(jobs) - len(failed)} of {len(jobs)} jobs succeeded."]
    for job in failed:
        lines.append(f"  FAILED {job['dir']}: {job.get('error') or 'see error.txt'}")
    ranked = sorted((j for j in jobs if j.get("score") is not None), key=lambda j: -j["score"])
    if ranked:
        lines.append(f"  best score {ranked[0]['score']:.4f}: {ranked[0]['dir']}")
    return "\n".join(lines)


class SweepCallback(Callback):
    """on_multirun_start: `hydra/launcher=joblib` runs on joblib_safe's launcher; on_multirun_end:
    print the summary, remember failures for the exit code, log W&B tables."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        """Same settings, one process per job: a job the OS kills is one failed job, where joblib's
        pool would end the sweep (hydra_plugins/genart_launcher). Hydra builds the launcher from
        this config right after this hook."""
        launcher = config.hydra.launcher
        if launcher.get("_target_") == JOBLIB and importlib.util.find_spec(
            "hydra_plugins.genart_launcher"
        ):
            with read_write(launcher), open_dict(launcher):
                launcher._target_ = JOBLIB_SAFE

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        from genart import cli

        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            return
        jobs = read_results(sweep_dir)
        print(summarise(jobs), file=sys.stderr)
        cli.FAILED_JOBS.extend(
            (str(j["dir"]), j.get("error") or "") for j in jobs if j.get("status") != "ok"
        )
        (sweep_dir / "summary.json").write_text(
            json.dumps([{**j, "dir": str(j["dir"])} for j in jobs], indent=2)
        )
        logger = config.get("logger")
        if logger and "Wandb" in str(logger.get("_target_", "")):
            log_tables(jobs, sweep_dir, logger)


def log_tables(jobs: list[dict], sweep_dir: Path, logger: DictConfig) -> None:
    """One summary run per W&B group, holding a Table: thumbnail, overrides, seed, score."""
    import wandb

    groups: dict[str, list[dict]] = {}
    for job in jobs:
        groups.setdefault(job_group(job["dir"]), []).append(job)
    for group, members in groups.items():
        run = wandb.init(
            mode=logger.get("mode", "offline"),
            project=logger.get("project"),
            entity=logger.get("entity"),
            dir=str(sweep_dir),
            group=group,
            name=f"summary: {group}",
            job_type="sweep-summary",
            reinit="create_new",
            settings=wandb.Settings(console="off", silent=True),
        )
        table = wandb.Table(columns=["thumbnail", "overrides", "seed", "score", "status", "job"])
        for job in members:
            final = Path(job["dir"]) / "final.png"
            thumb = wandb.Image(str(final)) if final.exists() else None
            table.add_data(
                thumb,
                " ".join(job.get("overrides") or []),
                job.get("seed"),
                job.get("score"),
                job.get("status"),
                Path(job["dir"]).name,
            )
        run.log({"sweep": table})
        run.finish()


def job_group(job_dir: Path) -> str:
    """The group the job's W&B run used (Hydra's override_dirname without the seed)."""
    from omegaconf import OmegaConf

    hydra_yaml = Path(job_dir) / ".hydra" / "hydra.yaml"
    if not hydra_yaml.exists():
        return "default"
    return OmegaConf.load(hydra_yaml).hydra.job.override_dirname or "default"
