"""Weights & Biases: one W&B run per genart run, offline unless the user opts in.

Logs the resolved config, every loss term and an image every `log_every` steps, then the final
image, the score, and the trajectory video and best-match table that the callbacks before it put
in the end report. The run's W&B identity (id,
name, group, tags) is kept in `wandb_run.json` when it starts, so a resume continues the same W&B
run in its sweep group, whatever the `resume=…` command looked like.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from pathlib import Path

from genart.callbacks import Callback
from genart.errors import UserError
from genart.files import write_atomic

IDENTITY = "wandb_run.json"
_RUN_ID = re.compile(r"^[\w-]{1,64}$")  # W&B ids name directories: no slashes or dots


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
        identity = run_identity(self.run_dir, run.meta)
        os.environ.setdefault("WANDB_SILENT", "true")
        self.wandb = wandb
        self.run = wandb.init(
            mode=self.mode,
            project=self.project,
            entity=self.entity,
            dir=str(self.run_dir),
            resume="allow",
            config=run.config,
            job_type="render",
            settings=wandb.Settings(console="off", silent=True),
            **identity,
        )

    def on_step(self, report: dict) -> None:
        if not report["log"]:
            return
        row = {f"loss/{k}": float(v.detach()) for k, v in report["terms"].items()}
        row["loss/total"] = float(report["total"].detach())
        if self.log_images:
            from genart.images import to_pil

            row["image"] = self.wandb.Image(
                to_pil(report["image"]()), caption=f"step {report['step']}"
            )
        self.run.log(row, step=report["step"])

    def on_abort(self) -> None:
        self.run.finish(exit_code=1)

    def on_end(self, report: dict) -> None:
        """The final image and score, and what the callbacks before it added to the report: the
        trajectory video (`video`) and the best-match table (`best_match_totals`)."""
        from genart.images import to_pil

        step = report["step"]
        if report.get("video") is not None:
            self.run.log(
                {"trajectory": self.wandb.Video(str(report["video"]), format="mp4")}, step=step
            )
        totals = report.get("best_match_totals")
        if totals:
            self.run.log(
                {"best_match": self.wandb.Table(columns=totals[0], data=totals[1:])}, step=step
            )
        final = self.wandb.Image(to_pil(report["image"]()), caption="final")
        self.run.summary.update({"score": report.get("score"), "final_image": final})
        self.run.finish()


def run_identity(run_dir: Path, meta: dict) -> dict:
    """id, name, group, tags: those the run started with (wandb_run.json), else new ones from
    `meta`, stored before wandb.init so a kill at any later point resumes the same W&B run."""
    path = run_dir / IDENTITY
    if path.exists():
        return read_identity(path)
    legacy = run_dir / "wandb_id.txt"  # runs from before wandb_run.json kept only the id
    run_id = legacy.read_text().strip() if legacy.exists() else uuid.uuid4().hex[:12]
    identity = {
        "id": run_id,
        "name": meta.get("name"),
        "group": meta.get("group"),
        "tags": list(meta.get("tags") or []),
    }
    text = json.dumps(identity, indent=2)
    write_atomic(path, lambda tmp: tmp.write_text(text))  # a full disk: one paragraph, no .part
    return identity


def read_identity(path: Path) -> dict:
    """The stored identity, checked: a resumed dir may come from anyone."""
    try:
        stored = json.loads(path.read_text())
        identity = {k: stored[k] for k in ("id", "name", "group", "tags")}
        texts = [identity["name"], identity["group"], *identity["tags"]]
        valid = (
            _RUN_ID.match(str(identity["id"]))
            and isinstance(identity["tags"], list)
            and all(t is None or isinstance(t, str) for t in texts)
        )
    except (OSError, ValueError, KeyError, TypeError):
        valid = False
    if not valid:
        raise UserError(
            f"{path} is not a W&B identity genart wrote (an id of letters, digits, - and _, and "
            f"text name, group and tags). Restore it from a copy of {path.parent}, or delete it "
            "to continue the run as a new W&B run."
        )
    return identity
