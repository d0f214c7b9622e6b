import json

import pytest
import torch

from tests.model_fixtures import CLASSIFIER_META, SEGMENTER_META, make_tiny_weights
from triage.errors import ModelNotFoundError
from triage.models import (
    active_version,
    build_model,
    list_versions,
    load_model,
    resolve_module,
    save_model,
    set_active,
)


def test_build_never_downloads_and_has_right_outputs():
    net = build_model(CLASSIFIER_META)
    assert net(torch.zeros(1, 1, 64, 64)).shape == (1, 4)
    seg = build_model(SEGMENTER_META)
    assert seg(torch.zeros(1, 1, 64, 64)).shape == (1, 1, 64, 64)
    with pytest.raises(ValueError, match="unknown architecture"):
        build_model({"arch": "keras:vgg16"})


def test_save_load_roundtrip_and_versions(tmp_path):
    make_tiny_weights(tmp_path, "v1", seed=0)
    make_tiny_weights(tmp_path, "v2", seed=1)
    assert list_versions(tmp_path, "classifier") == ["v1", "v2"]
    assert active_version(tmp_path, "classifier") == "v2"
    set_active(tmp_path, "classifier", "v1")
    m = load_model(tmp_path, "classifier")
    assert m.version == "v1" and not m.trained
    assert (tmp_path / "classifier" / "v1" / "model.safetensors").is_file()
    meta = json.loads((tmp_path / "classifier" / "v1" / "metadata.json").read_text())
    assert meta["classes"] == ["no_tumor", "glioma", "meningioma", "pituitary"]
    with pytest.raises(ModelNotFoundError):
        set_active(tmp_path, "classifier", "v9")
    with pytest.raises(FileExistsError):
        save_model(tmp_path / "classifier" / "v1", build_model(CLASSIFIER_META), CLASSIFIER_META)


def test_missing_weights_raise_clear_error(tmp_path):
    with pytest.raises(ModelNotFoundError, match="python -m triage train"):
        load_model(tmp_path, "segmenter")


def test_no_pickle_files_and_resolve_module(tmp_path):
    make_tiny_weights(tmp_path)
    files = {p.suffix for p in tmp_path.rglob("*") if p.is_file()}
    assert ".pt" not in files and ".pth" not in files and ".pkl" not in files
    net = load_model(tmp_path, "classifier").net
    assert resolve_module(net, "s4") is net.s4
