"""Long-lived objects shared by every browser session (loaded once with st.cache_resource)."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

import streamlit as st

from triage.config import Settings, get_settings
from triage.errors import ModelBrokenError
from triage.worklist import Worklist

if TYPE_CHECKING:  # triage.card pulls in cv2 (preprocess): the default page does not need it
    from triage.card import ModelCard

# triage.service is imported lazily so pages that only read the worklist (the default page)
# render without loading the model runtime.


@st.cache_resource(show_spinner=False)
def get_service():  # -> triage.service.TriageService
    """One service (and so one copy of the models) per server process."""
    from triage.service import TriageService

    return TriageService(get_settings())


@st.cache_resource(show_spinner=False)
def start_warm_up() -> threading.Thread:
    """Once per server process: warm the analysis path, then Grad-CAM, in a background thread.

    The ONNX models first (the first upload then analyses at full speed), then torch for the
    heatmap that case review shows with every case (about 5 s of imports a reader would
    otherwise wait for when opening the first case).
    """
    service = get_service()
    thread = threading.Thread(target=service.warm_up, kwargs={"explain": True}, name="warm-up", daemon=True)
    thread.start()
    return thread


@st.cache_resource(show_spinner=False)
def start_recovery():  # -> triage.ui.uploads.RecoveryRun
    """Once per server process: analyse, in a background thread, the uploads that were received
    but not finished before the server stopped (issue 22, item 16)."""
    from triage.ui.uploads import RecoveryRun

    return RecoveryRun(get_service(), get_worklist()).start()


@st.cache_resource(show_spinner=False)
def get_worklist() -> Worklist:
    """The SQLite worklist under the app's data directory (shared by all tabs)."""
    return Worklist(get_settings().db_path)


def settings() -> Settings:
    return get_settings()


def model_cards() -> dict[str, ModelCard]:
    """The card of the active version of each task, read from disk (cheap; no weights loaded).

    Raises ModelNotFoundError when a task has no model, ModelBrokenError when a card cannot be read.
    """
    from triage.models import TASKS, active_version, read_card

    wd = settings().weights_dir
    cards = {}
    for task in TASKS:
        version = active_version(wd, task)
        try:
            cards[task] = read_card(wd, task, version)
        except (OSError, ValueError) as exc:  # unreadable or invalid JSON, a field the card cannot have
            raise ModelBrokenError(f"{task} version {version!r} has an unusable model card: {exc}") from exc
    return cards


def models_trained() -> bool:
    """True when both active model cards say ``trained``; raises ModelNotFoundError without models."""
    return all(card.trained for card in model_cards().values())
