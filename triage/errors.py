"""Exception hierarchy. The UI and CLI turn these into messages; nothing here is swallowed."""


class TriageError(Exception):
    """Base class for every error the triage package raises on purpose."""


class InvalidScanError(TriageError):
    """The input cannot be read as a brain-MRI slice (corrupt, wrong format, too big, too small...)."""


class ModelNotFoundError(TriageError):
    """No usable model version exists in the weights folder."""


class ModelBrokenError(ModelNotFoundError):
    """A model version exists but its files cannot be used (truncated weights, a broken card)."""


class DatasetError(TriageError):
    """A training dataset is unusable (bad layout, too few images, unsafe archive...)."""


class TrainingError(TriageError):
    """A training run failed or was cancelled."""


class WorklistError(TriageError):
    """A worklist operation was refused (invalid case, label, reviewer, newer schema...)."""


class CaseNotFoundError(WorklistError):
    """No case with the given scan_id is in the worklist."""


class ReviewConflictError(WorklistError):
    """The case changed since the reader opened it (``expected_revision`` is stale); nothing was written.

    ``case``: the case as it is now (a :class:`triage.records.Case`)."""

    def __init__(self, message: str, case: object):
        super().__init__(message)
        self.case = case


class SignedOffError(WorklistError):
    """The case is signed off: it is read-only, and further remarks are addenda."""
