"""What a person may see of an upload's file name (no streamlit here).

File names are chosen by whoever exported the slice and often carry identifiers
(``Doe^John_19310417_MRN12345.png``). With :attr:`Settings.file_names_hidden` (the default when
PHI is not allowed) pages, logs and exports name a case by its id instead; the worklist database
keeps the original name, so switching the setting back shows it again.
"""

from __future__ import annotations

from triage.config import Settings, get_settings

ID_CHARS = 12  # as many hex characters of the scan id as the pages show


def case_ref(scan_id: str | None) -> str:
    """'case 1a2b3c4d5e6f' for a scan id (or content hash); 'case (unknown id)' without one."""
    sid = str(scan_id or "").strip()
    return f"case {sid[:ID_CHARS]}" if sid else "case (unknown id)"


def shown_name(name: object, scan_id: str | None, settings: Settings | None = None) -> str:
    """``name`` as it may be shown, logged or exported: itself, or :func:`case_ref` when hidden."""
    settings = settings or get_settings()
    if settings.file_names_hidden:
        return case_ref(scan_id)
    return str(name or "") or case_ref(scan_id)
