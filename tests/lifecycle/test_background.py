"""The Training page's short tasks on server threads (triage/lifecycle/background.py)."""

import threading

from triage.lifecycle.background import BackgroundTasks
from triage.records import JobPhase


def _wait_done(tasks: BackgroundTasks, key: str) -> tuple[str, object]:
    for _ in range(500):
        state = tasks.state(key)
        if state[0] not in (JobPhase.RUNNING,):
            return state
        threading.Event().wait(0.01)
    raise AssertionError(f"{key} did not finish")


def test_a_task_runs_once_per_key_while_running_and_reports_progress():
    tasks, release, calls = BackgroundTasks(workers=1), threading.Event(), []

    def work(n, report):
        calls.append(n)
        report(1, 2)
        release.wait(5)
        return n * 2

    assert tasks.state("import") == (JobPhase.MISSING, None)
    tasks.submit("import", work, 21)
    tasks.submit("import", work, 99)  # a second tab asking again while it runs: not started twice
    for _ in range(500):
        if tasks.progress("import") == (1, 2):
            break
        threading.Event().wait(0.01)
    assert tasks.state("import") == (JobPhase.RUNNING, None)
    release.set()
    assert _wait_done(tasks, "import") == (JobPhase.DONE, 42)
    assert calls == [21]


def test_a_failing_task_keeps_its_exception_and_forget_clears_it():
    tasks = BackgroundTasks(workers=1)

    def broken(report):
        raise ValueError("no images in the zip")

    tasks.submit("zip", broken)
    phase, exc = _wait_done(tasks, "zip")
    assert phase == JobPhase.FAILED and isinstance(exc, ValueError) and "no images" in str(exc)
    tasks.forget("zip")
    assert tasks.state("zip") == (JobPhase.MISSING, None) and tasks.progress("zip") == (0, 0)
