"""Reading zip archives: one rule set for every archive the app opens, limits as parameters.

Scan uploads (:func:`triage.ui.uploads.expand_zip`, in memory, a refused member is skipped with a
reason) and training imports (:func:`triage.lifecycle.importer.import_zip`, to disk, a refused member
refuses the archive) decide what to do with a refused member; what is refused is decided here:

- a member name with a NUL byte, an absolute path (``/x``, ``C:/x``, ``\\\\server\\x``) or a ``..``
  component anywhere (``a/../b.png`` too: a name that has to be normalised to be safe is not
  trusted, and both callers used to disagree on it);
- a symbolic link, an encrypted member;
- a member over ``max_member_bytes`` uncompressed, or inflating more than ``max_ratio`` times its
  compressed size (a zip bomb), or reading more bytes than it declares.
"""

from __future__ import annotations

import math
import re
import stat
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

_DRIVE = re.compile(r"^[A-Za-z]:")
# What opening or reading a member of a corrupt archive raises.
OPEN_ERRORS = (zipfile.BadZipFile, OSError, ValueError)
READ_ERRORS = (zipfile.BadZipFile, zlib.error, RuntimeError, ValueError, OSError, EOFError, NotImplementedError)


class ArchiveLimitError(ValueError):
    """A member read more bytes than it declared or than the limits allow."""


@dataclass(frozen=True)
class ArchiveLimits:
    """How much of an archive may be read: members, bytes per member, bytes in all, compression ratio.

    ``max_ratio`` applies to members that inflate beyond ``ratio_min_bytes`` (a tiny file may
    compress well for honest reasons)."""

    max_members: int
    max_member_bytes: int
    max_total_bytes: int
    max_ratio: float = math.inf
    ratio_min_bytes: int = 1024 * 1024


def open_zip(source: bytes | bytearray | memoryview | str | Path) -> zipfile.ZipFile:
    """The archive in ``source`` (bytes or a path); raises one of :data:`OPEN_ERRORS` when unreadable."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return zipfile.ZipFile(BytesIO(bytes(source)))
    return zipfile.ZipFile(Path(source))


def name_problem(name: str) -> str | None:
    """Why a member name is refused (NUL byte, absolute path, a '..' component), or None."""
    if "\x00" in name:
        return "NUL byte in the member name"
    clean = name.replace("\\", "/")
    if clean.startswith("/") or _DRIVE.match(clean):
        return "absolute path inside the archive"
    if ".." in clean.split("/"):
        return "path with '..' inside the archive"
    return None


def member_parts(name: str) -> list[str]:
    """The path components of a (safe) member name: backslashes as slashes, empty and '.' parts dropped."""
    return [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]


def member_problem(info: zipfile.ZipInfo, limits: ArchiveLimits) -> str | None:
    """Why a member is refused by the rules above (name, link, encryption, declared size, ratio), or None."""
    problem = name_problem(info.filename)
    if problem:
        return problem
    if stat.S_ISLNK(info.external_attr >> 16):
        return "symbolic link inside the archive"
    if info.flag_bits & 0x1:
        return "encrypted archive member"
    if info.file_size > limits.max_member_bytes:
        return f"{info.file_size / 1e6:.1f} MB uncompressed, over the {limits.max_member_bytes / 1e6:.0f} MB limit"
    ratio = info.file_size / max(1, info.compress_size)
    if info.file_size > limits.ratio_min_bytes and ratio > limits.max_ratio:
        return f"compression ratio of {ratio:.0f}:1 (limit {limits.max_ratio:.0f}:1); this looks like a zip bomb"
    return None


def files(zf: zipfile.ZipFile) -> list[zipfile.ZipInfo]:
    """The members that are files (folders are implied by the names)."""
    return [i for i in zf.infolist() if not i.is_dir()]


def read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, budget: int) -> bytes:
    """At most ``budget + 1`` bytes of a member (a result longer than ``budget`` means "too large";
    the declared size is never trusted). Raises one of :data:`READ_ERRORS` for a corrupt member."""
    with zf.open(info) as fh:
        return fh.read(budget + 1)


def extract_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, dest: Path, limits: ArchiveLimits, total: int) -> int:
    """Stream a member into the new file ``dest`` (``FileExistsError`` if taken) and return ``total``
    plus its bytes; :class:`ArchiveLimitError` as soon as it reads more than it declares or than
    the member or total limits allow."""
    written = 0
    with zf.open(info) as src, Path(dest).open("xb") as dst:
        for chunk in _chunks(src):
            written += len(chunk)
            total += len(chunk)
            if written > info.file_size or written > limits.max_member_bytes or total > limits.max_total_bytes:
                raise ArchiveLimitError(
                    f"archive member {info.filename!r} inflates beyond its declared size or the archive limits; "
                    "this looks like a zip bomb"
                )
            dst.write(chunk)
    return total


def _chunks(fh, size: int = 1 << 20) -> Iterator[bytes]:
    while chunk := fh.read(size):
        yield chunk
