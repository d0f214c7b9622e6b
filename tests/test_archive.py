"""One rule set for zip archives (triage.archive), used by the scan upload and the training importer."""

from __future__ import annotations

import io
import stat
import zipfile

import pytest

from triage import archive
from triage.config import get_settings
from triage.errors import DatasetError
from triage.lifecycle import importer
from triage.ui.uploads import expand_zip

LIMITS = archive.ArchiveLimits(max_members=10, max_member_bytes=1000, max_total_bytes=1500, max_ratio=10.0)


def _zip(members: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(name), data, compress_type=compression)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("a/../b.png", "'..'"),
        ("../evil.png", "'..'"),
        ("glioma\\..\\..\\evil.png", "'..'"),
        ("/tmp/evil.png", "absolute"),
        ("C:/evil.png", "absolute"),
        ("\\\\server\\share\\evil.png", "absolute"),
        ("a\x00b.png", "NUL"),
    ],
)
def test_unsafe_names_are_refused_with_a_reason(name, reason) -> None:
    assert reason in archive.name_problem(name)


@pytest.mark.parametrize("name", ["glioma/a.png", "a..b.png", "x/.hidden/..png", "./glioma/a.png"])
def test_ordinary_names_pass(name) -> None:
    assert archive.name_problem(name) is None
    assert archive.member_parts("./glioma\\a.png") == ["glioma", "a.png"]


def test_links_encryption_size_and_ratio_are_refused() -> None:
    link = zipfile.ZipInfo("a.png")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    assert "symbolic link" in archive.member_problem(link, LIMITS)
    locked = zipfile.ZipInfo("a.png")
    locked.flag_bits |= 0x1
    assert "encrypted" in archive.member_problem(locked, LIMITS)
    big = zipfile.ZipInfo("a.png")
    big.file_size, big.compress_size = 2000, 2000
    assert "limit" in archive.member_problem(big, LIMITS)
    bomb = zipfile.ZipInfo("a.png")
    bomb.file_size, bomb.compress_size = 900, 10
    assert archive.member_problem(bomb, LIMITS) is None  # under ratio_min_bytes: a small file may compress well
    strict = archive.ArchiveLimits(10, 1000, 1500, max_ratio=10.0, ratio_min_bytes=100)
    assert "zip bomb" in archive.member_problem(bomb, strict)


def test_extraction_stops_at_the_declared_size_and_the_total(tmp_path) -> None:
    data = _zip({"a.png": b"x" * 800, "b.png": b"y" * 800})
    with archive.open_zip(data) as zf:
        a, b = zf.infolist()
        total = archive.extract_member(zf, a, tmp_path / "a.png", LIMITS, 0)
        assert total == 800 and (tmp_path / "a.png").read_bytes() == b"x" * 800
        with pytest.raises(archive.ArchiveLimitError, match="zip bomb"):
            archive.extract_member(zf, b, tmp_path / "b.png", LIMITS, total)  # 1600 > 1500 in all
        with pytest.raises(FileExistsError):
            archive.extract_member(zf, a, tmp_path / "a.png", LIMITS, 0)
        assert archive.read_member(zf, a, 100) == b"x" * 101  # budget + 1: "too large" without reading it all


def test_upload_and_importer_refuse_the_same_dot_dot_member(tmp_path) -> None:
    """The training importer used to normalise ``a/../b.png`` to ``b.png`` and accept it."""
    data = _zip({"glioma/ok.png": b"x", "glioma/../b.png": b"y"})
    items, skipped = expand_zip("up.zip", data)
    assert [i.name for i in items] == ["up.zip/glioma/ok.png"]
    assert any("'..'" in r["reason"] for r in skipped if r["file"] == "up.zip/glioma/../b.png")
    settings = get_settings(data_dir=tmp_path / "data", weights_dir=tmp_path / "w", import_roots=str(tmp_path))
    with pytest.raises(DatasetError, match=r"unsafe archive.*'\.\.'"):
        importer.import_zip(data, "classifier", settings)
    with pytest.raises(archive.OPEN_ERRORS):
        archive.open_zip(b"not a zip")
