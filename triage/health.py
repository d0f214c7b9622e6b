"""What an admin checks first (issue 19, item 5): versions, data folder, disk, backup, services."""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from triage import __version__
from triage.backup import BackupSummary, last_backup
from triage.config import Settings
from triage.housekeeping import FolderUsage, free_bytes, recent_data_folder_usage

PACKAGES = ("onnxruntime", "torch", "streamlit", "pydicom", "dicognito", "numpy")
# Below this much free space uploads and training start failing (a 74 MB checkpoint, 64 MB uploads).
LOW_DISK_BYTES = 2 * 1000**3


@dataclass(frozen=True)
class Health:
    """One snapshot of the workstation's state; ``problems`` lists what needs an admin now."""

    app_version: str
    packages: dict[str, str]
    data_dir: str
    usage: list[FolderUsage]
    usage_age_s: float  # how long ago the data folder was measured (it is walked at most once a minute)
    free: int | None
    last_backup: BackupSummary | None
    models: dict[str, str]  # task -> active version ("" when unusable)
    backends: dict[str, str]  # task -> "onnx" | "torch", empty when the models are not usable
    training_running: list[str]
    problems: list[str] = field(default_factory=list)


def _package_versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def _shown_path(path: Path) -> str:
    """The data folder as IT would type it (``~`` for the server account's home)."""
    try:
        return "~/" + str(Path(path).resolve().relative_to(Path.home().resolve()))
    except ValueError:
        return str(path)


def health_report(settings: Settings, service=None) -> Health:
    """Gather the snapshot; ``service`` (a TriageService) adds the loaded models and backends."""
    from triage.lifecycle import jobs
    from triage.models import TASKS, active_version

    problems: list[str] = []
    models, backends = {}, {}
    for task in TASKS:
        try:
            models[task] = active_version(settings.weights_dir, task)
        except Exception as exc:  # reported, never raised: this page must show a broken install
            models[task] = ""
            problems.append(f"{task}: {exc}")
    if service is not None:
        why = service.model_problem()
        if why:
            problems.append(why)
        else:
            backends = dict(service.models().backends)
    usage, usage_age_s = recent_data_folder_usage(settings)
    free = free_bytes(settings)
    if free is not None and free < LOW_DISK_BYTES:
        problems.append(f"only {free / 1e9:.1f} GB free on the data folder's disk")
    backup = last_backup(settings)
    if backup is None:
        problems.append("no backup of this data folder yet (python -m triage backup DEST)")
    running: list[str] = []
    try:
        running = [f"{j.task} {j.version}" for j in jobs.running_jobs(settings)]
    except OSError as exc:
        problems.append(f"training jobs cannot be read ({type(exc).__name__})")
    return Health(
        app_version=__version__,
        packages=_package_versions(),
        data_dir=_shown_path(settings.data_dir),
        usage=usage,
        usage_age_s=usage_age_s,
        free=free,
        last_backup=backup,
        models=models,
        backends=backends,
        training_running=running,
        problems=problems,
    )
