"""A search's own W&B run: mean and best fitness per generation, and a table of its images.

One run per search (its id kept in search.db, so a resumed search logs to the same run). It is
opened at each generation's end and finished at once: a basic-launcher job's own wandb.init in
this process would finish any run left open. The x-axis is `generation`.
"""

from __future__ import annotations

import os
from pathlib import Path

from genart.search.evolution import Generation
from genart.search.store import SearchStore


class SearchLog:
    def __init__(self, settings: dict, sweep_dir: Path, store: SearchStore) -> None:
        self.settings, self.sweep_dir, self.store = settings, sweep_dir, store
        known = store.settings().get("wandb_id")
        if known is None:
            from wandb.sdk.lib import runid

            known = runid.generate_id()
            store.save_settings({"wandb_id": known})
        self.id = known

    @classmethod
    def from_config(cls, config, sweep_dir: Path, store: SearchStore) -> SearchLog | None:
        """None when the config logs nothing to W&B (logger=none, or mode disabled)."""
        from omegaconf import OmegaConf

        from genart.tools.sweep_summary import wandb_settings

        node = config.get("logger")
        logger = OmegaConf.to_container(node, resolve=True) if node else {}
        if not logger.get("wandb") and "_target_" not in logger:  # an old single node: W&B
            return None
        settings = wandb_settings(config)
        if settings.get("mode") == "disabled":
            return None
        return cls(settings, sweep_dir, store)

    def log_generation(self, generation: Generation) -> None:
        import wandb

        os.environ.setdefault("WANDB_SILENT", "true")
        run = wandb.init(
            **self.settings,
            id=self.id,
            resume="allow",
            dir=str(self.sweep_dir),
            name=f"search {self.sweep_dir.name}",
            job_type="search",
            reinit="create_new",
            settings=wandb.Settings(console="off", silent=True),
        )
        try:
            run.define_metric("generation")
            run.define_metric("fitness/*", step_metric="generation")
            table = wandb.Table(
                columns=[
                    "image",
                    "generation",
                    "individual",
                    "repeat",
                    "prompt",
                    "score",
                    "fitness",
                ]
            )
            for e, outcome in generation.evaluations:
                image = outcome.image if outcome.image and Path(outcome.image).exists() else None
                table.add_data(
                    wandb.Image(image) if image else None, e.generation, e.individual, e.repeat,
                    e.prompt, outcome.score, generation.fitness[e.individual],
                )  # fmt: skip
            run.log(
                {
                    "generation": generation.number,
                    "fitness/mean": generation.mean,
                    "fitness/best": generation.best,
                    f"images/generation_{generation.number}": table,
                }
            )
        finally:
            run.finish()
