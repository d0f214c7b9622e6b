"""Short work the Training page runs off the page run (imports, comparisons): threads of the server process.

Training runs themselves are processes (:mod:`triage.lifecycle.jobs`); these are the minutes-long
steps around them, shared by every tab so a second tab sees the first one's import running.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from triage.records import JobPhase


class BackgroundTasks:
    """Named functions on worker threads of the server process, shared by every tab.

    ``submit`` is idempotent per key while the task runs; ``state`` returns
    ``("missing" | "running" | "done" | "failed", result or exception)``; a task may report
    progress through the ``report(done, total)`` callable it receives.
    """

    def __init__(self, workers: int = 2):
        self._workers = workers
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._tasks: dict[str, Future] = {}
        self._progress: dict[str, tuple[int, int]] = {}

    def submit(self, key: str, fn: Callable[..., object], *args: object, **kwargs: object) -> None:
        """Run ``fn(*args, report=..., **kwargs)`` on a worker thread under ``key``."""
        with self._lock:
            running = self._tasks.get(key)
            if running is not None and not running.done():
                return
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=self._workers, thread_name_prefix="triage-bg")
            self._progress[key] = (0, 0)

            def report(done: int, total: int) -> None:
                self._progress[key] = (done, total)

            self._tasks[key] = self._pool.submit(fn, *args, report=report, **kwargs)

    def state(self, key: str) -> tuple[str, object]:
        with self._lock:
            fut = self._tasks.get(key)
        if fut is None:
            return JobPhase.MISSING, None
        if not fut.done():
            return JobPhase.RUNNING, None
        exc = fut.exception()
        return (JobPhase.FAILED, exc) if exc is not None else (JobPhase.DONE, fut.result())

    def progress(self, key: str) -> tuple[int, int]:
        return self._progress.get(key, (0, 0))

    def forget(self, key: str) -> None:
        with self._lock:
            self._tasks.pop(key, None)
            self._progress.pop(key, None)


BACKGROUND = BackgroundTasks()
