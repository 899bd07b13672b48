"""Weights & Biases: one W&B run per genart run, offline unless the user opts in.

Logs the resolved config, every loss term and an image every `log_every` steps, then the final
image, the trajectory video, the score and the best-match table. Resumes the same W&B run by id.
"""

from __future__ import annotations

import csv
import os
import uuid
from pathlib import Path

from genart.callbacks import Callback


class WandbCallback(Callback):
    def __init__(
        self,
        mode: str = "offline",
        project: str = "genart",
        entity: str | None = None,
        log_images: bool = True,
    ):
        self.mode, self.project, self.entity, self.log_images = mode, project, entity, log_images

    def on_start(self, run) -> None:
        import wandb

        self.run_dir = Path(run.run_dir)
        id_file = self.run_dir / "wandb_id.txt"
        run_id = id_file.read_text().strip() if id_file.exists() else uuid.uuid4().hex[:12]
        id_file.write_text(run_id)
        os.environ.setdefault("WANDB_SILENT", "true")
        self.wandb = wandb
        self.run = wandb.init(
            mode=self.mode,
            project=self.project,
            entity=self.entity,
            dir=str(self.run_dir),
            id=run_id,
            resume="allow",
            config=run.config,
            group=run.meta.get("group"),
            name=run.meta.get("name"),
            tags=run.meta.get("tags"),
            job_type="render",
            settings=wandb.Settings(console="off", silent=True),
        )

    def on_step(self, state: dict) -> None:
        if not state["log"]:
            return
        row = {f"loss/{k}": float(v.detach()) for k, v in state["terms"].items()}
        row["loss/total"] = float(state["total"].detach())
        if self.log_images:
            from genart.images import to_pil

            row["image"] = self.wandb.Image(
                to_pil(state["image"]()), caption=f"step {state['step']}"
            )
        self.run.log(row, step=state["step"])

    def on_abort(self) -> None:
        self.run.finish(exit_code=1)

    def on_end(self, state: dict) -> None:
        final, video = self.run_dir / "final.png", self.run_dir / "trajectory.mp4"
        summary = {"score": state.get("score")}
        if final.exists():
            summary["final_image"] = self.wandb.Image(str(final))
        if video.exists():
            self.run.log(
                {"trajectory": self.wandb.Video(str(video), format="mp4")}, step=state["step"]
            )
        totals = self.run_dir / "stats" / "best_match_totals.csv"
        if totals.exists():
            with totals.open() as f:
                rows = list(csv.reader(f))
            self.run.log(
                {"best_match": self.wandb.Table(columns=rows[0], data=rows[1:])}, step=state["step"]
            )
        self.run.summary.update(summary)
        self.run.finish()
