"""``python -m triage``: see :mod:`triage.cli`."""

import sys

from triage.cli import main

if __name__ == "__main__":
    sys.exit(main())
