"""The model lifecycle: import data, train, calibrate, compare, promote. Never imported by the per-scan
request path (``tests/test_ui_imports.py`` checks it); the request path stays flat in ``triage/``.

The modules, from import to promotion:

- :mod:`.importer`: a zip, folder, manifest or reviewed worklist cases into a clean dataset folder;
- :mod:`.jobs`: training runs as background processes (a pure :func:`~.jobs.job_status` read and an
  explicit :func:`~.jobs.poll`), and :mod:`.background`, the page's short tasks on server threads (:data:`~.background.BACKGROUND`);
- :mod:`.training_run` (one run: data recipe and settings) over :mod:`.recipe` (BRISC + Sartaj
  split), :mod:`.sources` (every shared source) and :mod:`.train` (the loops, checkpoints, saving), which
  takes a :mod:`.train_config` (presets, :class:`~.train_config.TrainConfig`; no torch), trains with
  :mod:`.losses` and fits the temperature, OOD statistics and mask post-processing with :mod:`.fitting`;
- :mod:`.calibrate`: re-fit a version's temperature, segmenter threshold or review-flag rule;
- :mod:`.compare` (both versions on the same held-out images) and :mod:`.promotion` (the rule a
  comparison must pass, the audited change log).

This package is also the facade the Training page and the ``train``, ``calibrate`` and ``promote``
commands call: ``lifecycle.start_jobs(...)``, ``lifecycle.promote(...)``. Each name is looked up
in its module when it is used (PEP 562), so importing the facade loads nothing heavy (torch comes
with :mod:`.train`, :mod:`.losses` and :mod:`.fitting` only) and a test that patches a module's function patches the facade too.
"""

from __future__ import annotations

import importlib
from typing import Any

# facade name -> the module that defines it
_FACADE: dict[str, str] = {
    # import
    "ImportSummary": "importer",
    "import_source": "importer",
    "recheck": "importer",
    "discard": "importer",
    # training jobs
    "BACKGROUND": "background",
    "Job": "jobs",
    "JobStatus": "jobs",
    "start_jobs": "jobs",
    "cancel": "jobs",
    "poll": "jobs",
    "job_status": "jobs",
    "list_jobs": "jobs",
    "load_job": "jobs",
    "log_tail": "jobs",
    "running_jobs": "jobs",
    "run_training": "training_run",
    # calibration
    "recalibrate_classifier": "calibrate",
    "retune_segmenter": "calibrate",
    "fit_flags": "calibrate",
    # comparison and promotion
    "compare_run": "compare",
    "saved_comparison": "compare",
    "versions_table": "compare",
    "promote": "compare",
    "judge": "promotion",
    "PromotionVerdict": "promotion",
    "RULE_TEXT": "promotion",
    "model_changes": "promotion",
}

__all__ = sorted(_FACADE)


def __getattr__(name: str) -> Any:
    module = _FACADE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def __dir__() -> list[str]:
    return sorted({*globals(), *_FACADE})
