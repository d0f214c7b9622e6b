"""Long-lived objects shared by every browser session (loaded once with st.cache_resource)."""

from __future__ import annotations

import streamlit as st

from triage.config import Settings, get_settings
from triage.worklist import Worklist

# triage.service / triage.models import torch (~0.7 GB, seconds): imported lazily so pages that
# only read the worklist (the default page) render without loading the ML stack.


@st.cache_resource(show_spinner=False)
def get_service():  # -> triage.service.TriageService
    """One service (and so one copy of the models) per server process."""
    from triage.service import TriageService

    return TriageService(get_settings())


@st.cache_resource(show_spinner=False)
def get_worklist() -> Worklist:
    """The SQLite worklist under the app's data directory (shared by all tabs)."""
    return Worklist(get_settings().db_path)


def settings() -> Settings:
    return get_settings()


def model_cards() -> dict[str, dict]:
    """metadata.json of the active version of each task, read from disk (cheap; no weights loaded).

    Raises ModelNotFoundError when a task has no model.
    """
    from triage.models import TASKS, active_version, read_metadata

    wd = settings().weights_dir
    return {task: read_metadata(wd, task, active_version(wd, task)) for task in TASKS}


def models_trained() -> bool:
    """True when both active model cards say ``trained``; raises ModelNotFoundError without models."""
    return all(bool(card.get("trained", False)) for card in model_cards().values())
