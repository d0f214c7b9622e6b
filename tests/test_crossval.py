"""k-fold cross-validation: stratified folds and a tiny end-to-end run on a synthetic dataset folder."""

import csv

import numpy as np
import pytest
from PIL import Image

from tests.conftest import draw_synthetic_slice
from triage.crossval import cross_validate, fold_ids

# Slow tier: real models, training runs, subprocesses or full pages (`pytest -m 'not slow'` skips them).
pytestmark = pytest.mark.slow


def test_folds_are_stratified_and_cover_everything():
    labels = ["a"] * 10 + ["b"] * 7 + ["c"] * 3
    ids = fold_ids(labels, 3, seed=0)
    assert sorted(set(ids.tolist())) == [0, 1, 2]
    for lab, n in (("a", 10), ("b", 7)):
        counts = np.bincount(ids[np.asarray(labels) == lab], minlength=3)
        assert counts.sum() == n and counts.max() - counts.min() <= 1
    assert np.array_equal(ids, fold_ids(labels, 3, seed=0))


def test_two_fold_run_reports_every_fold(tmp_path):
    rng = np.random.default_rng(0)
    spec = {"no_tumor": None, "glioma": (40, 40), "meningioma": (88, 88), "pituitary": (88, 40)}
    rows = []
    for label, centre in spec.items():
        for i in range(8):
            # Varied heads so the near-duplicate filter keeps (almost) every slice.
            kw = (
                {"tumor": False}
                if centre is None
                else {
                    "tumor_center": (centre[0] + rng.integers(-8, 8), centre[1] + rng.integers(-8, 8)),
                    "tumor_radius": int(rng.integers(8, 16)),
                }
            )
            img, _ = draw_synthetic_slice(
                shape=(128, 128),
                seed=int(rng.integers(1e6)),
                center=(64 + rng.integers(-12, 12), 64 + rng.integers(-12, 12)),
                axes=(rng.uniform(34, 52), rng.uniform(28, 46)),
                brain_level=int(rng.integers(50, 170)),
                noise=12.0,
                **kw,
            )
            path = tmp_path / "set" / label / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(path)
            rows.append({"path": f"{label}/{i}.png", "label": label})
    with (tmp_path / "set" / "manifest.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["path", "label"])
        w.writeheader()
        w.writerows(rows)
    rep = cross_validate(
        tmp_path / "set",
        2,
        tmp_path / "cache",
        progress=False,
        input_size=32,
        epochs=1,
        batch_size=8,
        threads=1,
        schedule_by_time=False,
        max_train_images=None,
    )
    assert rep["folds"] == 2 and len(rep["per_fold"]) == 2
    assert sum(f["n_test"] for f in rep["per_fold"]) <= 32
    for f in rep["per_fold"]:
        assert 0.0 <= f["accuracy"] <= 1.0 and f["train_min"] >= 0
    assert set(rep["summary"]) == {"accuracy", "macro_f1", "tumor_miss_rate", "ece"}
