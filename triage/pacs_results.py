"""Results as DICOM, one set per analysed series: a multi-frame SEG, a Secondary Capture, an SR (highdicom).

A hospital viewer expects one result per series, not per slice: the SEG has one frame per source
instance (every instance referenced, its mask as analysed, empty frames kept), the Secondary
Capture shows the series' key slice (the most suspicious one) with the mask outline and "TRIAGE AID,
NOT A DIAGNOSIS" burned in, and the SR (TID 1500) has a series-level group (key-slice call and
probabilities, highest risk, slice / suspicious / flagged counts, tumour volume when known) and one
group per slice (probabilities, risk, tumour area, call, flags). Every object references its source
instances, is marked derived, and gets UIDs derived from the series UID, the set of analysed
instances, the kind and the model versions: sending the same result twice stores the same instances
(a PACS keeps one copy), and a result never carries a source image's UID, so it can never overwrite
one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from triage import __version__
from triage.overlay import mask_contour_overlay, to_rgb
from triage.records import CLASSES, CaseResult
from triage.risk import suspected_tumor

MANUFACTURER = "brain-triage"
MODEL_NAME = "brain-MRI triage workstation"
DISCLAIMER = "TRIAGE AID, NOT A DIAGNOSIS"
# Result series numbers, far from the scanner's own series numbers.
SERIES_NUMBERS = {"seg": 9901, "sc": 9902, "sr": 9903}
KINDS = tuple(SERIES_NUMBERS)
# Private coding scheme for the concepts DICOM has no code for (class probabilities, review flags).
SCHEME = "99BRTRIAGE"
ATTENTION_FLAGS = frozenset({"uncertain", "ood", "disagreement"})


@dataclass(frozen=True)
class SliceFinding:
    """One analysed source instance: its dataset, the slice as analysed and what the models said."""

    source: Dataset  # the source instance as received (header and pixels)
    pixels: np.ndarray  # the decoded slice the models saw (for the overlay)
    mask: np.ndarray  # bool (rows, columns) on the source's pixel grid
    label: str
    probs: tuple[float, ...]  # in :data:`triage.records.CLASSES` order
    risk: float
    flags: tuple[str, ...] = ()
    area_px: int = 0
    area_mm2: float | None = None

    @property
    def sop_instance_uid(self) -> str:
        return str(self.source.SOPInstanceUID)

    @property
    def suspicious(self) -> bool:
        return suspected_tumor(self.label, self.flags)


@dataclass(frozen=True)
class SeriesFindings:
    """The analysed instances of one series, in stack order, and the series-level figures."""

    slices: tuple[SliceFinding, ...]
    model_versions: dict = field(default_factory=dict)
    volume_ml: float | None = None

    def __post_init__(self):
        if not self.slices:
            raise ValueError("a series result needs at least one analysed slice")

    @property
    def key(self) -> SliceFinding:
        """The most suspicious slice: highest risk, the earliest in the stack on ties."""
        return max(enumerate(self.slices), key=lambda ix: (ix[1].risk, -ix[0]))[1]

    @property
    def series_instance_uid(self) -> str:
        return str(self.slices[0].source.SeriesInstanceUID)

    @property
    def result_key(self) -> str:
        """Names this result set: the series and exactly which of its instances were analysed."""
        uids = "\n".join(sorted(s.sop_instance_uid for s in self.slices))
        return f"series:{self.series_instance_uid}:{hashlib.sha256(uids.encode()).hexdigest()[:16]}"


@dataclass(frozen=True)
class ResultObject:
    """One DICOM result ready to store: its kind (seg | sc | sr) and the dataset."""

    kind: str
    dataset: Dataset

    @property
    def sop_instance_uid(self) -> str:
        return str(self.dataset.SOPInstanceUID)


def finding_from_result(source: Dataset, result: CaseResult) -> SliceFinding:
    """The finding of one analysed single-frame instance, straight from its :class:`CaseResult`."""
    seg = result.segmentation
    mask = np.asarray(seg.mask, bool) if seg is not None else np.zeros(result.scan.shape, bool)
    return SliceFinding(
        source=source,
        pixels=result.scan.pixels,
        mask=mask,
        label=result.prediction.label,
        probs=tuple(float(p) for p in result.prediction.probs),
        risk=float(result.risk),
        flags=tuple(result.flags),
        area_px=int(seg.area_px) if seg is not None else 0,
        area_mm2=seg.area_mm2 if seg is not None else None,
    )


def result_uid(result_key: str, kind: str, part: str, versions: dict) -> str:
    """A UID fixed by the result set, the result kind, the part (series / instance) and models."""
    seed = [str(result_key), kind, part, *(f"{k}={versions[k]}" for k in sorted(versions))]
    return generate_uid(entropy_srcs=seed)


def _versions_text(versions: dict) -> str:
    return f"classifier {versions.get('classifier', '?')}, segmenter {versions.get('segmenter', '?')}"


def build_seg(findings: SeriesFindings) -> Dataset:
    """A binary DICOM SEG with one frame per analysed source instance (its mask, empty ones kept)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    v = findings.model_versions
    key = findings.result_key
    masks = np.stack([np.asarray(s.mask, dtype=bool) for s in findings.slices]).astype(np.uint8)
    algo = hd.AlgorithmIdentificationSequence(
        name="brain-triage segmenter",
        family=codes.cid7162.ArtificialIntelligence,
        version=str(v.get("segmenter", "?")),
    )
    segment = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label="tumour (triage aid)",
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Neoplasm,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algo,
    )
    return hd.seg.Segmentation(
        source_images=[s.source for s in findings.slices],
        pixel_array=masks,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[segment],
        series_instance_uid=result_uid(key, "seg", "series", v),
        series_number=SERIES_NUMBERS["seg"],
        sop_instance_uid=result_uid(key, "seg", "instance", v),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=MODEL_NAME,
        software_versions=f"{__version__} ({_versions_text(v)})",
        device_serial_number="0",
        series_description="Triage tumour mask (triage aid, not a diagnosis)",
        # An empty mask is still a result ("nothing segmented here"): every source instance keeps its frame.
        omit_empty_frames=False,
    )


def overlay_image(
    pixels: np.ndarray, mask: np.ndarray | None, call: str = "", flags: Sequence[str] = (), note: str = ""
) -> np.ndarray:
    """uint8 (H, W, 3) RGB: the slice, the mask outline and the disclaimer, call and flags burned in."""
    rgb = to_rgb(pixels)
    if mask is not None and np.any(mask):
        rgb = mask_contour_overlay(rgb, np.asarray(mask, bool))
    w = rgb.shape[1]
    scale = max(0.35, w / 700.0)
    thick = max(1, round(scale * 1.5))
    lines = [DISCLAIMER, *(t for t in (call, note) if t)]
    if flags:
        lines.append("flags: " + ",".join(flags))
    y = 0
    for text in lines:
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
        y += th + base + 2
        # A black band behind the text keeps it legible on bright anatomy.
        cv2.rectangle(rgb, (0, y - th - base), (min(w, tw + 6), y + 2), (0, 0, 0), -1)
        cv2.putText(rgb, text, (3, y - base + 1), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 0), thick, cv2.LINE_AA)
    return rgb


def build_sc(findings: SeriesFindings) -> Dataset:
    """A Secondary Capture (RGB) of the series' key slice with its overlay, marked derived."""
    import highdicom as hd

    v = findings.model_versions
    key = findings.key
    n = len(findings.slices)
    pos = findings.slices.index(key) + 1
    confidence = max(key.probs) if key.probs else 0.0
    image = overlay_image(
        key.pixels,
        key.mask,
        call=f"{key.label} p={confidence:.2f} risk={key.risk:.2f}",
        flags=key.flags,
        note=f"key slice {pos}/{n}, {sum(s.suspicious for s in findings.slices)} suspicious",
    )
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=key.source,
        pixel_array=image,
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        series_instance_uid=result_uid(findings.result_key, "sc", "series", v),
        series_number=SERIES_NUMBERS["sc"],
        sop_instance_uid=result_uid(findings.result_key, "sc", "instance", v),
        instance_number=1,
        manufacturer=MANUFACTURER,
        patient_orientation=("L", "P"),
        transfer_syntax_uid="1.2.840.10008.1.2.1",
    )
    sc.ImageType = ["DERIVED", "SECONDARY"]
    sc.BurnedInAnnotation = "YES"
    sc.SeriesDescription = "Triage key image (triage aid, not a diagnosis)"
    sc.DerivationDescription = (
        f"key slice {pos} of {n} of the series with the tumour mask outline and triage call, {_versions_text(v)}"
    )
    ref = Dataset()
    ref.ReferencedSOPClassUID = key.source.SOPClassUID
    ref.ReferencedSOPInstanceUID = key.source.SOPInstanceUID
    sc.SourceImageSequence = [ref]
    return sc


def _code(value: str, meaning: str):
    from pydicom.sr.coding import Code

    return Code(value, SCHEME, meaning)


def _slice_measurements(s: SliceFinding) -> list:
    import highdicom as hd

    unit = hd.sr.CodedConcept("1", "UCUM", "no units")
    out = [
        hd.sr.Measurement(name=_code(f"p_{c}", f"probability of {c}"), value=float(s.probs[i]), unit=unit)
        for i, c in enumerate(CLASSES)
    ]
    out.append(hd.sr.Measurement(name=_code("risk", "malignancy triage risk"), value=float(s.risk), unit=unit))
    out.append(
        hd.sr.Measurement(
            name=_code("tumor_area_px", "tumour mask area in pixels"),
            value=float(s.area_px),
            unit=hd.sr.CodedConcept("{pixels}", "UCUM", "pixels"),
        )
    )
    if s.area_mm2 is not None:
        out.append(
            hd.sr.Measurement(
                name=_code("tumor_area_mm2", "tumour mask area"),
                value=float(s.area_mm2),
                unit=hd.sr.CodedConcept("mm2", "UCUM", "square millimeter"),
            )
        )
    return out


def _evaluations(label: str, flags: Sequence[str]) -> list:
    import highdicom as hd

    return [
        hd.sr.QualitativeEvaluation(name=_code("label", "triage call"), value=_code(label, label)),
        *(hd.sr.QualitativeEvaluation(name=_code("flag", "review flag"), value=_code(f, f)) for f in flags),
    ]


def build_sr(findings: SeriesFindings, seg: Dataset | None = None) -> Dataset:
    """A Comprehensive 3D SR (TID 1500): a series-level group, then one group per slice."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    v = findings.model_versions
    rkey = findings.result_key
    unit = hd.sr.CodedConcept("1", "UCUM", "no units")
    count = hd.sr.CodedConcept("{slices}", "UCUM", "slices")
    algo = hd.sr.AlgorithmIdentification(name="brain-triage", version=_versions_text(v))
    key = findings.key
    slices = findings.slices
    series_measurements = [
        *(
            hd.sr.Measurement(name=_code(f"p_{c}", f"probability of {c}"), value=float(key.probs[i]), unit=unit)
            for i, c in enumerate(CLASSES)
        ),
        hd.sr.Measurement(name=_code("risk", "malignancy triage risk"), value=float(key.risk), unit=unit),
        hd.sr.Measurement(name=_code("n_slices", "slices analysed"), value=len(slices), unit=count),
        hd.sr.Measurement(
            name=_code("n_suspicious", "suspicious slices"), value=sum(s.suspicious for s in slices), unit=count
        ),
        hd.sr.Measurement(
            name=_code("n_flagged", "flagged slices"),
            value=sum(bool(ATTENTION_FLAGS & set(s.flags)) for s in slices),
            unit=count,
        ),
        hd.sr.Measurement(
            name=_code("key_slice", "key slice position in the stack"),
            value=slices.index(key) + 1,
            unit=unit,
        ),
    ]
    if findings.volume_ml is not None:
        series_measurements.append(
            hd.sr.Measurement(
                name=_code("tumor_volume_ml", "tumour volume"),
                value=float(findings.volume_ml),
                unit=hd.sr.CodedConcept("ml", "UCUM", "milliliter"),
            )
        )
    flags = sorted({f for s in slices for f in s.flags})
    groups = [
        hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(
                uid=result_uid(rkey, "sr", "tracking-series", v), identifier="brain-triage series result"
            ),
            algorithm_id=algo,
            measurements=series_measurements,
            qualitative_evaluations=_evaluations(key.label, flags),
            source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(s.source) for s in slices],
        )
    ]
    for i, s in enumerate(slices, 1):
        groups.append(
            hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=result_uid(rkey, "sr", f"tracking-{s.sop_instance_uid}", v),
                    identifier=f"brain-triage slice {i}",
                ),
                algorithm_id=algo,
                measurements=_slice_measurements(s),
                qualitative_evaluations=_evaluations(s.label, s.flags),
                source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(s.source)],
            )
        )
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=generate_uid(entropy_srcs=["brain-triage device"]),
            name=MODEL_NAME,
            manufacturer_name=MANUFACTURER,
            model_name=_versions_text(v),
        ),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=codes.LN.MRIBrain if hasattr(codes.LN, "MRIBrain") else _code("mr-brain", "MRI brain"),
        imaging_measurements=groups,
    )
    evidence = [s.source for s in slices] + ([seg] if seg is not None else [])
    sr = hd.sr.Comprehensive3DSR(
        evidence=evidence,
        content=report,
        series_instance_uid=result_uid(rkey, "sr", "series", v),
        series_number=SERIES_NUMBERS["sr"],
        sop_instance_uid=result_uid(rkey, "sr", "instance", v),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=False,  # a triage aid: unverified until a radiologist reads the study
    )
    sr.SeriesDescription = "Triage report (triage aid, not a diagnosis)"
    return sr


def build_results(findings: SeriesFindings) -> tuple[list[ResultObject], list[str]]:
    """SEG, SC and SR for one analysed series.

    Returns the objects built and, for any that could not be (sources without the geometry a SEG
    needs, say), the reason: one missing object never costs the others or the worklist rows."""
    out: list[ResultObject] = []
    problems: list[str] = []
    seg = None
    builders = [("seg", build_seg), ("sc", build_sc), ("sr", lambda f: build_sr(f, seg))]
    for kind, build in builders:
        try:
            ds = build(findings)
        except Exception as exc:  # highdicom validates the sources: report why, keep the rest
            problems.append(f"{kind.upper()} not built: {type(exc).__name__}: {exc}")
            continue
        if kind == "seg":
            seg = ds
        out.append(ResultObject(kind, ds))
    return out, problems
