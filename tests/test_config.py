"""The settings' folders: one home for the runs and cache folders (issue 24)."""

import re
from pathlib import Path

from triage.config import Settings

TRIAGE = Path(__file__).resolve().parent.parent / "triage"


def test_runs_and_cache_folders_live_under_the_data_folder(tmp_path):
    s = Settings(data_dir=tmp_path)
    assert s.runs_dir == tmp_path / "runs"
    assert s.cache_dir == tmp_path / "cache"
    assert s.run_dir("segmenter", "v7") == tmp_path / "runs" / "segmenter-v7"


def test_no_module_derives_the_runs_or_cache_folder_itself():
    # They were derived in five modules with slightly different rules; config.py is their one home.
    pattern = re.compile(r"""/\s*["'](runs|cache)["']""")
    offenders = [
        str(p.relative_to(TRIAGE))
        for p in TRIAGE.rglob("*.py")
        if p.name != "config.py" and pattern.search(p.read_text(encoding="utf-8"))
    ]
    assert offenders == []
