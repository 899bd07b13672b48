"""Test-only: kill the process running a search's chosen job, once (a marker file remembers)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from genart.callbacks import Callback


class KillOnce(Callback):
    """SIGKILL this process after `step` of the job whose seed is `victim`, unless `marker` exists
    (then create it first, so the resumed search runs that job in full)."""

    def __init__(self, seed: int, victim: int, marker: str, step: int = 0) -> None:
        self.doomed, self.step, self.marker = seed == victim, step, Path(marker)

    def on_step(self, report: dict) -> None:
        if self.doomed and report["step"] >= self.step and not self.marker.exists():
            self.marker.touch()
            os.kill(os.getpid(), signal.SIGKILL)
