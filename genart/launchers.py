"""Sweep jobs on long-lived local worker processes, so a job killed by the OS (OOM, kill -9) is one
lost job instead of the end of the sweep (joblib's pool breaks: TerminatedWorkerError).

Workers persist across jobs, so models a job loads (genart.model_cache) serve the worker's later
jobs; a worker that dies takes only its current job with it and a fresh one takes its place.
`JobProcesses` runs any picklable calls this way (the evolutionary search can use it); the Hydra
launcher `hydra/launcher=joblib_safe` (hydra_plugins/genart_launcher: Hydra loads launchers only
from the hydra_plugins package) is hydra-joblib-launcher with it underneath.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import wait
from typing import Any

import cloudpickle  # joblib vendored it before 1.6 (joblib.externals.cloudpickle); now a dependency


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
    """Run calls on at most `n_jobs` worker processes (spawned: nothing half-initialised is
    inherited), each running one call after another; results come back in order, a call whose
    worker dies comes back as a `LostJob` and a fresh worker takes the dead one's place.
    A call that raises does not stop the others: the first such error is raised once all end.
    `max_jobs_per_worker` (default: no limit) replaces a worker after that many calls, to bound
    what a leaky job can pile up."""

    def __init__(self, n_jobs: int = -1, max_jobs_per_worker: int | None = None) -> None:
        self.n_jobs = max(1, os.cpu_count() or 1) if n_jobs is None or n_jobs < 1 else n_jobs
        self.max_jobs_per_worker = max_jobs_per_worker
        self.context = multiprocessing.get_context("spawn")

    def run(self, calls: Sequence[tuple[Callable, tuple]]) -> list[Any]:
        _quiet_resource_tracker()
        results: list[Any] = [None] * len(calls)
        waiting, workers, retired = deque(enumerate(calls)), [], []
        try:
            while True:
                self._dispatch(waiting, workers, results)
                if not any(w.index is not None for w in workers):
                    break  # nothing runs, so nothing waits either (_dispatch fills free workers)
                self._collect(workers, retired, results)
        finally:  # also when interrupted (Ctrl-C reached the workers too)
            _stop(workers + retired)
        raised = [r.error for r in results if isinstance(r, _Raised)]
        if raised:
            raise raised[0]
        return results

    def _dispatch(self, waiting: deque, workers: list[_Worker], results: list) -> None:
        """Hand waiting calls to idle workers, starting workers up to `n_jobs`."""
        while waiting:
            idle = [w for w in workers if w.index is None]
            if not idle and len(workers) >= self.n_jobs:
                return
            index, call = waiting.popleft()
            payload = cloudpickle.dumps(call)
            worker = idle[0] if idle else _Worker(self.context)
            if not idle:
                workers.append(worker)
            try:
                worker.tasks.send_bytes(payload)
                worker.index = index
            except OSError:  # it died while idle (BrokenPipeError): the call had no process
                results[index] = LostJob(index, worker.reap())
                workers.remove(worker)

    def _collect(self, workers: list[_Worker], retired: list[_Worker], results: list) -> None:
        """Wait until some worker sends a result or its pipe closes (the process died)."""
        ready = wait([w.results for w in workers])
        for worker in [w for w in workers if w.results in ready]:
            try:
                data = worker.results.recv_bytes()
            except EOFError:
                exitcode = worker.reap()
                if worker.index is not None:  # else it died idle and took no call with it
                    results[worker.index] = LostJob(worker.index, exitcode)
                workers.remove(worker)  # _dispatch starts a fresh one if calls wait
                continue
            results[worker.index], worker.index = _unpickle(data), None
            worker.done += 1
            if worker.done == self.max_jobs_per_worker:
                worker.tasks.close()  # it ends its loop and exits; _stop reaps it
                workers.remove(worker)
                retired.append(worker)


class _Worker:
    """A spawned process running the calls sent down `tasks`, results coming back on `results`;
    `index` is the call it runs now (None: idle)."""

    def __init__(self, context: Any) -> None:
        receive, self.tasks = context.Pipe(duplex=False)
        self.results, send = context.Pipe(duplex=False)
        self.process = context.Process(target=_serve, args=(receive, send))
        self.process.start()
        receive.close()  # the child holds the only other ends: closing `tasks` ends its loop,
        send.close()  # and its death closes `results`
        self.index: int | None = None
        self.done = 0

    def reap(self) -> int | None:
        """The exit code of this dead worker, its pipes closed."""
        self.process.join()
        self.tasks.close()
        self.results.close()
        return self.process.exitcode


def _stop(workers: list[_Worker], timeout: float = 10) -> None:
    """Let each worker end its call (an interrupted job saves what it has), then leave no orphan."""
    for worker in workers:
        worker.tasks.close()  # an idle worker exits at once
    deadline = time.monotonic() + timeout
    for worker in workers:
        worker.process.join(timeout=max(0.0, deadline - time.monotonic()))
        worker.process.kill()
        worker.process.join()
        worker.results.close()


@dataclass
class _Raised:
    error: BaseException


def _serve(tasks: Any, results: Any) -> None:
    """The worker's loop: run each call sent until the parent closes `tasks`."""
    while True:
        try:
            payload = tasks.recv_bytes()
        except (EOFError, KeyboardInterrupt):  # done, or Ctrl-C while idle: nothing to save
            return
        results.send_bytes(_run_call(payload))


def _run_call(payload: bytes) -> bytes:
    try:
        function, args = cloudpickle.loads(payload)
        result = function(*args)
    except Exception as e:
        result = _Raised(e)
    try:
        return cloudpickle.dumps(result)
    except Exception as e:  # an unpicklable return value or exception: keep what can travel
        return cloudpickle.dumps(_Raised(RuntimeError(f"a job's result cannot be sent: {e!r}")))


def _unpickle(data: bytes) -> Any:
    try:
        return cloudpickle.loads(data)
    except Exception as e:  # e.g. an exception class whose __init__ needs other arguments
        return _Raised(RuntimeError(f"a job's result cannot be received: {e!r}"))


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
