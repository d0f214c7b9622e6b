"""De-identify DICOM files before they are stored (issue 19, item 3).

Unless PHI is explicitly allowed (``Settings.allow_phi``), a DICOM upload is stored only after
dicognito (MIT, maintained, built on pydicom) has replaced names, IDs, addresses, equipment
identifiers and shifted dates and times, and private elements are removed: the DICOM Basic
Application Level Confidentiality Profile with the **Retain UIDs** option. UIDs are kept
because grouping into series, de-duplication and the results sent back to a PACS must refer to
the source instances; they are not patient identifiers by themselves.

Pseudonyms and the date shift come from a secret kept in the data folder (made on first use),
so a patient's re-sent files get the same pseudonyms, and nobody without the data folder can
recompute them. Burned-in text in the pixels is not touched: the pixel data are analysed as sent.
"""

from __future__ import annotations

import io
import logging
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pydicom
from dicognito.anonymizer import Anonymizer
from dicognito.element_anonymizer import ElementAnonymizer

from triage.errors import InvalidScanError

log = logging.getLogger(__name__)

SECRET_FILE = ".deid_secret"
# Tags that must never survive, checked after de-identification (a dicognito regression would be
# caught here, not at the next audit).
MUST_BE_GONE = ("PatientName", "PatientID", "PatientBirthDate", "PatientAddress", "OtherPatientIDs")


class _KeepUIDs(ElementAnonymizer):
    """The Retain UIDs option: every UI element is left as it is."""

    def __call__(self, dataset: pydicom.Dataset, data_element: pydicom.DataElement) -> bool:
        return data_element.VR == "UI"

    def describe_actions(self) -> Iterator[str]:
        yield "Keep every UID (Retain UIDs option)"


def deid_secret(data_dir: str | Path) -> str:
    """The installation's pseudonym seed, created (readable by its owner only) on first use."""
    path = Path(data_dir) / SECRET_FILE
    try:
        return path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        value = secrets.token_hex(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(value)
        return value
    except OSError as exc:
        raise InvalidScanError(f"the de-identification secret cannot be read ({type(exc).__name__})") from exc


def deidentify_dicom(data: bytes, secret: str) -> bytes:
    """``data`` (a DICOM file) with patient identifiers replaced and private elements removed.

    Pixel data and UIDs are unchanged. Raises InvalidScanError when the file cannot be
    de-identified (then it must not be stored at all).
    """
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
        before = {k: str(ds.get(k, "")) for k in MUST_BE_GONE}
        anonymizer = Anonymizer(seed=secret)
        anonymizer.add_element_handler(_KeepUIDs())
        anonymizer.anonymize(ds)
        ds.remove_private_tags()
        out = io.BytesIO()
        ds.save_as(out, enforce_file_format=False)
    except Exception as exc:  # any failure means the original would be stored with its PHI: refuse
        log.warning("de-identification failed: %s", type(exc).__name__, exc_info=True)
        raise InvalidScanError(
            f"this DICOM file could not be de-identified for storage ({type(exc).__name__}); nothing was stored"
        ) from exc
    leaked = [k for k, v in before.items() if v and str(ds.get(k, "")) == v]
    if leaked:
        raise InvalidScanError(f"de-identification left {', '.join(leaked)} in place; nothing was stored")
    return out.getvalue()
