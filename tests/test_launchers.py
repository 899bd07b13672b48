"""genart.launchers.JobProcesses: calls on long-lived worker processes; a dead worker is a LostJob
for its current call only, and a fresh worker runs the rest."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from genart.launchers import JobProcesses, LostJob
from tests.killer import die, fail, square, stamp, touch

REMEMBERED = None  # set by one call, read by a later one on the same worker (as a model cache is)


def remember(value: int) -> int:
    global REMEMBERED
    REMEMBERED = value
    return os.getpid()


def recall() -> tuple[int, int | None]:
    return os.getpid(), REMEMBERED


def pid() -> int:
    return os.getpid()


def wait_to_be_killed(path: str) -> None:
    """Say which process runs this call, then wait for a kill -9 from outside."""
    Path(path + ".part").write_text(str(os.getpid()))
    os.replace(path + ".part", path)
    time.sleep(60)


def interrupt_the_sweep_then_save(path: str) -> None:
    """Ctrl-C the parent (as a terminal's Ctrl-C does), then take a second to save."""
    os.kill(os.getppid(), signal.SIGINT)
    time.sleep(1)
    touch(path)


def kill_9_when_written(path: Path) -> threading.Thread:
    def kill() -> None:
        deadline = time.monotonic() + 60
        while not path.exists():
            if time.monotonic() > deadline:
                return  # the call never ran: the test's asserts say so
            time.sleep(0.01)
        os.kill(int(path.read_text()), signal.SIGKILL)

    thread = threading.Thread(target=kill, daemon=True)
    thread.start()
    return thread


def assert_gone(pids: list[int]) -> None:
    assert multiprocessing.active_children() == []
    for p in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(p, 0)  # reaped, not a zombie either


def test_a_dead_job_is_a_lost_job_and_the_others_return() -> None:
    calls = [(square, (2,)), (die, ("sigkill",)), (square, (3,)), (die, ("exit",)), (square, (4,))]
    results = JobProcesses(n_jobs=2).run(calls)
    assert results[0::2] == [4, 9, 16]
    assert results[1] == LostJob(1, -signal.SIGKILL) and results[3] == LostJob(3, 3)
    assert results[1].reason.startswith("its process was killed by signal 9 (SIGKILL")
    assert "exited with status 3" in results[3].reason


def test_an_error_in_one_call_is_raised_after_the_others_finish(tmp_path) -> None:
    calls = [(fail, ("bad config",)), (die, ("sigkill",)), (touch, (str(tmp_path / "done"),))]
    with pytest.raises(ValueError, match="bad config"):
        JobProcesses(n_jobs=1).run(calls)  # one at a time: the failure came first
    assert (tmp_path / "done").exists()


def test_at_most_n_jobs_run_at_once(tmp_path) -> None:
    calls = [(stamp, (str(tmp_path / f"{i}"),)) for i in range(3)]
    JobProcesses(n_jobs=1).run(calls)
    spans = sorted(tuple(map(float, (tmp_path / f"{i}").read_text().split())) for i in range(3))
    assert all(end <= start for (_, end), (start, _) in zip(spans, spans[1:], strict=False))


def test_a_worker_runs_its_calls_in_one_process_that_keeps_module_state() -> None:
    first, (second, seen) = JobProcesses(n_jobs=1).run([(remember, (7,)), (recall, ())])
    assert first == second != os.getpid()
    assert seen == 7


def test_a_worker_killed_mid_call_loses_that_call_and_a_fresh_worker_runs_the_rest(
    tmp_path,
) -> None:
    victim = tmp_path / "victim.pid"
    killer = kill_9_when_written(victim)
    calls = [(pid, ()), (wait_to_be_killed, (str(victim),)), (pid, ()), (pid, ())]
    results = JobProcesses(n_jobs=1).run(calls)
    killer.join(timeout=60)
    killed = int(victim.read_text())
    assert results[0] == killed  # the first call ran on the worker that was killed in the second
    assert results[1] == LostJob(1, -signal.SIGKILL)
    assert results[2] == results[3] != killed  # one fresh worker, which persists in turn
    assert_gone(results[0::2])


def test_max_jobs_per_worker_replaces_a_worker() -> None:
    results = JobProcesses(n_jobs=1, max_jobs_per_worker=2).run([(pid, ())] * 3)
    assert results[0] == results[1] != results[2]
    assert_gone(results)


@pytest.mark.parametrize(
    ("calls", "raises"),
    [
        ([(pid, ())] * 3, None),
        ([(pid, ()), (fail, ("bad config",)), (pid, ())], ValueError),
        ([(pid, ()), (die, ("sigkill",)), (pid, ()), (die, ("exit",))], None),
    ],
    ids=["ok", "raised", "lost"],
)
def test_no_worker_outlives_run(calls, raises) -> None:
    pool = JobProcesses(n_jobs=2)
    if raises:
        with pytest.raises(raises):
            pool.run(calls)
        assert multiprocessing.active_children() == []
    else:
        assert_gone([r for r in pool.run(calls) if isinstance(r, int)])


def test_ctrl_c_lets_a_running_call_save_then_ends_every_worker(tmp_path) -> None:
    saved = tmp_path / "saved"
    calls = [(interrupt_the_sweep_then_save, (str(saved),)), (pid, ()), (pid, ())]
    with pytest.raises(KeyboardInterrupt):
        JobProcesses(n_jobs=2).run(calls)
    assert saved.exists()
    assert multiprocessing.active_children() == []


def test_an_unpicklable_result_comes_back_as_an_error() -> None:
    with pytest.raises(RuntimeError, match="cannot be sent"):
        JobProcesses(n_jobs=1).run([(threading.Lock, ())])
