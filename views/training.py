"""Training: check new data, retrain in the background, compare with the active model, promote or roll back."""

import logging
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from triage.errors import TriageError
from triage.records import CLASSES, JobPhase, SourceKind
from triage.ui import state, training
from triage.ui.auth import require_admin, reviewer_input
from triage.ui.format import escape_md
from triage.ui.resources import get_worklist, settings
from triage.ui.widgets import show_flash

SOURCES = {
    SourceKind.FOLDER: "Folder on this computer",
    SourceKind.ZIP: "Zip upload",
    SourceKind.MANIFEST: "Manifest CSV",
    SourceKind.WORKLIST: "Reviewed worklist cases",
}
TASK_TEXT = {"classifier": "Classifier", "segmenter": "Segmenter", "both": "Both"}
PRESET_TEXT = {"quick": "Quick (about 10 minutes per model)", "full": "Full (up to about 70 minutes per model)"}
INIT_TEXT = {"finetune": "Fine-tune the current model", "scratch": "Start from scratch"}
PHASE_TEXT = {
    JobPhase.PREPARING: "Preparing data and loading the trainer",
    JobPhase.TRAINING: "Training",
    JobPhase.FINISHING: "Calibrating and saving the new version",
    JobPhase.CANCELLING: "Cancelling",
    JobPhase.DONE: "Finished",
    JobPhase.FAILED: "Failed",
    JobPhase.CANCELLED: "Cancelled",
}
RUN_PICK = state.keyed(state.TRAIN_RUN, "pick")
VERSION_PICK = state.keyed(state.TRAIN_RUN, "version")
MARGIN = {"t": 40, "b": 30, "l": 30, "r": 10}
log = logging.getLogger(__name__)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "estimating…"
    m, s = divmod(int(seconds), 60)
    return f"{m // 60} h {m % 60:02d} min" if m >= 60 else f"{m} min {s:02d} s"


def _pct(x: float | None) -> str:
    return "–" if x is None or pd.isna(x) else f"{x * 100:.1f}%"


def _error(exc: BaseException) -> None:
    """Our own errors say what to do (as plain text: they quote typed paths and archive names);
    anything else is logged and shown without its text, which can hold server paths."""
    if isinstance(exc, (TriageError, ValueError)):
        st.error(escape_md(exc), icon=":material/error:")
    else:
        log.error("training page: unexpected %s", type(exc).__name__, exc_info=exc)
        st.error(
            f"Unexpected error ({type(exc).__name__}); the details are in the server log.", icon=":material/error:"
        )


# ----- data check -----------------------------------------------------------------------------


def _check_value(source: str) -> object:
    """What the importer needs for ``source``, or raise ValueError with what is missing."""
    if source == SourceKind.FOLDER:
        value = (st.session_state.get(state.TRAIN_FOLDER) or "").strip()
    elif source == SourceKind.MANIFEST:
        value = (st.session_state.get(state.TRAIN_MANIFEST) or "").strip()
    elif source == SourceKind.ZIP:
        upload = st.session_state.get(state.TRAIN_ZIP)
        value = upload.getvalue() if upload is not None else None
    else:
        value = get_worklist().reviewed_cases()
    if value is None or value == "":
        raise ValueError(f"{SOURCES[source]}: nothing given yet")
    return value


@st.fragment(run_every=1)
def _check_progress(key: str) -> None:
    status, _ = training.task_state(key)
    if status != JobPhase.RUNNING:
        st.rerun()
    done, total = training.task_progress(key)
    st.progress(done / total if total else 0.0, text=f"Checking images… {done}/{total}")


def _check_state() -> str:
    """State of this session's data check; a finished one is moved into the session.

    A failed check is kept (and its error shown) until the next check replaces it.
    """
    key = st.session_state[state.TRAIN_CHECK]
    if not key:
        return JobPhase.MISSING
    status, value = training.task_state(key)
    if status in (JobPhase.DONE, JobPhase.MISSING):
        training.forget_task(key)
        st.session_state[state.TRAIN_CHECK] = None
        if status == JobPhase.DONE:
            st.session_state[state.TRAIN_SUMMARY] = value.to_dict()
    return status


def _data_check(task: str, status: str) -> "training.ImportSummary | None":
    key = st.session_state[state.TRAIN_CHECK]
    if status == JobPhase.FAILED:
        _error(training.task_state(key)[1])
    elif status == JobPhase.RUNNING:
        _check_progress(key)
    if not st.session_state[state.TRAIN_SUMMARY]:
        return None
    summary = training.checked_summary(st.session_state[state.TRAIN_SUMMARY], task)
    st.markdown(f"**Checked data** from {escape_md(summary.source)}: {summary.total} images, {summary.masks} masks")
    st.dataframe(pd.DataFrame(summary.table()), hide_index=True)
    c = st.columns(4)
    c[0].metric(
        "Duplicates removed",
        summary.exact_duplicates + summary.near_duplicates,
        help="exact copies (same bytes) and near duplicates (64×64 thumbnail cosine ≥ 0.99)",
    )
    c[1].metric("Files rejected", len(summary.rejected))
    c[2].metric("Files skipped", len(summary.skipped))
    c[3].metric("Masks dropped", len(summary.mask_mismatches))
    for problem in summary.problems:
        st.error(f"Cannot train: {escape_md(problem)}", icon=":material/block:")
    for warning in summary.warnings:
        st.warning(escape_md(warning))
    lists = [
        ("Rejected files", [f"{n}: {r}" for n, r in summary.rejected]),
        ("Skipped files", summary.skipped),
        ("Duplicates removed", summary.duplicates),
        ("Mask problems", summary.mask_mismatches),
    ]
    for title, items in lists:
        if items:
            with st.expander(f"{title} ({len(items)})"):
                st.text("\n".join(items[:500]) + ("\n…" if len(items) > 500 else ""))
    return summary


# ----- charts -----------------------------------------------------------------------------------


def _curves(status: "training.JobStatus") -> None:
    left, right = st.columns(2)
    loss = go.Figure()
    if status.steps:
        loss.add_scatter(
            x=[s["step"] for s in status.steps],
            y=[s["loss"] for s in status.steps],
            mode="lines+markers",
            name="training loss (batches)",
        )
    spe = status.total_steps / max(1, status.total_epochs) if status.total_steps else 1
    for key, name in (("train_loss", "training loss (epoch)"), ("val_loss", "validation loss")):
        pts = [(spe * (e["epoch"] + 1), e[key]) for e in status.epochs if key in e]
        if pts:
            loss.add_scatter(x=[p[0] for p in pts], y=[p[1] for p in pts], mode="lines+markers", name=name)
    loss.update_layout(title="Loss", xaxis_title="batch", height=300, margin=MARGIN)
    left.plotly_chart(loss, width="stretch")
    val = go.Figure()
    keys = sorted({k for e in status.epochs for k in e if k.startswith("val_") and k != "val_loss"})
    for key in keys:
        val.add_scatter(
            x=[e["epoch"] + 1 for e in status.epochs],
            y=[e.get(key) for e in status.epochs],
            mode="lines+markers",
            name=key[4:].replace("_", " "),
        )
    val.update_layout(title="Validation", xaxis_title="epoch", yaxis_range=[0, 1], height=300, margin=MARGIN)
    right.plotly_chart(val, width="stretch")


def _confusion(cm: list, title: str) -> go.Figure:
    fig = go.Figure(
        go.Heatmap(
            z=cm, x=list(CLASSES), y=list(CLASSES), colorscale="Blues", showscale=False, text=cm, texttemplate="%{text}"
        )
    )
    fig.update_layout(
        title=title, xaxis_title="predicted", yaxis_title="truth", yaxis_autorange="reversed", height=320, margin=MARGIN
    )
    return fig


# ----- runs -----------------------------------------------------------------------------------


@st.fragment(run_every=2)
def _live(job_id: str) -> None:
    cfg = settings()
    job = training.load_run(cfg, job_id)
    status = training.poll_run(cfg, job)  # the live panel is the one place the page moves a job on
    if not status.running:
        st.rerun()
    text = PHASE_TEXT.get(status.phase, status.phase)
    if status.total_steps:
        text += f" — batch {status.step}/{status.total_steps}, epoch {status.epoch}/{status.total_epochs}"
    st.progress(status.fraction, text=text)
    c = st.columns(3)
    c[0].metric("Elapsed", _duration(status.elapsed_s))
    c[1].metric("Remaining", _duration(status.eta_s) if status.phase == JobPhase.TRAINING else "–")
    c[2].metric("Version being trained", job.version)
    if status.steps or status.epochs:
        _curves(status)
    if status.phase != JobPhase.CANCELLING and st.button(
        "Cancel training", key=state.keyed(state.TRAIN_RUN, "cancel", job_id)
    ):
        training.cancel_run(cfg, job)
        st.rerun()


@st.fragment(run_every=2)
def _comparison_progress(key: str) -> None:
    if training.task_state(key)[0] != JobPhase.RUNNING:
        st.rerun()
    done, total = training.task_progress(key)
    st.progress(
        (done + 0.5) / total if total else 0.05,
        text="Comparing the new version with the active one on held-out images…",
    )


def _comparison(cfg, job: "training.Job", active: str) -> "tuple[dict, training.PromotionVerdict] | None":
    """Show the comparison of the run's version with the active one and the rule's verdict on it;
    return both once the comparison exists (the bootstrap runs once per page run, not per use)."""
    status, value = training.comparison(cfg, job, active)  # started in the background when missing
    key = training.comparison_key(job, active)
    if status == JobPhase.RUNNING:
        _comparison_progress(key)
        return None
    if status == JobPhase.FAILED:
        log.error("comparison of %s failed", job.version, exc_info=value if isinstance(value, BaseException) else None)
        st.error(f"The comparison failed ({type(value).__name__}); the details are in the server log.")
        if st.button("Retry comparison", key=state.keyed(state.TRAIN_RUN, "retry", job.job_id)):
            training.forget_task(key)
            st.rerun()
        return None
    saved = value
    st.markdown(
        f"**New `{job.version}` vs active `{active}`** on {saved['n']} held-out images "
        f"({escape_md(saved.get('source', ''))})"
    )
    rows = [
        {
            "metric": r["metric"],
            "active": _pct(r["active"]) if r["metric"] != "rejected by the pipeline" else r["active"],
            "new": _pct(r["new"]) if r["metric"] != "rejected by the pipeline" else r["new"],
            "": {True: "better", False: "worse", None: ""}[r["better"]],
        }
        for r in saved["rows"]
    ]
    st.dataframe(pd.DataFrame(rows), hide_index=True)
    for note in saved.get("notes", []):
        st.caption(escape_md(note))
    cms = [
        (side, saved["reports"][side].get("classification", {}).get("confusion_matrix")) for side in ("active", "new")
    ]
    if all(cm for _, cm in cms):
        cols = st.columns(2)
        for col, (side, cm) in zip(cols, cms):
            col.plotly_chart(_confusion(cm, f"{side} ({active if side == 'active' else job.version})"), width="stretch")
    verdict = training.judge(saved)
    _verdict(verdict)
    return saved, verdict


def _ci(ci: tuple[float, float] | list | None, signed: bool = False) -> str:
    if ci is None:
        return ""
    lo, hi = ci
    return f"[{lo * 100:+.1f}, {hi * 100:+.1f}]" if signed else f"[{lo * 100:.1f}, {hi * 100:.1f}]"


def _verdict(verdict: "training.PromotionVerdict") -> None:
    """The promotion rule applied to the comparison: paired intervals and what it allows."""
    rows = [
        {
            "metric": c.metric,
            "active": f"{_pct(c.active)} {_ci(c.active_ci95)}",
            "new": f"{_pct(c.new)} {_ci(c.new_ci95)}",
            "new - active, 95% CI (points)": _ci(c.diff_ci95, signed=True),
            "": "worse beyond its interval" if c.worse else "",
        }
        for c in verdict.checks
    ]
    if rows:
        st.markdown("**Same images, paired bootstrap intervals**")
        st.dataframe(pd.DataFrame(rows), hide_index=True)
    if verdict.grounds:
        st.success(
            "This comparison is grounds for promotion: enough images, and no metric is worse beyond its interval."
        )
    else:
        st.warning(
            "Not grounds for promotion: "
            + escape_md("; ".join(verdict.problems))
            + ". Promoting needs a written reason."
        )
    st.caption(training.rule_text())


def _change_form(
    cfg,
    task: str,
    version: str,
    current: str | None,
    compared: "tuple[dict, training.PromotionVerdict] | None",
    key: str,
) -> None:
    """Who, why and a confirmation before ``version`` becomes the active ``task``; logged by training.promote
    (which applies the rule again to the comparison, at the moment of the change)."""
    comparison, verdict = compared if compared is not None else (None, None)
    by = reviewer_input(label="Your name (recorded)", key=f"{key}-by")
    reason = st.text_area(
        "Reason (recorded)" + ("" if verdict is not None and verdict.grounds else " – required"),
        key=f"{key}-reason",
        height=68,
    )
    sure = st.checkbox(
        f"I confirm: `{version}` becomes the active {task} for every reader (now `{current}`)", key=f"{key}-sure"
    )
    label = f"Promote {version} to active {task}" if comparison is not None else f"Make {version} active"
    if st.button(label, type="primary", key=key, disabled=not sure):
        try:
            change = training.promote(cfg, task, version, by=by, reason=reason, comparison=comparison)
        except TriageError as exc:
            _error(exc)
        else:
            st.session_state[state.REVIEWER] = change.by
            state.flash(
                "success", f"{task} `{version}` is now active (previous: `{current}`); recorded as {change.kind}."
            )
            st.rerun()


def _run_panel(cfg, job: "training.Job") -> None:
    status = training.run_status(cfg, job)
    started = job.started[:16].replace("T", " ")
    st.caption(
        f"{job.task} · preset {job.preset} · "
        f"{'fine-tuned from ' + job.init_from if job.init_from else 'from scratch'} · started {started} UTC "
        f"· data {escape_md(Path(job.data).name)}"  # the folder's name, not its server path
    )
    if status.running:
        _live(job.job_id)
        return
    if status.phase == JobPhase.FAILED:
        st.error(
            f"Training failed: {escape_md(status.error)}. The active model was not changed.", icon=":material/error:"
        )
        with st.expander("Log"):
            st.code("\n".join(training.run_log(job, 60)) or "(empty)")
        return
    if status.phase == JobPhase.CANCELLED:
        st.info("Training was cancelled. The active model was not changed and no new version was kept.")
        return
    result = status.result
    summary = ", ".join(
        f"{k.replace('_', ' ')} {v:.3f}"
        for k, v in result.items()
        if k.startswith(("val_", "ece")) and isinstance(v, float)
    )
    st.success(f"Finished in {_duration(status.elapsed_s)}: new {job.task} version `{job.version}` ({summary}).")
    if status.steps or status.epochs:
        with st.expander("Training curves"):
            _curves(status)
    try:
        active = training.active(cfg, job.task)
    except TriageError as exc:
        _error(exc)
        return
    if active == job.version:
        st.success(f"`{job.version}` is the active {job.task}.")
        return
    compared = _comparison(cfg, job, active)
    if compared is not None:
        _change_form(cfg, job.task, job.version, active, compared, state.keyed(state.TRAIN_RUN, "promote", job.job_id))


def _job_label(job_id: str, by_id: dict) -> str:
    j = by_id[job_id]
    return f"{j.task} {j.version} (started {j.started[:10]} {j.started[11:16]} UTC)"


# ----- page ---------------------------------------------------------------------------------------

state.init_state()
require_admin()
cfg = settings()
st.title("Training")
st.caption(
    "Retrain the classifier or the segmenter on new data. A run writes a new model version beside the "
    "active one and never replaces it: nothing changes for readers until you promote the new version."
)
show_flash()

st.subheader("1. Training data")
source = st.radio(
    "Source", [k.value for k in SOURCES], format_func=SOURCES.get, key=state.TRAIN_SOURCE, horizontal=True
)
if source == SourceKind.FOLDER:
    st.text_input(
        "Folder on this computer",
        key=state.TRAIN_FOLDER,
        placeholder="/path/to/dataset",
        help="One folder per class (glioma, meningioma, no_tumor, pituitary; aliases such as notumor "
        "or glioma_tumor work), optional masks/ with the same file names, or a manifest.csv. Only folders "
        "inside the app's data folder or the shared data folder (TRIAGE_IMPORT_ROOTS) can be read.",
    )
elif source == SourceKind.ZIP:
    st.file_uploader(
        "Zip archive",
        type=["zip"],
        key=state.TRAIN_ZIP,
        help="The same layout as a folder: class folders and optional masks/, or a manifest.csv.",
    )
elif source == SourceKind.MANIFEST:
    st.text_input(
        "Manifest CSV",
        key=state.TRAIN_MANIFEST,
        placeholder="/path/to/manifest.csv",
        help="Columns path,label[,mask_path] with paths relative to the CSV; test-split rows are left "
        "out for evaluation.",
    )
else:
    st.caption("Cases a reviewer confirmed or corrected, with the reviewer's label (and ground-truth mask if any).")
task = st.radio("Model to train", list(TASK_TEXT), format_func=TASK_TEXT.get, key=state.TRAIN_TASK, horizontal=True)
check_status = _check_state()
if st.button("Check data", key=state.keyed(state.TRAIN_CHECK, "button"), disabled=check_status == JobPhase.RUNNING):
    try:
        value = _check_value(source)
    except (ValueError, TriageError) as exc:
        _error(exc)
    else:
        # replaces this session's earlier check (its dataset folder is discarded unless a run uses it)
        check_key = training.start_check(
            cfg, source, value, task, st.session_state[state.TRAIN_CHECK], st.session_state[state.TRAIN_SUMMARY]
        )
        check_status = JobPhase.RUNNING
        st.session_state[state.TRAIN_SUMMARY] = None
        st.session_state[state.TRAIN_CHECK] = check_key
summary = _data_check(task, check_status)

st.subheader("2. Train")
init = st.radio("Start from", list(INIT_TEXT), format_func=INIT_TEXT.get, key=state.TRAIN_INIT, horizontal=True)
preset = st.radio("Preset", list(PRESET_TEXT), format_func=PRESET_TEXT.get, key=state.TRAIN_PRESET, horizontal=True)
with st.expander("Advanced"):
    epochs = st.number_input("Epochs (0 = the preset's)", 0, 200, 0, key=state.TRAIN_EPOCHS)
    budget = st.number_input(
        "Time budget per model in minutes (0 = the preset's)", 0.0, 600.0, 0.0, step=1.0, key=state.TRAIN_BUDGET
    )
ready = summary is not None and summary.ok
if st.button(
    "Start training",
    type="primary",
    disabled=not ready,
    key=state.keyed(state.TRAIN_RUN, "start"),
    help=None if ready else "Check data without problems first.",
):
    overrides = {"epochs": int(epochs) or None, "time_budget_min": float(budget) or None}
    try:
        started = training.start_runs(cfg, task, summary.dataset_dir, preset, init == "finetune", overrides)
    except (TriageError, ValueError) as exc:
        _error(exc)
    else:
        st.session_state[state.TRAIN_RUN] = started[0].job_id
        st.session_state[RUN_PICK] = started[0].job_id
        state.flash("info", "Training started in the background; you can close this tab and come back later.")
        st.rerun()

st.subheader("3. Runs")
all_jobs = training.runs(cfg, 30)
if not all_jobs:
    st.caption("No training runs yet.")
else:
    by_id = {j.job_id: j for j in all_jobs}
    running = [j for j in all_jobs if not j.finished and training.run_status(cfg, j).running]
    if running:
        st.info(f"{len(running)} run(s) in progress: " + ", ".join(f"{j.task} {j.version}" for j in running))
    if st.session_state.get(RUN_PICK) not in by_id:
        st.session_state[RUN_PICK] = (
            st.session_state[state.TRAIN_RUN]
            if st.session_state[state.TRAIN_RUN] in by_id
            else (running or all_jobs)[0].job_id
        )
    picked = st.selectbox("Run", list(by_id), format_func=lambda j: _job_label(j, by_id), key=RUN_PICK)
    st.session_state[state.TRAIN_RUN] = picked
    _run_panel(cfg, by_id[picked])

st.subheader("4. Model versions")
st.caption(
    "Any version can be made active again (rollback) with a written reason; the change is atomic, picked up by the "
    "next analysis and recorded in the model-change log (Model page)."
)
for t in training.TASKS:
    rows = training.versions_table(cfg, t)
    st.markdown(f"**{t.capitalize()}**")
    if not rows:
        st.caption("No versions.")
        continue
    table = pd.DataFrame(rows)
    table["active"] = table["active"].map({True: "✓", False: ""})
    for col in ("val accuracy", "val Dice"):
        table[col] = table[col].map(_pct)
    st.dataframe(table, hide_index=True)
    choice = st.selectbox(
        f"{t} version", [r["version"] for r in rows], key=state.keyed(VERSION_PICK, t), label_visibility="collapsed"
    )
    current = next((r["version"] for r in rows if r["active"]), None)
    if choice != current:
        with st.expander(f"Make {choice} the active {t} (rollback or promotion without a comparison)"):
            _change_form(cfg, t, choice, current, None, state.keyed(VERSION_PICK, t, "activate"))
