"""Augmentation: shapes, ranges, mask alignment, determinism and the cross-sequence remap."""

import torch

from triage.augment import (
    augment_batch,
    bright_background,
    head_mask,
    low_resolution,
    sequence_remap,
    suppress_enhancement,
)


def _phantom(n: int = 4, size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """A grey disc 'head' on black with a bright square 'tumor' and its mask."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    head = (((yy - size / 2) ** 2 + (xx - size / 2) ** 2) < (size * 0.4) ** 2).float()
    tumor = ((yy > 20) & (yy < 32) & (xx > 20) & (xx < 32)).float()
    img = 0.4 * head + 0.5 * tumor
    return img.expand(n, 1, size, size).clone(), tumor.expand(n, 1, size, size).clone()


def test_output_shape_range_and_binary_masks():
    img, mask = _phantom()
    out, m = augment_batch(img, mask, 48, torch.Generator().manual_seed(0), train=True, sequence_p=0.5)
    assert out.shape == (4, 1, 48, 48) and m.shape == (4, 1, 48, 48)
    assert out.min() >= 0 and out.max() <= 1
    assert set(torch.unique(m).tolist()) <= {0.0, 1.0}


def test_masks_follow_the_geometry():
    img, mask = _phantom()
    out, m = augment_batch(img, mask, 64, torch.Generator().manual_seed(1), train=True, strength=0.0)
    for i in range(4):
        inside, outside = out[i][m[i] > 0], out[i][(m[i] == 0) & (out[i] > 0.05)]
        assert inside.mean() > outside.mean() + 0.2


def test_same_seed_same_batch():
    img, mask = _phantom()
    a, _ = augment_batch(img, mask, 48, torch.Generator().manual_seed(7), sequence_p=0.5)
    b, _ = augment_batch(img, mask, 48, torch.Generator().manual_seed(7), sequence_p=0.5)
    assert torch.equal(a, b)


def test_eval_mode_only_resizes():
    img, _ = _phantom(1, 64)
    out, _ = augment_batch(img, None, 64, torch.Generator().manual_seed(0), train=False)
    assert torch.allclose(out, img, atol=1e-5)


def test_sequence_remap_changes_the_head_and_keeps_background_dark():
    img, _ = _phantom(8, 64)
    out = sequence_remap(img, torch.Generator().manual_seed(0), p=1.0)
    assert out[:, :, :3, :3].abs().max() < 1e-6  # corner background untouched
    centre = (slice(None), slice(None), slice(40, 48), slice(30, 40))  # plain head tissue
    assert (out[centre] - img[centre]).abs().mean() > 0.05
    assert torch.equal(sequence_remap(img, torch.Generator().manual_seed(0), p=0.0), img)


def test_sequence_remap_takes_a_probability_per_image():
    img, _ = _phantom(4, 64)
    out = sequence_remap(img, torch.Generator().manual_seed(0), p=torch.tensor([1.0, 0.0, 1.0, 0.0]))
    changed = (out - img).abs().flatten(1).amax(1) > 1e-6
    assert changed.tolist() == [True, False, True, False]
    zero = torch.zeros(4)
    assert torch.equal(sequence_remap(img, torch.Generator().manual_seed(0), p=zero), img)


def test_bright_background_paints_only_outside_the_head():
    img, _ = _phantom(3, 64)
    out = bright_background(img, torch.Generator().manual_seed(0), p=1.0)
    assert (out[:, :, :3, :3] >= 0.6).all()  # corners now light grey or white
    centre = (slice(None), slice(None), slice(28, 36), slice(28, 36))
    assert torch.allclose(out[centre], img[centre])
    assert torch.equal(bright_background(img, torch.Generator().manual_seed(0), p=0.0), img)


def test_head_mask_and_low_resolution_shapes():
    img, _ = _phantom(2, 64)
    hm = head_mask(img)
    assert hm.shape == img.shape and hm[:, :, 32, 32].min() > 0.99 and hm[:, :, 0, 0].max() == 0
    assert low_resolution(img, torch.Generator().manual_seed(0), p=1.0).shape == img.shape


def test_suppress_enhancement_dims_only_the_brightest_tones_inside_the_head():
    img, mask = _phantom(2)
    img[:, :, :4, :4] = 0.0
    out = suppress_enhancement(img, torch.Generator().manual_seed(0), 1.0)
    tumor = mask.bool()
    assert (out[tumor] < img[tumor] - 0.1).all()  # the bright 'enhancing' square is compressed
    plain = (img > 0.3) & (img < 0.5)
    assert torch.allclose(out[plain], img[plain], atol=0.02)  # ordinary tissue keeps its tone
    assert out.max() <= 1 and out.min() >= 0
    assert torch.equal(out[:, :, :4, :4], img[:, :, :4, :4])  # background untouched


def test_suppress_enhancement_takes_a_probability_per_image():
    img, _ = _phantom(2)
    out = suppress_enhancement(img, torch.Generator().manual_seed(0), torch.tensor([1.0, 0.0]))
    assert not torch.equal(out[0], img[0]) and torch.equal(out[1], img[1])
    assert torch.equal(suppress_enhancement(img, torch.Generator().manual_seed(0), 0.0), img)
