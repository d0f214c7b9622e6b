"""Calibrated class probabilities and an out-of-distribution score for brain crops."""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np

from triage.models import LoadedModel
from triage.records import CLASSES, Prediction
from triage.transforms import model_array

# Grad-CAM hangs hooks on the shared network while it runs; predictions from other sessions
# must not pass through those hooks, so both take this lock (see TriageService.explain).
MODEL_LOCK = threading.RLock()


# float32 (N, 1, S, S) model input -> (logits (N, C), pre-logit features (N, D)).
ClassifierForward = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


def torch_forward(model: LoadedModel) -> ClassifierForward:
    """The torch network as a :data:`ClassifierForward` (imports torch; used without an ONNX export)."""
    import torch

    net = model.net

    @torch.inference_mode()
    def forward(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with MODEL_LOCK:
            feats = net.forward_head(net.forward_features(torch.from_numpy(x)), pre_logits=True)
            logits = net.get_classifier()(feats)
        return logits.float().numpy(), feats.float().numpy()

    return forward


class Classifier:
    """Wraps a classifier version: temperature-scaled softmax + Mahalanobis OOD score.

    ``forward`` runs the network (the ONNX runner from :func:`triage.runtime.onnx_net`); without
    one the torch network is built from the weights.
    """

    def __init__(self, model: LoadedModel, forward: ClassifierForward | None = None):
        card = model.card  # parsed and checked (intensity_norm included) when the version loaded
        if list(card.classes) != list(CLASSES):
            raise ValueError(f"model class order {list(card.classes)} differs from {list(CLASSES)}")
        self.model = model
        self.card = card
        self.size = card.input_size
        self.mean = card.mean
        self.std = card.std
        self.temperature = card.temperature
        self.tta = card.tta
        # The review-flag rule fitted on validation (None: risk.py's fixed rule).
        self.flag_rule = card.flag_rule
        self.ood_threshold = card.ood_threshold
        self._ood_means = _as_array(model.extras.get("ood_means"))
        self._ood_precision = _as_array(model.extras.get("ood_precision"))
        self.forward = forward or torch_forward(model)

    @property
    def net(self):
        """The torch network (built on first use; Grad-CAM needs it)."""
        return self.model.net

    def logits_and_scores(self, crops: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Raw logits (N, C) and OOD scores (N,) (min class Mahalanobis distance, higher = stranger)."""
        x = model_array(crops, self.card)
        n = x.shape[0]
        if self.tta:  # slice and its mirror image in one batch (one call is cheaper than two)
            x = np.concatenate([x, x[..., ::-1]])
        logits, all_feats = self.forward(x)
        feats = all_feats[:n].astype(np.float64)  # OOD statistics were fitted on unmirrored features
        if self.tta:
            logits = (logits[:n] + logits[n:]) / 2
        if self._ood_means is None or self._ood_precision is None:
            scores = np.zeros(len(crops))
        else:
            d = feats[:, None, :] - self._ood_means[None]  # (N, C, D)
            scores = np.einsum("ncd,ncd->nc", d @ self._ood_precision, d).min(1)
        return logits.astype(np.float32), scores.astype(np.float32)

    def predict(self, crops: list[np.ndarray]) -> list[Prediction]:
        """Calibrated predictions for a batch of uint8 brain crops."""
        if not crops:
            return []
        logits, scores = self.logits_and_scores(crops)
        z = logits / self.temperature
        z = z - z.max(1, keepdims=True)
        probs = np.exp(z)
        probs /= probs.sum(1, keepdims=True)
        out = []
        for p, s in zip(probs, scores):
            i = int(p.argmax())
            ent = float(-(p * np.log(np.clip(p, 1e-12, 1))).sum() / np.log(len(CLASSES)))
            out.append(
                Prediction(
                    probs=p.astype(np.float32),
                    label=CLASSES[i],
                    confidence=float(p[i]),
                    entropy=ent,
                    ood_score=float(s),
                    ood=bool(s > self.ood_threshold),
                )
            )
        return out


def _as_array(value) -> np.ndarray | None:
    return None if value is None else np.asarray(value, dtype=np.float64)
