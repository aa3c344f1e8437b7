"""``python -m training``: see :mod:`training.cli` (``--help``)."""
import sys

from .cli import main

sys.exit(main())
