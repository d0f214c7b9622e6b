#!/usr/bin/env python3
"""The structure of the code, measured from its imports (issue 24): before/after a restructuring.

For each checkout given with ``--src`` (default: this one) it parses every ``triage/**/*.py``,
``views/*.py`` and ``app.py`` (nothing is imported or run) and prints one Markdown table:

  modules            Python files in triage/ (triage/ui included) and their lines
  import arrows      distinct module -> module imports inside the project (any import, lazy ones too);
                     at module level only in brackets
  longest upload path  the longest chain of imports from views/new_scans.py to triage/worklist.py:
                     how many modules a reader may pass through from the upload page to a worklist row
  request path       modules the analysis service (triage/service.py) reaches through module-level
                     imports, and how many of them are model-lifecycle modules (training, import,
                     calibration, promotion, jobs)
  card readers       files that read a model-card key from a dict (``meta["input_size"]``,
                     ``meta.get("temperature")``...) instead of the typed record
  own atomic writes  files that call os.replace / os.rename / tempfile.mkstemp themselves
  zip readers        files that open a zip archive themselves (``zipfile.ZipFile(``)

Example: python bench/structure.py --src ../main --src .
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from functools import cache
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import table

LIFECYCLE = {
    "train",
    "training_run",
    "recipe",
    "sources",
    "promotion",
    "calibrate",
    "jobs",
    "importer",
    "compare",
    "crossval",
}
CARD_KEYS = (
    "input_size|normalization|temperature|tta|threshold|min_area_frac|crop|intensity_norm|arch|arch_kwargs|"
    "classes|ood|flag_rule|trained|gradcam_layer|wall_time_min"
)
CARD_READ = re.compile(rf"""\b(meta|card)(\[|\.get\()["'](?:{CARD_KEYS})["']""")


def _module_name(root: Path, path: Path) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path, module: str, top_only: bool) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if top_only else list(ast.walk(tree))
    if top_only:  # module level, including `if TYPE_CHECKING:` / try blocks at the top
        nodes = [
            n for stmt in tree.body for n in ast.walk(stmt) if not isinstance(stmt, (ast.FunctionDef, ast.ClassDef))
        ]
        nodes += [
            n
            for stmt in tree.body
            if isinstance(stmt, ast.ClassDef)
            for n in stmt.body
            if isinstance(n, (ast.Import, ast.ImportFrom))
        ]
    out: set[str] = set()
    pkg = module.rsplit(".", 1)[0] if "." in module else module
    for n in nodes:
        if isinstance(n, ast.Import):
            out.update(a.name for a in n.names)
        elif isinstance(n, ast.ImportFrom):
            base = n.module or ""
            if n.level:
                base = ".".join(pkg.split(".")[: len(pkg.split(".")) - n.level + 1] + ([base] if base else []))
            out.add(base)
            out.update(f"{base}.{a.name}" for a in n.names)  # `from triage import jobs`
    return out


def measure(src: Path) -> dict:
    files = sorted((src / "triage").rglob("*.py")) + sorted((src / "views").glob("*.py")) + [src / "app.py"]
    files = [f for f in files if f.is_file() and "__pycache__" not in f.parts]
    names = {_module_name(src, f): f for f in files}
    core = [f for f in files if f.is_relative_to(src / "triage")]

    def edges(top_only: bool) -> dict[str, set[str]]:
        graph = {}
        for name, f in names.items():
            found = _imports(f, name, top_only)
            graph[name] = {m for m in found if m in names and m != name}
        return graph

    every, top = edges(False), edges(True)

    @cache
    def longest(node: str, target: str, seen: frozenset = frozenset()) -> tuple[str, ...]:
        """The longest import chain from ``node`` to ``target`` without revisiting a module (() if none)."""
        if node == target:
            return (node,)
        best: tuple[str, ...] = ()
        for nxt in sorted(every.get(node, ())):
            if nxt in seen:
                continue
            sub = longest(nxt, target, seen | {node})
            if sub and len(sub) + 1 > len(best):
                best = (node, *sub)
        return best

    def reach(start: str, graph: dict[str, set[str]]) -> set[str]:
        todo, got = [start], set()
        while todo:
            m = todo.pop()
            if m in got:
                continue
            got.add(m)
            todo.extend(graph.get(m, ()))
        return got

    request = reach("triage.service", top) if "triage.service" in names else set()
    lifecycle = {m for m in request if m.split(".")[-1] in LIFECYCLE or m.startswith("triage.lifecycle")}
    text = {f: f.read_text(encoding="utf-8") for f in files}
    own_renames = [
        f
        for f in core
        if re.search(r"\bos\.(replace|rename)\(|\btempfile\.mkstemp\(", text[f]) and f.name != "atomic.py"
    ]
    return {
        "modules": len(core),
        "lines": sum(t.count("\n") for f, t in text.items() if f in core),
        "arrows": sum(len(v) for v in every.values()),
        "arrows_top": sum(len(v) for v in top.values()),
        "upload_path": longest("views.new_scans", "triage.worklist") if "views.new_scans" in names else (),
        "flat": len([f for f in core if f.parent == src / "triage"]),
        "flat_lifecycle": sorted(f.stem for f in core if f.parent == src / "triage" and f.stem in LIFECYCLE),
        "request": len(request),
        "request_lifecycle": sorted(m.split(".")[-1] for m in lifecycle),
        "card_readers": sorted(str(f.relative_to(src)) for f in files if CARD_READ.search(text[f])),
        "own_renames": sorted(str(f.relative_to(src)) for f in own_renames),
        "zip_readers": sorted(str(f.relative_to(src)) for f in core if re.search(r"\bzipfile\.ZipFile\(", text[f])),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--src", action="append", help="a checkout (repeat to compare; default: this one)")
    args = p.parse_args()
    srcs = [Path(s).resolve() for s in (args.src or [Path(__file__).resolve().parents[1]])]
    results = [(s, measure(s)) for s in srcs]
    print("# Code structure (imports, parsed)\n")
    print(f"`{' '.join(['python', 'bench/structure.py', *(f'--src {s}' for s in (args.src or []))])}`\n")
    head = ["measure", *[s.name for s, _ in results]]
    rows = [
        ["modules in triage/ (lines)", *[f"{r['modules']} ({r['lines']})" for _, r in results]],
        ["import arrows (module level)", *[f"{r['arrows']} ({r['arrows_top']})" for _, r in results]],
        ["modules directly in triage/ (a reader's `ls`)", *[str(r["flat"]) for _, r in results]],
        [
            "of which model lifecycle",
            *[f"{len(r['flat_lifecycle'])}: {', '.join(r['flat_lifecycle']) or '-'}" for _, r in results],
        ],
        ["longest import chain upload page -> worklist (modules)", *[str(len(r["upload_path"])) for _, r in results]],
        ["modules on the request path (service, module level)", *[str(r["request"]) for _, r in results]],
        [
            "of which model lifecycle",
            *[f"{len(r['request_lifecycle'])}: {', '.join(r['request_lifecycle']) or '-'}" for _, r in results],
        ],
        ["files reading card keys from a dict", *[str(len(r["card_readers"])) for _, r in results]],
        ["files doing their own atomic rename", *[str(len(r["own_renames"])) for _, r in results]],
        ["files opening zip archives", *[str(len(r["zip_readers"])) for _, r in results]],
    ]
    print(table(head, rows))
    for s, r in results:
        print(f"\n{s.name}: longest upload chain {' -> '.join(r['upload_path'])}")
        print(f"{s.name}: card readers {', '.join(r['card_readers']) or '-'}")
        print(f"{s.name}: own atomic renames {', '.join(r['own_renames']) or '-'}")
        print(f"{s.name}: zip readers {', '.join(r['zip_readers']) or '-'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
