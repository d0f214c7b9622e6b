"""New scans: upload slices or series (files, a folder or a .zip), analyse them and add them to the worklist."""

import pandas as pd
import streamlit as st

from triage.errors import TriageError
from triage.records import CLASSES
from triage.ui import state
from triage.ui.format import class_text, escape_md, flag_text
from triage.ui.resources import get_service, get_worklist, models_trained, settings
from triage.ui.state import init_state
from triage.ui.uploads import receive_and_process, storage_refusal
from triage.ui.widgets import model_error, untrained_warning

NO_TRUTH = "none"
FROM_FOLDER = "from folder names"
FORMATS = "PNG, JPEG, TIFF or DICOM slices, DICOM series or NIfTI volumes (.nii, .nii.gz)"

init_state()
st.title("New scans")
try:
    untrained_warning(models_trained())
except TriageError as exc:
    model_error(exc)
    st.stop()

nonce = st.session_state[state.UPLOAD_NONCE]
left, right = st.columns(2)
files = left.file_uploader(
    "Scan files or .zip archives",
    accept_multiple_files=True,
    key=state.keyed(state.UPLOAD_FILES, nonce),
    help=f"{FORMATS}. A .zip of a folder is extracted in memory (unsafe paths are refused).",
)
folder = right.file_uploader(
    "Or a whole folder",
    accept_multiple_files="directory",
    key=state.keyed(state.UPLOAD_FOLDER, nonce),
    help=f"Every file in the folder and its sub-folders; {FORMATS}.",
)

with st.expander("Ground truth (optional, for evaluation)"):
    truth = st.selectbox(
        "Truth label for all uploaded files",
        [NO_TRUTH, FROM_FOLDER, *CLASSES],
        key=state.keyed(state.UPLOAD_TRUTH, nonce),
        format_func=lambda c: class_text(c) if c in CLASSES else c,
        help="'from folder names' takes the label from a parent folder such as glioma/ or no_tumor/",
    )
    masks = st.file_uploader(
        "Tumor masks, matched by file name (x.png ↔ x_mask.png or x.png)",
        accept_multiple_files=True,
        key=state.keyed(state.UPLOAD_MASKS, nonce),
        help="Binary PNG masks, or a .zip of them.",
    )

uploads = [*(files or []), *(folder or [])]
refusal = storage_refusal(get_worklist(), settings())  # read-only, damaged database, full disk
if refusal:
    st.error(f"Uploads are refused: {escape_md(refusal)}", icon=":material/block:")
go = st.button(
    f"Analyse {len(uploads)} file{'s' if len(uploads) != 1 else ''}",
    type="primary",
    disabled=not uploads or bool(refusal),
    icon=":material/biotech:",
)
if go and uploads:
    bar = st.progress(0.0, text="Starting…")
    waiting = st.empty()  # "waiting for the database" while another program holds its write lock

    def report(done: int, total: int, name: str) -> None:
        bar.progress(
            done / max(1, total), text=f"{done}/{total} {escape_md(name)}" if name else f"{total} files analysed"
        )

    with st.spinner("Analysing…"):
        rows = receive_and_process(
            [(f.name, f.getvalue()) for f in uploads],
            get_service(),
            get_worklist(),
            truth_label=truth if truth in CLASSES else None,
            label_from_folder=truth == FROM_FOLDER,
            masks=[(m.name, m.getvalue()) for m in masks or []],
            progress=report,
            notice=lambda text: waiting.info(text, icon=":material/hourglass_top:"),
        )
    st.session_state[state.LAST_UPLOAD] = rows
    st.session_state[state.UPLOAD_NONCE] = nonce + 1  # fresh, empty uploaders
    st.rerun()

rows = st.session_state[state.LAST_UPLOAD]
if rows:
    accepted = [r for r in rows if r["status"] == "accepted"]
    known = [r for r in rows if r["status"] == "already in worklist"]
    refused = [r for r in rows if r["status"] not in ("accepted", "already in worklist")]
    st.subheader("Last batch")
    st.success(
        f"{len(accepted)} added to the worklist"
        + (f", {len(known)} already there" if known else "")
        + (f", {len(refused)} not added" if refused else "")
        + "."
    )
    if accepted or known:
        ok = pd.DataFrame(
            [
                {
                    "file": r["file"],
                    "status": r["status"],
                    "class": class_text(r["label"]),
                    "risk": r["risk"],
                    "flags": flag_text(r["flags"]),
                    "truth": class_text(r["truth"]),
                    "note": r["reason"],
                }
                for r in accepted + known
            ]
        )
        st.dataframe(
            ok,
            hide_index=True,
            column_config={
                "file": "File",
                "status": "Status",
                "class": "Class",
                "risk": st.column_config.ProgressColumn("Risk", min_value=0.0, max_value=1.0, format="%.2f"),
                "flags": "Flags",
                "truth": "Truth",
                "note": "Note",
            },
        )
        st.page_link("views/worklist.py", label="Open the worklist", icon=":material/list:")
    if refused:
        st.error(f"{len(refused)} file(s) were not added:")
        st.dataframe(
            pd.DataFrame([{"file": r["file"], "status": r["status"], "reason": r["reason"]} for r in refused]),
            hide_index=True,
            column_config={
                "file": "File",
                "status": "Status",
                "reason": st.column_config.TextColumn("Reason", width="large"),
            },
        )
elif not uploads:
    st.caption(
        f"Accepted: {FORMATS}. A DICOM series (files, a folder or a .zip), a NIfTI volume or a folder of images "
        "becomes one study in the worklist; a lone file is a one-slice study. "
        "Files are analysed on this machine only."
    )
