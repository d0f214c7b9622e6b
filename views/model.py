"""Model: the active model cards, what the models are not for, the risk policy and evaluation reports."""

import pandas as pd
import streamlit as st

from triage.errors import TriageError
from triage.ui.format import escape_md
from triage.ui.model_card import (
    METHOD_LABEL,
    NOT_FOR,
    card_rows,
    heatmap_localisation,
    licence_rows,
    markdown_table,
    metric_rows,
    model_change_rows,
    per_class_rows,
    promotion_rule,
    reports,
    risk_policy,
    versions_on_disk,
)
from triage.ui.resources import model_cards, settings
from triage.ui.state import init_state
from triage.ui.widgets import model_error, untrained_warning

TASK_TITLE = {"classifier": "Tumor classifier", "segmenter": "Tumor segmenter"}


def _table(rows: list[tuple[str, str]]) -> None:
    st.markdown(markdown_table(rows))


init_state()
st.title("Model")
try:
    cards = model_cards()
except TriageError as exc:
    model_error(exc)
    cards = {}

if cards:
    untrained_warning(all(c.trained for c in cards.values()))
    for col, (task, card) in zip(st.columns(len(cards)), cards.items()):
        with col:
            st.subheader(TASK_TITLE.get(task, task))
            _table(card_rows(card))
            metrics = metric_rows(card)
            st.markdown("**Validation metrics**")
            if metrics:
                _table(metrics)
            else:
                st.caption("No validation metrics in this model card.")
            per_class = per_class_rows(card)
            if per_class:
                with st.expander("Per-class validation metrics"):
                    st.dataframe(
                        pd.DataFrame(per_class),
                        hide_index=True,
                        column_config={
                            k: st.column_config.NumberColumn(k, format="%.3f") for k in ("precision", "recall", "f1")
                        },
                    )
            licences = licence_rows(card)
            if licences:
                if any(r["commercial use"] != "allowed" for r in licences):
                    st.warning(
                        "Trained on data licensed for non-commercial research only: this model may not be used "
                        "commercially."
                    )
                st.markdown("**Training sources and licences**")
                st.dataframe(pd.DataFrame(licences), hide_index=True)
            with st.expander("Training data and all versions"):
                st.markdown("**Data**")
                st.json(dict(card.data), expanded=False)
                versions = versions_on_disk(settings(), task)
                st.markdown(
                    "**Versions on disk** (active in bold): "
                    + ", ".join(f"**{escape_md(v)}**" if v == card.version else escape_md(v) for v in versions)
                )

st.subheader("Model changes")
changes = model_change_rows(settings())
if changes:
    st.caption("Every promotion and rollback, newest first (append-only log; " + escape_md(promotion_rule()) + ")")
    st.dataframe(pd.DataFrame(changes), hide_index=True)
else:
    st.caption("No model change recorded in this data folder yet.")

st.subheader("Heatmaps: do they point at the lesion?")
localisation = heatmap_localisation()
if localisation is None:
    st.caption("Not measured yet: run `python bench/heatmap_localisation.py --write`.")
else:
    st.markdown(
        f"Measured on {escape_md(localisation.split)} ({localisation.measured}). **Pointing game**: the share of "
        "slices whose hottest heatmap pixel lies in the tumour mask (dilated by 5% of the head width); "
        "**energy in mask**: the share of the map inside the mask (a map spread evenly scores the mask share). "
        f"Target: pointing game ≥ {localisation.target:.2f}."
    )
    st.dataframe(pd.DataFrame(localisation.table()), hide_index=True)
    best = localisation.best
    if localisation.reached:
        st.markdown(
            f"Case review shows **{METHOD_LABEL.get(best['method'], escape_md(best['method']))}** by default: it is the only map that reaches the "
            "target. It shows where the *segmenter* finds tumour, not why the classifier chose its class. The "
            "classifier's own Grad-CAM maps stay available for comparison; they do **not** localise the lesion "
            "(they point at it about as often as a random point would)."
        )
    else:
        st.warning("No heatmap method reaches the target: treat every heatmap as a rough hint, not a location.")

st.subheader("What the models are NOT for")
st.markdown(NOT_FOR)

st.subheader("Risk policy")
st.markdown(risk_policy(settings()))

st.subheader("Evaluation reports")
found = reports()
if not found:
    st.caption("No evaluation report yet (`reports/*.md`). Run `python -m triage evaluate` to write one.")
for name, text in found:
    with st.expander(name):
        st.markdown(text)
