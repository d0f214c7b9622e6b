"""triage.ui.status: the Status page's tables from a health snapshot."""

from __future__ import annotations

from pathlib import Path

from triage.housekeeping import FolderUsage
from triage.ui.status import Health, usage_rows, version_rows


def test_version_and_usage_rows() -> None:
    health = Health(
        app_version="1.2.3",
        packages={"numpy": "2.0"},
        data_dir="~/data",
        usage=[FolderUsage(part="uploads", path=Path("/d/uploads"), bytes=1536, files=2)],
        usage_age_s=3.0,
        free=None,
        last_backup=None,
        models={"classifier": "v13", "segmenter": ""},
        backends={"classifier": "onnx"},
        training_running=[],
    )
    assert version_rows(health) == [
        ("triage", "1.2.3"),
        ("classifier model", "v13 (onnx)"),
        ("segmenter model", "unusable (–)"),
        ("numpy", "2.0"),
    ]
    assert usage_rows(health) == [{"part": "uploads", "size": "1.5 kB", "files": 2}]
