"""Classifier wrapper: the crop goes through the same intensity standardisation the card was trained with."""

import numpy as np
import pytest

from tests.conftest import draw_synthetic_slice
from tests.model_fixtures import make_tiny_weights, plain_and_standardising
from triage.classify import Classifier
from triage.preprocess import standardize_intensity


@pytest.mark.slow
def test_classifier_standardises_crops_when_the_card_says_so(tmp_path):
    plain_model, normed_model = plain_and_standardising(make_tiny_weights(tmp_path / "w"), "classifier")
    plain, normed = Classifier(plain_model), Classifier(normed_model)
    img, _ = draw_synthetic_slice(shape=(96, 96), seed=3, brain_level=170, skull_level=240, tumor_level=250)
    got, _ = normed.logits_and_scores([img])
    want, _ = plain.logits_and_scores([standardize_intensity(img)])
    unchanged, _ = plain.logits_and_scores([img])
    assert np.allclose(got, want, atol=1e-5)
    assert not np.allclose(got, unchanged, atol=1e-3)


def test_a_card_asking_for_an_unknown_standardisation_fails_at_load(tmp_path):
    import pytest

    from triage.models import load_model

    model = load_model(make_tiny_weights(tmp_path / "w"), "classifier", "tiny")
    model.meta["intensity_norm"] = "zscore_v9"
    with pytest.raises(ValueError, match="unknown intensity_norm"):
        Classifier(model)
