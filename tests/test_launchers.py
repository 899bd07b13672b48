"""genart.launchers.JobProcesses: every call in its own process; a dead process is a LostJob."""

from __future__ import annotations

import signal

import pytest

from genart.launchers import JobProcesses, LostJob
from tests.killer import die, fail, square, stamp, touch


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
