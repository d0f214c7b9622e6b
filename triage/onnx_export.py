"""Export a model version to ONNX and check it against torch before anything runs it (issue 17).

The classifier graph returns ``logits`` and the pre-logit ``features`` (the OOD score needs
them); the segmenter graph returns the sigmoid ``prob`` map. Mirror test-time augmentation and
the temperature stay outside the graph, in :mod:`triage.classify` / :mod:`triage.segment`, so
one graph serves every card setting. The check runs both backends on seeded noise and on a
synthetic head and writes the largest differences to ``onnx.json``; an export outside the
tolerances is recorded as failed and the version keeps running on torch.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from triage import atomic
from triage.card import ModelCard
from triage.clock import utc_now
from triage.runtime import ONNX_FILE, ONNX_RECORD, OnnxNet, file_sha256

log = logging.getLogger(__name__)

OPSET = 17
# Largest differences accepted between the torch and the ONNX outputs: probabilities (softmax at
# the card's temperature, sigmoid maps) absolute, logits/features relative to their scale.
PROB_TOLERANCE = 1e-4
RELATIVE_TOLERANCE = 1e-3


class _ClassifierGraph(nn.Module):
    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.net.forward_head(self.net.forward_features(x), pre_logits=True)
        return self.net.get_classifier()(features), features


class _SegmenterGraph(nn.Module):
    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(x))


def graph_for(net: nn.Module, meta: dict | ModelCard) -> tuple[nn.Module, list[str]]:
    """The module that is exported for a card's task and its output names."""
    if ModelCard.of(meta).task == "segmenter":
        return _SegmenterGraph(net).eval(), ["prob"]
    return _ClassifierGraph(net).eval(), ["logits", "features"]


def check_inputs(size: int, mean: float, std: float) -> np.ndarray:
    """Seeded noise plus a synthetic head (bright ellipse, darker blob) in model units, (3, 1, S, S)."""
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 1, (2, 1, size, size)).astype(np.float32)
    yy, xx = np.mgrid[:size, :size] / size
    head = (((yy - 0.5) / 0.4) ** 2 + ((xx - 0.5) / 0.33) ** 2 < 1) * 0.6
    head = head - (((yy - 0.4) / 0.1) ** 2 + ((xx - 0.6) / 0.08) ** 2 < 1) * 0.3
    return np.concatenate([noise, ((head - mean) / std).astype(np.float32)[None, None]])


def _differences(card: ModelCard, names: list[str], ref: list[np.ndarray], got: list[np.ndarray]) -> dict:
    diffs = {}
    for name, r, g in zip(names, ref, got):
        diffs[name] = float(np.abs(r - g).max() / (1.0 + np.abs(r).max()))
    if "logits" in names:
        t = card.temperature

        def softmax(z: np.ndarray) -> np.ndarray:
            e = np.exp(z / t - (z / t).max(1, keepdims=True))
            return e / e.sum(1, keepdims=True)

        diffs["probabilities"] = float(np.abs(softmax(ref[0]) - softmax(got[0])).max())
    if "prob" in names:
        diffs["prob"] = float(np.abs(ref[0] - got[0]).max())
    return diffs


def export_onnx(net: nn.Module, meta: dict | ModelCard, folder: Path) -> dict:
    """Write ``model.onnx`` and ``onnx.json`` into a version folder and return the record.

    The record says whether the export passed the check (``ok``), the largest differences, and the
    SHA-256 of the ONNX file and of the ``model.safetensors`` it came from (so a later change to
    either invalidates it). A failed export or check is logged and recorded, never raised: the
    version still works on the torch path.
    """
    folder = Path(folder)
    card = ModelCard.of(meta)
    size = card.input_size
    graph, names = graph_for(net, card)
    was_training = net.training
    record: dict = {"file": ONNX_FILE, "opset": OPSET, "torch": torch.__version__, "ok": False}
    try:
        import onnxruntime

        record["onnxruntime"] = onnxruntime.__version__
        x = check_inputs(size, card.mean, card.std)
        with atomic.atomic_path(folder / ONNX_FILE) as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notes
            torch.onnx.export(
                graph,
                (torch.from_numpy(x),),
                str(tmp),
                input_names=["x"],
                output_names=names,
                dynamic_axes={"x": {0: "n"}, **{k: {0: "n"} for k in names}},
                opset_version=OPSET,
                dynamo=False,
            )
        graph.eval()  # the exporter restores the wrapper's (training) flag, which reaches the network
        with torch.inference_mode():
            ref = graph(torch.from_numpy(x))
        ref = [t.numpy() for t in (ref if isinstance(ref, tuple) else (ref,))]
        got = OnnxNet(folder, threads=1)(x)
        diffs = _differences(card, names, ref, got)
        record["max_difference"] = diffs
        bad = [
            k
            for k, v in diffs.items()
            if v > (PROB_TOLERANCE if k in ("probabilities", "prob") else RELATIVE_TOLERANCE)
        ]
        if bad:
            record["reason"] = f"outputs differ from torch beyond tolerance: {', '.join(bad)}"
        else:
            record["ok"] = True
        record["sha256"] = file_sha256(folder / ONNX_FILE)
        record["weights_sha256"] = file_sha256(folder / "model.safetensors")
    except Exception as exc:  # exporter/runtime failures are many types; the version stays usable on torch
        log.warning("ONNX export of %s failed: %s", folder, exc)
        record["reason"] = f"{type(exc).__name__}: {exc}"
    finally:
        net.train(was_training)
    record["created"] = utc_now("seconds")
    atomic.write_json(folder / ONNX_RECORD, record, indent=2)
    if not record["ok"]:
        log.warning("%s: ONNX export not used: %s", folder, record.get("reason"))
    return record
