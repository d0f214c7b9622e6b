"""Brain-MRI triage: read scans, crop the brain, classify, segment, explain and rank by risk.

The core package never imports streamlit; the UI lives in ``triage.ui`` and ``views/``.
"""

__version__ = "0.1.0"
