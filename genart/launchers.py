"""Sweep jobs in local processes, one process per job, so a job killed by the OS (OOM, kill -9)
is one failed job instead of the end of the sweep (joblib's pool breaks: TerminatedWorkerError).

`JobProcesses` runs any picklable calls this way (the evolutionary search can use it); the Hydra
launcher `hydra/launcher=joblib_safe` (hydra_plugins/genart_launcher: Hydra loads launchers only
from the hydra_plugins package) is hydra-joblib-launcher with it underneath.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import wait
from typing import Any

from joblib.externals import cloudpickle


@dataclass
class LostJob:
    """A job whose process ended without handing back a result."""

    index: int
    exitcode: int | None

    @property
    def reason(self) -> str:
        if self.exitcode is not None and self.exitcode < 0:
            sig = signal.Signals(-self.exitcode).name
            why = ", as the out-of-memory killer does" if sig == "SIGKILL" else ""
            return f"its process was killed by signal {-self.exitcode} ({sig}{why})"
        return f"its process exited with status {self.exitcode} before handing back a result"


class JobProcesses:
    """Run each call in a fresh process (spawned: nothing half-initialised is inherited), at most
    `n_jobs` at once; results come back in order, a process that dies comes back as a `LostJob`.
    A call that raises does not stop the others: the first such error is raised once all end."""

    def __init__(self, n_jobs: int = -1) -> None:
        self.n_jobs = max(1, os.cpu_count() or 1) if n_jobs is None or n_jobs < 1 else n_jobs
        self.context = multiprocessing.get_context("spawn")

    def run(self, calls: Sequence[tuple[Callable, tuple]]) -> list[Any]:
        _quiet_resource_tracker()
        results: list[Any] = [None] * len(calls)
        waiting, running = list(enumerate(calls)), {}
        try:
            while waiting or running:
                while waiting and len(running) < self.n_jobs:
                    index, call = waiting.pop(0)
                    running[index] = self._start(call)
                self._collect(running, results)
        finally:
            for process, _ in running.values():  # interrupted (Ctrl-C reached the jobs too):
                process.join(timeout=10)  # let each save what it has, then leave no orphan
                process.kill()
        raised = [r.error for r in results if isinstance(r, _Raised)]
        if raised:
            raise raised[0]
        return results

    def _start(self, call: tuple[Callable, tuple]) -> tuple[Any, Any]:
        receive, send = self.context.Pipe(duplex=False)
        process = self.context.Process(target=_run_in_child, args=(cloudpickle.dumps(call), send))
        process.start()
        send.close()  # the child holds the only sending end: its death closes the pipe
        return process, receive

    @staticmethod
    def _collect(running: dict, results: list) -> None:
        """Wait until some job sends its result or its pipe closes (the process died)."""
        ready = wait([receive for _, receive in running.values()])
        for index, (process, receive) in list(running.items()):
            if receive in ready:
                try:
                    results[index] = cloudpickle.loads(receive.recv_bytes())
                except EOFError:
                    process.join()
                    results[index] = LostJob(index, process.exitcode)
                process.join()
                receive.close()
                del running[index]


@dataclass
class _Raised:
    error: BaseException


def _run_in_child(payload: bytes, send: Any) -> None:
    function, args = cloudpickle.loads(payload)
    try:
        result = function(*args)
    except Exception as e:
        result = _Raised(e)
    try:
        data = cloudpickle.dumps(result)
    except Exception as e:  # an unpicklable return value or exception: keep what can travel
        data = cloudpickle.dumps(_Raised(RuntimeError(f"a job's result cannot be sent: {e!r}")))
    send.send_bytes(data)


def _quiet_resource_tracker() -> None:
    """Start multiprocessing's resource tracker without its leak warning: a killed job cannot
    release the locks it made (tqdm's), and the tracker frees them at exit anyway."""
    from multiprocessing import resource_tracker

    flag = "ignore:resource_tracker:UserWarning"
    sys.warnoptions.append(flag)  # the tracker process starts with the interpreter's -W flags
    try:
        resource_tracker.ensure_running()
    finally:
        sys.warnoptions.remove(flag)
