#!/usr/bin/env python3
"""Interaction speed of the reading workstation (issue 16): server-side seconds per rerun.

The app runs through streamlit's AppTest (the whole script: router, banner, page) with the active
models on a temporary data folder holding ``--cases`` BRISC 2025 test slices (stratified), put in
through the app's upload logic (``process_uploads``, as the New scans page does). Measured:

  1. case switch: Case review, *Next* through every case (the first visit of each: the stored
     analysis is read from disk), then *Previous* back through them (warm: visited before)
  2. heatmap method switch: heatmap on, each method once (the first time a heatmap is computed
     and stored), then each method again (stored)
  3. a 12-slice upload once warm: ``process_uploads`` of 12 further slices (decode, analysis with
     segmentation, storage, worklist rows), after an earlier upload warmed the models

Targets: warm case switch and stored heatmap switch <= 0.5 s (median), 12-slice upload <= 3 s.
``--app-dir DIR`` measures another checkout's app (e.g. main before the change) with the same
steps (widgets it lacks are skipped); this script's own ``triage`` is then not imported.

Examples:
  python bench/interaction.py
  python bench/interaction.py --cases 8 --write
  python bench/interaction.py --app-dir ../main     # the same on another checkout
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as common

TIMEOUT_S = 300
TARGET_SWITCH_S = 0.5
TARGET_UPLOAD_S = 3.0


def _timed_run(widget_or_at) -> float:
    t = time.perf_counter()
    widget_or_at.run(timeout=TIMEOUT_S)
    return time.perf_counter() - t


def _by_label(widgets, label: str):
    return next((w for w in widgets if w.label == label), None)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_args(p)
    p.add_argument("--cases", type=int, default=6, help="cases in the worklist to switch between (default 6)")
    p.add_argument("--app-dir", help="the checkout whose app.py and triage package are measured (default: this one)")
    args = p.parse_args()
    app_dir = Path(args.app_dir).resolve() if args.app_dir else common.REPO_DIR
    if args.app_dir:  # that checkout's triage, not ours
        sys.path.insert(0, str(app_dir))
        os.chdir(app_dir)
    tmp = Path(tempfile.mkdtemp(prefix="bench-interaction-"))
    os.environ["TRIAGE_DATA_DIR"] = str(tmp / "data")
    os.environ["TRIAGE_HIDE_FILE_NAMES"] = "0"
    settings, versions = common.start(args)
    root = common.brisc_dir(args.data)
    test = [s for s in common.load_brisc(root) if s.split == "test"]
    rng = random.Random(args.seed)
    chosen = common.stratified_sample(test, args.cases + 12 + 4, rng)
    cases, upload, warm = chosen[: args.cases], chosen[args.cases : args.cases + 12], chosen[args.cases + 12 :]

    import streamlit as st
    from streamlit.testing.v1 import AppTest

    from triage.service import TriageService
    from triage.ui.uploads import process_uploads
    from triage.worklist import Worklist

    service = TriageService(settings)
    wl = Worklist(settings.db_path)
    process_uploads([(s.path.name, s.path.read_bytes()) for s in warm], service, wl)  # models loaded, warm
    process_uploads([(s.path.name, s.path.read_bytes()) for s in cases], service, wl)
    t = time.perf_counter()
    rows = process_uploads([(s.path.name, s.path.read_bytes()) for s in upload], service, wl)
    upload_s = time.perf_counter() - t
    accepted = sum(r["status"] == "accepted" for r in rows)

    st.cache_resource.clear()
    st.cache_data.clear()
    at = AppTest.from_file(str(app_dir / "app.py"), default_timeout=TIMEOUT_S)
    open_s = _timed_run(at)  # Worklist, first run (models load in the app's own service)
    at.session_state["selected_case"] = wl.list_cases()[0].scan_id
    at.switch_page("views/case_review.py")
    first_case_s = _timed_run(at)
    n_total = wl.count()
    forward, back = [], []
    for _ in range(min(args.cases, n_total) - 1):
        nxt = _by_label(at.button, "Next")
        if nxt is None or nxt.disabled:
            break
        forward.append(_timed_run(nxt.click()))
    for _ in range(len(forward)):
        prev = _by_label(at.button, "Previous")
        if prev is None or prev.disabled:
            break
        back.append(_timed_run(prev.click()))
    heat_on = _by_label(at.toggle, "Heatmap")
    heat_on_s = _timed_run(heat_on.set_value(True)) if heat_on is not None else None
    method_box = _by_label(at.selectbox, "Heatmap method")
    methods = list(method_box.options) if method_box is not None else []
    cold_methods, warm_methods = [], []
    for out in (cold_methods, warm_methods):
        for m in methods[1:] + methods[:1]:
            box = _by_label(at.selectbox, "Heatmap method")
            out.append(_timed_run(box.select(m if m in box.options else box.options[0])))
    errors = [str(e.value) for e in at.exception]

    med = common.median
    rows_md = [
        ("Worklist, first run of the app (models load)", common.fmt(open_s, 2), "", ""),
        ("Case review, first case opened", common.fmt(first_case_s, 2), "", ""),
        ("case switch, first visit (Next)", common.fmt(med(forward), 2) if forward else "–", str(len(forward)), ""),
        (
            "**case switch, warm (Previous)**",
            common.fmt(med(back), 2) if back else "–",
            str(len(back)),
            common.verdict(med(back) <= TARGET_SWITCH_S) if back else "",
        ),
        ("heatmap turned on", common.fmt(heat_on_s, 2) if heat_on_s is not None else "– (always on)", "1", ""),
        (
            "heatmap method switch, first time (computed, stored)",
            common.fmt(med(cold_methods), 2) if cold_methods else "–",
            str(len(cold_methods)),
            "",
        ),
        (
            "**heatmap method switch, stored**",
            common.fmt(med(warm_methods), 2) if warm_methods else "–",
            str(len(warm_methods)),
            common.verdict(med(warm_methods) <= TARGET_SWITCH_S) if warm_methods else "",
        ),
        (
            f"**12-slice upload, warm** ({accepted} accepted)",
            common.fmt(upload_s, 2),
            "1",
            common.verdict(upload_s <= TARGET_UPLOAD_S),
        ),
    ]
    lines = [
        common.header("Interaction (issue 16): server-side s per rerun", common.command_line(), args.threads, versions),
        "",
        f"App: `{app_dir}`; {n_total} cases in the worklist; AppTest reruns of the whole script; median seconds.",
        "",
        common.table(["step", "s (median)", "n", f"target <= {TARGET_SWITCH_S} s / {TARGET_UPLOAD_S} s"], rows_md),
    ]
    if errors:
        lines += ["", "Exceptions in the app: " + "; ".join(errors)]
    return common.finish(args, "interaction", lines, versions)


if __name__ == "__main__":
    raise SystemExit(main())
