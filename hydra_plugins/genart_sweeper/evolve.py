"""`hydra/sweeper=evolve`: each generation of genart's evolutionary prompt search runs as jobs
through whichever launcher is configured (basic, joblib, Ray, Slurm); see genart.search.sweep."""

from __future__ import annotations

import sys
from typing import Any

from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper

from genart.errors import UserError


class EvolveSweeper(Sweeper):
    def __init__(self, resume: str | None = None) -> None:
        self.resume = resume
        self.config = self.hydra_context = self.launcher = None

    def setup(self, *, hydra_context, task_function, config) -> None:
        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> Any:
        from genart.search.sweep import run_search

        try:
            return run_search(self, arguments)
        except UserError as err:  # one paragraph, exit 2, as a single run's user mistake
            print(f"genart: {err}", file=sys.stderr)
            raise SystemExit(2) from None
