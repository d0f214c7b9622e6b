"""The StrEnums for stored values: the values are what databases, job files and CSVs already hold."""

from __future__ import annotations

import json
import sqlite3

import numpy as np

from triage.lifecycle import importer, jobs
from triage.records import Flag, JobPhase, ReviewState, SeriesSource, SourceKind
from triage.risk import FLAGS, suspected_tumor, triage_flags
from triage.worklist import REVIEW_STATUSES


def test_stored_values_are_unchanged() -> None:
    assert [f.value for f in Flag] == [
        "uncertain",
        "ood",
        "disagreement",
        "suspect_header",
        "untrained_model",
        "rejected",
        "not_brain",
    ]
    assert REVIEW_STATUSES == ("unreviewed", "confirmed", "corrected", "signed_off")
    assert all(type(s) is str for s in REVIEW_STATUSES)  # plain strings for the schema and the widgets
    assert ReviewState.PARTLY_REVIEWED == "partly_reviewed" and ReviewState.PARTLY_REVIEWED not in REVIEW_STATUSES
    assert jobs.TERMINAL == ("done", "failed", "cancelled")
    assert importer.SOURCES == ("folder", "zip", "manifest", "worklist") == tuple(SourceKind)
    assert {s.value for s in SeriesSource} == {"dicom", "nifti", "images", "single"}
    assert FLAGS == ("uncertain", "ood", "disagreement")


def test_members_travel_as_their_values() -> None:
    flags = triage_flags(np.array([0.5, 0.5, 0.0, 0.0]), uncertain_below=0.6, ood=True, disagreement=True)
    assert flags == (Flag.UNCERTAIN, Flag.OOD, Flag.DISAGREEMENT) == ("uncertain", "ood", "disagreement")
    assert json.loads(json.dumps(list(flags))) == ["uncertain", "ood", "disagreement"]
    assert ";".join(flags) == "uncertain;ood;disagreement" and f"{JobPhase.DONE}" == "done"
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE t (s TEXT CHECK (s IN ('signed_off')))")
    db.execute("INSERT INTO t VALUES (?)", (ReviewState.SIGNED_OFF,))
    assert db.execute("SELECT s, typeof(s) FROM t").fetchone() == ("signed_off", "text")
    # A value read back from storage is a plain string and still matches the member.
    assert suspected_tumor("no_tumor", ["disagreement"]) and not suspected_tumor("no_tumor", ["ood"])
    assert JobPhase("failed") is JobPhase.FAILED and "failed" in jobs.TERMINAL
