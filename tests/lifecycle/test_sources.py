"""The multi-source recipe: held-out groups never leak into training, the loss and the sampler."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from triage.datasets import Sample
from triage.lifecycle.losses import partial_label_loss
from triage.lifecycle.sources import (
    BRATS,
    BRATS_TEST_PATIENTS,
    FELTRIN,
    FELTRIN_TEST_SUBTYPES,
    LGG,
    LGG_TEST_SITES,
    Row,
    balanced_weights,
    label_matrix,
    source_splits,
    split_lgg,
)


def _groups(rows):
    return {r.group for r in rows}


def test_real_splits_share_no_patient_site_or_subtype(shared_data) -> None:
    splits = source_splits(shared_data)
    for name, sp in splits.items():
        train, val, test = _groups(sp.train), _groups(sp.val), _groups(sp.test)
        assert train and test, name
        assert not (train & val) and not (train & test) and not (val & test), name
    assert {r.site for r in splits[LGG].test} == set(LGG_TEST_SITES)
    assert not {r.site for r in splits[LGG].train} & set(LGG_TEST_SITES)
    assert _groups(splits[BRATS].test) == set(BRATS_TEST_PATIENTS)
    assert _groups(splits[FELTRIN].test) == set(FELTRIN_TEST_SUBTYPES)
    # Lesions outside the four classes train as "any tumour class", never as no_tumor.
    assert {r.sample.label for r in splits[FELTRIN].train} == {"glioma", "meningioma", "tumor"}


def test_lgg_split_holds_out_whole_sites_and_validation_patients() -> None:
    rows = [
        Row(Sample(path=f"/x/{site}{p}_{k}.jpg", label="glioma", dataset=LGG), f"{site}{p}", site)
        for site in ("DU", "CS", "FG")
        for p in range(8)
        for k in range(3)
    ]
    sp = split_lgg(rows, seed=1)
    assert {r.site for r in sp.test} == {"CS", "FG"}
    assert len(_groups(sp.val)) == 5 and not _groups(sp.val) & _groups(sp.train)


def test_partial_label_loss() -> None:
    logits = torch.randn(6, 4)
    one = torch.from_numpy(label_matrix(["glioma", "no_tumor", "pituitary", "meningioma", "glioma", "no_tumor"]))
    y = one.float().argmax(1)
    assert torch.allclose(partial_label_loss(logits, one, 0.05), F.cross_entropy(logits, y, label_smoothing=0.05))
    lesion = torch.from_numpy(label_matrix(["tumor"]))
    confident_none = partial_label_loss(torch.tensor([[8.0, 0, 0, 0]]), lesion)
    any_tumour = partial_label_loss(torch.tensor([[0.0, 0, 8, 0]]), lesion)
    assert confident_none > 6.5 and any_tumour < 0.01  # -log(3 e^0 / (e^8 + 3)) = 6.90


def test_balanced_weights_give_each_source_its_share() -> None:
    sources = ["a"] * 90 + ["b"] * 10
    labels = ["glioma"] * 80 + ["no_tumor"] * 10 + ["no_tumor"] * 10
    w = balanced_weights(sources, labels, {"a": 0.7, "b": 0.3, "absent": 0.5})
    src, lab = np.array(sources), np.array(labels)
    assert w.sum() == pytest.approx(1.0)
    assert w[src == "b"].sum() == pytest.approx(0.3)
    assert w[(src == "a") & (lab == "no_tumor")].sum() == pytest.approx(0.35)
