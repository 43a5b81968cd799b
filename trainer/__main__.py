"""``python -m trainer``: the ``cmg`` command (trainer/programs/cmg.py)."""

import sys

from trainer.programs.cmg import main

sys.exit(main())
