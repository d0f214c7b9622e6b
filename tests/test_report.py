"""The per-study PDF (issue 18): it opens, holds the key image and the findings, and says what it is."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from tests.model_fixtures import make_tiny_weights
from tests.series_fixtures import dicom_series, stack
from triage.config import get_settings
from triage.report import STATEMENT, ReportError, find_study, key_image, study_pdf
from triage.service import TriageService
from triage.studies import list_studies
from triage.ui.uploads import process_uploads
from triage.worklist import Worklist


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_weights(tmp_path_factory.mktemp("w"))


def _pdf_text_and_images(data: bytes) -> tuple[str, list[np.ndarray]]:
    from PIL import Image
    from pypdf import PdfReader

    reader = PdfReader(io.BytesIO(data))
    text = "\n".join(page.extract_text() for page in reader.pages)
    images = [np.asarray(Image.open(io.BytesIO(img.data))) for page in reader.pages for img in page.images]
    return " ".join(text.split()), images


def test_study_pdf_opens_and_holds_the_key_image(weights: Path, tmp_path: Path) -> None:
    settings = get_settings(weights_dir=weights, data_dir=tmp_path / "data")
    service, wl = TriageService(settings), Worklist(settings.db_path)
    process_uploads([(f"exam/{n}", d) for n, d in dicom_series(stack(5), spacing=4.0)], service, wl)
    (study,) = list_studies(wl)
    assert find_study(wl, study.series[0].scan_ids[-1]).study_key == study.study_key
    with pytest.raises(ReportError):
        find_study(wl, "nope")

    data = study_pdf(wl, study, hide_names=True)
    assert data.startswith(b"%PDF")
    text, images = _pdf_text_and_images(data)
    assert " ".join(STATEMENT.split()) in text and "NOT SIGNED OFF" in text
    assert "AX T1 POST" in text and f"slice {study.series[0].key_position} of {study.n_slices}" in text
    assert "Doe" not in text and "MRN" not in text
    (shown,) = images
    expected = key_image(study.key_case)
    assert shown.shape[:2] == expected.shape[:2]
    assert np.abs(shown.astype(int) - expected.astype(int)).mean() < 2  # the key slice itself, as stored

    wl.sign_off_study(study.study_key, "Dr PDF", note="enhancing lesion")
    text, _ = _pdf_text_and_images(study_pdf(wl, list_studies(wl)[0]))
    assert "Dr PDF" in text and "enhancing lesion" in text and "NOT SIGNED OFF" not in text


def test_report_without_the_stored_image_still_has_the_findings(weights: Path, tmp_path: Path) -> None:
    settings = get_settings(weights_dir=weights, data_dir=tmp_path / "data")
    service, wl = TriageService(settings), Worklist(settings.db_path)
    process_uploads([(f"exam/{n}", d) for n, d in dicom_series(stack(3))], service, wl)
    (study,) = list_studies(wl)
    Path(study.key_case.stored_path).unlink()
    text, images = _pdf_text_and_images(study_pdf(wl, study))
    assert "stored image missing" in text and not images


def test_cli_report_by_the_case_id_a_page_shows(weights: Path, tmp_path: Path, monkeypatch) -> None:
    from triage.cli import main

    monkeypatch.setenv("TRIAGE_WEIGHTS_DIR", str(weights))
    settings = get_settings(weights_dir=weights, data_dir=tmp_path / "data")
    service, wl = TriageService(settings), Worklist(settings.db_path)
    process_uploads([(f"exam/{n}", d) for n, d in dicom_series(stack(3))], service, wl)
    (study,) = list_studies(wl)
    out = tmp_path / "r.pdf"
    ref = f"case {study.series[0].scan_ids[0][:12]}"
    assert main(["report", ref, "--out", str(out), "--data-dir", str(tmp_path / "data")]) == 0
    assert out.read_bytes().startswith(b"%PDF") and _pdf_text_and_images(out.read_bytes())[1]
    assert main(["report", "0000000000", "--out", str(out), "--data-dir", str(tmp_path / "data")]) != 0
