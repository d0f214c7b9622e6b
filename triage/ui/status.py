"""What the Status page shows: the workstation's health as table rows (no streamlit here)."""

from __future__ import annotations

from triage.health import Health, health_report
from triage.housekeeping import human_bytes

# health_report: one snapshot (versions, disk use, last backup, running training, problems to act on)
__all__ = ["Health", "health_report", "human_bytes", "usage_rows", "version_rows"]


def version_rows(h: Health) -> list[tuple[str, str]]:
    """(component, version) rows: the app, each active model with its backend, the key packages."""
    rows = [("triage", h.app_version)]
    rows += [(f"{task} model", f"{v or 'unusable'} ({h.backends.get(task, '–')})") for task, v in h.models.items()]
    return rows + list(h.packages.items())


def usage_rows(h: Health) -> list[dict]:
    """Size and file count of each part of the data folder, sizes readable ('1.5 GB')."""
    return [{"part": u.part, "size": human_bytes(u.bytes), "files": u.files} for u in h.usage]
