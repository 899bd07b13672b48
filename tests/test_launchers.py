"""genart.launchers.JobProcesses: every call in its own process; a dead process is a LostJob."""

from __future__ import annotations

import signal

from genart.launchers import JobProcesses, LostJob
from tests.killer import die, square


def test_a_dead_job_is_a_lost_job_and_the_others_return() -> None:
    calls = [(square, (2,)), (die, ("sigkill",)), (square, (3,)), (die, ("exit",)), (square, (4,))]
    results = JobProcesses(n_jobs=2).run(calls)
    assert results[0::2] == [4, 9, 16]
    assert results[1] == LostJob(1, -signal.SIGKILL) and results[3] == LostJob(3, 3)
    assert results[1].reason.startswith("its process was killed by signal 9 (SIGKILL")
    assert "exited with status 3" in results[3].reason
