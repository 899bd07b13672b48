"""The ends of a sweep: joblib's launcher swapped for one that survives a killed job; a summary of
failed jobs (then exit 1) and a W&B comparison table per group of the jobs that logged to W&B.

Registered as a Hydra callback (`hydra.callbacks.sweep_summary` in conf/config.yaml), so it runs
in the launching process whatever the launcher (basic, joblib, Ray, Slurm). It ends the process
itself: Hydra lets a callback's SystemExit through (it catches only Exception), and the sweep's
outcome then needs no state shared with the command line.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from genart.tools.sweep_dirs import job_dirs, read_job

JOBLIB = "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"
JOBLIB_SAFE = "hydra_plugins.genart_launcher.joblib_safe.JoblibSafeLauncher"
EVOLVE = "hydra_plugins.genart_sweeper.evolve.EvolveSweeper"


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
    print the summary, log W&B tables, exit 1 if a job failed (not after a search, whose failed
    jobs are part of its record, counted at the worst fitness)."""

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
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            return
        jobs = [read_job(d) for d in job_dirs(sweep_dir)]
        print(summarise(jobs), file=sys.stderr)
        (sweep_dir / "summary.json").write_text(
            json.dumps([{**j, "dir": str(j["dir"])} for j in jobs], indent=2)
        )
        if config.hydra.sweeper.get("_target_") == EVOLVE:
            return  # a search counted its failed jobs (search.db) and logs its own W&B run
        try:
            groups = wandb_groups(jobs)
            if groups:
                log_tables(groups, sweep_dir, wandb_settings(config))
        except Exception as err:  # noqa: BLE001 - the summary and the exit code stand without W&B
            print(f"genart sweep: no W&B tables ({type(err).__name__}: {err})", file=sys.stderr)
        if any(j["status"] != "ok" for j in jobs):
            raise SystemExit(1)  # Hydra lets it through: the sweep's exit code


def wandb_groups(jobs: list[dict]) -> dict[str, list[dict]]:
    """The W&B group of every job that logged to W&B (it kept its identity in wandb_run.json),
    with its jobs; a job of such a group that failed before W&B started joins it too."""
    from genart.callbacks.wandb import IDENTITY, read_identity

    logged = {
        str(j["dir"]): read_identity(j["dir"] / IDENTITY)["group"]
        for j in jobs
        if (j["dir"] / IDENTITY).exists()
    }
    groups: dict[str, list[dict]] = {}
    for job in jobs:
        group = logged.get(str(job["dir"])) or job_group(job["dir"])
        groups.setdefault(group, []).append(job)
    return {g: members for g, members in groups.items() if g in logged.values()}


def wandb_settings(config: DictConfig) -> dict:
    """mode, project, entity of the sweep's W&B logger (`logger.wandb`, old single node moved)."""
    from genart.callbacks.wandb import WandbCallback
    from genart.moved_keys import nest_flat_node

    logger = OmegaConf.to_container(config.get("logger") or {}, resolve=True)
    node = nest_flat_node(logger, "wandb").get("wandb") or {}
    defaults = WandbCallback()
    return {k: node.get(k, getattr(defaults, k)) for k in ("mode", "project", "entity")}


def log_tables(groups: dict[str, list[dict]], sweep_dir: Path, settings: dict) -> None:
    """One summary run per W&B group, holding a Table: thumbnail, overrides, seed, score."""
    import wandb

    for group, members in groups.items():
        run = wandb.init(
            **settings,
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
    """The group the job's W&B run would use (Hydra's override_dirname without the seed)."""
    hydra_yaml = Path(job_dir) / ".hydra" / "hydra.yaml"
    if not hydra_yaml.exists():
        return "default"
    return OmegaConf.load(hydra_yaml).hydra.job.override_dirname or "default"
