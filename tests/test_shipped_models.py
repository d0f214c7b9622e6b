"""Regression guard for the committed weights on a fixed 200-image subset of BRISC test.

Thresholds sit a few points under what the shipped version measured (see its model card), so a
broken preprocessing change or a bad promotion fails here. Skipped without ../shared/data or
when the active weights are untrained placeholders.
"""

import pytest

from triage.config import get_settings
from triage.models import load_model

MIN_ACCURACY = 0.90
MIN_DICE = 0.65
MAX_FP_MASK_RATE = 0.05


@pytest.fixture(scope="module")
def report(shared_data, tmp_path_factory):
    from triage.evaluate import run_evaluation
    from triage.service import TriageService

    settings = get_settings(shared_data_dir=shared_data)
    try:
        trained = (
            load_model(settings.weights_dir, "classifier").trained
            and load_model(settings.weights_dir, "segmenter").trained
        )
    except Exception as exc:
        pytest.skip(f"no shipped weights: {exc}")
    if not trained:
        pytest.skip("the active weights are untrained placeholders")
    out = tmp_path_factory.mktemp("report") / "brisc_subset.md"
    return run_evaluation(shared_data / "brisc2025", out, limit=200, progress=False, service=TriageService(settings))


def test_accuracy_on_fixed_brisc_subset(report):
    c = report["metrics"]["classification"]
    assert report["metrics"]["n"] >= 150
    assert c["accuracy"] >= MIN_ACCURACY, c


def test_dice_and_false_positive_masks(report):
    s = report["metrics"]["segmentation"]
    assert s["dice_mean"] >= MIN_DICE, s
    assert s["false_positive_mask_rate"] <= MAX_FP_MASK_RATE, s


@pytest.mark.parametrize("photo", ["camera", "astronaut", "coffee", "chelsea"])
def test_photographs_are_not_classified_as_brains(photo):
    """Photos (skimage.data) decode fine but must come back rejected as not a brain MRI."""
    import io

    from PIL import Image
    from skimage import data as skdata

    from triage.service import TriageService

    settings = get_settings()
    try:
        if not load_model(settings.weights_dir, "classifier").trained:
            pytest.skip("the active weights are untrained placeholders")
    except Exception as exc:
        pytest.skip(f"no shipped weights: {exc}")
    buf = io.BytesIO()
    Image.fromarray(getattr(skdata, photo)()).save(buf, format="PNG")
    (r,) = TriageService(settings).analyze_bytes(buf.getvalue(), f"{photo}.png")
    assert r.status == "rejected" or (r.prediction is not None and r.prediction.ood), r
