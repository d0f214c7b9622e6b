"""The one model-input transform: training cache, calibration, evaluation and inference agree."""

import numpy as np
import torch

from tests.model_fixtures import make_tiny_weights
from triage.augment import augment_batch
from triage.classify import Classifier
from triage.datasets import prepare_sample
from triage.explain import _normalised_input
from triage.lifecycle.train import _normalize, _to_tensor
from triage.lifecycle.train_config import MEAN, STD
from triage.models import load_model
from triage.preprocess import DEFAULT_CROP, crop_brain
from triage.segment import Segmenter
from triage.transforms import SQUARE_SIDE, model_array, resize_matrix, squares_to_tensor, to_model_input


def test_training_calibration_and_inference_see_the_same_tensor(tmp_path, synthetic_slice) -> None:
    img, _ = synthetic_slice(shape=(300, 240))
    weights = make_tiny_weights(tmp_path)
    clf = Classifier(load_model(weights, "classifier"))
    seg = Segmenter(load_model(weights, "segmenter"))
    size = clf.size
    # Training and calibration: the cached square, then the augmentation's evaluation path.
    cached, _ = prepare_sample(img, None, SQUARE_SIDE, DEFAULT_CROP)
    x_train, _ = augment_batch(_to_tensor(cached[None]), None, size, torch.Generator(), train=False)
    x_train = _normalize(x_train)
    x_calib = squares_to_tensor(cached[None], size, MEAN, STD)
    # Inference: the service's crop, through the classifier's and segmenter's own input path.
    crop = crop_brain(img, **DEFAULT_CROP).image
    x_infer = torch.from_numpy(model_array([crop], clf.model.meta))
    assert torch.equal(x_train, x_calib)
    assert torch.equal(x_calib, x_infer)
    assert np.array_equal(_normalised_input(crop, clf.model.card), x_infer[0, 0].numpy())
    np.testing.assert_allclose(to_model_input(crop, size), (x_infer[0, 0].numpy() * STD) + MEAN, atol=1e-6)
    from triage.transforms import model_input

    assert torch.equal(model_input([crop], seg.model.meta), x_infer)


def test_resize_matrix_is_the_identity_grid_sample() -> None:
    """The NumPy stage 2 (inference, no torch) equals grid_sample with the identity grid, which
    is the evaluation case of the training augmentation, for shrinking and enlarging."""
    import torch.nn.functional as F

    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.random((2, 1, SQUARE_SIDE, SQUARE_SIDE), dtype=np.float32))
    for size in (64, 160, 192, 300):
        theta = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]).expand(2, 2, 3)
        grid = F.affine_grid(theta, (2, 1, size, size), align_corners=False)
        ref = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        w = resize_matrix(size)
        np.testing.assert_allclose(w @ x.numpy() @ w.T, ref.numpy(), atol=2e-5)
        assert np.allclose(w.sum(1)[1:-1], 1.0)  # interior rows interpolate; edges meet the zero padding


def test_dark_uint8_batches_are_scaled_like_bright_ones() -> None:
    """A uint8 batch whose maximum is 1 is still 0..255 data (it used to be taken as [0, 1])."""
    dark = torch.ones(1, 1, 8, 8, dtype=torch.uint8)
    out, _ = augment_batch(dark, None, 8, torch.Generator(), train=False)
    assert torch.allclose(out, torch.full_like(out, 1 / 255))
