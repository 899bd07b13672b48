"""Test-only: a callback that kills its own process (SIGKILL, as the OOM killer does) mid-run.

Used from the command line, where targets are trusted:
`+callbacks.killer._target_=tests.killer.KillAtStep +callbacks.killer.seed='${seed}' +callbacks.killer.victim=2`.
"""

from __future__ import annotations

import os
import signal
import time

from genart.callbacks import Callback


class KillAtStep(Callback):
    """SIGKILL this process after step `step` of the run whose seed is `victim`."""

    def __init__(self, seed: int, victim: int, step: int = 0) -> None:
        self.doomed, self.step = seed == victim, step

    def on_step(self, report: dict) -> None:
        if self.doomed and report["step"] >= self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def die(how: str) -> int:
    """Leave the process as a job can: killed by a signal, or exiting without a result."""
    if how == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    os._exit(3)


def square(x: int) -> int:
    return x * x


def fail(message: str) -> None:
    raise ValueError(message)


def touch(path: str) -> None:
    open(path, "w").close()


def stamp(path: str) -> None:
    """Record when this call ran (CLOCK_MONOTONIC is one clock for every process)."""
    start = time.monotonic()
    time.sleep(0.3)
    with open(path, "w") as f:
        f.write(f"{start} {time.monotonic()}")
