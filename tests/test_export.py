"""triage.export: the one CSV-safe cell rule (issue 22, item 13)."""

from __future__ import annotations

import csv
import io

import pytest

from triage.export import FORMULA_PREFIXES, csv_cell, csv_row


@pytest.mark.parametrize("prefix", FORMULA_PREFIXES)
def test_every_formula_prefix_is_defused(prefix: str) -> None:
    cell = csv_cell(f"{prefix}HYPERLINK(evil)")
    assert cell.startswith("'")


def test_values_keep_their_meaning() -> None:
    assert csv_cell(None) == "" and csv_cell(True) == 1 and csv_cell(-0.5) == -0.5 and csv_cell(3) == 3
    assert csv_cell(["uncertain", "ood"]) == "uncertain;ood"
    assert csv_cell({"b": 1, "a": "=x"}) == '{"a": "=x", "b": 1}'
    assert csv_cell("glioma") == "glioma"
    assert csv_cell("a\r\nb\rc") == "a\nb\nc"


def test_a_row_stays_one_row_whatever_its_line_breaks() -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["a", "b"], lineterminator="\n")
    writer.writerow(csv_row({"a": "x\r=1+1", "b": "\r-2"}, ["a", "b"]))
    assert "\r" not in buf.getvalue()
    assert list(csv.reader(io.StringIO(buf.getvalue()))) == [["x\n=1+1", "'\n-2"]]
