"""Issue 18 in a real browser: upload a DICOM series, open the study, scroll the stack with the keyboard, go back
to the key slice and sign the study off. Skipped (with the reason) without Chromium, chromedriver or selenium."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.series_fixtures import dicom_series, stack
from tests.test_browser_e2e import (
    CHROMEDRIVER,
    CHROMIUM,
    STEP_TIMEOUT_S,
    _app_server,
    _body_has,
    _browser,
    _dump_failure,
)
from triage.config import get_settings
from triage.studies import list_studies
from triage.worklist import Worklist

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support import expected_conditions as ec  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file()),
        reason="chromium/chromedriver not found: apt-get install -y chromium chromium-driver",
    ),
]


def _button(wait: WebDriverWait, text: str):
    return wait.until(ec.element_to_be_clickable((By.XPATH, f"//button[.//p[normalize-space()={text!r}]]")))


def test_series_upload_stack_scroll_and_study_sign_off(tmp_path: Path) -> None:
    weights, data = tmp_path / "weights", tmp_path / "data"
    folder = tmp_path / "exam"
    folder.mkdir()
    files = []
    for name, payload in dicom_series(stack(5), spacing=4.0):
        (folder / name).write_bytes(payload)
        files.append(str(folder / name))
    driver = None
    with _app_server(tmp_path, weights) as (url, log):
        try:
            driver = _browser(tmp_path / "chrome-profile")
            wait = WebDriverWait(driver, STEP_TIMEOUT_S)
            driver.get(url + "/new_scans")
            wait.until(_body_has("Analyse"))
            upload = next(
                e
                for e in driver.find_elements(By.CSS_SELECTOR, "input[type=file]")
                if e.get_dom_attribute("webkitdirectory") is None
            )
            upload.send_keys("\n".join(files))
            _button(wait, f"Analyse {len(files)} files").click()
            wait.until(_body_has("added to the worklist"))

            wl = Worklist(get_settings(data_dir=data).db_path)
            (study,) = list_studies(wl)
            n, key = study.n_slices, study.series[0].key_position
            driver.get(url + "/")
            _button(wait, "Open").click()
            wait.until(_body_has(f"slice {key} of {n}"))
            slider = "input[type=range][aria-label='Slice']"  # Streamlit 1.67's slider is a native range input
            wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, slider))
            thumb = driver.find_element(By.CSS_SELECTOR, slider)
            driver.execute_script("arguments[0].scrollIntoView({block: 'center'}); arguments[0].focus();", thumb)
            far = 1 if key != 1 else n
            thumb.send_keys(Keys.HOME if far == 1 else Keys.END)  # scroll the stack with the keyboard
            wait.until(_body_has(f"slice {far} of {n}"))
            _button(wait, "Key slice").click()  # and back to the key slice
            wait.until(_body_has(f"slice {key} of {n}"))
            driver.find_element(By.XPATH, "//summary[.//*[contains(text(), 'Sign off the whole study')]]").click()
            reviewer = wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, "input[aria-label='Study reviewer']")))
            reviewer.send_keys("Dr Browser")
            _button(wait, "Sign off study").click()
            wait.until(_body_has("Study signed off by"))
            assert wl.study_review(study.study_key)["reviewer"] == "Dr Browser"
            assert {c.review_status for c in wl.series_cases(study.series[0].series_key)} == {"signed_off"}
        except Exception:
            _dump_failure(driver, tmp_path, log)
            raise
        finally:
            if driver is not None:
                driver.quit()
