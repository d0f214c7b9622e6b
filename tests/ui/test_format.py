"""triage.ui.format: user text as literal Markdown, and names hidden behind case ids (issue 22)."""

from __future__ import annotations

import re

import pytest

from triage.records import Case
from triage.ui.format import case_name, case_title, escape_md, rejections_frame, worklist_frame

HOSTILE = [
    "![p](https:evil.example?x).png",
    ":red[**NO TUMOR - SAFE TO SKIP**]",
    "<img src=x onerror=alert(1)>",
    "# heading\n- list\n1. item\n    code",
    "[click](javascript:alert(1))",
    "$\\frac{1}{2}$ `code` ~~gone~~ _it_ :material/check: :smile:",
    "a | b\r\n---|---",
    "back\\slash \\*",
]


def _unescaped_punctuation(md: str) -> list[str]:
    """Punctuation characters of ``md`` not preceded by an escaping backslash."""
    found, i = [], 0
    while i < len(md):
        if md[i] == "\\":
            i += 2
            continue
        if re.match(r"[!-/:-@\[-`{-~]", md[i]):
            found.append(md[i])
        i += 1
    return found


def _unescape(md: str) -> str:
    return re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", md.replace("  \n", "\n"))


@pytest.mark.parametrize("text", HOSTILE)
def test_escape_md_leaves_no_markdown_and_loses_nothing(text: str) -> None:
    md = escape_md(text)
    assert _unescaped_punctuation(md) == [], md
    expected = "\n".join(line.strip() for line in text.replace("\r\n", "\n").split("\n"))
    assert _unescape(md) == expected


def test_escape_md_of_none_and_numbers() -> None:
    assert escape_md(None) == "" and escape_md(0.5) == "0\\.5"


def test_names_hidden_behind_the_case_id() -> None:
    case = Case(
        scan_id="0123456789abcdef", name="Doe^John_19310417.png", label="glioma", probs=(0.1, 0.7, 0.1, 0.1), risk=0.9
    )
    assert case_name(case) == "Doe^John_19310417.png"
    assert case_name(case, hide_names=True) == "case 0123456789ab"
    assert "Doe" not in case_title(case, hide_names=True)
    assert worklist_frame([case], hide_names=True)["name"].tolist() == ["case 0123456789ab"]
    rej = [{"name": "Doe^Jane.png", "reason": "not an image", "sha256": "f" * 64, "received_at": None}]
    assert rejections_frame(rej, hide_names=True)["name"].tolist() == ["case ffffffffffff"]
    assert rejections_frame(rej)["name"].tolist() == ["Doe^Jane.png"]
