"""``python -m trainer``: the ``cmg`` command (trainer/cli.py)."""

import sys

from trainer.cli import main

sys.exit(main())
