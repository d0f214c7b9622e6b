"""Data-folder hygiene (issue 19, item 3): disk use, checkpoints of ended runs, the cache limit."""

from __future__ import annotations

import os
import time

from triage.config import Settings
from triage.housekeeping import (
    CHECKPOINT_FILES,
    data_folder_usage,
    drop_checkpoints,
    human_bytes,
    trim_cache,
)
from triage.lifecycle import jobs


def _run(settings: Settings, name: str, status: str, finished_ago_s: float) -> jobs.Job:
    run_dir = settings.data_dir / "runs" / name
    run_dir.mkdir(parents=True)
    for f in CHECKPOINT_FILES:
        (run_dir / f).write_bytes(b"\0" * 1000)
    (run_dir / "train.log").write_text("epoch 1\n", encoding="utf-8")
    now = time.time()
    job = jobs.Job(
        job_id=name,
        task="classifier",
        pid=0,
        run_dir=str(run_dir),
        out=str(settings.weights_dir / "classifier" / name),
        data="d",
        preset="quick",
        status=status,
        started="2026-12-01T00:00:00",
        started_ts=now - finished_ago_s - 60,
        weights_dir=str(settings.weights_dir),
        finished_ts=now - finished_ago_s if status in jobs.TERMINAL else None,
    )
    jobs.save_job(settings, job)
    return job


def test_ended_runs_lose_their_checkpoints_and_failed_ones_keep_them_for_a_while(tmp_path):
    settings = Settings(data_dir=tmp_path / "data", weights_dir=tmp_path / "w", failed_run_keep_days=7)
    done = _run(settings, "done", "done", 60)
    fresh_fail = _run(settings, "fresh", "failed", 3600)
    old_fail = _run(settings, "old", "failed", 8 * 86400)
    running = _run(settings, "running", "running", 0)
    assert jobs.sweep_runs(settings) == 4000
    kept = {
        j.job_id: [f for f in CHECKPOINT_FILES if (tmp_path / "data/runs" / j.job_id / f).exists()]
        for j in (done, fresh_fail, old_fail, running)
    }
    assert kept == {"done": [], "fresh": list(CHECKPOINT_FILES), "old": [], "running": list(CHECKPOINT_FILES)}
    assert (tmp_path / "data/runs/done/train.log").is_file()  # logs stay
    assert drop_checkpoints(tmp_path / "nowhere") == 0


def test_cache_is_trimmed_oldest_first(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    for i in range(5):
        p = cache / f"c{i}.npz"
        p.write_bytes(b"\0" * 1000)
        os.utime(p, (1000 + i, 1000 + i))
    assert trim_cache(cache, 2500) == 3000
    assert sorted(p.name for p in cache.iterdir()) == ["c3.npz", "c4.npz"]
    assert trim_cache(cache, 10_000) == 0


def test_data_folder_usage_counts_every_part(tmp_path):
    settings = Settings(data_dir=tmp_path / "data")
    (settings.scans_dir).mkdir(parents=True)
    (settings.scans_dir / "a.dcm").write_bytes(b"\0" * 5000)
    (settings.data_dir / "cache").mkdir()
    (settings.data_dir / "cache" / "x.npz").write_bytes(b"\0" * 300)
    (settings.data_dir / "worklist.sqlite3").write_bytes(b"\0" * 200)
    (settings.data_dir / "model_changes.jsonl").write_bytes(b"\0" * 7)
    usage = {u.part: (u.bytes, u.files) for u in data_folder_usage(settings)}
    assert usage["stored scans and masks"] == (5000, 1)
    assert usage["decoded-crop cache"] == (300, 1)
    assert usage["worklist database"] == (200, 1)
    assert usage["other (jobs, logs, settings)"] == (7, 1)
    assert human_bytes(1536) == "1.5 kB" and human_bytes(12) == "12 B" and human_bytes(None) == "unknown"


def test_the_status_page_walks_the_data_folder_at_most_once_a_minute(tmp_path, monkeypatch):
    from triage import housekeeping
    from triage.health import health_report

    settings = Settings(data_dir=tmp_path / "data", weights_dir=tmp_path / "no-weights")
    settings.scans_dir.mkdir(parents=True)
    (settings.scans_dir / "a.dcm").write_bytes(b"\0" * 5000)
    walks = []
    real = housekeeping.data_folder_usage
    monkeypatch.setattr(housekeeping, "data_folder_usage", lambda s: walks.append(1) or real(s))
    first = health_report(settings)
    (settings.scans_dir / "b.dcm").write_bytes(b"\0" * 5000)
    second = health_report(settings)  # a page rerun: the measurement is reused, not walked again
    assert len(walks) == 1 and second.usage == first.usage and second.usage_age_s >= 0
    fresh, age = housekeeping.recent_data_folder_usage(settings, max_age_s=0.0)  # older than allowed: walked
    assert len(walks) == 2 and age == 0.0
    assert {u.part: u.files for u in fresh}["stored scans and masks"] == 2
