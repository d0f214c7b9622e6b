"""The facade the UI and the CLI call: analyse files, explain, store cases, manage model versions.

Models are loaded lazily once per service and reloaded when a task's ``ACTIVE`` pointer
changes, so a promoted model is picked up without a restart.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np

from triage.brain_check import atypical_reason, not_brain_reason
from triage.classify import MODEL_LOCK, Classifier
from triage.config import Settings, get_settings
from triage.errors import InvalidScanError, ModelNotFoundError
from triage.io import content_id, read_scans, safe_name
from triage.models import LoadedModel, active_version, load_model, set_active
from triage.preprocess import crop_brain
from triage.records import (
    CLASSES,
    CaseResult,
    Explanation,
    Flag,
    Prediction,
    Scan,
    Segmentation,
)
from triage.risk import suspected_tumor
from triage.runtime import onnx_net, single_thread_blas
from triage.segment import Segmenter

log = logging.getLogger(__name__)

# A Mahalanobis score this many times the in-distribution threshold is treated as "not a
# brain MRI" and rejected; between 1x and this factor the case is kept and flagged 'ood'.
OOD_REJECT_FACTOR = 3.0
# Scans per model call: bounds the network's activations whatever the number of frames in a file.
MAX_BATCH = 16


@dataclass
class ModelBundle:
    classifier: Classifier
    segmenter: Segmenter
    versions: dict
    trained: bool
    pointers: tuple
    backends: dict  # task -> "onnx" | "torch": what runs the analysis


def _model_state(weights_dir: Path) -> tuple:
    """What the loaded models depend on: each task's ACTIVE pointer and the size and mtime of the
    files in the version it names. A promotion, or a version's files being replaced or repaired,
    changes it and the models are loaded again."""
    state = []
    for task in ("classifier", "segmenter"):
        d = Path(weights_dir) / task
        try:
            name = (d / "ACTIVE").read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError):
            name = ""
        files: tuple = ()
        if name and "/" not in name and not name.startswith("."):
            try:
                files = tuple(
                    sorted(
                        (f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in (d / name).iterdir() if f.is_file()
                    )
                )
            except OSError:
                files = ()
        state.append((name, files))
    return tuple(state)


class TriageService:
    """Thread-safe facade over the pipeline: bytes -> Scan -> crop -> prediction/mask/CAM -> case."""

    def __init__(self, settings: Settings | None = None):
        self.settings = settings or get_settings()
        self._lock = threading.Lock()
        self._bundle: ModelBundle | None = None
        self._failure: tuple[tuple, str] | None = None  # (model state, reason) of the last failed load
        self._torch_configured = False
        single_thread_blas()

    # ----- models -----------------------------------------------------------------------
    def models(self) -> ModelBundle:
        """The active models, loaded once and reloaded when a version is promoted or its files change.

        A version that cannot be used (missing or dangling ACTIVE, truncated or wrong-shaped
        weights, a broken card) raises :class:`ModelNotFoundError` with the reason; the reason is
        logged once per broken state and the load is not retried until the files change.
        """
        wd = self.settings.weights_dir
        state = _model_state(wd)
        with self._lock:
            if self._bundle is not None and self._bundle.pointers == state:
                return self._bundle
            if self._failure is not None and self._failure[0] == state:
                raise ModelNotFoundError(self._failure[1])
            self._bundle = None
            try:
                self._bundle = self._load(wd, state)
            except Exception as exc:
                reason = f"the active models cannot be used: {_short(exc)}"
                log.error("%s", reason)
                self._failure = (state, reason)
                raise ModelNotFoundError(reason) from exc
            self._failure = None
            log.info("loaded %s (%s)", self._bundle.versions, self._bundle.backends)
            return self._bundle

    def model_problem(self) -> str | None:
        """Why uploads cannot be analysed now (no usable active model), or None."""
        try:
            self.models()
        except ModelNotFoundError as exc:
            return str(exc)
        return None

    def _load(self, wd: Path, state: tuple) -> ModelBundle:
        cls = load_model(wd, "classifier")
        seg = load_model(wd, "segmenter")
        cls_net, seg_net = self._onnx(cls), self._onnx(seg)
        if cls_net is None or seg_net is None:
            self.torch_ready()
        try:
            classifier = Classifier(cls, (lambda x: tuple(cls_net(x))) if cls_net else None)
        except Exception as exc:  # wrong-shaped weights, an unknown architecture or a bad card field
            raise ModelNotFoundError(f"classifier version {cls.version!r}: {_short(exc)}") from exc
        try:
            segmenter = Segmenter(seg, (lambda x: seg_net(x)[0]) if seg_net else None)
        except Exception as exc:
            raise ModelNotFoundError(f"segmenter version {seg.version!r}: {_short(exc)}") from exc
        return ModelBundle(
            classifier=classifier,
            segmenter=segmenter,
            versions={"classifier": cls.version, "segmenter": seg.version},
            trained=cls.trained and seg.trained,
            pointers=state,
            backends={"classifier": "onnx" if cls_net else "torch", "segmenter": "onnx" if seg_net else "torch"},
        )

    def _onnx(self, model: LoadedModel):
        return onnx_net(model.path, self.settings.inference_backend, self.settings.inference_threads)

    def torch_ready(self) -> None:
        """Import torch for Grad-CAM (and the fallback path) and size its pool, once.

        It gets the analysis thread count, and OpenMP is told to sleep while it waits: an OpenMP
        pool that spins on a core another process holds made a heatmap 3-10x slower (issue 17).
        """
        if not self._torch_configured:
            if "torch" not in sys.modules:  # read when the OpenMP runtime loads, i.e. with torch
                os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
            import torch

            torch.set_num_threads(max(1, self.settings.inference_threads))
            self._torch_configured = True

    def warm_up(self, explain: bool = False) -> None:
        """Load the active models and run one synthetic slice through them (and, with ``explain``,
        through Grad-CAM, which imports torch), so the first real upload does not pay for it.
        Failures are logged, not raised: the upload that follows reports them to the reader."""
        t = time.perf_counter()
        try:
            bundle = self.models()
            yy, xx = np.mgrid[:192, :160]
            head = (((yy - 96) / 90.0) ** 2 + ((xx - 80) / 75.0) ** 2 < 1).astype(np.uint8) * 120
            bundle.classifier.predict([head])
            bundle.segmenter.probabilities([head])
            if explain:
                from triage.explain import explain as run_cam

                self.torch_ready()
                run_cam(bundle.classifier.net, bundle.classifier.model.card, head, CLASSES[1], lock=MODEL_LOCK)
        except Exception:  # a broken model is reported where it is used; warming must not kill the server
            log.exception("warming the models failed")
            return
        log.info("models warm in %.1f s (%s)", time.perf_counter() - t, self._bundle.backends)

    def promote(self, task: str, version: str) -> None:
        """Make ``version`` the active model for ``task`` (atomic; older versions are kept)."""
        set_active(self.settings.weights_dir, task, version)

    def active_versions(self) -> dict:
        return {t: active_version(self.settings.weights_dir, t) for t in ("classifier", "segmenter")}

    # ----- analysis ---------------------------------------------------------------------
    def analyze_bytes(
        self,
        data: bytes,
        name: str,
        explain: bool = False,
        frame: int | None = None,
        time_limit_s: float | None = None,
    ) -> list[CaseResult]:
        """Decode and analyse one uploaded file (one result per frame, or one rejected result).
        ``frame``: decode and analyse that frame only (case review of one frame of a series).
        ``time_limit_s``: decode in a worker process stopped after that long (a rejected result
        saying so; :mod:`triage.decode_limit`)."""
        t0 = time.perf_counter()
        name = safe_name(name)
        try:
            if time_limit_s:
                from triage.decode_limit import read_scans_limited

                scans = read_scans_limited(data, name, self.settings, time_limit_s, frame=frame)
            else:
                scans = read_scans(data, name, self.settings, frame=frame)
        except InvalidScanError as exc:
            return [
                CaseResult(
                    name=name,
                    status="rejected",
                    scan_id=content_id(data) if data else "",
                    error=str(exc),
                    flags=(Flag.REJECTED,),
                )
            ]
        decode_ms = (time.perf_counter() - t0) * 1000 / len(scans)
        results = self.analyze_scans(scans, explain=explain)
        return [replace(r, timings_ms={"decode": decode_ms, **r.timings_ms}) for r in results]

    def analyze_path(self, path: str | Path, explain: bool = False) -> list[CaseResult]:
        p = Path(path)
        try:
            size = p.stat().st_size
            if size > self.settings.max_file_bytes:
                raise InvalidScanError(
                    f"file is {size / 1e6:.1f} MB, over the {self.settings.max_file_bytes / 1e6:.0f} MB limit"
                )
            data = p.read_bytes()
        except InvalidScanError as exc:
            return [CaseResult(name=p.name, status="rejected", error=str(exc), flags=(Flag.REJECTED,))]
        except OSError as exc:
            return [
                CaseResult(
                    name=p.name,
                    status="rejected",
                    error=f"cannot read file: {exc.strerror or exc}",
                    flags=(Flag.REJECTED,),
                )
            ]
        return self.analyze_bytes(data, p.name, explain=explain)

    def analyze_scans(self, scans: list[Scan], explain: bool = False) -> list[CaseResult]:
        """Analyse decoded scans: crop, brain check, classify, segment, reconcile, risk.

        The models see at most :data:`MAX_BATCH` scans at a time, so a 250-frame file costs the
        memory of one such batch, not of 250 frames of network activations (issue 22, item 6).
        """
        out: list[CaseResult] = []
        for start in range(0, len(scans), MAX_BATCH):
            out.extend(self._analyze_batch(scans[start : start + MAX_BATCH], explain))
        return out

    def _analyze_batch(self, scans: list[Scan], explain: bool = False) -> list[CaseResult]:
        from triage.risk import final_risk, triage_flags

        bundle = self.models()
        n = max(1, len(scans))
        t = time.perf_counter()
        crop_cfg = dict(bundle.classifier.card.crop)
        crops = [crop_brain(s.pixels, **crop_cfg) for s in scans]
        crop_ms = (time.perf_counter() - t) * 1000 / n
        results: list[CaseResult | None] = [None] * len(scans)
        keep = []
        for i, (scan, crop) in enumerate(zip(scans, crops)):
            reason = not_brain_reason(scan, crop)
            if reason:
                results[i] = CaseResult(
                    name=scan.name,
                    status="rejected",
                    scan_id=scan.scan_id,
                    error=reason,
                    scan=scan,
                    crop=crop,
                    flags=(Flag.REJECTED, Flag.NOT_BRAIN),
                )
            else:
                keep.append(i)
        t = time.perf_counter()
        preds = bundle.classifier.predict([crops[i].image for i in keep])
        cls_ms = (time.perf_counter() - t) * 1000 / max(1, len(keep))
        t = time.perf_counter()
        segs = bundle.segmenter.segment(
            [crops[i] for i in keep], [scans[i].shape for i in keep], [scans[i].pixel_spacing for i in keep]
        )
        seg_ms = (time.perf_counter() - t) * 1000 / max(1, len(keep))
        for i, pred, seg in zip(keep, preds, segs):
            scan, crop = scans[i], crops[i]
            if pred.ood_score > OOD_REJECT_FACTOR * bundle.classifier.ood_threshold:
                results[i] = CaseResult(
                    name=scan.name,
                    status="rejected",
                    scan_id=scan.scan_id,
                    scan=scan,
                    crop=crop,
                    prediction=pred,
                    error=(
                        f"not a brain MRI: the image is far outside what the model was trained on "
                        f"(out-of-distribution score {pred.ood_score:.0f}, limit "
                        f"{OOD_REJECT_FACTOR * bundle.classifier.ood_threshold:.0f})"
                    ),
                    flags=(Flag.REJECTED, Flag.NOT_BRAIN),
                )
                continue
            if not pred.ood and atypical_reason(scan):  # kept for the reader, but never unflagged
                pred = replace(pred, ood=True)
            seg, disagreement = self.reconcile(pred, seg, crop.image.size)
            flags = list(
                triage_flags(
                    pred.probs, pred.ood, disagreement, self.settings.uncertain_below, bundle.classifier.flag_rule
                )
            )
            if scan.meta.get("header_warnings"):  # a header value was implausible and dropped
                flags.append(Flag.SUSPECT_HEADER)
            if not bundle.trained:
                flags.append(Flag.UNTRAINED_MODEL)
            risk = final_risk(pred.probs, tuple(flags), self.settings)
            results[i] = CaseResult(
                name=scan.name,
                status="ok",
                scan_id=scan.scan_id,
                scan=scan,
                crop=crop,
                prediction=pred,
                segmentation=seg,
                risk=risk,
                flags=tuple(flags),
                timings_ms={"crop": crop_ms, "classify": cls_ms, "segment": seg_ms},
                model_versions=dict(bundle.versions),
            )
        if explain:
            results = [self.with_explanation(r) if r is not None and r.ok else r for r in results]
        return [r for r in results if r is not None]

    def reconcile(self, pred: Prediction, seg: Segmentation, crop_area: int) -> tuple[Segmentation, bool]:
        """Seed 004's rule (segment only when the classifier sees a tumor) plus a disagreement flag.

        Tumor class with an empty mask, or no_tumor with a mask larger than
        ``disagreement_mask_fraction`` of the brain crop, is a disagreement kept for review.
        A small mask under a no_tumor prediction is dropped.
        """
        tumor_predicted = pred.label != "no_tumor"
        if tumor_predicted:
            return seg, seg.area_px == 0
        if seg.area_px > self.settings.disagreement_mask_fraction * crop_area:
            return seg, True
        empty = np.zeros_like(seg.mask)
        return Segmentation(
            mask=empty, area_px=0, area_mm2=0.0 if seg.area_mm2 is not None else None, bbox=None, max_prob=seg.max_prob
        ), False

    def explain(self, result: CaseResult, target_class: str | None = None, method: str = "gradcam") -> Explanation:
        """Class-activation heatmap at scan resolution for ``target_class`` (default: predicted)."""
        from triage.explain import SEGMENTER_METHOD, explain_segmenter, explain_to_scan
        from triage.explain import explain as run_cam

        if result.scan is None or result.crop is None:
            raise ValueError("this result has no decoded scan to explain")
        target = target_class or (result.prediction.label if result.prediction else CLASSES[0])
        if target not in CLASSES:
            raise ValueError(f"unknown class {target!r}; expected one of {CLASSES}")
        self.torch_ready()
        if method == SEGMENTER_METHOD:  # the segmenter's evidence for tumour pixels: one map for every class
            seg = self.models().segmenter
            cam = explain_segmenter(seg.model.net, seg.model.card, result.crop.image, lock=MODEL_LOCK)
        else:
            clf = self.models().classifier
            cam = run_cam(clf.net, clf.model.card, result.crop.image, target, method=method, lock=MODEL_LOCK)
        heat = explain_to_scan(cam, result.crop.bbox, result.scan.shape)
        return Explanation(heatmap=heat, target_class=target, method=method)

    def with_explanation(self, result: CaseResult) -> CaseResult:
        t = time.perf_counter()
        exp = self.explain(result)
        return replace(
            result, explanation=exp, timings_ms={**result.timings_ms, "gradcam": (time.perf_counter() - t) * 1000}
        )


def _short(exc: Exception, limit: int = 300) -> str:
    """One line of an exception for a reader (torch's state-dict errors list every tensor)."""
    text = str(exc) if isinstance(exc, ModelNotFoundError) else f"{type(exc).__name__}: {exc}"
    line = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return line if len(line) <= limit else line[: limit - 1] + "…"


def mask_png(mask: np.ndarray) -> bytes:
    """bool (H, W) -> 0/255 single-channel PNG bytes."""
    ok, buf = cv2.imencode(".png", mask.astype(np.uint8) * 255)
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def case_row(result: CaseResult) -> dict:
    """Flat dict of a result (CSV / worklist columns; no arrays)."""
    p = result.prediction
    seg = result.segmentation
    row = {
        "name": result.name,
        "scan_id": result.scan_id,
        "status": result.status,
        "error": result.error,
        "label": p.label if p else "",
        "risk": round(result.risk, 4) if result.ok else "",
        "ood": int(p.ood) if p else "",
        "ood_score": round(p.ood_score, 2) if p else "",
        "flags": ";".join(result.flags),
        "suspected_tumor": int(suspected_tumor(p.label, result.flags)) if (p and result.ok) else "",
        "tumor_area_px": seg.area_px if seg else "",
        "tumor_area_mm2": round(seg.area_mm2, 2) if (seg and seg.area_mm2 is not None) else "",
    }
    for i, c in enumerate(CLASSES):
        row[f"p_{c}"] = round(float(p.probs[i]), 4) if p else ""
    return row
