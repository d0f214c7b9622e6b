"""Settings: where data and weights live, limits, thresholds and the risk policy.

Every value can be overridden with an environment variable ``TRIAGE_<NAME>``. Paths are
resolved from the package location, never from the working directory.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_DIR = PACKAGE_DIR.parent

# Malignancy prior per class (see triage/risk.py for the clinical reasoning).
DEFAULT_RISK_WEIGHTS: dict[str, float] = {
    "no_tumor": 0.0,
    "glioma": 1.0,
    "meningioma": 0.35,
    "pituitary": 0.2,
}


@dataclass(frozen=True)
class Settings:
    """Runtime configuration. Build with :func:`get_settings` to apply env overrides."""

    data_dir: Path = field(default_factory=lambda: Path.home() / ".local" / "share" / "brain-triage")
    weights_dir: Path = REPO_DIR / "weights"
    shared_data_dir: Path = REPO_DIR.parent / "shared" / "data"
    # Input limits: files bigger than this are refused before decoding.
    max_file_bytes: int = 64 * 1024 * 1024
    max_pixels: int = 40_000_000
    min_side: int = 32
    # Longer side / shorter side above this is refused: no slice is that narrow, and the crop's
    # padding to a square grows with the square of the longer side.
    max_aspect_ratio: float = 4.0
    # Seconds one upload's decode may take; longer ones are stopped (their worker process is
    # killed) with a reason and the batch goes on (triage/decode_limit.py). 0: decode in-process.
    upload_time_limit_s: float = 120.0
    # Server folders the training page may import from ("Folder on this computer", manifest paths),
    # separated by os.pathsep. Empty (the default): the data folder, and shared_data_dir when it
    # exists. A browser user can never make the server list or read anything outside them.
    import_roots: str = ""
    # A case is "uncertain" when the top probability is below this.
    uncertain_below: float = 0.6
    # Minimum mask area (fraction of brain crop) before the classifier/segmenter disagree.
    disagreement_mask_fraction: float = 0.01
    # Flagged cases never rank below this risk (uncertain / OOD / disagreement).
    review_risk_floor: float = 0.5
    risk_weights: dict = field(default_factory=lambda: dict(DEFAULT_RISK_WEIGHTS))
    # Privacy: keep DICOM patient identifiers only when explicitly allowed.
    allow_phi: bool = False
    # File names often carry patient names, birth dates or record numbers (Doe^John_19310417.png).
    # True: pages, logs and exports show "case <id>" instead; None (the default): hidden unless
    # allow_phi. Set TRIAGE_HIDE_FILE_NAMES=0 / 1 to decide explicitly.
    hide_file_names: bool | None = None
    # Training threads (torch); Grad-CAM in the app uses inference_threads.
    torch_threads: int = 2
    # Analysis: "auto" runs each version's checked ONNX export and falls back to torch without
    # one; "onnx" makes a missing export an error; "torch" never uses ONNX (triage/runtime.py).
    inference_backend: str = "auto"
    inference_threads: int = 2
    # Housekeeping (triage/housekeeping.py): decoded-crop caches are trimmed, oldest first, to this
    # size before a training run starts; a failed run's checkpoints are kept this many days.
    cache_limit_bytes: int = 4 * 1024**3
    failed_run_keep_days: float = 7.0

    @property
    def file_names_hidden(self) -> bool:
        """Whether file names are replaced by case ids wherever a person could see them."""
        return (not self.allow_phi) if self.hide_file_names is None else bool(self.hide_file_names)

    @property
    def allowed_import_roots(self) -> tuple[Path, ...]:
        """The resolved folders server-side imports are confined to (see ``import_roots``)."""
        if self.import_roots.strip():
            roots = [Path(r).expanduser() for r in self.import_roots.split(os.pathsep) if r.strip()]
        else:
            roots = [self.data_dir] + ([self.shared_data_dir] if self.shared_data_dir.is_dir() else [])
        return tuple(r.resolve() for r in roots)

    @property
    def db_path(self) -> Path:
        return self.data_dir / "worklist.sqlite3"

    @property
    def scans_dir(self) -> Path:
        return self.data_dir / "scans"

    # The one place the training runs and the decoded-crop cache live (issue 24: they were derived in
    # five modules). A run's folder is named after its task and version so a rerun resumes it.
    @property
    def runs_dir(self) -> Path:
        return self.data_dir / "runs"

    @property
    def cache_dir(self) -> Path:
        return self.data_dir / "cache"

    def run_dir(self, task: str, version: str) -> Path:
        """The log and checkpoint folder of training ``task`` into ``version``."""
        return self.runs_dir / f"{task}-{version}"


def _coerce(value: str, current: object) -> object:
    if current is None:  # an optional switch: empty or "auto" keeps the default rule
        text = value.strip().lower()
        return None if text in {"", "auto"} else text in {"1", "true", "yes", "on"}
    if isinstance(current, bool):
        return value.strip().lower() in {"1", "true", "yes", "on"}
    if isinstance(current, int):
        return int(value)
    if isinstance(current, float):
        return float(value)
    if isinstance(current, Path):
        return Path(value).expanduser()
    if isinstance(current, dict):
        return json.loads(value)
    return value


def get_settings(**overrides: object) -> Settings:
    """Settings with ``TRIAGE_*`` environment overrides applied, then explicit ``overrides``."""
    base = Settings()
    env: dict[str, object] = {}
    for f in fields(Settings):
        raw = os.environ.get(f"TRIAGE_{f.name.upper()}")
        if raw is None and f.name == "shared_data_dir":
            raw = os.environ.get("TRIAGE_SHARED_DATA")
        if raw is not None:
            env[f.name] = _coerce(raw, getattr(base, f.name))
    env.update(overrides)
    return replace(base, **env)
