"""What the Worklist page takes from the core: the study list and its CSV exports (issue 24: pages
import only ``triage.ui``, the service, records and errors)."""

from __future__ import annotations

from collections.abc import Sequence

from triage.studies import StudySummary, export_studies_csv, filter_studies
from triage.studies import list_studies as _list_studies
from triage.worklist import Worklist

__all__ = ["StudySummary", "cases_csv", "filter_studies", "list_studies", "studies_csv"]


def list_studies(wl: Worklist, **filters: object) -> list[StudySummary]:
    """Every study with a slice matching ``filters`` (:meth:`Worklist.list_cases` filters), ranked by
    its most suspicious slice (:func:`triage.studies.list_studies`)."""
    return _list_studies(wl, **filters)


def studies_csv(wl: Worklist, shown: Sequence[StudySummary], hide_names: bool) -> bytes:
    """UTF-8 CSV, one row per study in ``shown`` with its sign-off (:func:`triage.studies.export_studies_csv`)."""
    return export_studies_csv(wl, shown, hide_names=hide_names)


def cases_csv(wl: Worklist, shown: Sequence[StudySummary], hide_names: bool) -> bytes:
    """UTF-8 CSV of every slice of the studies in ``shown``, in worklist order, without thumbnails."""
    keys = {s.study_key for s in shown}
    return wl.export_csv([c for c in wl.list_cases() if c.study in keys], hide_names=hide_names)
