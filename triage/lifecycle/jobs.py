"""Training runs as background processes that outlive the browser tab, and a job registry.

A job is one ``python -m triage train <task> ...`` process started in its own session
(``start_new_session=True``), so closing the tab, or a Streamlit rerun, never stops it. Its
record is ``<data dir>/jobs/<job id>.json``; a reopened tab finds running and finished jobs
there. Live progress comes from the run folder the trainer writes (``progress.jsonl``,
``config.json``, ``train.log``); cancelling writes the trainer's ``CANCEL`` file and, if the
process has not stopped after a grace period, terminates its process group.

A run only ever writes a *new* version folder (``weights/<task>/v<N>-<YYYYmmdd-HHMM>``; saved
atomically by :func:`triage.models.save_model`) and never ``ACTIVE``: a failed or cancelled
run leaves the active model untouched. Promotion is a separate, explicit step
(:func:`triage.lifecycle.compare.promote`).

:class:`BackgroundTasks` runs shorter work (data checks, comparisons) on threads of the server
process, outside the Streamlit script thread.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

from triage import atomic
from triage.config import REPO_DIR, Settings, get_settings
from triage.errors import ModelNotFoundError, TrainingError
from triage.housekeeping import drop_checkpoints, trim_cache
from triage.models import TASKS, active_version, list_versions, read_card
from triage.records import JobPhase

log = logging.getLogger(__name__)

PRESETS = ("quick", "full")
TERMINAL: tuple[str, ...] = (JobPhase.DONE, JobPhase.FAILED, JobPhase.CANCELLED)
GRACE_S = 30.0  # after a cancel, how long the trainer gets to stop by itself
KILL_AFTER_S = 15.0  # after SIGTERM, how long before SIGKILL
NICENESS = 10  # training runs at a lower CPU priority so the app stays responsive
OVERRIDE_FLAGS = {
    "epochs": "--epochs",
    "threads": "--threads",
    "time_budget_min": "--time-budget-min",
    "seed": "--seed",
}
_FINETUNE_IGNORED_KWARGS = {"drop_rate", "drop_path_rate"}
_VERSION_NUM = re.compile(r"^v(\d+)(?:\D|$)")

# Popen objects of the jobs this server process started (to reap them and read exit codes).
_PROCS: dict[str, subprocess.Popen] = {}
_PROCS_LOCK = threading.Lock()


@dataclass
class Job:
    """The registry record of one training run."""

    job_id: str
    task: str
    pid: int
    run_dir: str
    out: str
    data: str
    preset: str
    status: str
    started: str
    started_ts: float
    weights_dir: str
    init_from: str | None = None
    active_at_start: str | None = None
    overrides: dict = field(default_factory=dict)
    group: str = ""
    finished_ts: float | None = None
    returncode: int | None = None
    error: str = ""
    cancel_requested_ts: float | None = None
    terminate_at: float | None = None
    terminated_ts: float | None = None

    @property
    def version(self) -> str:
        return Path(self.out).name

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL

    @classmethod
    def from_dict(cls, data: dict) -> Job:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


@dataclass
class JobStatus:
    """A snapshot of a job for display. ``phase``: preparing / training / finishing / cancelling /
    done / failed / cancelled."""

    job: Job
    phase: str
    fraction: float
    elapsed_s: float
    eta_s: float | None
    step: int = 0
    total_steps: int = 0
    epoch: int = 0
    total_epochs: int = 0
    steps: list[dict] = field(default_factory=list)
    epochs: list[dict] = field(default_factory=list)
    result: dict = field(default_factory=dict)
    log_tail: list[str] = field(default_factory=list)
    error: str = ""

    @property
    def running(self) -> bool:
        return self.phase not in TERMINAL


# ----- registry --------------------------------------------------------------------------------


def jobs_dir(settings: Settings | None = None) -> Path:
    return (settings or get_settings()).data_dir / "jobs"


def _job_file(settings: Settings, job_id: str) -> Path:
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,80}", job_id):
        raise ValueError(f"invalid job id {job_id!r}")
    return jobs_dir(settings) / f"{job_id}.json"


def save_job(settings: Settings, job: Job) -> None:
    """Write the job record atomically."""
    atomic.write_json(_job_file(settings, job.job_id), asdict(job), indent=2)


def load_job(settings: Settings, job_id: str) -> Job:
    f = _job_file(settings, job_id)
    if not f.is_file():
        raise TrainingError(f"no training job {job_id!r}")
    return Job.from_dict(json.loads(f.read_text(encoding="utf-8")))


def list_jobs(settings: Settings | None = None) -> list[Job]:
    """Every recorded job, newest first (unreadable records are skipped with a log line)."""
    settings = settings or get_settings()
    out = []
    d = jobs_dir(settings)
    for f in d.glob("*.json") if d.is_dir() else []:
        try:
            out.append(Job.from_dict(json.loads(f.read_text(encoding="utf-8"))))
        except (OSError, ValueError, TypeError) as exc:
            log.warning("skipping unreadable job record %s: %s", f, exc)
    return sorted(out, key=lambda j: j.started_ts, reverse=True)


def running_jobs(settings: Settings | None = None) -> list[Job]:
    settings = settings or get_settings()
    return [j for j in list_jobs(settings) if job_status(settings, j).running]


# ----- starting ---------------------------------------------------------------------------------


def new_version_name(
    weights_dir: Path, task: str, reserved: set[str] = frozenset(), now: datetime | None = None
) -> str:
    """``v<N>-<YYYYmmdd-HHMM>``: N one past the highest existing (or reserved) version number."""
    names = set(list_versions(weights_dir, task)) | set(reserved)
    nums = [int(m.group(1)) for n in names if (m := _VERSION_NUM.match(n))]
    n = max([len(names), *nums]) + 1
    stamp = (now or datetime.now()).strftime("%Y%m%d-%H%M")
    name = f"v{n}-{stamp}"
    while name in names or (Path(weights_dir) / task / name).exists():
        n += 1
        name = f"v{n}-{stamp}"
    return name


def check_finetune(weights_dir: Path, task: str, version: str, preset: str) -> None:
    """TrainingError unless ``version`` has the architecture the preset trains (weights can load)."""
    from triage.lifecycle.train_config import ARCH_KWARGS
    from triage.lifecycle.train_config import PRESETS as TRAIN_PRESETS

    try:
        card = read_card(weights_dir, task, version)
    except FileNotFoundError as exc:
        raise ModelNotFoundError(f"{task} version {version!r} does not exist") from exc
    except ValueError as exc:  # unreadable JSON or a card without arch / input size
        raise TrainingError(f"cannot fine-tune {task} {version}: its model card is unusable ({exc})") from exc
    arch = TRAIN_PRESETS[task][preset]["arch"]
    want = {k: v for k, v in ARCH_KWARGS[arch].items() if k not in _FINETUNE_IGNORED_KWARGS}
    have = {k: v for k, v in card.arch_kwargs.items() if k not in _FINETUNE_IGNORED_KWARGS}
    if card.arch != arch or have != want:
        raise TrainingError(
            f"cannot fine-tune {task} {version}: it is a {card.arch} {have}, the "
            f"{preset} preset trains {arch} {want}; start from scratch instead"
        )


def _start_lock(settings: Settings):
    """A file lock held while a run is checked and launched: two tabs (or two servers sharing a
    data folder) pressing Start together cannot both pass the "no run in progress" check."""
    from filelock import FileLock

    d = jobs_dir(settings)
    d.mkdir(parents=True, exist_ok=True)
    return FileLock(str(d / ".start.lock"), timeout=60)


def start_job(
    settings: Settings,
    task: str,
    data: str | Path,
    preset: str = "quick",
    init_from: str | None = None,
    overrides: dict | None = None,
    group: str = "",
) -> Job:
    """Launch ``python -m triage train`` for ``task`` on the dataset folder ``data`` in the background.

    ``init_from``: a version of the same task to fine-tune from (``"active"`` = the active one).
    ``overrides``: any of ``epochs``, ``threads``, ``time_budget_min``, ``seed``.
    """
    with _start_lock(settings):
        sweep_runs(settings)
        trim_cache(settings.cache_dir, settings.cache_limit_bytes)
        return _launch_job(settings, task, data, preset, init_from, overrides, group)


def sweep_runs(settings: Settings, now: float | None = None) -> int:
    """Drop the checkpoints of failed runs older than ``failed_run_keep_days`` (and of any ended
    run that still has them); returns the bytes freed. Logs and curves are kept."""
    now = time.time() if now is None else now
    keep_s = settings.failed_run_keep_days * 86400
    freed = 0
    for job in list_jobs(settings):
        if not job.finished or job.finished_ts is None:
            continue
        if job.status != JobPhase.FAILED or now - job.finished_ts > keep_s:
            freed += drop_checkpoints(job.run_dir)
    return freed


def _launch_job(
    settings: Settings,
    task: str,
    data: str | Path,
    preset: str,
    init_from: str | None,
    overrides: dict | None,
    group: str,
) -> Job:
    """:func:`start_job` without the lock (its callers hold it)."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {PRESETS}, got {preset!r}")
    data = Path(data)
    if not data.is_dir():
        raise TrainingError(f"dataset folder not found: {data}")
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    unknown = set(overrides) - set(OVERRIDE_FLAGS)
    if unknown:
        raise ValueError(f"unsupported overrides {sorted(unknown)}; allowed: {sorted(OVERRIDE_FLAGS)}")
    overrides.setdefault("threads", max(1, int(settings.torch_threads)))
    weights_dir = Path(settings.weights_dir)
    busy = [j for j in list_jobs(settings) if j.task == task and job_status(settings, j).running]
    if busy:
        raise TrainingError(
            f"a {task} run is already in progress (version {busy[0].version}); wait for it or cancel it first"
        )
    try:
        active = active_version(weights_dir, task)
    except ModelNotFoundError:
        active = None
    if init_from == "active":
        if active is None:
            raise TrainingError(f"there is no active {task} to fine-tune from; start from scratch")
        init_from = active
    if init_from:
        check_finetune(weights_dir, task, init_from, preset)
    reserved = {j.version for j in list_jobs(settings) if j.task == task}
    version = new_version_name(weights_dir, task, reserved)
    out = weights_dir / task / version
    run_dir = settings.run_dir(task, version)
    run_dir.mkdir(parents=True, exist_ok=False)
    cmd = [
        sys.executable,
        "-m",
        "triage",
        "train",
        task,
        "--data",
        str(data.resolve()),
        "--out",
        str(out),
        "--preset",
        preset,
        "--run-dir",
        str(run_dir),
        "--cache-dir",
        str(settings.cache_dir),
        "--weights-dir",
        str(weights_dir),
        "--quiet",
    ]
    if init_from:
        cmd += ["--init-from", init_from]
    for key, value in overrides.items():
        cmd += [OVERRIDE_FLAGS[key], str(value)]
    env = dict(os.environ)
    env.update(
        TRIAGE_DATA_DIR=str(settings.data_dir),
        TRIAGE_WEIGHTS_DIR=str(weights_dir),
        OMP_NUM_THREADS=str(overrides["threads"]),
        PYTHONUNBUFFERED="1",
        PYTHONPATH=os.pathsep.join(p for p in (str(REPO_DIR), env.get("PYTHONPATH", "")) if p),
    )
    job_id = f"{task}-{version}-{uuid.uuid4().hex[:6]}"
    with (run_dir / "train.log").open("ab") as logf:
        logf.write((" ".join(cmd) + "\n").encode())
        logf.flush()
        proc = subprocess.Popen(
            cmd,
            stdout=logf,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=str(REPO_DIR),
            env=env,
            start_new_session=True,
            close_fds=True,
        )
    if NICENESS:
        try:
            os.setpriority(os.PRIO_PROCESS, proc.pid, NICENESS)
        except (AttributeError, OSError) as exc:
            log.debug("could not lower the priority of %d: %s", proc.pid, exc)
    with _PROCS_LOCK:
        _PROCS[job_id] = proc
    now = datetime.now(UTC)
    job = Job(
        job_id=job_id,
        task=task,
        pid=proc.pid,
        run_dir=str(run_dir),
        out=str(out),
        data=str(data),
        preset=preset,
        status=JobPhase.RUNNING,
        started=now.isoformat(timespec="seconds"),
        started_ts=now.timestamp(),
        weights_dir=str(weights_dir),
        init_from=init_from,
        active_at_start=active,
        overrides=overrides,
        group=group,
    )
    save_job(settings, job)
    log.info("started %s (pid %d): %s", job_id, proc.pid, " ".join(cmd))
    return job


def start_jobs(
    settings: Settings,
    task: str,
    data: str | Path,
    preset: str = "quick",
    finetune: bool = True,
    overrides: dict | None = None,
) -> list[Job]:
    """Start one job per model for ``task`` in classifier / segmenter / both.

    Everything is checked before anything starts (no run already in progress, fine-tuning
    possible), so "both" never starts half. The two runs of "both" share the CPU threads.
    """
    tasks = list(TASKS) if task == "both" else [task]
    if any(t not in TASKS for t in tasks):
        raise ValueError(f"task must be classifier, segmenter or both, got {task!r}")
    overrides = dict(overrides or {})
    if len(tasks) > 1 and not overrides.get("threads"):
        overrides["threads"] = max(1, int(settings.torch_threads) // len(tasks))
    with _start_lock(settings):
        for t in tasks:
            busy = [j for j in list_jobs(settings) if j.task == t and job_status(settings, j).running]
            if busy:
                raise TrainingError(
                    f"a {t} run is already in progress (version {busy[0].version}); wait for it or cancel it first"
                )
            if finetune:
                try:
                    base = active_version(settings.weights_dir, t)
                except ModelNotFoundError as exc:
                    raise TrainingError(f"there is no active {t} to fine-tune from; start from scratch") from exc
                check_finetune(settings.weights_dir, t, base, preset)
        group = uuid.uuid4().hex[:8] if len(tasks) > 1 else ""
        init = "active" if finetune else None
        return [_launch_job(settings, t, data, preset, init, overrides, group) for t in tasks]


# ----- status -----------------------------------------------------------------------------------


def _alive(job: Job) -> bool:
    """True while ``job.pid`` is still our trainer (psutil: any OS). A zombie counts as ended, and a
    later process that reused the pid is told apart by its start time. Reads only; never reaps."""
    import psutil

    try:
        proc = psutil.Process(job.pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return abs(proc.create_time() - job.started_ts) < 10.0
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def _reap(job: Job) -> int | None:
    """Collect the exit code of a trainer this process started (so it leaves no zombie)."""
    with _PROCS_LOCK:
        proc = _PROCS.get(job.job_id)
    if proc is not None:
        return proc.poll()
    try:  # our own child from before a module reload: waitpid still reaps it
        pid, status = os.waitpid(job.pid, os.WNOHANG)
        if pid:
            return os.waitstatus_to_exitcode(status)
    except ChildProcessError:
        pass
    return None


def read_events(run_dir: str | Path) -> list[dict]:
    """The trainer's progress events (a half-written last line is ignored)."""
    f = Path(run_dir) / "progress.jsonl"
    events = []
    try:
        lines = f.read_text(encoding="utf-8").splitlines()
    except OSError:
        return events
    for line in lines:
        try:
            events.append(json.loads(line))
        except ValueError:
            continue
    return events


def log_tail(run_dir: str | Path, lines: int = 20) -> list[str]:
    f = Path(run_dir) / "train.log"
    try:
        with f.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 16384))
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return []
    return [ln for ln in text.replace("\r", "\n").splitlines() if ln.strip()][-lines:]


def _error_from_log(tail: list[str], returncode: int | None) -> str:
    for ln in reversed(tail):
        if ln.startswith("error:"):
            return ln[len("error:") :].strip()
    for ln in reversed(tail):
        m = re.match(r"^([A-Za-z_.]*(?:Error|Exception))\b", ln)
        if m:  # a traceback's text can hold server paths: the page names its type, the log has the rest
            return f"the training process raised {m.group(1).rsplit('.', 1)[-1]} (see the log)"
    if returncode is not None and returncode < 0:
        return f"the training process was stopped by signal {-returncode}"
    return (
        f"the training process ended with exit code {returncode}"
        if returncode is not None
        else "the training process ended without finishing"
    )


def _budget_min(run_dir: Path) -> float | None:
    try:
        return float(json.loads((run_dir / "config.json").read_text(encoding="utf-8"))["time_budget_min"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _cleanup_partial(job: Job) -> None:
    """Remove half-written version folders a killed run may leave (``.<version>.tmp*``)."""
    out = Path(job.out)
    for p in out.parent.glob(f".{out.name}.tmp*") if out.parent.is_dir() else []:
        shutil.rmtree(p, ignore_errors=True)


def _signal_group(job: Job, sig: int) -> None:
    try:
        os.killpg(job.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def poll(settings: Settings, job: Job) -> JobStatus:
    """The explicit step of a job's life: reap an ended trainer and record how it ended (cleaning up
    what a killed run left), or escalate a cancel whose grace period is over (SIGTERM, then SIGKILL).
    Returns the status afterwards. :func:`job_status` only reads."""
    if not job.finished:
        events = read_events(job.run_dir)
        rc = _reap(job)
        if rc is None and _alive(job):
            _escalate_cancel(settings, job, time.time())
        else:
            has_done = any(e.get("kind") == "done" for e in events)
            _finish(settings, job, rc, has_done, any(e.get("kind") == "cancelled" for e in events))
    return job_status(settings, job)


def _ended_as(job: Job, has_done: bool, cancelled_event: bool) -> str:
    """How an ended run counts: done only with a 'done' event *and* a complete version folder."""
    out = Path(job.out)
    complete = (out / "metadata.json").is_file() and (out / "model.safetensors").is_file()
    if has_done and complete and job.returncode in (0, None):
        return JobPhase.DONE
    if cancelled_event or job.cancel_requested_ts is not None or (Path(job.run_dir) / "CANCEL").exists():
        return JobPhase.CANCELLED
    return JobPhase.FAILED


def job_status(settings: Settings, job: Job) -> JobStatus:
    """Current state of ``job`` from its process and run folder. A pure read: it never signals,
    reaps or writes (an ended run that :func:`poll` has not recorded yet shows how it ended)."""
    run_dir = Path(job.run_dir)
    events = read_events(run_dir)
    steps = [e for e in events if e.get("kind") == "step"]
    epochs = [e for e in events if e.get("kind") == "epoch"]
    done = next((e for e in reversed(events) if e.get("kind") == "done"), None)
    cancelled_event = any(e.get("kind") == "cancelled" for e in events)
    now = time.time()
    if not job.finished and not _alive(job):
        job = replace(job, status=_ended_as(job, done is not None, cancelled_event), finished_ts=job.finished_ts or now)
    tail = log_tail(run_dir) if job.status in (JobPhase.FAILED, JobPhase.RUNNING) else []
    last = steps[-1] if steps else {}
    total_steps = int(last.get("total_steps", 0))
    step = int(last.get("step", -1)) + 1 if last else 0
    total_epochs = int(epochs[-1]["total_epochs"]) if epochs else int(job.overrides.get("epochs") or 0)
    end = job.finished_ts if job.finished and job.finished_ts else now
    elapsed = max(0.0, end - job.started_ts)
    st = JobStatus(
        job=job,
        phase=job.status,
        fraction=1.0 if job.status == JobPhase.DONE else 0.0,
        elapsed_s=elapsed,
        eta_s=0.0 if job.status == JobPhase.DONE else None,
        step=step,
        total_steps=total_steps,
        epoch=len(epochs),
        total_epochs=total_epochs,
        steps=[{"step": int(e["step"]), "loss": float(e["loss"])} for e in steps if "loss" in e],
        epochs=epochs,
        result=done or {},
        log_tail=tail,
        error=job.error,
    )
    if job.finished:
        return st
    # Running: estimate progress like the trainer's schedule (steps or wall-time budget, whichever is further).
    if job.cancel_requested_ts is not None:
        st.phase = JobPhase.CANCELLING
    started_training = (run_dir / "progress.jsonl").exists()  # the trainer opens it when training starts
    if not events:
        st.phase = (
            JobPhase.CANCELLING
            if job.cancel_requested_ts
            else (JobPhase.TRAINING if started_training else JobPhase.PREPARING)
        )
        return st
    try:
        since = now - (run_dir / "progress.jsonl").stat().st_mtime
    except OSError:
        since = 0.0
    t_train = float(events[-1].get("t", 0.0)) + since
    budget = _budget_min(run_dir)
    frac = step / total_steps if total_steps else 0.0
    if budget:
        frac = max(frac, t_train / (60.0 * budget))
    last_epoch_done = epochs and total_epochs and int(epochs[-1]["epoch"]) + 1 >= total_epochs
    if st.phase != JobPhase.CANCELLING:
        st.phase = JobPhase.FINISHING if (last_epoch_done or frac >= 0.999) else JobPhase.TRAINING
    st.fraction = float(min(0.99, max(0.0, frac)))
    st.eta_s = t_train / frac * (1.0 - frac) if 0.02 < frac < 1.0 else None
    return st


def _finish(settings: Settings, job: Job, rc: int | None, has_done: bool, cancelled_event: bool) -> None:
    """Record the end of a job (:func:`_ended_as`) and clean up what a killed run left."""
    job.returncode = rc
    job.status = _ended_as(job, has_done, cancelled_event)
    if job.status == JobPhase.FAILED:
        job.error = _error_from_log(log_tail(job.run_dir, 40), rc)
    job.finished_ts = time.time()
    if job.status != JobPhase.DONE:
        _cleanup_partial(job)
    if job.status in (JobPhase.DONE, JobPhase.CANCELLED):
        # The version (if any) lives on in the weights folder; the optimiser checkpoint is dead weight.
        drop_checkpoints(job.run_dir)
    with _PROCS_LOCK:
        _PROCS.pop(job.job_id, None)
    save_job(settings, job)
    log.info("job %s %s (exit code %s)", job.job_id, job.status, rc)


def _escalate_cancel(settings: Settings, job: Job, now: float) -> None:
    """SIGTERM the process group once the grace period is over, SIGKILL if it still runs later."""
    if job.terminate_at is None:
        return
    if job.terminated_ts is None:
        if now >= job.terminate_at:
            _signal_group(job, signal.SIGTERM)
            job.terminated_ts = now
            save_job(settings, job)
    elif now - job.terminated_ts >= KILL_AFTER_S:
        _signal_group(job, signal.SIGKILL)


def cancel(settings: Settings, job: Job, grace_s: float = GRACE_S) -> JobStatus:
    """Ask the trainer to stop (CANCEL file); after ``grace_s`` its process group is terminated.

    The trainer checks the file after every batch; data preparation does not, which is what
    the grace period covers (``grace_s=0`` terminates at once). Returns the new status.
    """
    if not job.finished:
        run_dir = Path(job.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "CANCEL").write_text("cancelled from the training page\n", encoding="utf-8")
        now = time.time()
        if job.cancel_requested_ts is None:
            job.cancel_requested_ts = now
        job.terminate_at = min(job.terminate_at or float("inf"), now + grace_s)
        save_job(settings, job)
        # Escalate on time even when no page is open to poll: one check after the grace period,
        # one after the SIGKILL delay (daemon timers of this process; a poll does the same).
        for delay in (grace_s, grace_s + KILL_AFTER_S + 0.5):
            timer = threading.Timer(delay + 0.1, _poll_by_id, (settings, job.job_id))
            timer.daemon = True
            timer.start()
    return poll(settings, job)


def _poll_by_id(settings: Settings, job_id: str) -> None:
    try:
        poll(settings, load_job(settings, job_id))
    except Exception as exc:  # a timer thread must never raise into the server
        log.warning("poll of job %s failed: %s", job_id, exc)
