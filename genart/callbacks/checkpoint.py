"""checkpoint.pt (θ, optimiser state, step, RNG states) so a killed run can be resumed exactly."""

from __future__ import annotations

from pathlib import Path

import torch

from genart.callbacks import Callback
from genart.runtime import rng_state


class CheckpointCallback(Callback):
    def on_start(self, run) -> None:
        self.run = run
        self.path = Path(run.run_dir) / "checkpoint.pt"

    def on_step(self, state: dict) -> None:
        if state["save"]:
            save_checkpoint(self.path, self.run.generator, self.run.optimizer, state["step"])


def save_checkpoint(path: Path, generator, optimizer, step: int) -> None:
    """Write atomically: a kill during the write leaves the previous checkpoint intact."""
    payload = {
        "step": step,
        "theta": [p.detach().cpu() for p in generator.theta()],
        "optimizer": optimizer.state_dict(),
        "rng": rng_state(),
    }
    tmp = path.with_suffix(".part")
    torch.save(payload, tmp)
    tmp.replace(path)


def load_checkpoint_into(path: Path, generator, optimizer) -> dict:
    """Restore θ and the optimiser; return the payload (step, rng) for the loop."""
    payload = torch.load(path, map_location="cpu", weights_only=True)  # never unpickle code
    with torch.no_grad():
        for param, saved in zip(generator.theta(), payload["theta"], strict=True):
            param.copy_(saved.to(param.device))
    optimizer.load_state_dict(payload["optimizer"])
    return payload
