"""``python -m betaweighter``: the command line (also what ``torchrun -m betaweighter``
launches on every process)."""

import sys

from betaweighter.cli import main

sys.exit(main())
