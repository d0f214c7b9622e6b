"""The Training page's calls into the model lifecycle: check data, run, compare, promote (no streamlit here).

Pages import ``triage.ui`` only (``tests/test_ui_imports.py``); this module is the Training page's door to
:mod:`triage.lifecycle`. Each function is a thin call of the lifecycle facade, looked up when it runs, so
importing this module loads no lifecycle module and a test that patches a lifecycle function patches the
page too. Short background tasks (a data check, a comparison) are keyed strings of
:data:`triage.lifecycle.background.BACKGROUND`; their state is a ``(JobPhase, value)`` pair.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from triage import lifecycle
from triage.config import Settings
from triage.models import TASKS, active_version
from triage.records import JobPhase

if TYPE_CHECKING:
    from triage.lifecycle import ImportSummary, Job, JobStatus, PromotionVerdict
    from triage.lifecycle.promotion import ModelChange

__all__ = [
    "TASKS",
    "active",
    "cancel_run",
    "checked_summary",
    "comparison",
    "comparison_key",
    "forget_task",
    "judge",
    "load_run",
    "poll_run",
    "promote",
    "rule_text",
    "run_log",
    "run_status",
    "runs",
    "start_check",
    "start_runs",
    "task_progress",
    "task_state",
    "versions_table",
]

# ----- background tasks -------------------------------------------------------------------------


def task_state(key: str) -> tuple[str, object]:
    """``(phase, value)`` of a background task: RUNNING, DONE with its result, FAILED with the exception, or MISSING."""
    return lifecycle.BACKGROUND.state(key)


def task_progress(key: str) -> tuple[int, int]:
    """``(done, total)`` reported by a running background task."""
    return lifecycle.BACKGROUND.progress(key)


def forget_task(key: str) -> None:
    """Drop a background task's state (its result is no longer needed)."""
    lifecycle.BACKGROUND.forget(key)


# ----- data check -------------------------------------------------------------------------------


def start_check(
    cfg: Settings, source: str, value: object, task: str, previous_key: str | None, previous: dict | None
) -> str:
    """Start checking a training-data source in the background and return the task's key.

    The session's earlier check (``previous_key``, its saved summary ``previous``) is forgotten, and
    its dataset folder discarded unless a training run uses it.
    """
    if previous_key:
        lifecycle.BACKGROUND.forget(previous_key)
    if previous and previous["dataset_dir"] not in {j.data for j in lifecycle.list_jobs(cfg)}:
        lifecycle.discard(previous["dataset_dir"], cfg)
    key = f"import-{uuid.uuid4().hex}"
    lifecycle.BACKGROUND.submit(key, lifecycle.import_source, source, value, task, cfg)
    return key


def checked_summary(saved: dict, task: str) -> ImportSummary:
    """A saved data check (``ImportSummary.to_dict``) re-judged for ``task`` (the task radio may have changed)."""
    return lifecycle.recheck(lifecycle.ImportSummary.from_dict(saved), task)


# ----- runs -------------------------------------------------------------------------------------


def start_runs(cfg: Settings, task: str, dataset_dir: str, preset: str, finetune: bool, overrides: dict) -> list[Job]:
    """Start the training run(s) of ``task`` ("classifier", "segmenter" or "both") in the background."""
    return lifecycle.start_jobs(cfg, task, dataset_dir, preset, finetune, overrides)


def runs(cfg: Settings, limit: int = 30) -> list[Job]:
    """The newest ``limit`` training runs, newest first."""
    return lifecycle.list_jobs(cfg)[:limit]


def load_run(cfg: Settings, job_id: str) -> Job:
    return lifecycle.load_job(cfg, job_id)


def run_status(cfg: Settings, job: Job) -> JobStatus:
    """A run's status, read without changing anything (safe on every page render)."""
    return lifecycle.job_status(cfg, job)


def poll_run(cfg: Settings, job: Job) -> JobStatus:
    """Move a run on (reap a finished process, escalate a cancel) and return its status: the live panel only."""
    return lifecycle.poll(cfg, job)


def cancel_run(cfg: Settings, job: Job) -> None:
    lifecycle.cancel(cfg, job)


def run_log(job: Job, lines: int = 60) -> list[str]:
    """The last ``lines`` lines of a run's log."""
    return lifecycle.log_tail(job.run_dir, lines)


def active(cfg: Settings, task: str) -> str:
    """The active version of ``task`` (ModelNotFoundError when there is none)."""
    return active_version(cfg.weights_dir, task)


# ----- comparison and promotion -----------------------------------------------------------------


def comparison_key(job: Job, current: str) -> str:
    """The background task that compares a run's version with ``current`` (the active version)."""
    return f"compare-{job.job_id}-{current}"


def comparison(cfg: Settings, job: Job, current: str) -> tuple[str, object]:
    """``(phase, value)`` of the comparison of a run's version with the active one.

    DONE with the comparison (saved in the run folder, or just computed), RUNNING while it is computed in
    the background (started here when there is none yet), FAILED with the exception.
    """
    saved = lifecycle.saved_comparison(job.run_dir, current, job.version)
    if saved is not None:
        return JobPhase.DONE, saved
    key = comparison_key(job, current)
    status, value = lifecycle.BACKGROUND.state(key)
    if status == JobPhase.MISSING:
        lifecycle.BACKGROUND.submit(key, lifecycle.compare_run, cfg, job.task, job.version, job.data, job.run_dir)
        return JobPhase.RUNNING, None
    return status, value


def judge(saved: dict) -> PromotionVerdict:
    """The promotion rule applied to a comparison."""
    return lifecycle.judge(saved)


def rule_text() -> str:
    """The promotion rule, in one paragraph."""
    return lifecycle.RULE_TEXT


def promote(cfg: Settings, task: str, version: str, by: str, reason: str, comparison: dict | None) -> ModelChange:
    """Make ``version`` the active ``task``, held to the rule and logged (PromotionRefused says why not)."""
    return lifecycle.promote(cfg, task, version, by=by, reason=reason, comparison=comparison)


def versions_table(cfg: Settings, task: str) -> list[dict]:
    """One row per version of ``task`` (active, created, validation figures)."""
    return lifecycle.versions_table(cfg, task)
