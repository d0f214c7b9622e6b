"""CSV cells that are safe to open in a spreadsheet: the one home of the rule for every CSV the app
or the CLI writes (worklist export, ``analyze --out``, imported-dataset manifests)."""

from __future__ import annotations

import json

# A cell starting with one of these is run as a formula by Excel / LibreOffice / Sheets
# (=HYPERLINK(...) exfiltrates, =cmd|... runs programs); a leading apostrophe makes it text.
FORMULA_PREFIXES: tuple[str, ...] = ("=", "+", "-", "@", "\t", "\r")


def _json_default(obj: object) -> object:
    return obj.tolist() if hasattr(obj, "tolist") else str(obj)


def csv_cell(value: object) -> object:
    """A CSV-safe cell: None -> '', bools -> 0/1, lists joined by ';', dicts as JSON; text has its
    line breaks normalised to LF and formula-like text is defused with a leading apostrophe.

    Every CR becomes LF because Python's csv module does not quote a bare CR when rows end in
    LF, and a spreadsheet then starts a new row there (a forged, undefused row). A cell holding
    LF is always quoted, so it stays one cell. Numbers pass through unchanged (-0.5 stays a number).
    """
    if value is None:
        return ""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (list, tuple)):
        value = ";".join(str(v) for v in value)
    elif isinstance(value, dict):
        value = json.dumps(value, default=_json_default, sort_keys=True)
    if not isinstance(value, str):
        return value
    value = value.replace("\r\n", "\n").replace("\r", "\n")
    if value.startswith((*FORMULA_PREFIXES, "\n")):  # a leading CR is a leading LF by now
        return "'" + value
    return value


def csv_text(cell: str) -> str:
    """The text :func:`csv_cell` was given back from a cell read from one of our CSVs (the
    apostrophe that defused a formula removed), e.g. a file path to resume or import."""
    if cell.startswith("'") and cell[1:].startswith((*FORMULA_PREFIXES, "\n")):
        return cell[1:]
    return cell


def csv_row(row: dict, columns: list[str] | tuple[str, ...]) -> dict:
    """``row`` restricted to ``columns``, every value through :func:`csv_cell` (missing -> '')."""
    return {c: csv_cell(row.get(c)) for c in columns}
