"""Calibrated class probabilities and an out-of-distribution score for brain crops."""

from __future__ import annotations

import threading

import numpy as np
import torch

from triage.flags import FlagRule
from triage.models import LoadedModel
from triage.preprocess import check_intensity_norm
from triage.records import CLASSES, Prediction
from triage.transforms import model_input

# Grad-CAM hangs hooks on the shared network while it runs; predictions from other sessions
# must not pass through those hooks, so both take this lock (see TriageService.explain).
MODEL_LOCK = threading.RLock()


class Classifier:
    """Wraps a loaded classifier version: temperature-scaled softmax + Mahalanobis OOD score."""

    def __init__(self, model: LoadedModel):
        meta = model.meta
        if list(meta.get("classes", CLASSES)) != list(CLASSES):
            raise ValueError(f"model class order {meta.get('classes')} differs from {list(CLASSES)}")
        self.model = model
        self.net = model.net
        self.size = int(meta["input_size"])
        self.mean = float(meta["normalization"]["mean"])
        self.std = float(meta["normalization"]["std"])
        self.temperature = float(meta.get("temperature", 1.0))
        check_intensity_norm(meta.get("intensity_norm"))  # fail when loaded, not at the first scan
        self.tta = bool(meta.get("tta", False))
        # The review-flag rule fitted on validation (None: risk.py's fixed rule).
        self.flag_rule = FlagRule.from_card(meta.get("flag_rule"))
        ood = meta.get("ood", {})
        self.ood_threshold = float(ood.get("threshold", float("inf")))
        self._ood_means = model.extras.get("ood_means")
        self._ood_precision = model.extras.get("ood_precision")

    def tensor(self, crops: list[np.ndarray]) -> torch.Tensor:
        """uint8 crops -> normalised float tensor (N, 1, S, S) (:func:`triage.transforms.model_input`)."""
        return model_input(crops, self.model.meta)

    @torch.inference_mode()
    def logits_and_scores(self, crops: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Raw logits (N, C) and OOD scores (N,) (min class Mahalanobis distance, higher = stranger)."""
        x = self.tensor(crops)
        n = x.shape[0]
        if self.tta:  # slice and its mirror image in one batch (one call is cheaper than two)
            x = torch.cat([x, x.flip(-1)])
        with MODEL_LOCK:
            all_feats = self.net.forward_head(self.net.forward_features(x), pre_logits=True)
            logits = self.net.get_classifier()(all_feats)
        feats = all_feats[:n]  # OOD statistics were fitted on unmirrored features
        if self.tta:
            logits = (logits[:n] + logits[n:]) / 2
        if self._ood_means is None or self._ood_precision is None:
            scores = torch.zeros(len(crops))
        else:
            d = feats[:, None, :] - self._ood_means[None]
            scores = torch.einsum("ncd,de,nce->nc", d, self._ood_precision, d).min(1).values
        return logits.float().numpy(), scores.float().numpy()

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
