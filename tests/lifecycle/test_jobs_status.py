"""Job status is a pure read; poll moves a job on; starting a run is serialised by a file lock."""

import subprocess
import sys
import threading
import time

import psutil
import pytest

from tests.model_fixtures import make_tiny_weights
from triage.config import get_settings
from triage.errors import TrainingError
from triage.lifecycle import jobs


@pytest.fixture
def env(tmp_path):
    settings = get_settings(data_dir=tmp_path / "data", weights_dir=tmp_path / "weights", torch_threads=1)
    make_tiny_weights(settings.weights_dir)
    return settings


def _sleeper_job(settings, tmp_path, name: str = "a") -> tuple[jobs.Job, subprocess.Popen]:
    run_dir = tmp_path / "runs" / name
    run_dir.mkdir(parents=True)
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    job = jobs.Job(
        job_id=f"job-{name}-{proc.pid}",
        task="classifier",
        pid=proc.pid,
        run_dir=str(run_dir),
        out=str(settings.weights_dir / "classifier" / f"v9-{name}"),
        data=str(tmp_path),
        preset="quick",
        status="running",
        started="2026-01-01T00:00:00+00:00",
        started_ts=psutil.Process(proc.pid).create_time(),
        weights_dir=str(settings.weights_dir),
        cancel_requested_ts=time.time() - 100,
        terminate_at=time.time() - 50,  # a cancel whose grace period is long over
    )
    jobs.save_job(settings, job)
    return job, proc


def test_status_read_never_signals_or_writes(env, tmp_path):
    job, proc = _sleeper_job(env, tmp_path)
    record = jobs._job_file(env, job.job_id)
    before = record.read_bytes()
    try:
        for _ in range(3):
            assert jobs.job_status(env, jobs.load_job(env, job.job_id)).phase == "cancelling"
        assert proc.poll() is None, "reading the status terminated the trainer"
        assert record.read_bytes() == before
        jobs.poll(env, jobs.load_job(env, job.job_id))  # the explicit step escalates
        assert proc.wait(timeout=20) == -15
        assert jobs.poll(env, jobs.load_job(env, job.job_id)).phase == "cancelled"
    finally:
        proc.kill()


def test_an_ended_unrecorded_run_reads_as_ended(env, tmp_path):
    job, proc = _sleeper_job(env, tmp_path)
    proc.kill()
    proc.wait()
    status = jobs.job_status(env, jobs.load_job(env, job.job_id))
    assert not status.running and status.phase == "cancelled"
    assert jobs.load_job(env, job.job_id).status == "running"  # recorded only by poll


def test_two_tabs_pressing_start_together_start_one_run(env, tmp_path, monkeypatch):
    started, errors, procs = [], [], []

    def slow_launch(settings, task, data, preset, init_from, overrides, group):
        time.sleep(0.5)  # the gap between the "no run in progress" check and the record being written
        job, proc = _sleeper_job(settings, tmp_path, f"t{len(procs)}")
        procs.append(proc)
        job = jobs.Job(**{**job.__dict__, "cancel_requested_ts": None, "terminate_at": None})
        jobs.save_job(settings, job)
        return job

    monkeypatch.setattr(jobs, "_launch_job", slow_launch)

    def press_start():
        try:
            started.extend(jobs.start_jobs(env, "classifier", tmp_path, finetune=False))
        except TrainingError as exc:
            errors.append(str(exc))

    threads = [threading.Thread(target=press_start) for _ in range(2)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert len(started) == 1 and len(errors) == 1
        assert "already in progress" in errors[0]
    finally:
        for p in procs:
            p.kill()
