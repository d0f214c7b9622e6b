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
