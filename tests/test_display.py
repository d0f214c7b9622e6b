"""The viewer's picture (issue 16): window/level, presets and the overlay order."""

import numpy as np
import pytest

from triage.display import PRESETS, WindowLevel, compose_view, preset_window, window_level


def test_window_level_maps_the_window_to_black_white_and_clips():
    px = np.array([[0, 50, 100, 150, 255]], np.uint8)
    np.testing.assert_array_equal(window_level(px, WindowLevel(256, 128)), px)
    out = window_level(px, WindowLevel(100, 100))  # 50..150 -> 0..255
    assert out.tolist() == [[0, 0, 129, 255, 255]]
    with pytest.raises(ValueError):
        window_level(px, WindowLevel(0, 100))


def test_presets_follow_the_slice_brain_intensities():
    rng = np.random.default_rng(0)
    px = np.zeros((64, 64), np.uint8)
    px[8:56, 8:56] = rng.integers(80, 160, (48, 48))
    auto = preset_window(px, "Brain (auto)")
    assert 70 <= auto.window <= 90 and 110 <= auto.level <= 130  # ~80..160, the black background ignored
    assert preset_window(px, "High contrast").window < auto.window < preset_window(px, "Wide").window
    assert preset_window(px, "Bright lesion (T2/FLAIR)").level > auto.level
    assert preset_window(px, "As stored") == WindowLevel(256, 128)
    assert set(PRESETS) >= {"As stored", "Brain (auto)"}
    with pytest.raises(ValueError):
        preset_window(px, "CT bone")


def test_compose_draws_the_heatmap_by_its_value_and_the_outlines_on_top():
    px = np.full((32, 32), 100, np.uint8)
    heat = np.zeros((32, 32), np.float32)
    heat[:, 16:] = 1.0
    mask = np.zeros((32, 32), bool)
    mask[10:20, 10:20] = True
    out = compose_view(px, WindowLevel(256, 128), mask=mask, heat=heat, opacity=0.5)
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    assert out[2, 2].tolist() == [100, 100, 100]  # cold: the anatomy untouched
    assert out[2, 30].tolist() != [100, 100, 100]  # hot: coloured
    assert out[10, 12].tolist() == [255, 0, 0]  # the predicted outline in red over everything
    none = compose_view(px, WindowLevel(256, 128), heat=heat, opacity=0.0)
    assert (none == 100).all()
