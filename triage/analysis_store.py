"""Stored analysis results of a case (issue 16): computed once, read back on every view.

Case review needs, for the case's slice, the decoded pixels, the brain crop the models saw, the
predicted mask and (on request) heatmaps per class and method. Re-running the models for them on
every case switch cost 4-5 s a click, so they are stored beside the case as compressed numpy files:

    <data_dir>/results/<scan_id[:2]>/<scan_id>/<classifier>_<segmenter>/analysis.npz
                                                                   .../heat-<class>-<method>.npz

The folder is keyed by the case id *and* the model versions, so a promoted model never shows a
result of the old one; a result of the old versions stays valid for them (a rollback finds it).
Files are written atomically (temporary file + rename; the slice and crop uncompressed, the rest
deflated), read with ``allow_pickle=False``, and a
damaged or unreadable file is logged and treated as missing (recomputed and rewritten), never
shown. Heatmaps are kept as uint8 (1/255 steps of [0, 1]): indistinguishable on screen, a quarter
of float32's size. A small in-process LRU spares the disk read when the reader goes back and forth.
"""

from __future__ import annotations

import io
import logging
import re
import threading
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from triage.atomic import atomic_path
from triage.records import CLASSES, BrainCrop, Case, CaseResult, Scan

if TYPE_CHECKING:
    from triage.service import TriageService

log = logging.getLogger(__name__)

Versions = tuple[tuple[str, str], ...]  # (("classifier", "v11"), ("segmenter", "v11"))
_SAFE = re.compile(r"[^A-Za-z0-9._-]")
_HEX = re.compile(r"^[0-9a-f]{8,128}(-f\d+)?$")


def versions_key(versions: dict | Versions) -> Versions:
    """Model versions as a sorted tuple of (task, version), the form every key here uses."""
    items = versions.items() if isinstance(versions, dict) else versions
    return tuple(sorted((str(t), str(v)) for t, v in items))


@dataclass(frozen=True)
class StoredAnalysis:
    """What Case review shows of one slice, as the given model versions analysed it.

    pixels: uint8 (H, W) display-ready slice; crop_image: uint8 (h, w) the classifier's input;
    crop_bbox: (x0, y0, x1, y1) of the crop in the slice; mask: bool (H, W) predicted tumour
    (all False when none); probs: float32 (len(CLASSES),) calibrated; label: the predicted class.
    status "rejected" (with ``error``) when the models refuse the slice now; arrays may then be empty.
    """

    scan_id: str
    versions: Versions
    status: str
    error: str
    label: str
    probs: np.ndarray
    pixels: np.ndarray
    crop_image: np.ndarray
    crop_bbox: tuple[int, int, int, int]
    mask: np.ndarray

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def as_result(self) -> CaseResult:
        """A CaseResult carrying the scan and crop, enough for :meth:`TriageService.explain`."""
        scan = Scan(scan_id=self.scan_id, name="", pixels=self.pixels)
        crop = BrainCrop(image=self.crop_image, bbox=self.crop_bbox, found=True, head_fraction=0.0)
        return CaseResult(name="", status=self.status, scan_id=self.scan_id, scan=scan, crop=crop)


def from_result(result: CaseResult, versions: dict | Versions) -> StoredAnalysis:
    """The storable part of an analysis result (``versions``: the models that produced it)."""
    empty = np.zeros((0, 0), np.uint8)
    scan, crop, seg, pred = result.scan, result.crop, result.segmentation, result.prediction
    pixels = scan.pixels if scan is not None else empty
    mask = seg.mask.astype(bool) if seg is not None else np.zeros(pixels.shape, bool)
    return StoredAnalysis(
        scan_id=result.scan_id,
        versions=versions_key(versions),
        status=result.status,
        error=result.error,
        label=pred.label if pred is not None else "",
        probs=np.asarray(pred.probs if pred is not None else np.zeros(len(CLASSES)), np.float32),
        pixels=np.asarray(pixels, np.uint8),
        crop_image=np.asarray(crop.image if crop is not None else empty, np.uint8),
        crop_bbox=tuple(int(v) for v in crop.bbox) if crop is not None else (0, 0, 0, 0),
        mask=mask,
    )


def _frozen(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)  # shared by the LRU and every reader: nobody may draw into it
    return a


class AnalysisStore:
    """Compressed per-case analysis results under ``root`` (thread-safe; see the module docstring)."""

    def __init__(self, root: Path | str, memory_entries: int = 64) -> None:
        self.root = Path(root)
        self._memory: OrderedDict[tuple, object] = OrderedDict()
        self._entries = memory_entries
        self._lock = threading.Lock()

    def folder(self, scan_id: str, versions: dict | Versions) -> Path:
        """Folder of one case's results for one pair of model versions."""
        if not _HEX.match(scan_id):  # scan ids are hex digests (plus a frame suffix); never a path
            raise ValueError(f"not a case id: {scan_id!r}")
        vk = versions_key(versions)
        name = "_".join(_SAFE.sub("-", v) for _, v in vk) or "none"
        return self.root / scan_id[:2] / scan_id / name

    # ----- in-process LRU ------------------------------------------------------------------
    def _remember(self, key: tuple, value: object) -> None:
        with self._lock:
            self._memory[key] = value
            self._memory.move_to_end(key)
            while len(self._memory) > self._entries:
                self._memory.popitem(last=False)

    def _recall(self, key: tuple) -> object | None:
        with self._lock:
            value = self._memory.get(key)
            if value is not None:
                self._memory.move_to_end(key)
            return value

    # ----- files ---------------------------------------------------------------------------
    def _write(self, path: Path, arrays: dict[str, np.ndarray], raw: frozenset[str] = frozenset()) -> None:
        """An .npz (a zip of .npy members, what np.load reads) written atomically. Members named in
        ``raw`` are stored uncompressed: deflating a 512x512 slice and its crop took 15-25 ms of a
        busy core per slice at intake (0.3 s of a 12-slice upload) to save ~0.4 MB; the masks and
        heatmaps compress well and fast."""
        with atomic_path(path, suffix=".npz") as tmp, zipfile.ZipFile(tmp, "w") as zf:
            for name, array in arrays.items():
                buf = io.BytesIO()
                np.lib.format.write_array(buf, np.asanyarray(array), allow_pickle=False)
                info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_STORED if name in raw else zipfile.ZIP_DEFLATED
                zf.writestr(info, buf.getvalue(), compresslevel=None if name in raw else 1)

    def _read(self, path: Path) -> dict[str, np.ndarray] | None:
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                return {k: data[k] for k in data.files}
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            log.warning("stored result %s unreadable, computing it again: %s", path.name, exc)
            return None

    # ----- analysis ------------------------------------------------------------------------
    def load(self, scan_id: str, versions: dict | Versions) -> StoredAnalysis | None:
        """The stored analysis of ``scan_id`` by ``versions``, or None when there is none (or it is damaged)."""
        vk = versions_key(versions)
        key = ("a", scan_id, vk)
        hit = self._recall(key)
        if hit is not None:
            return hit  # type: ignore[return-value]
        data = self._read(self.folder(scan_id, vk) / "analysis.npz")
        if data is None:
            return None
        try:
            meta = [str(s) for s in data["meta"]]
            status, error, label = meta[0], meta[1], meta[2]
            pixels = data["pixels"].astype(np.uint8, copy=False)
            bits = data["mask_bits"]  # packed: an eighth of a bool array to write and deflate
            mask = np.unpackbits(bits, count=pixels.size).reshape(pixels.shape).astype(bool)
            bbox = tuple(int(v) for v in data["crop_bbox"])
            if bits.size * 8 < pixels.size or len(bbox) != 4:
                raise ValueError(f"mask of {bits.size * 8} px / slice {pixels.shape} / bbox {bbox}")
            found = StoredAnalysis(
                scan_id=scan_id,
                versions=vk,
                status=status,
                error=error,
                label=label,
                probs=_frozen(data["probs"].astype(np.float32, copy=False)),
                pixels=_frozen(pixels),
                crop_image=_frozen(data["crop_image"].astype(np.uint8, copy=False)),
                crop_bbox=bbox,  # type: ignore[arg-type]
                mask=_frozen(mask),
            )
        except (KeyError, IndexError, ValueError) as exc:
            log.warning("stored analysis of %s malformed, computing it again: %s", scan_id[:12], exc)
            return None
        self._remember(key, found)
        return found

    def save(self, analysis: StoredAnalysis) -> None:
        """Store an analysis (replacing any earlier one for the same case and versions)."""
        self._write(
            self.folder(analysis.scan_id, analysis.versions) / "analysis.npz",
            {
                "meta": np.array([analysis.status, analysis.error, analysis.label]),
                "probs": np.asarray(analysis.probs, np.float32),
                "pixels": np.asarray(analysis.pixels, np.uint8),
                "crop_image": np.asarray(analysis.crop_image, np.uint8),
                "crop_bbox": np.asarray(analysis.crop_bbox, np.int64),
                "mask_bits": np.packbits(np.asarray(analysis.mask, bool).ravel()),
            },
            raw=frozenset({"pixels", "crop_image"}),
        )
        self._remember(("a", analysis.scan_id, analysis.versions), analysis)

    # ----- heatmaps ------------------------------------------------------------------------
    def _heat_path(self, scan_id: str, versions: Versions, target: str, method: str) -> Path:
        return self.folder(scan_id, versions) / f"heat-{_SAFE.sub('-', target)}-{_SAFE.sub('-', method)}.npz"

    def load_heatmap(self, scan_id: str, versions: dict | Versions, target: str, method: str) -> np.ndarray | None:
        """A stored heatmap float32 (H, W) in [0, 1], or None."""
        vk = versions_key(versions)
        key = ("h", scan_id, vk, target, method)
        hit = self._recall(key)
        if hit is not None:
            return hit  # type: ignore[return-value]
        data = self._read(self._heat_path(scan_id, vk, target, method))
        if data is None or "heat" not in data:
            return None
        heat = _frozen(data["heat"].astype(np.float32) / 255.0)
        self._remember(key, heat)
        return heat

    def save_heatmap(
        self, scan_id: str, versions: dict | Versions, target: str, method: str, heat: np.ndarray
    ) -> np.ndarray:
        """Store a heatmap (float (H, W) in [0, 1]); returns it as it will be read back."""
        vk = versions_key(versions)
        q = np.clip(np.rint(np.asarray(heat, np.float32) * 255.0), 0, 255).astype(np.uint8)
        self._write(self._heat_path(scan_id, vk, target, method), {"heat": q})
        back = _frozen(q.astype(np.float32) / 255.0)
        self._remember(("h", scan_id, vk, target, method), back)
        return back


def store_for(service: TriageService) -> AnalysisStore:
    """The service's store under ``<data_dir>/results`` (one per service, so one LRU per process)."""
    store = getattr(service, "_analysis_store", None)
    if store is None or store.root != Path(service.settings.data_dir) / "results":
        store = AnalysisStore(Path(service.settings.data_dir) / "results")
        service._analysis_store = store  # type: ignore[attr-defined]
    return store


def remember_result(service: TriageService, result: CaseResult) -> None:
    """At intake: store what the analysis of an accepted slice already computed (mask, crop, slice),
    so opening the case runs no model. A failure to store is logged, never fatal: Case review then
    computes the result when the case is first opened."""
    if not result.ok or result.scan is None or not result.model_versions:
        return
    try:
        store_for(service).save(from_result(result, result.model_versions))
    except (OSError, ValueError) as exc:
        log.warning("analysis of %s not stored (computed again when opened): %s", result.scan_id[:12], exc)


def case_analysis(service: TriageService, case: Case, read_bytes=None) -> StoredAnalysis:
    """The analysis of a worklist case by the active models: read from the store, else computed
    from the case's stored file once and stored.

    Raises FileNotFoundError when it must be computed and the stored file is gone; ``read_bytes``
    (path -> bytes) is for tests."""
    store = store_for(service)
    versions = versions_key(service.active_versions())
    found = store.load(case.scan_id, versions)
    if found is not None:
        return found
    path = case.stored_path
    if not path or not Path(path).is_file():
        raise FileNotFoundError(path or "(no stored path recorded)")
    frame = case.extra.get("frame")
    data = read_bytes(path) if read_bytes else Path(path).read_bytes()
    results = service.analyze_bytes(data, case.name or "upload", frame=frame)
    pick = next((r for r in results if r.scan_id == case.scan_id), None)
    pick = pick or next((r for r in results if r.scan is not None and r.scan.frame == frame), results[0])
    analysed = from_result(pick, pick.model_versions or versions)
    # Stored under the case's id (a re-encoded stored file may hash differently) and the versions used.
    analysed = StoredAnalysis(**{**analysed.__dict__, "scan_id": case.scan_id})
    try:
        store.save(analysed)
    except OSError as exc:
        log.warning("analysis of %s not stored: %s", case.scan_id[:12], exc)
    return analysed


def case_heatmap(service: TriageService, analysis: StoredAnalysis, target: str, method: str) -> np.ndarray:
    """Heatmap float32 (H, W) in [0, 1] of ``analysis`` for ``target`` by ``method``: stored, else
    computed once (Grad-CAM family on the stored crop) and stored."""
    store = store_for(service)
    found = store.load_heatmap(analysis.scan_id, analysis.versions, target, method)
    if found is not None:
        return found
    heat = service.explain(analysis.as_result(), target, method).heatmap
    try:
        return store.save_heatmap(analysis.scan_id, analysis.versions, target, method, heat)
    except OSError as exc:
        log.warning("heatmap of %s not stored: %s", analysis.scan_id[:12], exc)
        return heat
