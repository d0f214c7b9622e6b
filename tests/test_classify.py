"""Classifier wrapper: the crop goes through the same intensity standardisation the card was trained with."""

import numpy as np

from tests.conftest import draw_synthetic_slice
from tests.model_fixtures import make_tiny_weights
from triage.classify import Classifier
from triage.models import load_model
from triage.preprocess import INTENSITY_NORM, standardize_intensity


def test_classifier_standardises_crops_when_the_card_says_so(tmp_path):
    wd = make_tiny_weights(tmp_path / "w")
    img, _ = draw_synthetic_slice(shape=(96, 96), seed=3, brain_level=170, skull_level=240, tumor_level=250)
    plain = Classifier(load_model(wd, "classifier", "tiny"))
    model = load_model(wd, "classifier", "tiny")
    model.meta["intensity_norm"] = INTENSITY_NORM
    normed = Classifier(model)
    got, _ = normed.logits_and_scores([img])
    want, _ = plain.logits_and_scores([standardize_intensity(img)])
    unchanged, _ = plain.logits_and_scores([img])
    assert np.allclose(got, want, atol=1e-5)
    assert not np.allclose(got, unchanged, atol=1e-3)
