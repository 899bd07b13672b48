"""checkpoint.pt (θ, the updater's state, step, RNG states, callbacks' state) so a killed run resumes exactly.

Callbacks with `checkpoint_state(report)` / `load_checkpoint_state(saved)` (stats: positional sums,
best-match wins not yet written) are saved in the same file, so one atomic write keeps everything
at one step; a kill between two files could leave them a save step apart.
"""

from __future__ import annotations

from pathlib import Path

import torch

from genart.callbacks import Callback
from genart.files import load_untrusted, unreadable, write_atomic
from genart.runtime import rng_state

WHAT = "checkpoint"


class CheckpointCallback(Callback):
    def on_start(self, run) -> None:
        self.run = run
        self.path = Path(run.run_dir) / "checkpoint.pt"

    def on_step(self, report: dict) -> None:
        if report["save"]:
            extra = {
                type(cb).__name__: cb.checkpoint_state(report)
                for cb in self.run.callbacks
                if hasattr(cb, "checkpoint_state")
            }
            save_checkpoint(self.path, self.run.generator, self.run.updater, report["step"], extra)


def save_checkpoint(path: Path, generator, updater, step: int, callbacks: dict | None = None):
    """Write atomically: a kill or a full disk during the write leaves the previous checkpoint intact.

    The updater's state goes under "optimizer", the key it had when the optimiser was the only
    updater, so those checkpoints still resume.
    """
    payload = {
        "step": step,
        "theta": [p.detach().cpu() for p in generator.theta()],
        "optimizer": updater.state_dict(),
        "rng": rng_state(),
        "callbacks": callbacks or {},
    }
    write_atomic(path, lambda tmp: torch.save(payload, tmp))


def load_checkpoint_into(path: Path, generator, updater, steps: int) -> dict:
    """Restore θ and the updater from a checked payload; return it (step, rng, callbacks)."""
    payload = load_untrusted(path, WHAT)
    params = list(generator.theta())
    check_payload(path, payload, params, steps)
    try:
        updater.load_state_dict(payload["optimizer"])
    except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as err:
        raise unreadable(path, WHAT, f"its optimiser state does not fit this run ({err})") from None
    with torch.no_grad():
        for param, saved in zip(params, payload["theta"], strict=True):
            param.copy_(saved.to(param.device))
    return payload


def check_payload(path: Path, payload, params: list, steps: int) -> None:
    """A dict of the keys genart writes, θ shaped like this run's and finite, a step in 1..steps."""
    if not isinstance(payload, dict):
        raise unreadable(path, WHAT, f"it holds a {type(payload).__name__}, not genart's dict")
    missing = [k for k in ("step", "theta", "optimizer", "rng") if k not in payload]
    if missing:
        raise unreadable(path, WHAT, f"it lacks {', '.join(missing)}")
    step, theta = payload["step"], payload["theta"]
    if not isinstance(step, int) or not 1 <= step <= steps:
        raise unreadable(path, WHAT, f"its step {step!r} is not one of this run's 1..{steps}")
    if not isinstance(theta, list | tuple) or len(theta) != len(params):
        raise unreadable(path, WHAT, f"it does not hold this run's {len(params)} θ tensors")
    for saved, param in zip(theta, params, strict=True):
        if not torch.is_tensor(saved) or saved.shape != param.shape:
            shape = tuple(saved.shape) if torch.is_tensor(saved) else type(saved).__name__
            raise unreadable(path, WHAT, f"θ is {shape}, this run's is {tuple(param.shape)}")
        if not bool(torch.isfinite(saved).all()):
            raise unreadable(path, WHAT, "θ holds NaN or infinite values")
    if not isinstance(payload.get("callbacks", {}), dict):
        raise unreadable(path, WHAT, "its callbacks' state is not a dict")
