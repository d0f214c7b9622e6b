"""Tiny random-initialised model versions for tests (written to a temp weights folder).

They are marked ``trained: false`` so the pipeline flags every case as coming from an
untrained model; tests that need real accuracy use the shipped weights instead.
"""

from __future__ import annotations

from pathlib import Path

import torch

from triage.models import build_model, save_model, set_active
from triage.records import CLASSES

CLASSIFIER_META = {
    "task": "classifier",
    "arch": "timm:regnetx_004",
    "arch_kwargs": {"num_classes": 4, "in_chans": 1},
    "trained": False,
    "classes": list(CLASSES),
    "input_size": 64,
    "normalization": {"mean": 0.2, "std": 0.25},
    "gradcam_layer": "s4",
    "temperature": 1.0,
    "ood": {"threshold": 1e9},
}
SEGMENTER_META = {
    "task": "segmenter",
    "arch": "monai:UNet",
    "arch_kwargs": {"in_channels": 1, "out_channels": 1, "channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 1},
    "trained": False,
    "input_size": 64,
    "normalization": {"mean": 0.2, "std": 0.25},
    "threshold": 0.5,
    "min_area_frac": 0.0,
}


def make_tiny_weights(weights_dir: Path, version: str = "tiny", seed: int = 0) -> Path:
    """Write a tiny classifier and segmenter version into ``weights_dir`` and activate them."""
    torch.manual_seed(seed)
    weights_dir = Path(weights_dir)
    for task, meta in (("classifier", CLASSIFIER_META), ("segmenter", SEGMENTER_META)):
        net = build_model(meta)
        save_model(weights_dir / task / version, net, {**meta, "version": version})
        set_active(weights_dir, task, version)
    return weights_dir


def plain_and_standardising(weights_dir: Path, task: str):
    """Two loads of the tiny ``task`` version: as saved, and with a card asking for intensity standardisation."""
    from triage.models import load_model
    from triage.preprocess import INTENSITY_NORM

    plain, normed = load_model(weights_dir, task, "tiny"), load_model(weights_dir, task, "tiny")
    normed.meta["intensity_norm"] = INTENSITY_NORM
    return plain, normed
