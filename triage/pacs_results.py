"""Results as DICOM: a SEG of the tumour mask, a Secondary Capture with the overlay, an SR (highdicom).

Every object references the source instance, is marked derived, and gets a SOP Instance UID
derived from the source SOP Instance UID, the kind and the model versions: sending the same
result twice stores the same instance (a PACS keeps one copy), and a result never carries a
source image's UID, so it can never overwrite one.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from triage import __version__
from triage.overlay import mask_contour_overlay, to_rgb
from triage.records import CLASSES, CaseResult

MANUFACTURER = "brain-triage"
MODEL_NAME = "brain-MRI triage workstation"
DISCLAIMER = "TRIAGE AID, NOT A DIAGNOSIS"
# Result series numbers, far from the scanner's own series numbers.
SERIES_NUMBERS = {"seg": 9901, "sc": 9902, "sr": 9903}
KINDS = tuple(SERIES_NUMBERS)
# Private coding scheme for the concepts DICOM has no code for (class probabilities, review flags).
SCHEME = "99BRTRIAGE"


@dataclass(frozen=True)
class ResultObject:
    """One DICOM result ready to store: its kind (seg | sc | sr) and the dataset."""

    kind: str
    dataset: Dataset

    @property
    def sop_instance_uid(self) -> str:
        return str(self.dataset.SOPInstanceUID)


def result_uid(source_sop_uid: str, kind: str, part: str, versions: dict) -> str:
    """A UID fixed by the source instance, the result kind, the part (series / instance) and models."""
    seed = [str(source_sop_uid), kind, part, *(f"{k}={versions[k]}" for k in sorted(versions))]
    return generate_uid(entropy_srcs=seed)


def _versions_text(result: CaseResult) -> str:
    v = result.model_versions
    return f"classifier {v.get('classifier', '?')}, segmenter {v.get('segmenter', '?')}"


def build_seg(source: Dataset, result: CaseResult) -> Dataset:
    """A binary DICOM SEG of ``result.segmentation.mask`` (bool H x W, the source's frame grid)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    mask = np.asarray(result.segmentation.mask, dtype=bool)
    algo = hd.AlgorithmIdentificationSequence(
        name="brain-triage segmenter",
        family=codes.cid7162.ArtificialIntelligence,
        version=str(result.model_versions.get("segmenter", "?")),
    )
    segment = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label="tumour (triage aid)",
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Neoplasm,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algo,
    )
    v = result.model_versions
    return hd.seg.Segmentation(
        source_images=[source],
        pixel_array=mask[None].astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[segment],
        series_instance_uid=result_uid(source.SOPInstanceUID, "seg", "series", v),
        series_number=SERIES_NUMBERS["seg"],
        sop_instance_uid=result_uid(source.SOPInstanceUID, "seg", "instance", v),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=MODEL_NAME,
        software_versions=f"{__version__} ({_versions_text(result)})",
        device_serial_number="0",
        series_description="Triage tumour mask (triage aid, not a diagnosis)",
        # An empty mask is still a result ("nothing segmented"): keep its one frame.
        omit_empty_frames=False,
    )


def overlay_image(result: CaseResult) -> np.ndarray:
    """uint8 (H, W, 3) RGB: the slice, the mask outline and the disclaimer and call burned in."""
    rgb = to_rgb(result.scan.pixels)
    if result.segmentation is not None and result.segmentation.area_px > 0:
        rgb = mask_contour_overlay(rgb, result.segmentation.mask)
    w = rgb.shape[1]
    scale = max(0.35, w / 700.0)
    thick = max(1, round(scale * 1.5))
    pred = result.prediction
    lines = [DISCLAIMER]
    if pred is not None:
        lines.append(f"{pred.label} p={pred.confidence:.2f} risk={result.risk:.2f}")
    if result.flags:
        lines.append("flags: " + ",".join(result.flags))
    y = 0
    for text in lines:
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
        y += th + base + 2
        # A black band behind the text keeps it legible on bright anatomy.
        cv2.rectangle(rgb, (0, y - th - base), (min(w, tw + 6), y + 2), (0, 0, 0), -1)
        cv2.putText(rgb, text, (3, y - base + 1), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 0), thick, cv2.LINE_AA)
    return rgb


def build_sc(source: Dataset, result: CaseResult) -> Dataset:
    """A Secondary Capture (RGB) of :func:`overlay_image`, marked derived with burned-in text."""
    import highdicom as hd

    v = result.model_versions
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source,
        pixel_array=overlay_image(result),
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        series_instance_uid=result_uid(source.SOPInstanceUID, "sc", "series", v),
        series_number=SERIES_NUMBERS["sc"],
        sop_instance_uid=result_uid(source.SOPInstanceUID, "sc", "instance", v),
        instance_number=1,
        manufacturer=MANUFACTURER,
        patient_orientation=("L", "P"),
        transfer_syntax_uid="1.2.840.10008.1.2.1",
    )
    sc.ImageType = ["DERIVED", "SECONDARY"]
    sc.BurnedInAnnotation = "YES"
    sc.SeriesDescription = "Triage overlay (triage aid, not a diagnosis)"
    sc.DerivationDescription = f"tumour mask outline and triage call, {_versions_text(result)}"
    ref = Dataset()
    ref.ReferencedSOPClassUID = source.SOPClassUID
    ref.ReferencedSOPInstanceUID = source.SOPInstanceUID
    sc.SourceImageSequence = [ref]
    return sc


def _code(value: str, meaning: str):
    from pydicom.sr.coding import Code

    return Code(value, SCHEME, meaning)


def build_sr(source: Dataset, result: CaseResult, seg: Dataset | None = None) -> Dataset:
    """A Comprehensive 3D SR (TID 1500) with the class probabilities, risk, model versions and flags."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    v = result.model_versions
    unit = hd.sr.CodedConcept("1", "UCUM", "no units")
    algo = hd.sr.AlgorithmIdentification(name="brain-triage", version=_versions_text(result))
    pred = result.prediction
    measurements = [
        hd.sr.Measurement(name=_code(f"p_{c}", f"probability of {c}"), value=float(pred.probs[i]), unit=unit)
        for i, c in enumerate(CLASSES)
    ]
    measurements.append(
        hd.sr.Measurement(name=_code("risk", "malignancy triage risk"), value=float(result.risk), unit=unit)
    )
    if result.segmentation is not None:
        measurements.append(
            hd.sr.Measurement(
                name=_code("tumor_area_px", "tumour mask area in pixels"),
                value=float(result.segmentation.area_px),
                unit=hd.sr.CodedConcept("{pixels}", "UCUM", "pixels"),
            )
        )
    evaluations = [
        hd.sr.QualitativeEvaluation(name=_code("label", "triage call"), value=_code(pred.label, pred.label)),
        *(hd.sr.QualitativeEvaluation(name=_code("flag", "review flag"), value=_code(f, f)) for f in result.flags),
    ]
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=result_uid(source.SOPInstanceUID, "sr", "tracking", v), identifier="brain-triage result"
        ),
        algorithm_id=algo,
        measurements=measurements,
        qualitative_evaluations=evaluations,
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(source)],
    )
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=generate_uid(entropy_srcs=["brain-triage device"]),
            name=MODEL_NAME,
            manufacturer_name=MANUFACTURER,
            model_name=_versions_text(result),
        ),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=codes.LN.MRIBrain if hasattr(codes.LN, "MRIBrain") else _code("mr-brain", "MRI brain"),
        imaging_measurements=[group],
    )
    evidence = [source] + ([seg] if seg is not None else [])
    sr = hd.sr.Comprehensive3DSR(
        evidence=evidence,
        content=report,
        series_instance_uid=result_uid(source.SOPInstanceUID, "sr", "series", v),
        series_number=SERIES_NUMBERS["sr"],
        sop_instance_uid=result_uid(source.SOPInstanceUID, "sr", "instance", v),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=False,  # a triage aid: unverified until a radiologist reads the study
    )
    sr.SeriesDescription = "Triage report (triage aid, not a diagnosis)"
    return sr


def build_results(source: Dataset, result: CaseResult) -> tuple[list[ResultObject], list[str]]:
    """SEG (when the result has a mask), SC and SR for one analysed single-frame source instance.

    Returns the objects built and, for any that could not be (a source without the geometry a SEG
    needs, say), the reason: one missing object never costs the others or the worklist row."""
    out: list[ResultObject] = []
    problems: list[str] = []
    seg = None
    builders = [("seg", build_seg)] if result.segmentation is not None else []
    builders += [("sc", build_sc), ("sr", lambda s, r: build_sr(s, r, seg))]
    for kind, build in builders:
        try:
            ds = build(source, result)
        except Exception as exc:  # highdicom validates the source: report why, keep the rest
            problems.append(f"{kind.upper()} not built: {type(exc).__name__}: {exc}")
            continue
        if kind == "seg":
            seg = ds
        out.append(ResultObject(kind, ds))
    return out, problems
