"""`hydra/launcher=joblib_safe`: hydra-joblib-launcher on genart.launchers' long-lived workers, so a
job the OS kills (out of memory, kill -9) is one failed job and the sweep goes on, while a worker's
later jobs reuse the models its earlier jobs loaded (genart.model_cache)."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

from hydra.core.utils import JobReturn, JobStatus
from hydra_plugins.hydra_joblib_launcher import joblib_launcher

from genart.launchers import JobProcesses, LostJob
from genart.run_dirs import sweep_job_dir

log = logging.getLogger(__name__)


class JoblibSafeLauncher(joblib_launcher.JoblibLauncher):
    """hydra-joblib-launcher's config and job function, run by JobProcesses' n_jobs workers (each
    runs jobs one after another and is replaced when it dies): a lost job is a failed JobReturn
    with an error.txt and a failed result.json in its dir, so the sweep summary
    (genart.tools.sweep_summary) names it and the sweep exits 1."""

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        from hydra.core.singleton import Singleton
        from hydra.core.utils import configure_log, setup_globals
        from hydra_plugins.hydra_joblib_launcher._core import execute_job

        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        pool = JobProcesses(int(self.joblib.get("n_jobs") or -1))
        log.info(f"Launching {len(job_overrides)} jobs on {pool.n_jobs} worker processes")
        state = Singleton.get_state()
        context, config, task = self.hydra_context, self.config, self.task_function
        calls = [
            (execute_job, (initial_job_idx + i, overrides, context, config, task, state))
            for i, overrides in enumerate(job_overrides)
        ]
        results = pool.run(calls)
        return [
            self._lost(initial_job_idx + i, job_overrides[i], r) if isinstance(r, LostJob) else r
            for i, r in enumerate(results)
        ]

    def _lost(self, idx: int, overrides: Sequence[str], lost: LostJob) -> JobReturn:
        job_dir = sweep_job_dir(self.hydra_context, self.config, idx, overrides)
        resume = (
            f"; continue it: python -m genart resume={job_dir}"
            if (job_dir / "checkpoint.pt").exists()
            else ""
        )
        error = f"job {idx} was lost: {lost.reason}{resume}"
        log.error(f"{job_dir}: {error}")
        job_dir.mkdir(parents=True, exist_ok=True)
        (job_dir / "error.txt").write_text(error + "\n")
        result = job_dir / "result.json"
        if not result.exists():  # the job's own record, if it wrote one before dying, wins
            record = {"status": "failed", "score": None, "overrides": list(overrides)}
            result.write_text(json.dumps({**record, "error": error}, indent=2))
        # COMPLETED, as genart's own failed jobs are: Hydra's sweeper re-raises a FAILED job's
        # error and ends the sweep; the failure lives in result.json, which the summary reads.
        ret = JobReturn(overrides=list(overrides), working_dir=str(job_dir))
        ret.status, ret._return_value = JobStatus.COMPLETED, None
        return ret
