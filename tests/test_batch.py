"""triage.batch without models: the resumable CSV / Parquet writer, reading inputs, import checks."""

from __future__ import annotations

import csv
import hashlib

import pytest

from triage.batch import (
    RESULT_COLUMNS,
    OutputRow,
    ResultsError,
    ResultWriter,
    import_results,
    read_input,
    read_results,
)
from triage.config import get_settings


def row(path: str, frame: object = "", status: str = "ok", **values) -> OutputRow:
    base = dict.fromkeys(RESULT_COLUMNS, "")
    base.update(path=path, status=status, frame=frame, label="glioma", p_glioma=0.9, risk=0.8, ms=1.5, **values)
    return OutputRow(base)


def test_the_first_columns_keep_the_historical_order():
    assert RESULT_COLUMNS[:3] == ("path", "status", "error") and RESULT_COLUMNS[14:17] == ("mask_path", "frame", "ms")
    assert {"scan_id", "classifier_version", "segmenter_version", "ood_score"} <= set(RESULT_COLUMNS[17:])


def test_the_columns_are_defined_once():
    from triage.batch import FLOAT_COLUMNS, IMPORT_COLUMNS, INT_COLUMNS, PROB_COLUMNS
    from triage.records import CLASSES

    assert PROB_COLUMNS == tuple(f"p_{c}" for c in CLASSES) and set(PROB_COLUMNS) <= set(RESULT_COLUMNS)
    assert len(set(RESULT_COLUMNS)) == len(RESULT_COLUMNS) == 21
    assert (FLOAT_COLUMNS | INT_COLUMNS | set(IMPORT_COLUMNS)) <= set(RESULT_COLUMNS)


def test_csv_resume_drops_a_cut_line_and_the_last_file(tmp_path):
    out = tmp_path / "r.csv"
    w = ResultWriter(out)
    w.write([row("a.png"), row("b.png")])
    w.write([row("multi.dcm", 0), row("multi.dcm", 1)])
    w.close()
    with out.open("a", encoding="utf-8") as fh:
        fh.write("multi.dcm,ok,,gli")  # a run killed in the middle of the third frame
    w = ResultWriter(out, resume=True)
    assert w.done == {"a.png", "b.png"}  # multi.dcm may be incomplete: analysed again
    w.write([row("multi.dcm", 0), row("multi.dcm", 1), row("multi.dcm", 2)])
    w.close()
    rows = list(csv.DictReader(out.open(newline="")))
    assert [(r["path"], r["frame"]) for r in rows] == [("a.png", "")] + [("b.png", "")] + [
        ("multi.dcm", str(i)) for i in range(3)
    ]
    assert out.read_text().count("path,status") == 1


def test_csv_resume_refuses_another_versions_columns(tmp_path):
    out = tmp_path / "old.csv"
    out.write_text("path,status,error\nx.png,ok,\n")
    with pytest.raises(ResultsError, match="columns"):
        ResultWriter(out, resume=True)


def test_without_resume_the_output_starts_again(tmp_path):
    out = tmp_path / "r.csv"
    w = ResultWriter(out)
    w.write([row("a.png")])
    w.close()
    w = ResultWriter(out)
    assert w.done == set()
    w.close()
    assert out.read_text().strip() == ",".join(RESULT_COLUMNS)


def test_parquet_parts_are_typed_and_resumable(tmp_path):
    out = tmp_path / "r.parquet"
    w = ResultWriter(out, parquet=True)
    w.write([row("a.png", tumor_area_px=12), row("bad.png", status="rejected", error="not an image")])
    w.close()
    (out / ".part-00009.tmp").write_bytes(b"half a part")
    w = ResultWriter(out, parquet=True, resume=True)
    assert w.done == {"a.png", "bad.png"} and not list(out.glob(".part-*"))
    w.write([row("c.png", 3)])
    w.close()
    rows = list(read_results(out))
    assert [r["path"] for r in rows] == ["a.png", "bad.png", "c.png"]
    assert rows[0]["p_glioma"] == 0.9 and rows[0]["tumor_area_px"] == 12 and rows[1]["risk"] == 0.8
    assert rows[1]["label"] == "glioma" and rows[1]["frame"] is None and rows[2]["frame"] == 3
    ResultWriter(out, parquet=True).close()  # not resuming: the old parts go
    assert list(read_results(out)) == []


def test_a_mask_is_on_disk_before_its_row(tmp_path):
    masks = tmp_path / "m"
    w = ResultWriter(tmp_path / "r.csv", masks_dir=masks)
    r = row("a.png", mask_path=str(masks / "a_mask.png"))
    w.write([OutputRow(r.values, b"PNG")])
    w.close()
    assert (masks / "a_mask.png").read_bytes() == b"PNG"


def test_read_input_reports_what_cannot_be_read(tmp_path):
    settings = get_settings(max_file_bytes=10)
    assert read_input(tmp_path / "gone.png", settings).error.startswith("cannot read file")
    (tmp_path / "big.png").write_bytes(b"x" * 11)
    big = read_input(tmp_path / "big.png", settings)
    assert big.data is None and "over the" in big.error
    (tmp_path / "ok.png").write_bytes(b"x" * 5)
    assert read_input(tmp_path / "ok.png", settings).data == b"x" * 5


def test_import_refuses_old_results_and_changed_files(tmp_path):
    settings = get_settings(data_dir=tmp_path / "data")
    old = tmp_path / "old.csv"
    old.write_text("path,status\nx.png,ok\n")
    with pytest.raises(ResultsError, match="older version"):
        import_results([old], settings)
    scan = tmp_path / "scan.png"
    scan.write_bytes(b"now different bytes")
    res = tmp_path / "r.csv"
    w = ResultWriter(res)
    sid = hashlib.sha256(b"the analysed bytes").hexdigest()[:32]
    w.write([row(str(scan), scan_id=sid, classifier_version="v1", segmenter_version="v1", flags="uncertain")])
    w.write([row(str(tmp_path / "gone.png"), scan_id=sid[::-1], classifier_version="v1", segmenter_version="v1")])
    w.write([row("bad.png", status="rejected", error="not an image")])
    w.close()
    summary = import_results([res], settings)
    assert (summary.added, summary.rejected) == (0, 1)
    reasons = dict(summary.skipped)
    assert "content hash" in reasons[str(scan)] and "cannot read" in reasons[str(tmp_path / "gone.png")]


# ----- analyze_many: the one loop over many files (a stand-in service, no models) --------------


class _CountingService:
    """Records each ``analyze_scans`` call's scans; every scan comes back ``ok``."""

    def __init__(self):
        from triage.config import get_settings

        self.settings = get_settings()
        self.calls: list[list[str]] = []

    def analyze_scans(self, scans, explain=False):
        from triage.records import CaseResult

        self.calls.append([s.name for s in scans])
        return [CaseResult(name=s.name, status="ok", scan_id=s.scan_id, scan=s) for s in scans]


def _png(seed: int) -> bytes:
    import cv2

    from tests.conftest import draw_synthetic_slice

    _, buf = cv2.imencode(".png", draw_synthetic_slice((64, 64), seed=seed)[0])
    return buf.tobytes()


def _tiff_pages(n: int) -> bytes:
    import io

    from PIL import Image

    from tests.conftest import draw_synthetic_slice

    pages = [Image.fromarray(draw_synthetic_slice((64, 64), seed=i)[0]) for i in range(n)]
    buf = io.BytesIO()
    pages[0].save(buf, format="TIFF", save_all=True, append_images=pages[1:])
    return buf.getvalue()


def test_analyze_many_batches_files_keeps_order_and_rejects_bad_ones_alone():
    from triage.batch import FileInput, analyze_many

    service = _CountingService()
    pulled: list[str] = []

    def inputs():
        for f in [
            FileInput("a.png", _png(1)),
            FileInput("gone.png", error="cannot read file: No such file"),
            FileInput("pages.tif", _tiff_pages(3)),
            FileInput("text.png", b"not an image at all"),
            FileInput("b.png", _png(2)),
        ]:
            pulled.append(f.path)
            yield f

    done = analyze_many(service, inputs(), batch_size=2)
    first = next(done)
    assert pulled == ["a.png", "gone.png"]  # read lazily: one batch of files at a time
    rest = list(done)
    got = [(f.file.path, [r.status for r in f.results]) for f in [first, *rest]]
    assert got == [
        ("a.png", ["ok"]),
        ("gone.png", ["rejected"]),
        ("pages.tif", ["ok", "ok", "ok"]),
        ("text.png", ["rejected"]),
        ("b.png", ["ok"]),
    ]
    assert service.calls == [["a.png"], ["pages.tif"] * 3, ["b.png"]]  # one analysis call per batch of 2 files
    assert rest[0].results[0].error == "cannot read file: No such file"
    assert rest[2].results[0].scan_id and rest[2].results[0].error  # the decoder's reason, the content id
    assert [r.scan.frame for r in rest[1].results] == [0, 1, 2]
    with pytest.raises(ValueError, match="batch_size"):
        list(analyze_many(service, [], batch_size=0))
